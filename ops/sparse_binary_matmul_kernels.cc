// CPU kernels of SnnSparseBinaryMatmul and SnnSparseBinaryMatmulGrad
// (registered, with their semantics, in sparse_binary_matmul_ops.cc).
//
// Weights are stored [n_in, n_out] so that the contribution of presynaptic
// neuron j is one contiguous row; every loop below is organised around
// streaming such rows rather than strided columns.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common/threading.h"
#include "common/validate.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/errors.h"

namespace tensorflow {
namespace snn {
namespace {

// Everything a kernel needs after validation, as raw pointers. Lambdas handed
// to the thread pool capture a reference to this (plus at most one pointer),
// small enough for std::function to store without a heap allocation.
struct SpikeView {
  const float* weights;
  const int32* ids;
  const int32* count;
  const float* values;
  int64_t n_in;
  int64_t n_out;
  int64_t batch;
  int64_t slots;
  int64_t total_spikes;
};

absl::Status ValidateSpikeInputs(const Tensor& weights, const Tensor& ids,
                                 const Tensor& count, const Tensor& values,
                                 SpikeView* view) {
  TF_RETURN_IF_ERROR(CheckRank(weights, 2, "weights", "[n_in, n_out]"));
  TF_RETURN_IF_ERROR(CheckRank(ids, 2, "ids", "[B, K]"));
  TF_RETURN_IF_ERROR(CheckRank(count, 1, "count", "[B]"));
  TF_RETURN_IF_ERROR(CheckSameShape(values, "values", ids, "ids"));
  if (count.dim_size(0) != ids.dim_size(0)) {
    return errors::InvalidArgument("count has ", count.dim_size(0),
                                   " entries but ids has batch size ",
                                   ids.dim_size(0));
  }
  view->weights = weights.flat<float>().data();
  view->ids = ids.flat<int32>().data();
  view->count = count.flat<int32>().data();
  view->values = values.flat<float>().data();
  view->n_in = weights.dim_size(0);
  view->n_out = weights.dim_size(1);
  view->batch = ids.dim_size(0);
  view->slots = ids.dim_size(1);

  // One serial pass over B*K int32s: cheap next to the row traffic, and it
  // lets the hot loops below index rows without any checks.
  int64_t total = 0;
  for (int64_t b = 0; b < view->batch; ++b) {
    const int64_t cnt = view->count[b];
    if (cnt < 0 || cnt > view->slots) {
      return errors::InvalidArgument("count[", b, "] = ", cnt,
                                     " is outside [0, K] with K = ",
                                     view->slots);
    }
    total += cnt;
    const int32* row = view->ids + b * view->slots;
    for (int64_t k = 0; k < view->slots; ++k) {
      const int64_t id = row[k];
      if (k < cnt) {
        if (id < 0 || id >= view->n_in) {
          return errors::InvalidArgument(
              "ids[", b, ", ", k, "] = ", id,
              " is a spike slot (k < count) and must be in [0, n_in) with "
              "n_in = ",
              view->n_in);
        }
      } else if (id < -1 || id >= view->n_in) {
        return errors::InvalidArgument(
            "ids[", b, ", ", k, "] = ", id,
            " is a carrier/padding slot (k >= count) and must be in "
            "[-1, n_in) with n_in = ",
            view->n_in);
      }
    }
  }
  view->total_spikes = total;
  return absl::OkStatus();
}

// y[0:n] += sum of four scaled rows. Folding four rows into one pass quarters
// the load/store traffic on y compared with four separate axpys.
inline void AddScaledRows4(float* __restrict y, const float* __restrict r0,
                           const float* __restrict r1,
                           const float* __restrict r2,
                           const float* __restrict r3, float v0, float v1,
                           float v2, float v3, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    y[j] += v0 * r0[j] + v1 * r1[j] + v2 * r2[j] + v3 * r3[j];
  }
}

inline void AddScaledRow(float* __restrict y, const float* __restrict r,
                         float v, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] += v * r[j];
}

// Float reductions are not reassociated by the compiler without -ffast-math,
// so the partial sums are spelled out: 16 lanes map onto SIMD registers, and
// several independent accumulator chains hide the add/FMA latency. DotAxpy4
// reuses each load of the weight row for four dot products.
constexpr int kLanes = 16;

inline float Reduce(const float* acc) {
  float s[kLanes / 2];
  for (int i = 0; i < kLanes / 2; ++i) s[i] = acc[i] + acc[i + kLanes / 2];
  for (int i = 0; i < kLanes / 4; ++i) s[i] += s[i + kLanes / 4];
  return (s[0] + s[2]) + (s[1] + s[3]);
}

inline float Dot(const float* __restrict a, const float* __restrict b,
                 int64_t n) {
  constexpr int kChains = 4;
  float acc[kChains][kLanes] = {};
  int64_t j = 0;
  for (; j + kChains * kLanes <= n; j += kChains * kLanes) {
    for (int c = 0; c < kChains; ++c) {
      for (int l = 0; l < kLanes; ++l) {
        acc[c][l] += a[j + c * kLanes + l] * b[j + c * kLanes + l];
      }
    }
  }
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[0][l] += a[j + l] * b[j + l];
  }
  float tail = 0.f;
  for (; j < n; ++j) tail += a[j] * b[j];
  for (int l = 0; l < kLanes; ++l) {
    acc[0][l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
  }
  return Reduce(acc[0]) + tail;
}

// The gradient of one weight row w for four slots naming it, in one pass
// over their grad_y rows g0..g3: out[q] = w . g_q (every slot), and
// gw += f_q * g_q (f_q is the slot's value for a spike, 0 for a carrier,
// which did not contribute to y). The grad_y rows of T*B = 4800 steps
// (28 MB on the benchmark network) do not stay in cache, and the separate
// axpy and dot passes read each of them twice from L3 or memory: that made
// this op half of sparse_ops' training step.
inline void DotAxpy4(const float* __restrict w, float* __restrict gw,
                     const float* __restrict g0, const float* __restrict g1,
                     const float* __restrict g2, const float* __restrict g3,
                     const float f[4], int64_t n, float out[4]) {
  float acc0[kLanes] = {0.f}, acc1[kLanes] = {0.f}, acc2[kLanes] = {0.f},
        acc3[kLanes] = {0.f};
  const float f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3];
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float x = w[j + l];
      const float a0 = g0[j + l], a1 = g1[j + l], a2 = g2[j + l], a3 = g3[j + l];
      acc0[l] += a0 * x;
      acc1[l] += a1 * x;
      acc2[l] += a2 * x;
      acc3[l] += a3 * x;
      gw[j + l] += f0 * a0 + f1 * a1 + f2 * a2 + f3 * a3;
    }
  }
  float t0 = 0.f, t1 = 0.f, t2 = 0.f, t3 = 0.f;
  for (; j < n; ++j) {
    const float x = w[j];
    t0 += g0[j] * x;
    t1 += g1[j] * x;
    t2 += g2[j] * x;
    t3 += g3[j] * x;
    gw[j] += f0 * g0[j] + f1 * g1[j] + f2 * g2[j] + f3 * g3[j];
  }
  out[0] = Reduce(acc0) + t0;
  out[1] = Reduce(acc1) + t1;
  out[2] = Reduce(acc2) + t2;
  out[3] = Reduce(acc3) + t3;
}

