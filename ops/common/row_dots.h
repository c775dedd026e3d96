// The inner step of both backward passes that pair weight rows with
// gradient rows (the fused layer's and SnnSparseBinaryMatmulGrad's): for a
// few gradient rows that meet one weight row, their dot products with it
// and their scaled sum added to the row's weight gradient, in one pass.
#ifndef SNN_OPS_COMMON_ROW_DOTS_H_
#define SNN_OPS_COMMON_ROW_DOTS_H_

#include <cstdint>

#include "common/simd.h"

namespace tensorflow {
namespace snn {

// For NE (<= 4) gradient rows g[q] of nch chunks: out[q] = w . g[q] and,
// if kAxpy, dr += sum_q f[q] * g[q] (chunk by chunk, q in order: the bits
// depend only on the rows and their order). Grouping loads w and dr once
// per chunk for all NE rows instead of once per row, and Sum4 reduces the
// NE dot vectors together instead of one horizontal sum per row.
template <int NE, bool kAxpy>
inline void DotAxpyRows(const float* __restrict w, const float* const* g, const Vf* f,
                        int64_t nch, float* __restrict dr, float out[4]) {
  Vf d[4];
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) d[q] = Splat(0.f);
  for (int64_t c = 0; c < nch; ++c) {
    const int64_t i = c * kLanes;
    const Vf wv = Load(w + i);
    Vf r = kAxpy ? Load(dr + i) : Splat(0.f);
#pragma GCC unroll 4
    for (int q = 0; q < NE; ++q) {
      const Vf gv = Load(g[q] + i);
      d[q] += wv * gv;
      if (kAxpy) r += gv * f[q];
    }
    if (kAxpy) Store(dr + i, r);
  }
  Sum4(d[0], d[1], d[2], d[3], out);
}

// DotAxpyRows, with the axpy skipped when every f[q] is zero (a group of
// carriers, which only need their dots).
template <int NE>
inline void DotAxpyRowsIfAny(const float* w, const float* const* g, const Vf* f, bool any,
                             int64_t nch, float* dr, float out[4]) {
  if (any) {
    DotAxpyRows<NE, true>(w, g, f, nch, dr, out);
  } else {
    DotAxpyRows<NE, false>(w, g, f, nch, dr, out);
  }
}

}  // namespace snn
}  // namespace tensorflow

#endif  // SNN_OPS_COMMON_ROW_DOTS_H_
