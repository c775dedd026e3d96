// CPU kernels of SnnLifSequence and SnnLifSequenceGrad (registered, with the
// meaning of their inputs and outputs, in lif_sequence_ops.cc).
//
// The membrane recursion is elementwise, so both kernels split the work into
// units of (sample b, block of neurons) and run the T steps of a unit in
// cache; only the selection couples the neurons of a (t, b) row.
// * Forward: when the samples alone keep every thread busy, a unit is a whole
//   sample: it selects each row right after integrating it, with the row
//   still in L1, and no [T, B, n] membrane buffer is written. Otherwise (few
//   samples) the units are neuron blocks that write the membranes of all
//   steps, and the rows are selected afterwards, in parallel over (t, b).
// * Backward: delta_t = d loss / d u_t + alpha * delta_{t+1} runs from the
//   last step down per unit, each unit adding the slots of its neurons.
// Every neuron's arithmetic is the same whatever the split, so the results
// do not depend on the thread count. The membrane update rounds each
// product on its own (NoContract), in the order of the model's TensorFlow
// ops (snn_runner/neuron/lif.py), so the forward is bit-identical to
// membrane_sequence followed by SnnSelectSpikes.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/lanes.h"
#include "common/scratch.h"
#include "common/select.h"
#include "common/simd.h"
#include "common/threading.h"
#include "common/validate.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/errors.h"

