// CPU kernels of SnnSparseLifLayer and SnnSparseLifLayerGrad (also run as
// SnnSparseLifLayerGradWithValues; registered in sparse_lif_layer_ops.cc):
// input checks and output allocation; the passes themselves are in
// sparse_lif_layer_forward.cc and sparse_lif_layer_backward.cc.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/fused_layout.h"
#include "common/profile.h"
#include "common/threading.h"
#include "common/validate.h"
#include "sparse_lif_layer.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/errors.h"

namespace tensorflow {
namespace snn {
namespace {

using ::snn::FusedLayout;

// The N tensors of one list argument, by flat input index.
template <typename Index>
std::vector<const Tensor*> LayerInputs(OpKernelContext* ctx, int N, const Index& index) {
  std::vector<const Tensor*> out(N);
  for (int l = 0; l < N; ++l) out[l] = &ctx->input(index(l));
  return out;
}

// A per-neuron list argument (alpha, threshold, ...) and its name.
struct NeuronParams {
  const char* name;
  std::vector<const Tensor*> tensors;
};

// Ids must be in range before any kernel touches memory with them.
absl::Status CheckInputIds(const Tensor& in_ids, const Tensor& in_count, int64_t n0) {
  const int64_t B = in_ids.dim_size(0), T = in_ids.dim_size(1), K0 = in_ids.dim_size(2);
  auto ids = in_ids.flat<int32_t>();
  auto cnt = in_count.flat<int32_t>();
  for (int64_t bt = 0; bt < B * T; ++bt) {
    const int32_t c = cnt(bt);
    if (c < 0 || c > K0) {
      return errors::InvalidArgument("in_count[", bt / T, ",", bt % T, "] = ", c,
                                     " is outside [0, ", K0, "] (K0 = in_ids.shape[2])");
    }
    for (int64_t k = 0; k < c; ++k) {
      const int32_t j = ids(bt * K0 + k);
      if (j < 0 || j >= n0) {
        return errors::InvalidArgument("in_ids[", bt / T, ",", bt % T, ",", k, "] = ", j,
                                       " is outside [0, ", n0, ") (n_0 = weights[0].shape[0])");
      }
    }
  }
  return absl::OkStatus();
}

// Shared input checks of both ops: in_ids/in_count, the weight chain and
// per-neuron vectors. Fills the layer sizes (sizes[0] = n_0).
absl::Status CheckNetwork(const Tensor& in_ids, const Tensor& in_count,
                          const std::vector<const Tensor*>& weights,
                          const std::vector<NeuronParams>& params,
                          const std::vector<int32_t>& capacities, std::vector<int64_t>* sizes) {
  const int N = weights.size();
  if (static_cast<int>(capacities.size()) != N) {
    return errors::InvalidArgument("capacities has ", capacities.size(),
                                   " entries but there are ", N, " layers");
  }
  TF_RETURN_IF_ERROR(CheckRank(in_ids, 3, "in_ids", "[B, T, K0]"));
  if (in_count.dims() != 2 || in_count.dim_size(0) != in_ids.dim_size(0) ||
      in_count.dim_size(1) != in_ids.dim_size(1)) {
    return errors::InvalidArgument("in_count must be [B, T] = [", in_ids.dim_size(0), ", ",
                                   in_ids.dim_size(1), "], got shape ",
                                   in_count.shape().DebugString());
  }
  sizes->assign(N + 1, 0);
  for (int l = 0; l < N; ++l) {
    const Tensor& w = *weights[l];
    const std::string wname = absl::StrCat("weights[", l, "]");
    TF_RETURN_IF_ERROR(CheckRank(w, 2, wname, "[n_in, n_out]"));
    if (l == 0) {
      (*sizes)[0] = w.dim_size(0);
    } else if (w.dim_size(0) != (*sizes)[l]) {
      return errors::InvalidArgument(wname, " has ", w.dim_size(0), " rows but layer ", l - 1,
                                     " has ", (*sizes)[l], " neurons (weights[", l - 1,
                                     "].shape[1])");
    }
    const int64_t n_out = w.dim_size(1);
    (*sizes)[l + 1] = n_out;
    if (n_out < 1) {
      return errors::InvalidArgument(wname, " has no output neurons");
    }
    if (w.NumElements() >= (int64_t{1} << 31)) {
      return errors::InvalidArgument(wname, " is too large");
    }
    for (const NeuronParams& p : params) {
      TF_RETURN_IF_ERROR(CheckVectorLength(*p.tensors[l], n_out, absl::StrCat(p.name, "[", l, "]"),
                                           absl::StrCat(n_out), wname + ".shape[1]"));
    }
    if (capacities[l] < 1 || capacities[l] > n_out) {
      return errors::InvalidArgument("capacities[", l, "] = ", capacities[l], " must be in [1, ",
                                     n_out, "] (layer size)");
    }
  }
  return CheckInputIds(in_ids, in_count, (*sizes)[0]);
}

// The attributes both kernels read.
absl::Status GetNetworkAttrs(OpKernelConstruction* ctx, int* N, std::vector<int32_t>* caps,
                             float* input_scale) {
  TF_RETURN_IF_ERROR(ctx->GetAttr("N", N));
  TF_RETURN_IF_ERROR(ctx->GetAttr("capacities", caps));
  TF_RETURN_IF_ERROR(ctx->GetAttr("input_scale", input_scale));
  if (static_cast<int>(caps->size()) != *N) {
    return errors::InvalidArgument("capacities has ", caps->size(), " entries but N = ", *N);
  }
  for (size_t l = 0; l < caps->size(); ++l) {
    if ((*caps)[l] < 1) {
      return errors::InvalidArgument("capacities[", l, "] = ", (*caps)[l], " must be >= 1");
    }
  }
  return absl::OkStatus();
}


class SnnSparseLifLayerOp : public OpKernel {
 public:
  explicit SnnSparseLifLayerOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, GetNetworkAttrs(ctx, &N_, &caps_, &input_scale_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("beta", &beta_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int N = N_;
    const FusedLayout io{N};
    const Tensor& in_ids = ctx->input(FusedLayout::kInIds);
    const Tensor& in_count = ctx->input(FusedLayout::kInCount);
    auto param = [&](FusedLayout::Param p) {
      return LayerInputs(ctx, N, [&](int l) { return io.param(p, l); });
    };
    const std::vector<const Tensor*> weights = param(FusedLayout::kWeights);
    const std::vector<NeuronParams> params = {{"alpha", param(FusedLayout::kAlpha)},
                                              {"threshold", param(FusedLayout::kThreshold)},
                                              {"threshold2", param(FusedLayout::kThreshold2)}};
    std::vector<int64_t> sizes;
    OP_REQUIRES_OK(ctx, CheckNetwork(in_ids, in_count, weights, params, caps_, &sizes));
    const LifInput in{in_ids.flat<int32_t>().data(), in_count.flat<int32_t>().data(),
                      in_ids.dim_size(0), in_ids.dim_size(1), in_ids.dim_size(2)};
    const int64_t B = in.B, T = in.T;

    Tensor* logits_t;
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_output(FusedLayout::kLogits, TensorShape({B, sizes[N]}), &logits_t));
    std::vector<FwdLayer> layers(N);
    for (int l = 0; l < N; ++l) {
      Tensor* rec[FusedLayout::kRecords];
      for (auto r : {FusedLayout::kIds, FusedLayout::kCount, FusedLayout::kDropped,
                     FusedLayout::kSurrogate}) {
        const bool per_slot = r == FusedLayout::kIds || r == FusedLayout::kSurrogate;
        const TensorShape shape = per_slot ? TensorShape({B, T, caps_[l]}) : TensorShape({B, T});
        OP_REQUIRES_OK(ctx, ctx->allocate_output(io.record(r, l), shape, &rec[r]));
      }
      FwdLayer& L = layers[l];
      L.wt = weights[l]->flat<float>().data();
      L.alpha = params[0].tensors[l]->flat<float>().data();
      L.theta = params[1].tensors[l]->flat<float>().data();
      L.theta2 = params[2].tensors[l]->flat<float>().data();
      L.n_in = sizes[l];
      L.n_out = sizes[l + 1];
      L.K = caps_[l];
      L.ids = rec[FusedLayout::kIds]->flat<int32_t>().data();
      L.count = rec[FusedLayout::kCount]->flat<int32_t>().data();
      L.dropped = rec[FusedLayout::kDropped]->flat<int32_t>().data();
      L.sur = rec[FusedLayout::kSurrogate]->flat<float>().data();
    }
    float* logits = logits_t->flat<float>().data();
    if (B == 0) return;
    if (T == 0) {
      std::fill(logits, logits + B * sizes[N], 0.f);
      return;
    }
    OP_REQUIRES_OK(ctx, LifForward(ctx, in, layers, input_scale_, beta_, logits));
  }