class SparseBinaryMatmulOp : public OpKernel {
 public:
  explicit SparseBinaryMatmulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    SpikeView v;
    OP_REQUIRES_OK(ctx, ValidateSpikeInputs(ctx->input(0), ctx->input(1),
                                            ctx->input(2), ctx->input(3), &v));
    Tensor* y_tensor = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({v.batch, v.n_out}), &y_tensor));
    if (v.batch == 0 || v.n_out == 0) return;
    float* y = y_tensor->flat<float>().data();

    auto work = [&v, y](int64_t begin, int64_t end) {
      const int64_t n = v.n_out;
      for (int64_t b = begin; b < end; ++b) {
        float* yb = y + b * n;
        std::memset(yb, 0, sizeof(float) * n);
        const int32* ids = v.ids + b * v.slots;
        const float* vals = v.values + b * v.slots;
        const int64_t cnt = v.count[b];
        int64_t k = 0;
        for (; k + 4 <= cnt; k += 4) {
          AddScaledRows4(yb, v.weights + ids[k] * n, v.weights + ids[k + 1] * n,
                         v.weights + ids[k + 2] * n,
                         v.weights + ids[k + 3] * n, vals[k], vals[k + 1],
                         vals[k + 2], vals[k + 3], n);
        }
        for (; k < cnt; ++k) {
          AddScaledRow(yb, v.weights + int64_t{ids[k]} * n, vals[k], n);
        }
      }
    };
    // Per batch row (measured): ~1/5 cycle per element of each gathered row.
    const int64_t avg_spikes = v.total_spikes / v.batch;
    CpuPool(ctx).Shard(v.batch, v.n_out * (avg_spikes + 1) / 5 + 1, work);
  }
};

