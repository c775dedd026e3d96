// Vector helpers of the fused op's hot loops. GCC vector extensions keep the
// loops explicit without tying the code to one instruction set: with AVX-512
// a Vf is one register, with AVX2 two, and the code builds for any -march
// (SNN_OPS_ARCH may name a machine without AVX-512).
#ifndef SNN_OPS_COMMON_SIMD_H_
#define SNN_OPS_COMMON_SIMD_H_

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>

// Vf values only travel between inline functions of the including file, so
// GCC's warning that their ABI differs without AVX-512 does not concern us
// (helper parameters are const references because the pragma cannot silence
// the matching note for by-value parameters).
#pragma GCC diagnostic ignored "-Wpsabi"

namespace tensorflow {
namespace snn {

typedef float Vf __attribute__((vector_size(64)));
typedef int32_t Vi __attribute__((vector_size(64)));
constexpr int kLanes = 16;

inline Vf Load(const float* p) {
  Vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void Store(float* p, const Vf& v) { std::memcpy(p, &v, sizeof(v)); }
inline Vf Splat(float x) {
  Vf v = {x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
  return v;
}

#if !defined(__AVX512F__)
// A comparison's lanes (all ones or zero) as a bit mask, bit i for lane i.
inline uint32_t LaneBits(const Vi& m) {
  uint32_t r = 0;
  for (int i = 0; i < kLanes; ++i) r |= (uint32_t)(m[i] & 1) << i;
  return r;
}
#endif

// Bit i set where a[i] >= b[i] (false for NaN, like the scalar comparison).
inline uint32_t MaskGe(const Vf& a, const Vf& b) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_GE_OQ);
#else
  return LaneBits(a >= b);
#endif
}
// Bit i set where a[i] < b[i].
inline uint32_t MaskLt(const Vf& a, const Vf& b) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_LT_OQ);
#else
  return LaneBits(a < b);
#endif
}
// Hides a value from the optimiser so a product is not fused into the
// following add (FMA contraction): the membrane update then rounds each
// product like the model's plain multiply-then-add on every build, which
// makes spike decisions reproducible against a reference implementation.
inline void NoContract(Vf& x) {
#if defined(__AVX512F__)
  asm("" : "+v"(x));
#else
  asm("" : "+m"(x));
#endif
}

// The lane sums of four vectors at once: out[q] = sum of the lanes of v[q].
// Three halving steps on all four together take 8 shuffles and 5 adds,
// where four separate horizontal sums take about three times as many.
inline void Sum4(const Vf& a, const Vf& b, const Vf& c, const Vf& d, float* out) {
  // [a.lo8 + a.hi8 | b.lo8 + b.hi8], likewise c and d.
  const Vi lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
  const Vi hi8 = lo8 + 8;
  const Vf ab = __builtin_shuffle(a, b, lo8) + __builtin_shuffle(a, b, hi8);
  const Vf cd = __builtin_shuffle(c, d, lo8) + __builtin_shuffle(c, d, hi8);
  // Four partial sums each: lanes [4q, 4q + 4) belong to vector q.
  const Vi lo4 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
  const Vi hi4 = lo4 + 4;
  Vf x = __builtin_shuffle(ab, cd, lo4) + __builtin_shuffle(ab, cd, hi4);
  const Vi swap2 = {2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13};
  x += __builtin_shuffle(x, swap2);
  const Vi swap1 = {1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14};
  x += __builtin_shuffle(x, swap1);
  out[0] = x[0];
  out[1] = x[4];
  out[2] = x[8];
  out[3] = x[12];
}

}  // namespace snn
}  // namespace tensorflow

#endif  // SNN_OPS_COMMON_SIMD_H_
