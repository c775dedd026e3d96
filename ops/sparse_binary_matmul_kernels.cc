// CPU kernels of SnnSparseBinaryMatmul and SnnSparseBinaryMatmulGrad
// (registered, with their semantics, in sparse_binary_matmul_ops.cc).
//
// Weights are stored [n_in, n_out] so that the contribution of presynaptic
// neuron j is one contiguous row. The forward streams such rows; the
// gradient packs column tiles of them (the comment opening its part says why).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common/row_dots.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "common/threading.h"
#include "common/tiling.h"
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

// SnnSparseBinaryMatmulGrad pairs every slot's grad_y row with the weight
// row it names. Walked slot by slot (or weight row by weight row), those
// grad_y rows come in random order from a [B, n_out] array that does not
// fit in cache (28 MB at T*B = 4800 on the benchmark network), and the
// loads of them were 80 % of the op's time. As in the fused backward
// (sparse_lif_layer_backward.cc), the work is split into column tiles and
// blocks of batch rows instead: a tile's columns of one block of grad_y rows
// stay in L2 while all slots of the block visit them, bucketed by weight
// row, and the weight and gradient columns of the tile are walked in
// ascending row order once per block.
//
// Cache budgets, tuned like the fused backward's on a 2-core Zen 4 (1 MB L2
// per core, 32 MB shared L3); the macros let another machine's build
// override them.
#ifndef SNN_MMG_TILE_BYTES
#define SNN_MMG_TILE_BYTES (4096 << 10)
#endif
#ifndef SNN_MMG_BLOCK_BYTES
#define SNN_MMG_BLOCK_BYTES (512 << 10)
#endif
// weights + grad_weights columns of one tile: visited in ascending rows, so
// they may exceed L2.
constexpr int64_t kMmgTileBytes = SNN_MMG_TILE_BYTES;
// A tile's columns of the grad_y rows of one block, read at random: in L2.
constexpr int64_t kMmgBlockBytes = SNN_MMG_BLOCK_BYTES;
#ifndef SNN_MMG_PLAN_UNITS
#define SNN_MMG_PLAN_UNITS 8
#endif
// Work is planned for this many units (column tiles, times ranges of weight
// rows when there are fewer tiles) whatever the pool's size. A slot's
// gradient is the sum of its tiles' partial dots, added in tile order, so a
// fixed plan gives the same bits on 1 thread or 64.
constexpr int64_t kMmgPlanUnits = SNN_MMG_PLAN_UNITS;

// One slot naming a weight row (id >= 0), bucketed by (block, row).
struct SlotRef {
  int32 row;  // batch row b: which grad_y row it pairs with
  float f;    // its value for a spike, 0 for a carrier (no share in y)
};

struct MmgPlan {
  Tiling tiling;
  int64_t S;      // batch rows per block
  int64_t nblk;   // blocks
  int64_t nrng;   // ranges of weight rows per tile
  int64_t units;  // ntiles * nrng
};

MmgPlan PlanMatmulGrad(int64_t n_in, int64_t n_out, int64_t batch) {
  MmgPlan p;
  p.tiling = MakeTiling(n_out, n_in * sizeof(float) * 2, kMmgTileBytes, kLanes, kMmgPlanUnits,
                        kMmgPlanUnits);
  p.S = std::max<int64_t>(
      1, std::min(batch, kMmgBlockBytes / (p.tiling.pad * int64_t{sizeof(float)})));
  p.nblk = std::max<int64_t>(1, CeilDiv(batch, p.S));
  // Narrow outputs (the readout layer) give fewer tiles than units; their
  // weight rows are split as well, which needs no partial copies: each row
  // and tile of grad_weights belongs to exactly one unit.
  p.nrng = std::max<int64_t>(1, std::min(n_in, CeilDiv(kMmgPlanUnits, p.tiling.ntiles)));
  p.units = p.tiling.ntiles * p.nrng;
  return p;
}