 private:
  int N_;
  std::vector<int32_t> caps_;
  float input_scale_, beta_;
};

// Slots must be spikes, then carriers, then -1 padding, each run ascending
// (as the forward op emits them); anything else would make the kernel index
// out of bounds or miss slots. Also fills L.filled for sample b.
absl::Status CheckSlots(BwdLayer& L, int l, int64_t b, int64_t T) {
  const int64_t K = L.K;
  for (int64_t bt = b * T; bt < (b + 1) * T; ++bt) {
    const int32_t* sid = L.ids + bt * K;
    int64_t nf = 0;
    while (nf < K && sid[nf] >= 0) {
      if (sid[nf] >= L.n_out) {
        return errors::InvalidArgument("ids[", l, "][", b, ",", bt % T, ",", nf, "] = ", sid[nf],
                                       " is outside [0, ", L.n_out, ")");
      }
      ++nf;
    }
    for (int64_t k = nf; k < K; ++k) {
      if (sid[k] != -1) {
        return errors::InvalidArgument("ids[", l, "][", b, ",", bt % T, ",", k, "] = ", sid[k],
                                       ": slots after the first -1 must be -1");
      }
    }
    const int32_t cnt = L.count[bt];
    if (cnt < 0 || cnt > nf) {
      return errors::InvalidArgument("count[", l, "][", b, ",", bt % T, "] = ", cnt,
                                     " must be in [0, ", nf, "] (the filled slots)");
    }
    for (int64_t k = 1; k < nf; ++k) {
      if (k != cnt && sid[k] <= sid[k - 1]) {
        return errors::InvalidArgument(
            "ids[", l, "][", b, ",", bt % T, ",", k,
            "]: spikes and carriers must each be in ascending order, as the forward op emits them");
      }
    }
    L.filled[bt] = static_cast<int32_t>(nf);
  }
  return absl::OkStatus();
}

class SnnSparseLifLayerGradOp : public OpKernel {
 public:
  explicit SnnSparseLifLayerGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, GetNetworkAttrs(ctx, &N_, &caps_, &input_scale_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int N = N_;
    const FusedLayout io{N};
    const Tensor& grad_logits = ctx->input(FusedLayout::kGradLogits);
    const Tensor& in_ids = ctx->input(FusedLayout::kGradInIds);
    const Tensor& in_count = ctx->input(FusedLayout::kGradInCount);
    auto record = [&](FusedLayout::Record r) {
      return LayerInputs(ctx, N, [&](int l) { return io.grad_record_input(r, l); });
    };
    const std::vector<const Tensor*> weights =
        LayerInputs(ctx, N, [&](int l) { return io.grad_weights_input(l); });
    const std::vector<NeuronParams> params = {
        {"alpha", LayerInputs(ctx, N, [&](int l) { return io.grad_alpha_input(l); })}};
    const std::vector<const Tensor*> ids = record(FusedLayout::kIds);
    const std::vector<const Tensor*> count = record(FusedLayout::kCount);
    const std::vector<const Tensor*> sur = record(FusedLayout::kSurrogate);
    // SnnSparseLifLayerGradWithValues: d loss / d slot value of every layer.
    const bool with_values = ctx->num_inputs() == io.num_grad_inputs(true);
    const std::vector<const Tensor*> grad_values =
        with_values ? LayerInputs(ctx, N, [&](int l) { return io.grad_values_input(l); })
                    : std::vector<const Tensor*>(N, nullptr);
    std::vector<int64_t> sizes;
    OP_REQUIRES_OK(ctx, CheckNetwork(in_ids, in_count, weights, params, caps_, &sizes));
    const LifInput in{in_ids.flat<int32_t>().data(), in_count.flat<int32_t>().data(),
                      in_ids.dim_size(0), in_ids.dim_size(1), in_ids.dim_size(2)};
    const int64_t B = in.B, T = in.T, K0 = in.K0;
    OP_REQUIRES(ctx,
                grad_logits.dims() == 2 && grad_logits.dim_size(0) == B &&
                    grad_logits.dim_size(1) == sizes[N],
                errors::InvalidArgument("grad_logits must be [B, n_L] = [", B, ", ", sizes[N],
                                        "], got shape ", grad_logits.shape().DebugString()));

    // Events address ds and gI rows with 32-bit indices.
    const int64_t max_slots = std::max<int64_t>(K0, *std::max_element(caps_.begin(), caps_.end()));
    OP_REQUIRES(ctx, B * T * max_slots < (int64_t{1} << 30),
                errors::InvalidArgument("B * T * max(K0, capacities) = ", B * T * max_slots,
                                        " is too large (limit 2^30)"));

    std::vector<BwdLayer> layers(N);
    for (int l = 0; l < N; ++l) {
      const int64_t K = caps_[l];
      const TensorShape s3({B, T, K}), s2({B, T});
      OP_REQUIRES(ctx, ids[l]->shape() == s3 && sur[l]->shape() == s3 && count[l]->shape() == s2,
                  errors::InvalidArgument("layer ", l, ": ids and surrogate must be ",
                                          s3.DebugString(), " and count ", s2.DebugString(),
                                          ", got ", ids[l]->shape().DebugString(), ", ",
                                          sur[l]->shape().DebugString(), ", ",
                                          count[l]->shape().DebugString()));
      if (grad_values[l] != nullptr) {
        OP_REQUIRES(ctx, grad_values[l]->shape() == s3,
                    errors::InvalidArgument("grad_values[", l, "] must be ", s3.DebugString(),
                                            " like ids[", l, "], got ",
                                            grad_values[l]->shape().DebugString()));
      }
      BwdLayer& L = layers[l];
      L.wt = weights[l]->flat<float>().data();
      L.alpha = params[0].tensors[l]->flat<float>().data();
      L.grad_values = grad_values[l] != nullptr ? grad_values[l]->flat<float>().data() : nullptr;
      L.n_in = sizes[l];
      L.n_out = sizes[l + 1];
      L.K = K;
      L.ids = ids[l]->flat<int32_t>().data();
      L.count = count[l]->flat<int32_t>().data();
      L.sur = sur[l]->flat<float>().data();
      L.filled.resize(B * T);
      Tensor* dw;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(io.grad_weights_output(l), weights[l]->shape(), &dw));
      L.dw = dw->flat<float>().data();
    }
    if (B == 0 || T == 0) {
      for (int l = 0; l < N; ++l) {
        std::fill(layers[l].dw, layers[l].dw + sizes[l] * sizes[l + 1], 0.f);
      }
      return;
    }