REGISTER_KERNEL_BUILDER(Name("SnnSparseBinaryMatmul").Device(DEVICE_CPU),
                        SparseBinaryMatmulOp);

class SparseBinaryMatmulGradOp : public OpKernel {
 public:
  explicit SparseBinaryMatmulGradOp(OpKernelConstruction* ctx)
      : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    SpikeView v;
    OP_REQUIRES_OK(ctx, ValidateSpikeInputs(ctx->input(0), ctx->input(1),
                                            ctx->input(2), ctx->input(3), &v));
    const Tensor& grad_y_tensor = ctx->input(4);
    OP_REQUIRES(ctx,
                grad_y_tensor.dims() == 2 &&
                    grad_y_tensor.dim_size(0) == v.batch &&
                    grad_y_tensor.dim_size(1) == v.n_out,
                errors::InvalidArgument(
                    "grad_y must have shape [B, n_out] = [", v.batch, ", ",
                    v.n_out, "], got ", grad_y_tensor.shape().DebugString()));

    Tensor* grad_w_tensor = nullptr;
    Tensor* grad_v_tensor = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({v.n_in, v.n_out}),
                                             &grad_w_tensor));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({v.batch, v.slots}),
                                             &grad_v_tensor));
    const float* grad_y = grad_y_tensor.flat<float>().data();
    float* grad_w = grad_w_tensor->flat<float>().data();
    float* grad_v = grad_v_tensor->flat<float>().data();
    const int64_t n_slots = v.batch * v.slots;
    OP_REQUIRES(ctx, n_slots <= std::numeric_limits<int32>::max(),
                errors::InvalidArgument("B*K = ", n_slots, " is too large"));

    // Invert the slot -> row map (a counting sort by id). Both outputs are
    // then produced row by row: each weight row is read once and each
    // grad_weights row written once while it is in L1, instead of one
    // gather and one read-modify-write of a 4*n_out-byte row per slot (at
    // K ~ 150 the slots name every row several times). Row ownership also
    // makes the threads race-free without splitting rows into columns.
    // The buffers belong to the calling thread and only ever grow, so a
    // steady training loop does no allocation here.
    thread_local std::vector<int32> row_start, slot_of;
    thread_local std::vector<float> staged;
    row_start.assign(v.n_in + 1, 0);
    if (slot_of.size() < static_cast<size_t>(n_slots)) {
      slot_of.resize(n_slots);
      staged.resize(n_slots);
    }
    for (int64_t s = 0; s < n_slots; ++s) {
      const int32 id = v.ids[s];
      if (id >= 0) {
        ++row_start[id + 1];
      } else {
        grad_v[s] = 0.f;  // padding
      }
    }
    for (int64_t r = 0; r < v.n_in; ++r) row_start[r + 1] += row_start[r];
    // row_start[r] is used as the fill cursor of row r and ends up at the
    // start of row r + 1; the shift below restores the starts. Slots are
    // visited in (b, k) order, which fixes the summation order.
    for (int64_t s = 0; s < n_slots; ++s) {
      const int32 id = v.ids[s];
      if (id >= 0) slot_of[row_start[id]++] = static_cast<int32>(s);
    }
    for (int64_t r = v.n_in; r > 0; --r) row_start[r] = row_start[r - 1];
    row_start[0] = 0;

    // Bundled so that the sharded lambda captures one reference (keeps
    // std::function free of heap allocation).
    struct {
      const SpikeView* v;
      const float* grad_y;
      float* grad_w;
      float* grad_v;
      const int32* row_start;
      const int32* slot_of;
      float* staged;
    } io{&v,
         grad_y,
         grad_w,
         grad_v,
         row_start.data(),
         slot_of.data(),
         staged.data()};

    auto rows_work = [&io](int64_t begin, int64_t end) {
      const SpikeView& v = *io.v;
      const int64_t n = v.n_out;
      for (int64_t r = begin; r < end; ++r) {
        const float* w_row = v.weights + r * n;
        float* gw_row = io.grad_w + r * n;
        const int32* slot = io.slot_of + io.row_start[r];
        float* dots = io.staged + io.row_start[r];
        const int64_t m = io.row_start[r + 1] - io.row_start[r];

        // grad_weights[r] = sum over spike slots naming r of value * grad_y[b]
        // (carriers are excluded: they did not contribute to y), and
        // grad_values[s] = w[r] . grad_y[b] for every slot naming r, spikes
        // and carriers alike, four slots per pass over their grad_y rows.
        // Results go to a buffer in row order: written straight into
        // grad_values, neighbouring slots would belong to different threads
        // and the cache lines would ping-pong.
        std::memset(gw_row, 0, sizeof(float) * n);
        auto factor = [&v](int64_t s) {
          const int64_t b = s / v.slots;
          return s - b * v.slots < v.count[b] ? v.values[s] : 0.f;
        };
        int64_t e = 0;
        for (; e + 4 <= m; e += 4) {
          const float f[4] = {factor(slot[e]), factor(slot[e + 1]),
                              factor(slot[e + 2]), factor(slot[e + 3])};
          DotAxpy4(w_row, gw_row, io.grad_y + (slot[e] / v.slots) * n,
                   io.grad_y + (slot[e + 1] / v.slots) * n,
                   io.grad_y + (slot[e + 2] / v.slots) * n,
                   io.grad_y + (slot[e + 3] / v.slots) * n, f, n, dots + e);
        }
        for (; e < m; ++e) {
          const float* gy = io.grad_y + (slot[e] / v.slots) * n;
          const float f = factor(slot[e]);
          if (f != 0.f) AddScaledRow(gw_row, gy, f, n);
          dots[e] = Dot(gy, w_row, n);
        }
      }
    };
    if (v.n_in == 0) return;
    // Per weight row (measured): ~1/4 cycle per element to write the row
    // out, ~2/5 cycle per element for each slot's axpy + dot. Writing the
    // dense output is bound by memory bandwidth, which a second core does
    // not add to, so only the per-slot part decides whether to go parallel.
    if (2 * n_slots * v.n_out / 5 < kMinParallelCycles) {
      rows_work(0, v.n_in);
    } else {
      CpuPool(ctx).Shard(
          v.n_in, v.n_out * (5 * v.n_in + 8 * n_slots) / (20 * v.n_in) + 1,
          rows_work);
    }
    const int64_t n_entries = row_start[v.n_in];
    for (int64_t e = 0; e < n_entries; ++e) grad_v[slot_of[e]] = staged[e];
  }
};

REGISTER_KERNEL_BUILDER(Name("SnnSparseBinaryMatmulGrad").Device(DEVICE_CPU),
                        SparseBinaryMatmulGradOp);

}  // namespace
}  // namespace snn
}  // namespace tensorflow
