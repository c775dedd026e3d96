// Registration and shape functions of SnnSparseBinaryMatmul,
// y = (sparse spike vector) x (transposed weights), and of its gradient op
// SnnSparseBinaryMatmulGrad. The kernels are in
// sparse_binary_matmul_kernels.cc.

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {
namespace {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

// Rank/shape agreement shared by the forward and gradient shape functions.
// On success *batch is the merged batch dimension and *slots the merged
// [B, K] shape of ids/values.
absl::Status SpikeInputShapes(InferenceContext* c, ShapeHandle* weights,
                              ShapeHandle* slots, DimensionHandle* batch) {
  ShapeHandle ids, count, values;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, weights));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &ids));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &count));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 2, &values));
  TF_RETURN_IF_ERROR(c->Merge(ids, values, slots));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(*slots, 0), c->Dim(count, 0), batch));
  return absl::OkStatus();
}

REGISTER_OP("SnnSparseBinaryMatmul")
    .Input("weights: float")
    .Input("ids: int32")
    .Input("count: int32")
    .Input("values: float")
    .Output("y: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle weights, slots;
      DimensionHandle batch;
      TF_RETURN_IF_ERROR(SpikeInputShapes(c, &weights, &slots, &batch));
      c->set_output(0, c->Matrix(batch, c->Dim(weights, 1)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
y[b, :] = sum_{k < count[b]} values[b, k] * weights[ids[b, k], :].

weights: [n_in, n_out], row j holds the outgoing weights of neuron j.
ids: [B, K] spiking neuron ids in the first count[b] slots, then gradient
  carriers (ids >= 0, ignored here) and padding (-1).
count: [B] number of spikes per batch row, 0 <= count <= K.
values: [B, K] spike values (1.0 for real spikes); carried so that autodiff
  can deliver d(loss)/d(slot) to the op that selected the spikes.
)doc");

REGISTER_OP("SnnSparseBinaryMatmulGrad")
    .Input("weights: float")
    .Input("ids: int32")
    .Input("count: int32")
    .Input("values: float")
    .Input("grad_y: float")
    .Output("grad_weights: float")
    .Output("grad_values: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle weights, slots, grad_y;
      DimensionHandle batch;
      TF_RETURN_IF_ERROR(SpikeInputShapes(c, &weights, &slots, &batch));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 2, &grad_y));
      TF_RETURN_IF_ERROR(
          c->Merge(grad_y, c->Matrix(batch, c->Dim(weights, 1)), &grad_y));
      DimensionHandle n_out;
      TF_RETURN_IF_ERROR(
          c->Merge(c->Dim(weights, 1), c->Dim(grad_y, 1), &n_out));
      c->set_output(0, c->Matrix(c->Dim(weights, 0), n_out));
      c->set_output(1, c->Matrix(batch, c->Dim(slots, 1)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradient of SnnSparseBinaryMatmul.

grad_weights[ids[b, k], :] += values[b, k] * grad_y[b, :] for k < count[b]
  (all other rows are zero).
grad_values[b, k] = dot(weights[ids[b, k], :], grad_y[b, :]) for every slot
  whose id >= 0, including carriers beyond count[b]; 0 for padding.
)doc");

}  // namespace
}  // namespace tensorflow
