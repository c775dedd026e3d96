// Registration and shape functions of SnnSparseLifLayer (the fused
// multi-layer LIF network over all time steps), SnnSparseLifLayerGrad
// (its BPTT weight gradient) and SnnSparseLifLayerGradWithValues (the same
// with incoming gradients of the slot values, for activity regularisation).
// The kernels are in sparse_lif_layer_kernels.cc; the flat order of the list
// arguments declared here is spelled out once, for kernels and shape
// functions alike, in common/fused_layout.h.

#include <vector>

#include "common/fused_layout.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/errors.h"

namespace tensorflow {
namespace {

using ::snn::FusedLayout;
using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

// What both shape functions know about the network: the attributes and the
// batch, step and layer-size dimensions, as far as known.
struct NetworkDims {
  int N = 0;
  std::vector<int32_t> caps;
  std::vector<DimensionHandle> n_out;
  DimensionHandle B, T;
  FusedLayout io() const { return FusedLayout{N}; }
};

// Checks in_ids / in_count and the chain of weight shapes of the forward op
// (grad = false) or of the gradient op (grad = true).
absl::Status NetworkShapes(InferenceContext* c, bool grad, NetworkDims* d) {
  TF_RETURN_IF_ERROR(c->GetAttr("N", &d->N));
  TF_RETURN_IF_ERROR(c->GetAttr("capacities", &d->caps));
  const int N = d->N;
  const FusedLayout io = d->io();
  if (static_cast<int>(d->caps.size()) != N) {
    return errors::InvalidArgument("capacities has ", d->caps.size(), " entries but N = ", N);
  }
  ShapeHandle in_ids, in_count;
  TF_RETURN_IF_ERROR(
      c->WithRank(c->input(grad ? FusedLayout::kGradInIds : FusedLayout::kInIds), 3, &in_ids));
  TF_RETURN_IF_ERROR(c->WithRank(
      c->input(grad ? FusedLayout::kGradInCount : FusedLayout::kInCount), 2, &in_count));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(in_ids, 0), c->Dim(in_count, 0), &d->B));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(in_ids, 1), c->Dim(in_count, 1), &d->T));
  d->n_out.clear();
  for (int l = 0; l < N; ++l) {
    ShapeHandle w;
    TF_RETURN_IF_ERROR(
        c->WithRank(c->input(grad ? io.grad_weights_input(l) : io.weights(l)), 2, &w));
    if (l > 0) {
      DimensionHandle unused;
      absl::Status s = c->Merge(c->Dim(w, 0), d->n_out.back(), &unused);
      if (!s.ok()) {
        return errors::InvalidArgument("weights[", l, "] rows do not match weights[", l - 1,
                                       "] columns: ", s.message());
      }
    }
    d->n_out.push_back(c->Dim(w, 1));
    const int32_t cap = d->caps[l];
    if (cap < 1) {
      return errors::InvalidArgument("capacities[", l, "] = ", cap, " must be >= 1");
    }
    if (c->ValueKnown(d->n_out.back()) && cap > c->Value(d->n_out.back())) {
      return errors::InvalidArgument("capacities[", l, "] = ", cap, " exceeds layer size ",
                                     c->Value(d->n_out.back()));
    }
  }
  return absl::OkStatus();
}

// x must be a vector over the neurons of a layer of size n.
absl::Status NeuronVector(InferenceContext* c, int input, DimensionHandle n) {
  ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(input), 1, &x));
  DimensionHandle unused;
  return c->Merge(c->Dim(x, 0), n, &unused);
}

absl::Status ForwardShape(InferenceContext* c) {
  NetworkDims d;
  TF_RETURN_IF_ERROR(NetworkShapes(c, false, &d));
  const FusedLayout io = d.io();
  for (auto p : {FusedLayout::kAlpha, FusedLayout::kThreshold, FusedLayout::kThreshold2}) {
    for (int l = 0; l < d.N; ++l) TF_RETURN_IF_ERROR(NeuronVector(c, io.param(p, l), d.n_out[l]));
  }
  c->set_output(FusedLayout::kLogits, c->MakeShape({d.B, d.n_out[d.N - 1]}));
  for (int l = 0; l < d.N; ++l) {
    c->set_output(io.record(FusedLayout::kIds, l), c->MakeShape({d.B, d.T, d.caps[l]}));
    c->set_output(io.record(FusedLayout::kCount, l), c->MakeShape({d.B, d.T}));
    c->set_output(io.record(FusedLayout::kDropped, l), c->MakeShape({d.B, d.T}));
    c->set_output(io.record(FusedLayout::kSurrogate, l), c->MakeShape({d.B, d.T, d.caps[l]}));
  }
  return absl::OkStatus();
}

