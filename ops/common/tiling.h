// Column tiles of a weight matrix, the unit of work of the kernels that walk
// it a tile at a time (the fused layer op and SnnSparseBinaryMatmulGrad).
#ifndef SNN_OPS_COMMON_TILING_H_
#define SNN_OPS_COMMON_TILING_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/scratch.h"

namespace tensorflow {
namespace snn {

// Column tiling of one matrix: `ntiles` tiles with boundaries on multiples of
// `align` (the last one ends at n), widths differing by at most `align`.
struct Tiling {
  int64_t n = 0, align = 1, units = 0, ntiles = 0;
  int64_t pad = 0;  // widest tile rounded up to `align`: packed row stride
  int64_t begin(int64_t k) const { return std::min(n, k * units / ntiles * align); }
  int64_t end(int64_t k) const { return begin(k + 1); }
};

// Tiles of at most `budget` bytes given `bytes_per_col`, at least
// `min_tiles`, and a multiple of `multiple_of` tiles where the width allows.
inline Tiling MakeTiling(int64_t n, int64_t bytes_per_col, int64_t budget, int64_t align,
                         int64_t min_tiles, int64_t multiple_of) {
  Tiling t;
  t.n = n;
  t.align = align;
  t.units = CeilDiv(n, align);
  const int64_t max_units =
      std::max<int64_t>(1, budget / std::max<int64_t>(1, bytes_per_col) / align);
  int64_t nt = std::max(CeilDiv(t.units, max_units), min_tiles);
  nt = RoundUp(nt, std::max<int64_t>(1, multiple_of));
  t.ntiles = std::max<int64_t>(1, std::min(nt, t.units));
  t.pad = CeilDiv(t.units, t.ntiles) * align;
  return t;
}

// Copies columns [c0, c0 + w) of the first n_in rows of wt (row stride
// n_out) into rows of stride wp, zero-padded, so the inner loops read whole
// aligned vectors from a few contiguous pages.
inline void PackTile(const float* wt, int64_t n_in, int64_t n_out, int64_t c0, int64_t w,
                     int64_t wp, float* dst) {
  for (int64_t j = 0; j < n_in; ++j) {
    float* d = dst + j * wp;
    std::memcpy(d, wt + j * n_out + c0, w * sizeof(float));
    std::fill(d + w, d + wp, 0.f);
  }
}

}  // namespace snn
}  // namespace tensorflow

#endif  // SNN_OPS_COMMON_TILING_H_
