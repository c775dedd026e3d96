// CPU kernels of SnnSelectSpikes and SnnSelectSpikesGrad (registered, with
// the meaning of their outputs, in select_spikes_ops.cc).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/select.h"
#include "common/threading.h"
#include "common/validate.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/errors.h"

namespace tensorflow {
namespace snn {
namespace {

// Input 0 is u [B, n], then `thresholds` vectors of length n (threshold,
// and threshold2 where the op has it); sets *n.
absl::Status CheckMembrane(OpKernelContext* ctx, int thresholds, int64_t* n) {
  const Tensor& u = ctx->input(0);
  TF_RETURN_IF_ERROR(CheckRank(u, 2, "u", "[B, n]"));
  *n = u.dim_size(1);
  const char* names[] = {"threshold", "threshold2"};
  for (int i = 0; i < thresholds; ++i) {
    TF_RETURN_IF_ERROR(CheckVectorLength(ctx->input(1 + i), *n, names[i],
                                         absl::StrCat("n = ", *n), "u is [B, n]"));
  }
  return absl::OkStatus();
}

class SelectSpikesOp : public OpKernel {
 public:
  explicit SelectSpikesOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("capacity", &capacity_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& u_tensor = ctx->input(0);
    int64_t n;
    OP_REQUIRES_OK(ctx, CheckMembrane(ctx, 2, &n));
    const int64_t batch = u_tensor.dim_size(0);
    OP_REQUIRES(ctx, capacity_ <= n,
                errors::InvalidArgument("capacity K=", capacity_,
                                        " exceeds the number of neurons n=",
                                        n));
    // Neuron ids are emitted as int32.
    OP_REQUIRES(ctx, n <= std::numeric_limits<int32>::max(),
                errors::InvalidArgument("n=", n, " does not fit in int32 ids"));

    Tensor *ids_t, *count_t, *dropped_t, *values_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({batch, capacity_}), &ids_t));
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_output(1, TensorShape({batch}), &count_t));
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_output(2, TensorShape({batch}), &dropped_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            3, TensorShape({batch, capacity_}), &values_t));
    if (batch == 0) return;

    struct {
      const float* u;
      const float* th;
      const float* th2;
      int32* ids;
      int32* count;
      int32* dropped;
      float* values;
      int64_t n;
      int64_t k;
    } io{u_tensor.flat<float>().data(),
         ctx->input(1).flat<float>().data(),
         ctx->input(2).flat<float>().data(),
         ids_t->flat<int32>().data(),
         count_t->flat<int32>().data(),
         dropped_t->flat<int32>().data(),
         values_t->flat<float>().data(),
         n,
         capacity_};

    auto work = [&io](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const RowSelection sel = SelectRow(io.u + b * io.n, io.th, io.th2, io.n, io.k,
                                           io.ids + b * io.k, io.values + b * io.k);
        io.count[b] = static_cast<int32>(sel.kept);
        io.dropped[b] = sel.dropped;
      }
    };
    // Per row: a mask word per 16 neurons plus the filled slots (SelectRow).
    CpuPool(ctx).Shard(batch, n / 2 + capacity_, work);
  }

 private:
  int64_t capacity_;
};

REGISTER_KERNEL_BUILDER(Name("SnnSelectSpikes").Device(DEVICE_CPU),
                        SelectSpikesOp);

class SelectSpikesGradOp : public OpKernel {
 public:
  explicit SelectSpikesGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("beta", &beta_));
    OP_REQUIRES(ctx, std::isfinite(beta_) && beta_ >= 0.f,
                errors::InvalidArgument(
                    "beta must be finite and >= 0, got ", beta_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& u_tensor = ctx->input(0);
    const Tensor& ids_tensor = ctx->input(2);
    const Tensor& gv_tensor = ctx->input(3);
    int64_t n;
    OP_REQUIRES_OK(ctx, CheckMembrane(ctx, 1, &n));
    const int64_t batch = u_tensor.dim_size(0);
    OP_REQUIRES(ctx, ids_tensor.dims() == 2 && ids_tensor.dim_size(0) == batch,
                errors::InvalidArgument(
                    "ids must be a matrix [B, K] with B = ", batch,
                    ", got shape ", ids_tensor.shape().DebugString()));
    OP_REQUIRES_OK(ctx,
                   CheckSameShape(gv_tensor, "grad_values", ids_tensor, "ids"));
    const int64_t cap = ids_tensor.dim_size(1);
    const int32* ids = ids_tensor.flat<int32>().data();
    for (int64_t s = 0; s < batch * cap; ++s) {
      OP_REQUIRES(ctx, ids[s] >= -1 && ids[s] < n,
                  errors::InvalidArgument("ids[", s / cap, ", ", s % cap,
                                          "] = ", ids[s],
                                          " must be in [-1, n) with n = ", n));
    }

    Tensor* grad_u_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, u_tensor.shape(), &grad_u_t));
    if (batch == 0 || n == 0) return;

    struct {
      const float* u;
      const float* th;
      const int32* ids;
      const float* gv;
      float* gu;
      int64_t n;
      int64_t k;
      float beta;
    } io{u_tensor.flat<float>().data(),
         ctx->input(1).flat<float>().data(),
         ids,
         gv_tensor.flat<float>().data(),
         grad_u_t->flat<float>().data(),
         n,
         cap,
         beta_};

    auto work = [&io](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const float* u = io.u + b * io.n;
        float* gu = io.gu + b * io.n;
        const int32* ids = io.ids + b * io.k;
        const float* gv = io.gv + b * io.k;
        std::memset(gu, 0, sizeof(float) * io.n);
        for (int64_t s = 0; s < io.k; ++s) {
          const int32 id = ids[s];
          if (id < 0) continue;
          const float d = io.beta * std::fabs(u[id] - io.th[id]) + 1.f;
          // += keeps this the exact adjoint of a gather even if a caller
          // passes duplicate ids (SnnSelectSpikes itself never does).
          gu[id] += gv[s] / (d * d);
        }
      }
    };
    // Per row: zeroing (vectorised) plus a few dependent loads per slot.
    CpuPool(ctx).Shard(batch, io.n / 16 + 10 * cap, work);
  }

 private:
  float beta_;
};

REGISTER_KERNEL_BUILDER(Name("SnnSelectSpikesGrad").Device(DEVICE_CPU),
                        SelectSpikesGradOp);

}  // namespace
}  // namespace snn
}  // namespace tensorflow