// A unit's own buffers: the tile's columns of its weight rows, of their
// gradient, and of one block's grad_y rows, packed with stride tiling.pad.
// Read in place, those rows lie 4 * n_out bytes apart, so a tile touches a
// page per row and per array and the TLB misses (costly under a VM's nested
// paging) took the gain of the tiling away.
struct MmgScratch {
  float* Wp;   // [rows per range, pad]
  float* dWp;  // [rows per range, pad]
  float* G;    // [S, pad]
};

// Everything the units share.
struct MmgPass {
  const SpikeView* v;
  MmgPlan plan;
  const float* grad_y;
  float* grad_w;
  const int32* off;      // [nblk * n_in + 1] bucket starts by (block, row)
  const SlotRef* refs;   // the slots in bucket order
  float* part;           // [ntiles, n_refs] partial dots, in bucket order
  int64_t n_refs;
};

// One unit: column tile `tile` of weight rows [j0, j1), all blocks.
void MatmulGradUnit(const MmgPass& P, int64_t tile, int64_t j0, int64_t j1, const MmgScratch& s) {
  const SpikeView& v = *P.v;
  const int64_t n = v.n_out, n_in = v.n_in, S = P.plan.S;
  const int64_t c0 = P.plan.tiling.begin(tile);
  const int64_t w = P.plan.tiling.end(tile) - c0;
  const int64_t wp = RoundUp(w, kLanes), nch = wp / kLanes;
  PackTile(v.weights + j0 * n, j1 - j0, n, c0, w, wp, s.Wp);
  std::fill(s.dWp, s.dWp + (j1 - j0) * wp, 0.f);
  float* part = P.part + tile * P.n_refs;
  for (int64_t blk = 0; blk < P.plan.nblk; ++blk) {
    const int32* off = P.off + blk * n_in;
    if (off[j0] == off[j1]) continue;
    const int64_t b0 = blk * S, b1 = std::min(v.batch, b0 + S);
    PackTile(P.grad_y + b0 * n, b1 - b0, n, c0, w, wp, s.G);
    const float* G = s.G - b0 * wp;  // indexed by the global batch row
    for (int64_t j = j0; j < j1; ++j) {
      const int32 e0 = off[j], e1 = off[j + 1];
      if (e0 == e1) continue;
      const float* wr = s.Wp + (j - j0) * wp;
      float* dr = s.dWp + (j - j0) * wp;
      auto group = [&](auto ne, int32 e) {
        constexpr int NE = decltype(ne)::value;
        const float* g[NE];
        Vf f[NE];
        bool any = false;
#pragma GCC unroll 4
        for (int q = 0; q < NE; ++q) {
          const SlotRef& r = P.refs[e + q];
          g[q] = G + int64_t{r.row} * wp;
          f[q] = Splat(r.f);
          any |= r.f != 0.f;
        }
        float sums[4];
        DotAxpyRowsIfAny<NE>(wr, g, f, any, nch, dr, sums);
#pragma GCC unroll 4
        for (int q = 0; q < NE; ++q) part[e + q] = sums[q];
      };
      int32 e = e0;
      for (; e + 4 <= e1; e += 4) group(std::integral_constant<int, 4>(), e);
      switch (e1 - e) {
        case 3:
          group(std::integral_constant<int, 3>(), e);
          break;
        case 2:
          group(std::integral_constant<int, 2>(), e);
          break;
        case 1:
          group(std::integral_constant<int, 1>(), e);
          break;
        default:
          break;
      }
    }
  }
  for (int64_t j = j0; j < j1; ++j) {
    std::memcpy(P.grad_w + j * n + c0, s.dWp + (j - j0) * wp, w * sizeof(float));
  }
}

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
    // Padding slots, and every slot when there are no columns to dot over.
    std::fill(grad_v, grad_v + n_slots, 0.f);
    if (v.n_in == 0 || v.n_out == 0) return;

    const MmgPlan plan = PlanMatmulGrad(v.n_in, v.n_out, v.batch);
    int64_t n_refs = 0;
    for (int64_t s = 0; s < n_slots; ++s) n_refs += v.ids[s] >= 0;
    int32 *off, *slot_of;
    SlotRef* refs;
    float* part;
    auto carve_shared = [&](Arena& a) {
      off = a.Take<int32>(plan.nblk * v.n_in + 1);
      slot_of = a.Take<int32>(n_refs);
      refs = a.Take<SlotRef>(n_refs);
      part = a.Take<float>(plan.tiling.ntiles * n_refs);
    };
    const int64_t max_rows = CeilDiv(v.n_in, plan.nrng);
    auto carve_worker = [&](Arena& a, MmgScratch* s) {
      s->Wp = a.Take<float>(max_rows * plan.tiling.pad);
      s->dWp = a.Take<float>(max_rows * plan.tiling.pad);
      s->G = a.Take<float>(plan.S * plan.tiling.pad);
    };
    const int64_t per_worker = ArenaBytes([&](Arena& a) {
      MmgScratch s;
      carve_worker(a, &s);
    });
    const CpuPool pool(ctx);
    Scratch scratch;
    OP_REQUIRES_OK(ctx, scratch.Allocate(ctx, ArenaBytes(carve_shared), per_worker,
                                         pool.NumWorkers()));
    Arena shared(scratch.Shared());
    carve_shared(shared);

    // Bucket the slots by (block, weight row), a counting sort that keeps
    // (b, k) order inside a bucket, which fixes the order of the sums.
    // Loops over (b, k) rather than slots spare two divisions per slot.
    const int64_t n_keys = plan.nblk * v.n_in;
    std::fill(off, off + n_keys + 1, 0);
    auto for_each_slot = [&](auto&& fn) {
      for (int64_t b = 0; b < v.batch; ++b) {
        const int64_t base = b / plan.S * v.n_in;
        for (int64_t k = 0; k < v.slots; ++k) {
          const int64_t s = b * v.slots + k;
          if (v.ids[s] >= 0) fn(b, k, s, base + v.ids[s]);
        }
      }
    };
    for_each_slot([&](int64_t, int64_t, int64_t, int64_t key) { ++off[key + 1]; });
    for (int64_t k = 0; k < n_keys; ++k) off[k + 1] += off[k];
    // off[k] serves as bucket k's fill cursor and ends at bucket k+1's
    // start; shifting by one restores the starts.
    for_each_slot([&](int64_t b, int64_t k, int64_t s, int64_t key) {
      const int32 e = off[key]++;
      slot_of[e] = static_cast<int32>(s);
      refs[e] = SlotRef{static_cast<int32>(b), k < v.count[b] ? v.values[s] : 0.f};
    });
    for (int64_t k = n_keys; k > 0; --k) off[k] = off[k - 1];
    off[0] = 0;

    const MmgPass P{&v, plan, grad_y, grad_w, off, refs, part, n_refs};
    auto run = [&](int64_t u, int worker) {
      Arena a(scratch.Worker(worker));
      MmgScratch s;
      carve_worker(a, &s);
      const int64_t nrng = plan.nrng;
      const int64_t tile = u / nrng, r = u % nrng;
      MatmulGradUnit(P, tile, r * v.n_in / nrng, (r + 1) * v.n_in / nrng, s);
    };
    // Per slot and column ~2/5 cycle (one axpy + dot step); writing
    // grad_weights out ~1/4 cycle per element.
    if (2 * n_refs * v.n_out / 5 + v.n_in * v.n_out / 4 < kMinParallelCycles) {
      for (int64_t u = 0; u < plan.units; ++u) run(u, 0);
    } else {
      pool.ForEachUnit(plan.units, run);
    }
    // A slot's gradient: its tiles' partial dots, summed in tile order
    // (each slot's sum is on its own, so how the entries are split between
    // threads does not matter).
    const int64_t ntiles = plan.tiling.ntiles;
    auto reduce = [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        float acc = part[e];
        for (int64_t t = 1; t < ntiles; ++t) acc += part[t * n_refs + e];
        grad_v[slot_of[e]] = acc;
      }
    };
    pool.Shard(n_refs, ntiles + 4, reduce);
  }
};

REGISTER_KERNEL_BUILDER(Name("SnnSparseBinaryMatmulGrad").Device(DEVICE_CPU),
                        SparseBinaryMatmulGradOp);

}  // namespace
}  // namespace snn
}  // namespace tensorflow
