// Registration and shape functions of SnnSelectSpikes, which turns a dense
// membrane potential into the fixed-capacity sparse spike format
// (ids / count / values), and of its surrogate-gradient op
// SnnSelectSpikesGrad. The kernels are in select_spikes_kernels.cc.
//
// Slots beyond the real spikes are handed to "gradient carriers", neurons
// close enough to threshold (u > threshold2) that the surrogate derivative is
// worth propagating even though they did not fire.

#include <cstdint>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/errors.h"

namespace tensorflow {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

REGISTER_OP("SnnSelectSpikes")
    .Input("u: float")
    .Input("threshold: float")
    .Input("threshold2: float")
    .Output("ids: int32")
    .Output("count: int32")
    .Output("dropped: int32")
    .Output("values: float")
    .Attr("capacity: int >= 1")
    // Not used by the forward computation; it lives here so the registered
    // Python gradient can read it from the op and pass it to the grad op.
    .Attr("beta: float = 10.0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle u, threshold, threshold2;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &u));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &threshold));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &threshold2));
      DimensionHandle n;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(u, 1), c->Dim(threshold, 0), &n));
      TF_RETURN_IF_ERROR(c->Merge(n, c->Dim(threshold2, 0), &n));
      int64_t capacity;
      TF_RETURN_IF_ERROR(c->GetAttr("capacity", &capacity));
      if (c->ValueKnown(n) && capacity > c->Value(n)) {
        return errors::InvalidArgument("capacity K=", capacity,
                                       " exceeds the number of neurons n=",
                                       c->Value(n));
      }
      DimensionHandle batch = c->Dim(u, 0);
      c->set_output(0, c->Matrix(batch, capacity));
      c->set_output(1, c->Vector(batch));
      c->set_output(2, c->Vector(batch));
      c->set_output(3, c->Matrix(batch, capacity));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Selects up to K = capacity spiking neurons (u >= threshold) per batch row in
ascending index order, then fills free slots with carriers
(threshold2 < u < threshold, ascending), then pads with id -1.

ids: [B, K]. count: [B] spikes kept. dropped: [B] spikes that did not fit.
values: [B, K], 1.0 for k < count, else 0.0.
)doc");

REGISTER_OP("SnnSelectSpikesGrad")
    .Input("u: float")
    .Input("threshold: float")
    .Input("ids: int32")
    .Input("grad_values: float")
    .Output("grad_u: float")
    .Attr("beta: float = 10.0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle u, threshold, ids, grad_values;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &u));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &threshold));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &ids));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 2, &grad_values));
      TF_RETURN_IF_ERROR(c->Merge(ids, grad_values, &ids));
      DimensionHandle n, batch;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(u, 1), c->Dim(threshold, 0), &n));
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(u, 0), c->Dim(ids, 0), &batch));
      c->set_output(0, c->Matrix(batch, n));
      return absl::OkStatus();
    })
    .Doc(R"doc(
SuperSpike surrogate gradient of SnnSelectSpikes:
grad_u[b, ids[b, k]] = grad_values[b, k] / (beta * |u - threshold| + 1)^2
for every slot with id >= 0 (spikes and carriers); zero elsewhere.
)doc");

}  // namespace tensorflow
