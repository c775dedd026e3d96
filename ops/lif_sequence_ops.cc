// Registration and shape functions of SnnLifSequence, the LIF dynamics of one
// layer over all T time steps (reset, integrate, fire and the two-threshold
// selection into the sparse spike format), and of its gradient op
// SnnLifSequenceGrad. The kernels are in lif_sequence_kernels.cc.
//
// Per neuron, from u = 0, for t = 0..T-1:
//   u <- alpha * (u - u * H(u - threshold)) + (1 - alpha) * input_scale * I_t
// then each (t, b) row of membranes is selected like SnnSelectSpikes does.
// The reset carries no gradient, so d u_t / d u_{t-1} = alpha.

#include <cstdint>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/errors.h"

namespace tensorflow {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

REGISTER_OP("SnnLifSequence")
    .Input("current: float")
    .Input("alpha: float")
    .Input("threshold: float")
    .Input("threshold2: float")
    .Output("ids: int32")
    .Output("count: int32")
    .Output("dropped: int32")
    .Output("values: float")
    .Output("surrogate: float")
    .Attr("capacity: int >= 1")
    .Attr("input_scale: float = 10.0")
    .Attr("beta: float = 10.0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle current, vec;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &current));
      DimensionHandle n = c->Dim(current, 2);
      for (int i = 1; i <= 3; ++i) {
        TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 1, &vec));
        TF_RETURN_IF_ERROR(c->Merge(n, c->Dim(vec, 0), &n));
      }
      int64_t capacity;
      TF_RETURN_IF_ERROR(c->GetAttr("capacity", &capacity));
      if (c->ValueKnown(n) && capacity > c->Value(n)) {
        return errors::InvalidArgument("capacity K=", capacity,
                                       " exceeds the number of neurons n=",
                                       c->Value(n));
      }
      ShapeHandle slots = c->MakeShape({c->Dim(current, 0), c->Dim(current, 1), capacity});
      ShapeHandle rows = c->MakeShape({c->Dim(current, 0), c->Dim(current, 1)});
      c->set_output(0, slots);
      c->set_output(1, rows);
      c->set_output(2, rows);
      c->set_output(3, slots);
      c->set_output(4, slots);
      return absl::OkStatus();
    })
    .Doc(R"doc(
LIF dynamics of one layer over all time steps, with spike selection.

current: [T, B, n] input current, time-major. alpha, threshold, threshold2:
[n] (threshold2 may be -inf). From u = 0, at every step the neurons with
u >= threshold are reset to 0, then u <- alpha * u + (1 - alpha) *
input_scale * current[t]; then, per (t, b), up to K = capacity spiking
neurons (u >= threshold) are selected in ascending index, free slots are
filled with carriers (threshold2 < u < threshold, ascending) and the rest
padded with id -1, as SnnSelectSpikes does.

ids: [T, B, K]. count: [T, B] spikes kept. dropped: [T, B] spikes that did
not fit. values: [T, B, K], 1.0 for k < count, else 0.0. surrogate:
[T, B, K], the SuperSpike derivative 1 / (beta * |u - threshold| + 1)^2 of
each filled slot (0 for padding), kept for the gradient.
)doc");

REGISTER_OP("SnnLifSequenceGrad")
    .Input("alpha: float")
    .Input("ids: int32")
    .Input("surrogate: float")
    .Input("grad_values: float")
    .Output("grad_current: float")
    .Attr("input_scale: float = 10.0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle alpha, ids, surrogate, grad_values;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &alpha));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &ids));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 3, &surrogate));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 3, &grad_values));
      TF_RETURN_IF_ERROR(c->Merge(ids, surrogate, &ids));
      TF_RETURN_IF_ERROR(c->Merge(ids, grad_values, &ids));
      c->set_output(0, c->MakeShape({c->Dim(ids, 0), c->Dim(ids, 1), c->Dim(alpha, 0)}));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradient of SnnLifSequence with respect to its current:
d loss / d u_t[b, ids[t, b, k]] = grad_values[t, b, k] * surrogate[t, b, k]
for every filled slot; delta_t = d loss / d u_t + alpha * delta_{t+1} from the
last step down; grad_current[t] = (1 - alpha) * input_scale * delta_t.
)doc");

}  // namespace tensorflow