namespace tensorflow {
namespace snn {
// Named rather than anonymous: the per-step ops are compiled as one unity
// source, where anonymous namespaces of different files merge.
namespace lif_sequence {

// Estimated cycles of one neuron in one step (a few vector instructions per
// 16 neurons, plus the row traffic), and of one slot of the selection.
constexpr int64_t kStepCycles = 1;
constexpr int64_t kSlotCycles = 4;

// A scalar product kept apart from the following add, like NoContract.
inline void NoContractScalar(float& x) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(x));
#else
  asm("" : "+m"(x));
#endif
}

// One step of 16 neurons, operation by operation as lif.py computes it:
// u - u * H(u - theta) (H from the difference, as lif.heaviside does), then
// alpha * that + ((1 - alpha) * c) * I.
inline Vf LifStep(const Vf& u, const Vf& in, const Vf& al, const Vf& cf, const Vf& th) {
  const Vf h = (Vf)(((u - th) >= Splat(0.f)) & (Vi)Splat(1.f));
  Vf spent = u * h;
  NoContract(spent);
  const Vf rest = u - spent;
  Vf decayed = al * rest;
  Vf drive = cf * in;
  NoContract(decayed);
  NoContract(drive);
  return decayed + drive;
}

// u_out[i] = LifStep(u_in[i], ...) for i < w (u_out may be u_in); the
// pointers are already offset to the first neuron.
inline void Integrate(const float* u_in, const float* in, float* u_out, const float* al,
                      const float* cf, const float* th, int64_t w) {
  int64_t i = 0;
  for (; i + kLanes <= w; i += kLanes) {
    Store(u_out + i, LifStep(Load(u_in + i), Load(in + i), Load(al + i), Load(cf + i), Load(th + i)));
  }
  if (i < w) {
    const int64_t m = w - i;
    StoreSome(u_out + i,
              LifStep(LoadSome(u_in + i, m), LoadSome(in + i, m), LoadSome(al + i, m),
                      LoadSome(cf + i, m), LoadSome(th + i, m)),
              m);
  }
}

// Blocks of neurons per sample: 1 (whole rows) when the samples alone can
// keep every thread busy or the call is too small to be split at all.
inline int64_t BlocksPerSample(const CpuPool& pool, int64_t batch, int64_t n, int64_t cycles) {
  const int64_t threads = pool.NumThreads();
  if (threads <= 1 || cycles < kMinParallelCycles || batch >= 2 * threads) return 1;
  return std::max<int64_t>(1, std::min(CeilDiv(n, kLanes), CeilDiv(4 * threads, batch)));
}

// (1 - alpha) * c per neuron, rounded like the model's float32 ops.
inline void DriveFactors(const float* alpha, float input_scale, int64_t n, float* cf) {
  for (int64_t i = 0; i < n; ++i) cf[i] = (1.f - alpha[i]) * input_scale;
}

absl::Status CheckScale(float input_scale) {
  if (std::isfinite(input_scale)) return absl::OkStatus();
  return errors::InvalidArgument("input_scale must be finite, got ", input_scale);
}

class LifSequenceOp : public OpKernel {
 public:
  explicit LifSequenceOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("capacity", &capacity_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_scale", &input_scale_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("beta", &beta_));
    OP_REQUIRES_OK(ctx, CheckScale(input_scale_));
    OP_REQUIRES(ctx, std::isfinite(beta_) && beta_ >= 0.f,
                errors::InvalidArgument("beta must be finite and >= 0, got ", beta_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& current = ctx->input(0);
    OP_REQUIRES_OK(ctx, CheckRank(current, 3, "current", "[T, B, n]"));
    const int64_t T = current.dim_size(0), B = current.dim_size(1), n = current.dim_size(2);
    const char* names[] = {"alpha", "threshold", "threshold2"};
    for (int i = 0; i < 3; ++i) {
      OP_REQUIRES_OK(ctx, CheckVectorLength(ctx->input(1 + i), n, names[i], absl::StrCat("n = ", n),
                                            "current is [T, B, n]"));
    }
    OP_REQUIRES(ctx, capacity_ <= n,
                errors::InvalidArgument("capacity K=", capacity_,
                                        " exceeds the number of neurons n=", n));
    // Neuron ids are emitted as int32.
    OP_REQUIRES(ctx, n <= std::numeric_limits<int32>::max(),
                errors::InvalidArgument("n=", n, " does not fit in int32 ids"));
    const int64_t K = capacity_;

    Tensor *ids_t, *count_t, *dropped_t, *values_t, *sur_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({T, B, K}), &ids_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({T, B}), &count_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({T, B}), &dropped_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({T, B, K}), &values_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, TensorShape({T, B, K}), &sur_t));
    if (T == 0 || B == 0) return;

    const CpuPool pool(ctx);
    const int64_t select_cycles = n / 2 + kSlotCycles * K;
    const int64_t blocks =
        BlocksPerSample(pool, B, n, T * B * (n * kStepCycles + select_cycles));
    const int64_t width = RoundUp(CeilDiv(n, blocks), kLanes);
    const bool whole_rows = width >= n;

    // cf [n], and either a membrane row per sample (whole rows) or one row
    // of zeros, the membrane before step 0 (blocks).
    const int64_t state = whole_rows ? B * n : n;
    Scratch scratch;
    float *cf, *u0;
    OP_REQUIRES_OK(ctx, scratch.AllocateShared(ctx, [&](Arena& a) {
      cf = a.Take<float>(n);
      u0 = a.Take<float>(state);
    }));

    struct {
      const float* in;
      const float* al;
      const float* th;
      const float* th2;
      const float* cf;
      int32* ids;
      int32* count;
      int32* dropped;
      float* values;
      float* sur;
      int64_t T, B, n, K;
      float beta;
    } io{current.flat<float>().data(),
         ctx->input(1).flat<float>().data(),
         ctx->input(2).flat<float>().data(),
         ctx->input(3).flat<float>().data(),
         cf,
         ids_t->flat<int32>().data(),
         count_t->flat<int32>().data(),
         dropped_t->flat<int32>().data(),
         values_t->flat<float>().data(),
         sur_t->flat<float>().data(),
         T,
         B,
         n,
         K,
         beta_};
    DriveFactors(io.al, input_scale_, n, cf);

    // Selects row r (= t * B + b) of membranes u into its slots.
    auto select = [&io](const float* u, int64_t r) {
      int32* ids = io.ids + r * io.K;
      float* sur = io.sur + r * io.K;
      const RowSelection sel = SelectRow(u, io.th, io.th2, io.n, io.K, ids, io.values + r * io.K);
      io.count[r] = static_cast<int32>(sel.kept);
      io.dropped[r] = sel.dropped;
      for (int64_t s = 0; s < sel.filled; ++s) {
        // 1 / (beta * |u - theta| + 1)^2, rounded op by op like the model's
        // superspike_derivative(u - theta, beta)
        const int32 id = ids[s];
        float scaled = io.beta * std::fabs(u[id] - io.th[id]);
        NoContractScalar(scaled);
        const float d = scaled + 1.f;
        sur[s] = 1.f / (d * d);
      }
      for (int64_t s = sel.filled; s < io.K; ++s) sur[s] = 0.f;
    };

    if (whole_rows) {
      auto work = [&io, &select, u0](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          float* u = u0 + b * io.n;
          std::fill(u, u + io.n, 0.f);
          for (int64_t t = 0; t < io.T; ++t) {
            Integrate(u, io.in + (t * io.B + b) * io.n, u, io.al, io.cf, io.th, io.n);
            select(u, t * io.B + b);
          }
        }
      };
      pool.Shard(B, T * (n * kStepCycles + select_cycles), work);
      return;
    }

    // Membranes of every step, [T, B, n]: in place of the current when
    // nothing else holds it (each element is read before it is written).
    Tensor u_all;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_temp({0}, DT_FLOAT, current.shape(), &u_all));
    float* um = u_all.flat<float>().data();
    std::fill(u0, u0 + n, 0.f);
    const int64_t nblocks = CeilDiv(n, width);
    auto integrate = [&io, um, u0, width, nblocks](int64_t begin, int64_t end) {
      const int64_t row = io.B * io.n;
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t b = unit / nblocks;
        const int64_t lo = (unit % nblocks) * width, w = std::min(io.n, lo + width) - lo;
        const float* prev = u0 + lo;
        for (int64_t t = 0; t < io.T; ++t) {
          float* u = um + t * row + b * io.n + lo;
          Integrate(prev, io.in + t * row + b * io.n + lo, u, io.al + lo, io.cf + lo, io.th + lo, w);
          prev = u;
        }
      }
    };
    pool.Shard(B * nblocks, T * width * kStepCycles, integrate);
    auto select_rows = [&io, &select, um](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) select(um + r * io.n, r);
    };
    pool.Shard(T * B, select_cycles, select_rows);
  }

 private:
  int64_t capacity_;
  float input_scale_;
  float beta_;
};

