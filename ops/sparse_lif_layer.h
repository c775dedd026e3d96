// The fused multi-layer LIF network (SnnSparseLifLayer) and its BPTT weight
// gradient (SnnSparseLifLayerGrad): what the kernels
// (sparse_lif_layer_kernels.cc) hand to the forward and backward passes
// (sparse_lif_layer_forward.cc, sparse_lif_layer_backward.cc) once the inputs
// are checked and the outputs allocated.
//
// Why the passes look the way they do (speed is the reason this op exists):
// * The membrane of neuron i depends only on column i of the weights; only
//   the capacity-limited selection couples the neurons of a layer. So both
//   passes walk the transposed weights in column tiles and run the time
//   recursion of many samples against one tile while it sits in L2, instead
//   of gathering whole rows from L3 at every step.
// * Forward: samples are independent, so threads take blocks of samples and
//   run all layers for them (layer l+1 needs only layer l's spikes of the same
//   samples). Tiles are visited in ascending column order, so the first K
//   spikes and carriers are collected on the fly and no dense membrane buffer
//   is needed for the selection.
// * Backward: the weight gradient is a reduction over the batch, so threads
//   take column tiles instead: a tile owns its slice of dWt for all samples
//   and no per-thread dWt copies or final reduction are needed. The eps
//   recursion is elementwise and runs inside the tile; its gI rows for a
//   block of samples stay in L2 while the presynaptic events of the block,
//   bucketed by presynaptic neuron, are applied: each Wt/dWt row is then read
//   and updated once per block rather than once per spike, in ascending row
//   order. Layers go from last to first because ds of layer l needs layer
//   l+1's gI; the ds dot products are split over tiles, so tile groups write
//   partial sums that are added in a fixed order (results do not depend on
//   thread scheduling).
#ifndef SNN_OPS_SPARSE_LIF_LAYER_H_
#define SNN_OPS_SPARSE_LIF_LAYER_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/scratch.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tensorflow {
namespace snn {

// Column tiling of one layer: `ntiles` tiles with boundaries on multiples of
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

// Copies columns [c0, c0 + w) of every row of wt into rows of stride wp,
// zero-padded, so the inner loops read whole aligned vectors.
inline void PackTile(const float* wt, int64_t n_in, int64_t n_out, int64_t c0, int64_t w,
                     int64_t wp, float* dst) {
  for (int64_t j = 0; j < n_in; ++j) {
    float* d = dst + j * wp;
    std::memcpy(d, wt + j * n_out + c0, w * sizeof(float));
    std::fill(d + w, d + wp, 0.f);
  }
}

// The spike input of the network: in_ids [B, T, K0], in_count [B, T].
struct LifInput {
  const int32_t* ids;
  const int32_t* count;
  int64_t B, T, K0;
};

// One layer of the forward pass: checked inputs and allocated outputs.
struct FwdLayer {
  const float* wt;  // [n_in, n_out]
  const float* alpha;
  const float* theta;
  const float* theta2;
  int64_t n_in, n_out, K;
  int32_t* ids;      // outputs [B, T, K]
  int32_t* count;    // [B, T]
  int32_t* dropped;  // [B, T]
  float* sur;        // [B, T, K]
};

// Runs all layers over all steps for B, T > 0; logits [B, n_L] is written
// whole.
absl::Status LifForward(OpKernelContext* ctx, const LifInput& in,
                        const std::vector<FwdLayer>& layers, float input_scale, float beta,
                        float* logits);

// One layer of the backward pass: the forward's records of it and the
// gradient output.
struct BwdLayer {
  const float* wt;
  const float* alpha;
  int64_t n_in, n_out, K;
  const int32_t* ids;           // [B, T, K]
  const int32_t* count;         // [B, T]
  const float* sur;             // [B, T, K]
  const float* grad_values = nullptr;  // [B, T, K] d loss / d slot value, or none
  std::vector<int32_t> filled;  // [B, T] non-padding slots (set by CheckSlots)
  float* dw;                    // output [n_in, n_out]
};

// Writes every layer's dw for B, T > 0, given d loss / d logits [B, n_L]
// and, for layers with grad_values, the gradient of each filled slot's value
// (added to what the slot gets from the logits or the next layer).
absl::Status LifBackward(OpKernelContext* ctx, const LifInput& in,
                         const std::vector<BwdLayer>& layers, float input_scale,
                         const float* grad_logits);

}  // namespace snn
}  // namespace tensorflow

#endif  // SNN_OPS_SPARSE_LIF_LAYER_H_
