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
#include "common/tiling.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tensorflow {
namespace snn {

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
