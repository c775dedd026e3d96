// The two-threshold selection of one membrane row into K slots, shared by
// SnnSelectSpikes (select_spikes_kernels.cc) and SnnLifSequence
// (lif_sequence_kernels.cc), so the two ops select exactly alike.
#ifndef SNN_OPS_COMMON_SELECT_H_
#define SNN_OPS_COMMON_SELECT_H_

#include <algorithm>
#include <cstdint>

#include "common/lanes.h"
#include "common/simd.h"

namespace tensorflow {
namespace snn {

// What SelectRow put in the slots of one row.
struct RowSelection {
  int64_t kept;     // spikes, in slots [0, kept)
  int64_t filled;   // spikes and carriers, in slots [0, filled); padding after
  int32_t dropped;  // spikes that did not fit
};

// Spike and carrier lane masks of the kLanes neurons from i (m of them real).
inline void SelectMasks(const float* u, const float* th, const float* th2, int64_t i, int64_t m,
                        uint32_t* spikes, uint32_t* carriers) {
  Vf uv, thv, th2v;
  if (m == kLanes) {
    uv = Load(u + i), thv = Load(th + i), th2v = Load(th2 + i);
  } else {
    uv = LoadSome(u + i, m), thv = LoadSome(th + i, m), th2v = LoadSome(th2 + i, m);
  }
  const uint32_t real = LaneMask(m);
  // Ordered comparisons, false for NaN like the scalar u >= th etc.
  *spikes = MaskGe(uv, thv) & real;
  if (carriers) *carriers = MaskLt(th2v, uv) & MaskLt(uv, thv) & real;
}

// Fills ids[0, cap) and values[0, cap) of one row of n membranes u: first the
// spiking neurons (u >= th) in ascending index, up to cap, the excess counted
// as dropped; then the carriers (th2 < u < th) in ascending index into the
// remaining slots; then padding id -1. values is 1 for the kept spikes, 0 for
// every other slot.
//
// The comparisons run on kLanes neurons at a time and only the set bits of
// their masks are visited, so a row costs about n / kLanes mask words plus
// its filled slots, however sparse it is.
inline RowSelection SelectRow(const float* u, const float* th, const float* th2, int64_t n,
                              int64_t cap, int32_t* ids, float* values) {
  int64_t kept = 0;
  int32_t extra = 0;
  for (int64_t i = 0; i < n; i += kLanes) {
    uint32_t bits;
    SelectMasks(u, th, th2, i, std::min<int64_t>(kLanes, n - i), &bits, nullptr);
    for (; bits != 0 && kept < cap; bits &= bits - 1) {
      ids[kept++] = static_cast<int32_t>(i + __builtin_ctz(bits));
    }
    // Past the capacity only the overflow is counted.
    extra += __builtin_popcount(bits);
  }
  // Carriers: a second scan from the start, since they may lie before the
  // last spike. Skipped entirely when spikes filled every slot.
  int64_t slot = kept;
  for (int64_t i = 0; i < n && slot < cap; i += kLanes) {
    uint32_t spikes, bits;
    SelectMasks(u, th, th2, i, std::min<int64_t>(kLanes, n - i), &spikes, &bits);
    for (; bits != 0 && slot < cap; bits &= bits - 1) {
      ids[slot++] = static_cast<int32_t>(i + __builtin_ctz(bits));
    }
  }
  for (int64_t s = slot; s < cap; ++s) ids[s] = -1;

  for (int64_t s = 0; s < kept; ++s) values[s] = 1.f;
  for (int64_t s = kept; s < cap; ++s) values[s] = 0.f;
  return RowSelection{kept, slot, extra};
}

}  // namespace snn
}  // namespace tensorflow

#endif  // SNN_OPS_COMMON_SELECT_H_
