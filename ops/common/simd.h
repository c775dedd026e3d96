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

inline float HorizontalSum(const Vf& v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps((__m512)v);
#else
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
#endif
}

}  // namespace snn
}  // namespace tensorflow

#endif  // SNN_OPS_COMMON_SIMD_H_