absl::Status GradShape(InferenceContext* c) {
  NetworkDims d;
  TF_RETURN_IF_ERROR(NetworkShapes(c, true, &d));
  const FusedLayout io = d.io();
  ShapeHandle g;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(FusedLayout::kGradLogits), 2, &g));
  DimensionHandle unused;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(g, 0), d.B, &unused));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(g, 1), d.n_out[d.N - 1], &unused));
  for (int l = 0; l < d.N; ++l) {
    TF_RETURN_IF_ERROR(NeuronVector(c, io.grad_alpha_input(l), d.n_out[l]));
    ShapeHandle s3, s2;
    TF_RETURN_IF_ERROR(c->Merge(c->input(io.grad_record_input(FusedLayout::kIds, l)),
                                c->MakeShape({d.B, d.T, d.caps[l]}), &s3));
    TF_RETURN_IF_ERROR(c->Merge(c->input(io.grad_record_input(FusedLayout::kCount, l)),
                                c->MakeShape({d.B, d.T}), &s2));
    TF_RETURN_IF_ERROR(c->Merge(c->input(io.grad_record_input(FusedLayout::kSurrogate, l)),
                                c->MakeShape({d.B, d.T, d.caps[l]}), &s3));
    if (c->num_inputs() == io.num_grad_inputs(true)) {
      TF_RETURN_IF_ERROR(c->Merge(c->input(io.grad_values_input(l)),
                                  c->MakeShape({d.B, d.T, d.caps[l]}), &s3));
    }
    c->set_output(io.grad_weights_output(l), c->input(io.grad_weights_input(l)));
  }
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("SnnSparseLifLayer")
    .Input("in_ids: int32")
    .Input("in_count: int32")
    .Input("weights: N * float")
    .Input("alpha: N * float")
    .Input("threshold: N * float")
    .Input("threshold2: N * float")
    .Output("logits: float")
    .Output("ids: N * int32")
    .Output("count: N * int32")
    .Output("dropped: N * int32")
    .Output("surrogate: N * float")
    .Attr("N: int >= 1")
    .Attr("capacities: list(int)")
    .Attr("input_scale: float = 10.0")
    .Attr("beta: float = 10.0")
    .SetShapeFn(ForwardShape)
    .Doc(R"doc(
Multi-layer LIF network with capacity-limited sparse spike transmission, run
over all time steps. Weights are stored transposed ([n_in, n_out]). Returns the
spike-count logits of the last layer and, per layer, the selected slot ids
(transmitted spikes first, then gradient carriers, then -1), the number of
transmitted spikes, the number of dropped spikes and the surrogate derivative
at each slot.
)doc");

REGISTER_OP("SnnSparseLifLayerGrad")
    .Input("grad_logits: float")
    .Input("in_ids: int32")
    .Input("in_count: int32")
    .Input("weights: N * float")
    .Input("alpha: N * float")
    .Input("ids: N * int32")
    .Input("count: N * int32")
    .Input("surrogate: N * float")
    .Output("grad_weights: N * float")
    .Attr("N: int >= 1")
    .Attr("capacities: list(int)")
    .Attr("input_scale: float = 10.0")
    .SetShapeFn(GradShape)
    .Doc(R"doc(
BPTT weight gradients of SnnSparseLifLayer given d loss / d logits and the
forward op's ids, count and surrogate outputs.
)doc");

// The same with an extra incoming gradient per slot (activity regularisation:
// spike counts are sums of slot values, as in SnnSelectSpikes). A separate op
// so that the common case, a loss on the logits only, passes nothing extra.
REGISTER_OP("SnnSparseLifLayerGradWithValues")
    .Input("grad_logits: float")
    .Input("in_ids: int32")
    .Input("in_count: int32")
    .Input("weights: N * float")
    .Input("alpha: N * float")
    .Input("ids: N * int32")
    .Input("count: N * int32")
    .Input("surrogate: N * float")
    .Input("grad_values: N * float")
    .Output("grad_weights: N * float")
    .Attr("N: int >= 1")
    .Attr("capacities: list(int)")
    .Attr("input_scale: float = 10.0")
    .SetShapeFn(GradShape)
    .Doc(R"doc(
SnnSparseLifLayerGrad plus, per layer, grad_values [B, T, K]: d loss / d value
of each slot, where a slot's value is 1 for a transmitted spike and 0 for a
gradient carrier (the SparseSpikes convention). It is added to the slot's
gradient before the surrogate, so it reaches the membrane of every filled slot
(spikes and carriers); padding slots ignore it.
)doc");

}  // namespace tensorflow