REGISTER_KERNEL_BUILDER(Name("SnnLifSequence").Device(DEVICE_CPU), LifSequenceOp);

class LifSequenceGradOp : public OpKernel {
 public:
  explicit LifSequenceGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_scale", &input_scale_));
    OP_REQUIRES_OK(ctx, CheckScale(input_scale_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& alpha = ctx->input(0);
    const Tensor& ids_t = ctx->input(1);
    const Tensor& sur_t = ctx->input(2);
    const Tensor& gv_t = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckRank(alpha, 1, "alpha", "[n]"));
    OP_REQUIRES_OK(ctx, CheckRank(ids_t, 3, "ids", "[T, B, K]"));
    OP_REQUIRES_OK(ctx, CheckSameShape(sur_t, "surrogate", ids_t, "ids"));
    OP_REQUIRES_OK(ctx, CheckSameShape(gv_t, "grad_values", ids_t, "ids"));
    const int64_t n = alpha.dim_size(0);
    const int64_t T = ids_t.dim_size(0), B = ids_t.dim_size(1), K = ids_t.dim_size(2);
    const int32* ids = ids_t.flat<int32>().data();
    for (int64_t s = 0; s < T * B * K; ++s) {
      OP_REQUIRES(ctx, ids[s] >= -1 && ids[s] < n,
                  errors::InvalidArgument("ids[", s / (B * K), ", ", s / K % B, ", ", s % K,
                                          "] = ", ids[s], " must be in [-1, n) with n = ", n));
    }

    Tensor* gi_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({T, B, n}), &gi_t));
    if (T == 0 || B == 0 || n == 0) return;

    const CpuPool pool(ctx);
    const int64_t blocks = BlocksPerSample(pool, B, n, T * B * (3 * n * kStepCycles + K));
    const int64_t width = RoundUp(CeilDiv(n, blocks), kLanes);
    const int64_t nblocks = CeilDiv(n, width);

    // cf [n] and delta [B, n] (each unit owns its slice).
    Scratch scratch;
    float *cf, *delta;
    OP_REQUIRES_OK(ctx, scratch.AllocateShared(ctx, [&](Arena& a) {
      cf = a.Take<float>(n);
      delta = a.Take<float>(B * n);
    }));

    struct {
      const float* al;
      const float* cf;
      const int32* ids;
      const float* sur;
      const float* gv;
      float* gi;
      float* delta;
      int64_t T, B, n, K;
    } io{alpha.flat<float>().data(),
         cf,
         ids,
         sur_t.flat<float>().data(),
         gv_t.flat<float>().data(),
         gi_t->flat<float>().data(),
         delta,
         T,
         B,
         n,
         K};
    DriveFactors(io.al, input_scale_, n, cf);

    auto work = [&io, width, nblocks](int64_t begin, int64_t end) {
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t b = unit / nblocks;
        const int64_t lo = (unit % nblocks) * width, hi = std::min(io.n, lo + width), w = hi - lo;
        const float* al = io.al + lo;
        const float* cf = io.cf + lo;
        float* d = io.delta + b * io.n + lo;
        std::fill(d, d + w, 0.f);
        for (int64_t t = io.T - 1; t >= 0; --t) {
          const int64_t r = t * io.B + b;
          // delta <- alpha * delta_{t+1} ...
          int64_t i = 0;
          for (; i + kLanes <= w; i += kLanes) Store(d + i, Load(al + i) * Load(d + i));
          if (i < w) StoreSome(d + i, LoadSome(al + i, w - i) * LoadSome(d + i, w - i), w - i);
          // ... + d loss / d u_t of this unit's filled slots ...
          const int32* ids = io.ids + r * io.K;
          for (int64_t s = 0; s < io.K; ++s) {
            const int32 id = ids[s];
            if (id < lo || id >= hi) continue;  // padding (-1) or another unit's neuron
            float g = io.gv[r * io.K + s] * io.sur[r * io.K + s];
            NoContractScalar(g);
            d[id - lo] += g;
          }
          // ... and d loss / d I_t = (1 - alpha) * c * delta.
          float* gi = io.gi + r * io.n + lo;
          for (i = 0; i + kLanes <= w; i += kLanes) Store(gi + i, Load(cf + i) * Load(d + i));
          if (i < w) StoreSome(gi + i, LoadSome(cf + i, w - i) * LoadSome(d + i, w - i), w - i);
        }
      }
    };
    pool.Shard(B * nblocks, T * (3 * width * kStepCycles + K), work);
  }

 private:
  float input_scale_;
};

REGISTER_KERNEL_BUILDER(Name("SnnLifSequenceGrad").Device(DEVICE_CPU), LifSequenceGradOp);

}  // namespace lif_sequence
}  // namespace snn
}  // namespace tensorflow