    {
      // Samples are checked in parallel; the first bad one is reported.
      const CpuPool pool(ctx);
      const int64_t parts = std::min<int64_t>(B, 4 * pool.NumThreads());
      std::vector<absl::Status> status(B);
      pool.ForEachUnit(parts, [&](int64_t part, int) {
        for (int64_t b = part * B / parts; b < (part + 1) * B / parts; ++b) {
          for (int l = 0; l < N && status[b].ok(); ++l) {
            status[b] = CheckSlots(layers[l], l, b, T);
          }
        }
      });
      for (const absl::Status& s : status) OP_REQUIRES_OK(ctx, s);
    }
    OP_REQUIRES_OK(ctx, LifBackward(ctx, in, layers, input_scale_, grad_logits.flat<float>().data()));
  }

 private:
  int N_;
  std::vector<int32_t> caps_;
  float input_scale_;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("SnnSparseLifLayer").Device(DEVICE_CPU), SnnSparseLifLayerOp);
REGISTER_KERNEL_BUILDER(Name("SnnSparseLifLayerGrad").Device(DEVICE_CPU), SnnSparseLifLayerGradOp);
REGISTER_KERNEL_BUILDER(Name("SnnSparseLifLayerGradWithValues").Device(DEVICE_CPU),
                        SnnSparseLifLayerGradOp);

}  // namespace snn
}  // namespace tensorflow

// Copies the phase timers (ns, [layer][phase] as in common/profile.h) into
// out[0, n) and clears them; returns how many counters there are. Called
// through ctypes by scripts/profile_step.py.
extern "C" __attribute__((visibility("default"))) int snn_profile_take(int64_t* out, int n) {
  using namespace tensorflow::snn;
  std::atomic<int64_t>* c = ProfCounters();
  for (int i = 0; i < kProfCounters; ++i) {
    const int64_t v = c[i].exchange(0, std::memory_order_relaxed);
    if (i < n) out[i] = v;
  }
  return kProfCounters;
}
