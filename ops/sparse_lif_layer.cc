// Fused multi-layer LIF network with activity-sparse spike transmission:
// SnnSparseLifLayer runs the whole time loop of all layers, and
// SnnSparseLifLayerGrad its BPTT weight gradient.
//
// Performance notes (the reason this op exists):
// * Neuron dynamics are column-separable: the membrane of neuron i depends
//   only on column i of the weights. Only the capacity-limited spike
//   *selection* couples the neurons of one layer. Both kernels therefore walk
//   the weight matrices in column tiles small enough to stay in L2 and run
//   the time recursion for many samples against the resident tile, instead of
//   gathering whole rows from L3/DRAM at every step.
// * Forward: samples are independent, so the work is split into sample
//   blocks; each block runs all layers (layer l+1 only needs layer l's spikes
//   of the same samples). Membranes of the block are kept so the selection
//   can run once a layer's tiles are done.
// * Backward: the weight gradient is a reduction over the batch. Splitting
//   the work by column tiles (each tile owning its slice of dWt for all
//   samples) avoids per-thread copies of dWt and a final reduction; the
//   eps recursion is elementwise, so it runs inside the tile as well. Layers
//   go from last to first because ds of layer l needs layer l+1's gI. Dot
//   products for ds are split over tiles, so each tile group adds its partial
//   into its own buffer and the groups are summed in a fixed order, which
//   keeps the result independent of thread scheduling.

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/threadpool.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#ifdef SNN_PROFILE
#include <chrono>
#include <cstdio>
#define PROF_T0 auto prof_t0 = std::chrono::steady_clock::now();
#define PROF_MARK(label) do { auto prof_t1 = std::chrono::steady_clock::now(); \
  std::fprintf(stderr, "[prof] %-28s %8.2f ms\n", label, std::chrono::duration<double, std::milli>(prof_t1 - prof_t0).count()); prof_t0 = prof_t1; } while (0)
#include <atomic>
static std::atomic<long long> g_prof_ns[8];
#include <time.h>
inline long long prof_cpu_ns() { timespec ts; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); return ts.tv_sec * 1000000000LL + ts.tv_nsec; }
struct ProfScope { int k; long long t0 = prof_cpu_ns();
  explicit ProfScope(int k_) : k(k_) {}
  ~ProfScope() { g_prof_ns[k] += prof_cpu_ns() - t0; } };
#define PROF_SCOPE(k) ProfScope prof_scope_##k(k);
#define PROF_DUMP() do { for (int i = 0; i < 8; ++i) { long long v = g_prof_ns[i].exchange(0); if (v) std::fprintf(stderr, "[prof]   bucket %d %8.2f ms (thread cpu)\n", i, v / 1e6); } } while (0)
#else
#define PROF_T0
#define PROF_MARK(label)
#define PROF_SCOPE(k)
#define PROF_DUMP()
#endif

namespace tensorflow {
namespace {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

// ---------------------------------------------------------------------------
// Vector helpers. GCC vector extensions keep the hot loops explicit without
// tying the file to one instruction set: with AVX-512 a vf is one register,
// with AVX2 two, and the code still builds for any -march.
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int kLanes = 16;
// Forward tiles are padded to whole 64-neuron words so each tile owns whole
// words of the spike bitmaps and the main loop can run four accumulators.
constexpr int kWord = 64;

inline vf ld(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void st(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
inline vf splat(float x) {
  vf v = {x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
  return v;
}

// Bit i set where a[i] >= b[i] (false for NaN, like the scalar comparison).
inline uint32_t mask_ge(vf a, vf b) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_GE_OQ);
#else
  vi m = a >= b;
  uint32_t r = 0;
  for (int i = 0; i < kLanes; ++i) r |= (uint32_t)(m[i] & 1) << i;
  return r;
#endif
}
// Bit i set where a[i] < b[i].
inline uint32_t mask_lt(vf a, vf b) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_LT_OQ);
#else
  vi m = a < b;
  uint32_t r = 0;
  for (int i = 0; i < kLanes; ++i) r |= (uint32_t)(m[i] & 1) << i;
  return r;
#endif
}
inline float hsum(vf v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps((__m512)v);
#else
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
#endif
}

template <typename... Args>
absl::Status invalid(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

// Cache budgets. This machine has 1 MB of L2 per core and a shared 32 MB L3.
#ifndef SNN_FWD_TILE_BYTES
#define SNN_FWD_TILE_BYTES (512 << 10)
#endif
#ifndef SNN_BWD_TILE_BYTES
#define SNN_BWD_TILE_BYTES (512 << 10)
#endif
#ifndef SNN_BWD_G_BYTES
#define SNN_BWD_G_BYTES (256 << 10)
#endif
#ifndef SNN_FWD_BLOCKS_PER_THREAD
#define SNN_FWD_BLOCKS_PER_THREAD 2
#endif
// Forward: packed weight tile resident in L2 while a sample block runs
// through it.
constexpr int64_t kFwdTileBytes = SNN_FWD_TILE_BYTES;
constexpr int64_t kFwdBlocksPerThread = SNN_FWD_BLOCKS_PER_THREAD;
// Backward: weight + gradient tile, and the gI rows of one sample block.
constexpr int64_t kBwdTileBytes = SNN_BWD_TILE_BYTES;
constexpr int64_t kBwdGBytes = SNN_BWD_G_BYTES;
// Upper bound on ds partial buffers in the backward pass (one per tile group).
constexpr int kMaxGroups = 16;

// Carves 64-byte-aligned arrays out of one scratch allocation.
class Arena {
 public:
  explicit Arena(char* base) : base_(base), off_(0) {}
  template <typename T>
  T* take(int64_t n) {
    off_ = round_up(off_, 64);
    T* p = reinterpret_cast<T*>(base_ + off_);
    off_ += n * static_cast<int64_t>(sizeof(T));
    return p;
  }
  int64_t used() const { return round_up(off_, 64); }

 private:
  char* base_;
  int64_t off_;
};

// Column tiling of one layer: `ntiles` tiles with boundaries on multiples of
// `align` (the last one ends at n), widths differing by at most `align`.
struct Tiling {
  int64_t n = 0, align = 1, units = 0, ntiles = 0;
  int64_t pad = 0;  // widest tile rounded up to `align`: packed row stride
  int64_t begin(int64_t k) const { return std::min(n, k * units / ntiles * align); }
  int64_t end(int64_t k) const { return begin(k + 1); }
};

// Tiles of at most `budget` bytes given `bytes_per_col`, at least
// `min_tiles`, and a multiple of `multiple_of` tiles where the width allows.
Tiling make_tiling(int64_t n, int64_t bytes_per_col, int64_t budget, int64_t align,
                   int64_t min_tiles, int64_t multiple_of) {
  Tiling t;
  t.n = n;
  t.align = align;
  t.units = ceil_div(n, align);
  const int64_t max_units = std::max<int64_t>(1, budget / std::max<int64_t>(1, bytes_per_col) / align);
  int64_t nt = std::max(ceil_div(t.units, max_units), min_tiles);
  nt = round_up(nt, std::max<int64_t>(1, multiple_of));
  t.ntiles = std::max<int64_t>(1, std::min(nt, t.units));
  t.pad = ceil_div(t.units, t.ntiles) * align;
  return t;
}

// Ids must be in range before any kernel touches memory with them.
absl::Status check_input_ids(const Tensor& in_ids, const Tensor& in_count, int64_t n0) {
  const int64_t B = in_ids.dim_size(0), T = in_ids.dim_size(1), K0 = in_ids.dim_size(2);
  auto ids = in_ids.flat<int32_t>();
  auto cnt = in_count.flat<int32_t>();
  for (int64_t bt = 0; bt < B * T; ++bt) {
    const int32_t c = cnt(bt);
    if (c < 0 || c > K0) {
      return invalid("in_count[", bt / T, ",", bt % T, "] = ", c,
                                     " is outside [0, ", K0, "] (K0 = in_ids.shape[2])");
    }
    for (int64_t k = 0; k < c; ++k) {
      const int32_t j = ids(bt * K0 + k);
      if (j < 0 || j >= n0) {
        return invalid("in_ids[", bt / T, ",", bt % T, ",", k, "] = ", j,
                                       " is outside [0, ", n0, ") (n_0 = weights[0].shape[0])");
      }
    }
  }
  return absl::OkStatus();
}

// Shared input checks of both ops: in_ids/in_count, the weight chain and
// per-neuron vectors. Fills the layer sizes (sizes[0] = n_0).
absl::Status check_network(const Tensor& in_ids, const Tensor& in_count, const OpInputList& weights,
                     const std::vector<const OpInputList*>& vectors,
                     const std::vector<const char*>& vector_names,
                     const std::vector<int32_t>& capacities, std::vector<int64_t>* sizes) {
  const int N = weights.size();
  if (static_cast<int>(capacities.size()) != N) {
    return invalid("capacities has ", capacities.size(), " entries but there are ",
                                   N, " layers");
  }
  if (in_ids.dims() != 3) {
    return invalid("in_ids must be [B, T, K0], got shape ",
                                   in_ids.shape().DebugString());
  }
  if (in_count.dims() != 2 || in_count.dim_size(0) != in_ids.dim_size(0) ||
      in_count.dim_size(1) != in_ids.dim_size(1)) {
    return invalid("in_count must be [B, T] = [", in_ids.dim_size(0), ", ",
                                   in_ids.dim_size(1), "], got shape ",
                                   in_count.shape().DebugString());
  }
  sizes->assign(N + 1, 0);
  for (int l = 0; l < N; ++l) {
    const Tensor& w = weights[l];
    if (w.dims() != 2) {
      return invalid("weights[", l, "] must be a matrix [n_in, n_out], got shape ",
                                     w.shape().DebugString());
    }
    if (l == 0) {
      (*sizes)[0] = w.dim_size(0);
    } else if (w.dim_size(0) != (*sizes)[l]) {
      return invalid("weights[", l, "] has ", w.dim_size(0),
                                     " rows but layer ", l - 1, " has ", (*sizes)[l],
                                     " neurons (weights[", l - 1, "].shape[1])");
    }
    (*sizes)[l + 1] = w.dim_size(1);
    if (w.dim_size(1) < 1) {
      return invalid("weights[", l, "] has no output neurons");
    }
    if (w.NumElements() >= (int64_t{1} << 31)) {
      return invalid("weights[", l, "] is too large");
    }
    for (size_t v = 0; v < vectors.size(); ++v) {
      const Tensor& x = (*vectors[v])[l];
      if (x.dims() != 1 || x.dim_size(0) != w.dim_size(1)) {
        return invalid(vector_names[v], "[", l, "] must be a vector of length ",
                                       w.dim_size(1), " (weights[", l, "].shape[1]), got shape ",
                                       x.shape().DebugString());
      }
    }
    if (capacities[l] < 1 || capacities[l] > w.dim_size(1)) {
      return invalid("capacities[", l, "] = ", capacities[l],
                                     " must be in [1, ", w.dim_size(1), "] (layer size)");
    }
  }
  return check_input_ids(in_ids, in_count, (*sizes)[0]);
}

absl::Status get_capacities(OpKernelConstruction* ctx, std::vector<int32_t>* caps, int* N) {
  TF_RETURN_IF_ERROR(ctx->GetAttr("N", N));
  TF_RETURN_IF_ERROR(ctx->GetAttr("capacities", caps));
  if (static_cast<int>(caps->size()) != *N) {
    return invalid("capacities has ", caps->size(), " entries but N = ", *N);
  }
  for (size_t l = 0; l < caps->size(); ++l) {
    if ((*caps)[l] < 1) {
      return invalid("capacities[", l, "] = ", (*caps)[l], " must be >= 1");
    }
  }
  return absl::OkStatus();
}

// Shape function pieces: check the chain of layer sizes as far as known.
absl::Status common_shape_checks(InferenceContext* c, int N, const std::vector<int32_t>& caps,
                           int in_ids_index, int weights_start, std::vector<DimensionHandle>* n_out,
                           DimensionHandle* B, DimensionHandle* T) {
  if (static_cast<int>(caps.size()) != N) {
    return invalid("capacities has ", caps.size(), " entries but N = ", N);
  }
  ShapeHandle in_ids, in_count;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(in_ids_index), 3, &in_ids));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(in_ids_index + 1), 2, &in_count));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(in_ids, 0), c->Dim(in_count, 0), B));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(in_ids, 1), c->Dim(in_count, 1), T));
  n_out->clear();
  for (int l = 0; l < N; ++l) {
    ShapeHandle w;
    TF_RETURN_IF_ERROR(c->WithRank(c->input(weights_start + l), 2, &w));
    if (l > 0) {
      DimensionHandle unused;
      absl::Status s = c->Merge(c->Dim(w, 0), n_out->back(), &unused);
      if (!s.ok()) {
        return invalid("weights[", l, "] rows do not match weights[", l - 1,
                                       "] columns: ", s.message());
      }
    }
    n_out->push_back(c->Dim(w, 1));
    if (caps[l] < 1) {
      return invalid("capacities[", l, "] = ", caps[l], " must be >= 1");
    }
    if (c->ValueKnown(n_out->back()) && caps[l] > c->Value(n_out->back())) {
      return invalid("capacities[", l, "] = ", caps[l], " exceeds layer size ",
                                     c->Value(n_out->back()));
    }
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
    .SetShapeFn([](InferenceContext* c) {
      int N;
      std::vector<int32_t> caps;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &N));
      TF_RETURN_IF_ERROR(c->GetAttr("capacities", &caps));
      std::vector<DimensionHandle> n_out;
      DimensionHandle B, T;
      TF_RETURN_IF_ERROR(common_shape_checks(c, N, caps, 0, 2, &n_out, &B, &T));
      for (int v = 1; v <= 3; ++v) {
        for (int l = 0; l < N; ++l) {
          ShapeHandle x;
          TF_RETURN_IF_ERROR(c->WithRank(c->input(2 + v * N + l), 1, &x));
          DimensionHandle unused;
          TF_RETURN_IF_ERROR(c->Merge(c->Dim(x, 0), n_out[l], &unused));
        }
      }
      c->set_output(0, c->MakeShape({B, n_out[N - 1]}));
      for (int l = 0; l < N; ++l) {
        c->set_output(1 + l, c->MakeShape({B, T, caps[l]}));
        c->set_output(1 + N + l, c->MakeShape({B, T}));
        c->set_output(1 + 2 * N + l, c->MakeShape({B, T}));
        c->set_output(1 + 3 * N + l, c->MakeShape({B, T, caps[l]}));
      }
      return absl::OkStatus();
    })
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
    .SetShapeFn([](InferenceContext* c) {
      int N;
      std::vector<int32_t> caps;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &N));
      TF_RETURN_IF_ERROR(c->GetAttr("capacities", &caps));
      std::vector<DimensionHandle> n_out;
      DimensionHandle B, T;
      TF_RETURN_IF_ERROR(common_shape_checks(c, N, caps, 1, 3, &n_out, &B, &T));
      ShapeHandle g;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &g));
      DimensionHandle unused;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(g, 0), B, &unused));
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(g, 1), n_out[N - 1], &unused));
      for (int l = 0; l < N; ++l) {
        ShapeHandle x;
        TF_RETURN_IF_ERROR(c->WithRank(c->input(3 + N + l), 1, &x));
        TF_RETURN_IF_ERROR(c->Merge(c->Dim(x, 0), n_out[l], &unused));
        ShapeHandle s3, s2;
        TF_RETURN_IF_ERROR(c->Merge(c->input(3 + 2 * N + l), c->MakeShape({B, T, caps[l]}), &s3));
        TF_RETURN_IF_ERROR(c->Merge(c->input(3 + 3 * N + l), c->MakeShape({B, T}), &s2));
        TF_RETURN_IF_ERROR(c->Merge(c->input(3 + 4 * N + l), c->MakeShape({B, T, caps[l]}), &s3));
        c->set_output(l, c->input(3 + l));
      }
      return absl::OkStatus();
    })
    .Doc(R"doc(
BPTT weight gradients of SnnSparseLifLayer given d loss / d logits and the
forward op's ids, count and surrogate outputs.
)doc");

namespace {

// Runs fn(unit, worker) for units [0, n) on the CPU pool, one unit per shard.
template <typename Fn>
void parallel_units(thread::ThreadPool* pool, int64_t n, const Fn& fn) {
  if (n <= 0) return;
  pool->ParallelForWithWorkerId(n, thread::ThreadPool::SchedulingParams::Fixed(1),
                                [&](int64_t begin, int64_t end, int worker) {
                                  for (int64_t u = begin; u < end; ++u) fn(u, worker);
                                });
}

// Copies columns [c0, c0 + w) of every row of wt into rows of stride wp,
// zero-padded, so the inner loops read whole aligned vectors.
void pack_tile(const float* wt, int64_t n_in, int64_t n_out, int64_t c0, int64_t w, int64_t wp,
               float* dst) {
  for (int64_t j = 0; j < n_in; ++j) {
    float* d = dst + j * wp;
    std::memcpy(d, wt + j * n_out + c0, w * sizeof(float));
    std::fill(d + w, d + wp, 0.f);
  }
}

// ===========================================================================
// Forward
// ===========================================================================

struct FwdLayer {
  const float* wt;  // [n_in, n_out]
  const float* alpha;
  const float* theta;
  const float* theta2;
  int64_t n_in, n_out, K;
  Tiling tiling;
  // Tile-major packed copy: tile k at k * n_in * pad, rows of stride
  // round_up(width_k, kLanes); params at k * pad.
  float* packed;
  float* al;   // alpha (0 in padding)
  float* cf;   // (1 - alpha) * c (0 in padding)
  float* th;   // theta (+inf in padding: never spikes)
  float* th2;  // theta2 (+inf in padding: never carries)
  int32_t* ids;      // outputs [B, T, K]
  int32_t* count;    // [B, T]
  int32_t* dropped;  // [B, T]
  float* sur;        // [B, T, K]
};

void fwd_pack(const FwdLayer& L, int64_t tile, float c_in) {
  const int64_t c0 = L.tiling.begin(tile), w = L.tiling.end(tile) - c0;
  const int64_t wp = round_up(w, kLanes);
  pack_tile(L.wt, L.n_in, L.n_out, c0, w, wp, L.packed + tile * L.n_in * L.tiling.pad);
  const float inf = std::numeric_limits<float>::infinity();
  const int64_t p0 = tile * L.tiling.pad;
  for (int64_t i = 0; i < wp; ++i) {
    const bool real = i < w;
    const float a = real ? L.alpha[c0 + i] : 0.f;
    L.al[p0 + i] = a;
    L.cf[p0 + i] = real ? (1.f - a) * c_in : 0.f;
    L.th[p0 + i] = real ? L.theta[c0 + i] : inf;
    L.th2[p0 + i] = real ? L.theta2[c0 + i] : inf;
  }
}

// Per sample block and step, the first K spikes and first K carriers in
// ascending neuron order, with their membranes. Tiles are visited in
// ascending column order, so appending gives the global order and the
// selection needs no dense membrane storage.
struct FwdScratch {
  int32_t* nspk;  // [sb * T] spikes so far (all, including beyond K)
  int32_t* ncar;  // [sb * T] carriers stored (<= K)
  int32_t* spk_id;
  float* spk_u;  // [sb * T * K]
  int32_t* car_id;
  float* car_u;  // [sb * T * K]
  float* u;      // membrane of the current tile and sample
  const float** rows;
};

// Sums the event rows over NC chunks starting at chunk o, updates the
// membranes and returns the spike / carrier lane masks of those chunks.
template <int NC>
inline void integrate_chunks(const float* const* rows, int64_t ne, int64_t o, float* u,
                             const float* al, const float* cf, const float* th,
                             const float* th2, uint64_t* ms, uint64_t* mc) {
  vf a[NC];
#pragma GCC unroll 4
  for (int h = 0; h < NC; ++h) a[h] = splat(0.f);
  // Independent accumulators hide the add latency; row loads from L2 are
  // the real limit.
  for (int64_t e = 0; e < ne; ++e) {
    const float* r = rows[e] + o * kLanes;
#pragma GCC unroll 4
    for (int h = 0; h < NC; ++h) a[h] += ld(r + h * kLanes);
  }
  uint64_t s = 0, c = 0;
#pragma GCC unroll 4
  for (int h = 0; h < NC; ++h) {
    const int64_t i = (o + h) * kLanes;
    vf uu = ld(u + i);
    const vf thv = ld(th + i);
    // Reset of the neurons that fired last step: u - u*H(u - theta) is
    // exactly 0 for them.
    uu = (vf)((vi)uu & ~(uu >= thv));
    uu = ld(al + i) * uu + ld(cf + i) * a[h];
    st(u + i, uu);
    const uint32_t sp = mask_ge(uu, thv);
    const uint32_t ca = mask_lt(ld(th2 + i), uu) & ~sp;
    s |= static_cast<uint64_t>(sp) << (h * kLanes);
    c |= static_cast<uint64_t>(ca) << (h * kLanes);
  }
  *ms = s;
  *mc = c;
}

// Integrates one column tile of one layer for the samples [b0, b1).
void fwd_tile(const FwdLayer& L, const FwdLayer* prev, const int32_t* in_ids,
              const int32_t* in_count, int64_t K0, int64_t T, int64_t b0, int64_t b1, int64_t tile,
              const FwdScratch& s) {
  const int64_t c0 = L.tiling.begin(tile), w = L.tiling.end(tile) - c0;
  const int64_t wp = round_up(w, kLanes);
  const int64_t nch = wp / kLanes;
  const float* Wp = L.packed + tile * L.n_in * L.tiling.pad;
  const int64_t p0 = tile * L.tiling.pad;
  const float* al = L.al + p0;
  const float* cf = L.cf + p0;
  const float* th = L.th + p0;
  const float* th2 = L.th2 + p0;
  const int64_t K = L.K;
  for (int64_t b = b0; b < b1; ++b) {
    std::fill(s.u, s.u + wp, 0.f);
    for (int64_t t = 0; t < T; ++t) {
      int64_t ne = 0;
      if (prev == nullptr) {
        const int32_t* src = in_ids + (b * T + t) * K0;
        const int64_t cnt = in_count[b * T + t];
        for (int64_t e = 0; e < cnt; ++e) s.rows[ne++] = Wp + src[e] * wp;
      } else if (t > 0) {
        const int32_t* src = prev->ids + (b * T + t - 1) * prev->K;
        const int64_t cnt = prev->count[b * T + t - 1];
        for (int64_t e = 0; e < cnt; ++e) s.rows[ne++] = Wp + src[e] * wp;
      }
      const int64_t bt = (b - b0) * T + t;
      for (int64_t o = 0; o < nch; o += 4) {
        uint64_t ms, mc;
        switch (std::min<int64_t>(4, nch - o)) {
          case 4: integrate_chunks<4>(s.rows, ne, o, s.u, al, cf, th, th2, &ms, &mc); break;
          case 3: integrate_chunks<3>(s.rows, ne, o, s.u, al, cf, th, th2, &ms, &mc); break;
          case 2: integrate_chunks<2>(s.rows, ne, o, s.u, al, cf, th, th2, &ms, &mc); break;
          default: integrate_chunks<1>(s.rows, ne, o, s.u, al, cf, th, th2, &ms, &mc); break;
        }
        if (ms) {
          int64_t n = s.nspk[bt];
          s.nspk[bt] = static_cast<int32_t>(n + __builtin_popcountll(ms));
          for (; ms && n < K; ms &= ms - 1, ++n) {
            const int64_t i = o * kLanes + __builtin_ctzll(ms);
            s.spk_id[bt * K + n] = static_cast<int32_t>(c0 + i);
            s.spk_u[bt * K + n] = s.u[i];
          }
        }
        if (mc) {
          int64_t n = s.ncar[bt];
          for (; mc && n < K; mc &= mc - 1, ++n) {
            const int64_t i = o * kLanes + __builtin_ctzll(mc);
            s.car_id[bt * K + n] = static_cast<int32_t>(c0 + i);
            s.car_u[bt * K + n] = s.u[i];
          }
          s.ncar[bt] = static_cast<int32_t>(n);
        }
      }
    }
  }
}

// Writes the slots of samples [b0, b1) from the collected lists.
void fwd_select(const FwdLayer& L, int64_t T, int64_t b0, int64_t b1, float beta,
                const FwdScratch& s, float* logits /* null unless last layer */) {
  const int64_t K = L.K;
  for (int64_t b = b0; b < b1; ++b) {
    if (logits) std::fill(logits + b * L.n_out, logits + (b + 1) * L.n_out, 0.f);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t bt = (b - b0) * T + t;
      int32_t* oid = L.ids + (b * T + t) * K;
      float* osur = L.sur + (b * T + t) * K;
      const int64_t total = s.nspk[bt];
      const int64_t cnt = std::min(total, K);
      const int64_t ncar = std::min<int64_t>(s.ncar[bt], K - cnt);
      auto put = [&](int64_t slot, int32_t id, float u) {
        oid[slot] = id;
        const float d = beta * std::fabs(u - L.theta[id]) + 1.f;
        osur[slot] = 1.f / (d * d);
      };
      for (int64_t k = 0; k < cnt; ++k) put(k, s.spk_id[bt * K + k], s.spk_u[bt * K + k]);
      for (int64_t k = 0; k < ncar; ++k) put(cnt + k, s.car_id[bt * K + k], s.car_u[bt * K + k]);
      for (int64_t k = cnt + ncar; k < K; ++k) {
        oid[k] = -1;
        osur[k] = 0.f;
      }
      L.count[b * T + t] = static_cast<int32_t>(cnt);
      L.dropped[b * T + t] = static_cast<int32_t>(total - cnt);
      if (logits) {
        for (int64_t k = 0; k < cnt; ++k) logits[b * L.n_out + oid[k]] += 1.f;
      }
    }
  }
}

class SnnSparseLifLayerOp : public OpKernel {
 public:
  explicit SnnSparseLifLayerOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, get_capacities(ctx, &caps_, &N_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_scale", &input_scale_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("beta", &beta_));
  }

  void Compute(OpKernelContext* ctx) override {
    PROF_T0
    const Tensor& in_ids = ctx->input(0);
    const Tensor& in_count = ctx->input(1);
    OpInputList weights, alpha, theta, theta2;
    OP_REQUIRES_OK(ctx, ctx->input_list("weights", &weights));
    OP_REQUIRES_OK(ctx, ctx->input_list("alpha", &alpha));
    OP_REQUIRES_OK(ctx, ctx->input_list("threshold", &theta));
    OP_REQUIRES_OK(ctx, ctx->input_list("threshold2", &theta2));
    std::vector<int64_t> sizes;
    OP_REQUIRES_OK(ctx, check_network(in_ids, in_count, weights, {&alpha, &theta, &theta2},
                                      {"alpha", "threshold", "threshold2"}, caps_, &sizes));
    const int N = N_;
    const int64_t B = in_ids.dim_size(0), T = in_ids.dim_size(1), K0 = in_ids.dim_size(2);

    Tensor* logits_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({B, sizes[N]}), &logits_t));
    OpOutputList ids_o, count_o, dropped_o, sur_o;
    OP_REQUIRES_OK(ctx, ctx->output_list("ids", &ids_o));
    OP_REQUIRES_OK(ctx, ctx->output_list("count", &count_o));
    OP_REQUIRES_OK(ctx, ctx->output_list("dropped", &dropped_o));
    OP_REQUIRES_OK(ctx, ctx->output_list("surrogate", &sur_o));
    std::vector<FwdLayer> layers(N);
    int64_t packed_floats = 0, param_floats = 0, max_pad = 0, max_K = 0;
    for (int l = 0; l < N; ++l) {
      Tensor *a, *b, *c, *d;
      OP_REQUIRES_OK(ctx, ids_o.allocate(l, TensorShape({B, T, caps_[l]}), &a));
      OP_REQUIRES_OK(ctx, count_o.allocate(l, TensorShape({B, T}), &b));
      OP_REQUIRES_OK(ctx, dropped_o.allocate(l, TensorShape({B, T}), &c));
      OP_REQUIRES_OK(ctx, sur_o.allocate(l, TensorShape({B, T, caps_[l]}), &d));
      FwdLayer& L = layers[l];
      L.wt = weights[l].flat<float>().data();
      L.alpha = alpha[l].flat<float>().data();
      L.theta = theta[l].flat<float>().data();
      L.theta2 = theta2[l].flat<float>().data();
      L.n_in = sizes[l];
      L.n_out = sizes[l + 1];
      L.K = caps_[l];
      L.tiling = make_tiling(L.n_out, L.n_in * sizeof(float), kFwdTileBytes, kLanes, 1, 1);
      L.ids = a->flat<int32_t>().data();
      L.count = b->flat<int32_t>().data();
      L.dropped = c->flat<int32_t>().data();
      L.sur = d->flat<float>().data();
      packed_floats += L.tiling.ntiles * L.n_in * L.tiling.pad;
      param_floats += L.tiling.ntiles * L.tiling.pad;
      max_pad = std::max(max_pad, L.tiling.pad);
      max_K = std::max(max_K, L.K);
    }
    float* logits = logits_t->flat<float>().data();
    if (B == 0) return;
    if (T == 0) {
      std::fill(logits, logits + B * sizes[N], 0.f);
      return;
    }

    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const int nthreads = std::max(1, pool->NumThreads());
    // A few blocks per thread balance the cores; each block re-reads the
    // packed weights from L3 once per layer, so not too many.
    const int64_t sb = ceil_div(B, std::min<int64_t>(B, kFwdBlocksPerThread * nthreads));
    const int64_t nblocks = ceil_div(B, sb);

    auto carve_worker = [&](Arena& a, FwdScratch* s) {
      s->nspk = a.take<int32_t>(sb * T);
      s->ncar = a.take<int32_t>(sb * T);
      s->spk_id = a.take<int32_t>(sb * T * max_K);
      s->spk_u = a.take<float>(sb * T * max_K);
      s->car_id = a.take<int32_t>(sb * T * max_K);
      s->car_u = a.take<float>(sb * T * max_K);
      s->u = a.take<float>(max_pad);
      s->rows = a.take<const float*>(std::max<int64_t>(K0, max_K));
    };
    const int nworkers = nthreads + 1;
    Arena probe(nullptr);
    probe.take<float>(packed_floats);
    for (int i = 0; i < 4; ++i) probe.take<float>(param_floats);
    const int64_t shared_bytes = probe.used();
    Arena wprobe(nullptr);
    FwdScratch sprobe;
    carve_worker(wprobe, &sprobe);
    const int64_t per_worker = wprobe.used();
    Tensor scratch;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_INT8,
                                           TensorShape({shared_bytes + per_worker * nworkers + 64}),
                                           &scratch));
    char* base = reinterpret_cast<char*>(scratch.flat<int8_t>().data());
    base += (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
    Arena shared(base);
    for (FwdLayer& L : layers) {
      const int64_t np = L.tiling.ntiles * L.tiling.pad;
      L.packed = shared.take<float>(L.tiling.ntiles * L.n_in * L.tiling.pad);
      L.al = shared.take<float>(np);
      L.cf = shared.take<float>(np);
      L.th = shared.take<float>(np);
      L.th2 = shared.take<float>(np);
    }
    char* worker_base = base + shared_bytes;
    PROF_MARK("fwd setup");

    // Pack every tile of every layer once; all sample blocks share them.
    std::vector<std::pair<int, int64_t>> pack_units;
    for (int l = 0; l < N; ++l) {
      for (int64_t k = 0; k < layers[l].tiling.ntiles; ++k) pack_units.emplace_back(l, k);
    }
    const float c_in = input_scale_;
    parallel_units(pool, pack_units.size(), [&](int64_t u, int) {
      fwd_pack(layers[pack_units[u].first], pack_units[u].second, c_in);
    });
    PROF_MARK("fwd pack");

    const int32_t* in_ids_p = in_ids.flat<int32_t>().data();
    const int32_t* in_count_p = in_count.flat<int32_t>().data();
    const float beta = beta_;
    parallel_units(pool, nblocks, [&](int64_t blk, int worker) {
      Arena a(worker_base + per_worker * worker);
      FwdScratch s;
      carve_worker(a, &s);
      const int64_t b0 = blk * sb, b1 = std::min(B, b0 + sb);
      for (int l = 0; l < N; ++l) {
        const FwdLayer& L = layers[l];
        std::fill(s.nspk, s.nspk + (b1 - b0) * T, 0);
        std::fill(s.ncar, s.ncar + (b1 - b0) * T, 0);
        {
          PROF_SCOPE(1)
          for (int64_t tile = 0; tile < L.tiling.ntiles; ++tile) {
            fwd_tile(L, l > 0 ? &layers[l - 1] : nullptr, in_ids_p, in_count_p, K0, T, b0, b1,
                     tile, s);
          }
        }
        PROF_SCOPE(2)
        fwd_select(L, T, b0, b1, beta, s, l == N - 1 ? logits : nullptr);
      }
    });
    PROF_MARK("fwd main");
    PROF_DUMP();
  }

 private:
  int N_;
  std::vector<int32_t> caps_;
  float input_scale_, beta_;
};

REGISTER_KERNEL_BUILDER(Name("SnnSparseLifLayer").Device(DEVICE_CPU), SnnSparseLifLayerOp);

// ===========================================================================
// Backward
// ===========================================================================

struct BwdLayer {
  const float* wt;
  const float* alpha;
  int64_t n_in, n_out, K;
  const int32_t* ids;    // [B, T, K]
  const int32_t* count;  // [B, T]
  const float* sur;      // [B, T, K]
  std::vector<int32_t> filled;  // [B, T] non-padding slots
  float* dw;                    // output [n_in, n_out]
};

// One presynaptic event of a sample block, bucketed by presynaptic neuron:
// the gI row it pairs with, whether it was transmitted (adds to dWt) and
// where its ds goes (-1 for input spikes, which need none).
struct Event {
  int32_t row_tx;  // (row in the block's gI buffer) << 1 | transmitted
  int32_t out;     // index into ds of the presynaptic layer, or -1
};

struct BwdPlan {
  Tiling tiling;
  int64_t S;        // samples per block
  int64_t nblk;     // sample blocks
  int64_t nsb;      // ranges of blocks run as separate units (narrow layers)
  int64_t ngroups;  // tile groups, each with its own ds partial buffer
  int64_t kev;      // event slots per step (K0 or K of the previous layer)
};

struct BwdScratch {
  float* Wp;   // packed weight tile [n_in, wp]
  float* dWp;  // gradient tile [n_in, wp]
  float* G;    // gI of the block [S * T, wp]
  float* al;
  float* cf;
  float* eps;
  float* acc;
};

// Everything the units of one layer share.
struct BwdPass {
  const BwdLayer* L;
  const BwdLayer* prev;  // null for the first layer (input spikes)
  BwdPlan plan;
  int64_t T, B;
  float c_in;
  const float* ds;      // [B, T, K] complete ds of this layer
  float* dsp;           // [ngroups, B, T, K_prev]
  const int32_t* off;   // [nblk, n_in + 1] CSR offsets by presynaptic neuron
  const Event* ev;      // [nblk, S * T * kev]
  float* priv;          // [ntiles, nsb - 1, n_in, pad]
};

// Buckets the presynaptic events of sample block blk by neuron (counting
// sort, keeping (sample, step, slot) order inside a bucket).
void bwd_bucket(const BwdPass& P, const int32_t* in_ids, const int32_t* in_count, int64_t K0,
                int64_t blk, int32_t* off, Event* ev) {
  const BwdLayer& L = *P.L;
  const int64_t T = P.T, S = P.plan.S;
  const int64_t b0 = blk * S, b1 = std::min(P.B, b0 + S);
  std::fill(off, off + L.n_in + 1, 0);
  auto for_each = [&](auto&& fn) {
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        const int32_t row = static_cast<int32_t>((b - b0) * T + t);
        if (P.prev == nullptr) {
          const int32_t* src = in_ids + (b * T + t) * K0;
          for (int64_t e = 0; e < in_count[b * T + t]; ++e) fn(src[e], row, 1, -1);
        } else if (t > 0) {
          const int64_t pbt = b * T + t - 1;
          const int64_t Kp = P.prev->K;
          const int32_t* src = P.prev->ids + pbt * Kp;
          const int64_t cnt = P.prev->count[pbt];
          for (int64_t k = 0; k < P.prev->filled[pbt]; ++k) {
            fn(src[k], row, k < cnt ? 1 : 0, static_cast<int32_t>(pbt * Kp + k));
          }
        }
      }
    }
  };
  for_each([&](int32_t j, int32_t, int, int32_t) { ++off[j + 1]; });
  for (int64_t j = 0; j < L.n_in; ++j) off[j + 1] += off[j];
  std::vector<int32_t> pos(off, off + L.n_in);
  for_each([&](int32_t j, int32_t row, int tx, int32_t out) {
    ev[pos[j]++] = Event{row << 1 | tx, out};
  });
}

void bwd_tile(const BwdPass& P, int64_t tile, int64_t blk0, int64_t blk1, int64_t range,
              float* dsp, const BwdScratch& s) {
  const BwdLayer& L = *P.L;
  const int64_t c0 = P.plan.tiling.begin(tile);
  const int64_t w = P.plan.tiling.end(tile) - c0;
  const int64_t wp = round_up(w, kLanes);
  const int64_t nch = wp / kLanes;
  const bool need_ds = P.prev != nullptr;
  {
    PROF_SCOPE(3)
    if (need_ds) pack_tile(L.wt, L.n_in, L.n_out, c0, w, wp, s.Wp);
    std::fill(s.dWp, s.dWp + L.n_in * wp, 0.f);
    for (int64_t i = 0; i < wp; ++i) {
      const float a = i < w ? L.alpha[c0 + i] : 0.f;
      s.al[i] = a;
      s.cf[i] = i < w ? (1.f - a) * P.c_in : 0.f;
    }
  }
  const int64_t T = P.T, S = P.plan.S;
  const vf zero = splat(0.f);
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const int64_t b0 = blk * S, b1 = std::min(P.B, b0 + S);
    {
      PROF_SCOPE(4)
      // eps recursion of this tile; gI rows go to G for the event pass.
      for (int64_t b = b0; b < b1; ++b) {
        std::fill(s.eps, s.eps + wp, 0.f);
        for (int64_t t = T - 1; t >= 0; --t) {
          const int64_t bt = b * T + t;
          for (int64_t c = 0; c < nch; ++c) {
            st(s.eps + c * kLanes, ld(s.al + c * kLanes) * ld(s.eps + c * kLanes));
          }
          const int32_t* sid = L.ids + bt * L.K;
          const float* sds = P.ds + bt * L.K;
          const float* ssur = L.sur + bt * L.K;
          for (int64_t k = 0, nf = L.filled[bt]; k < nf; ++k) {
            const int64_t i = sid[k] - c0;
            if (i >= 0 && i < w) s.eps[i] += sds[k] * ssur[k];
          }
          float* g = s.G + ((b - b0) * T + t) * wp;
          for (int64_t c = 0; c < nch; ++c) {
            st(g + c * kLanes, ld(s.cf + c * kLanes) * ld(s.eps + c * kLanes));
          }
        }
      }
    }
    PROF_SCOPE(5)
    const int32_t* off = P.off + blk * (L.n_in + 1);
    const Event* ev = P.ev + blk * S * T * P.plan.kev;
    for (int64_t j = 0; j < L.n_in; ++j) {
      const int32_t e0 = off[j], e1 = off[j + 1];
      if (e0 == e1) continue;
      float* __restrict dr = s.dWp + j * wp;
      if (!need_ds) {
        // Input spikes: only the weight gradient, summed in registers over
        // all events of this neuron before one update of its row.
        for (int64_t c = 0; c < nch; c += 2) {
          const bool two = c + 1 < nch;
          vf a0 = zero, a1 = zero;
          for (int32_t e = e0; e < e1; ++e) {
            const float* g = s.G + (ev[e].row_tx >> 1) * wp + c * kLanes;
            a0 += ld(g);
            if (two) a1 += ld(g + kLanes);
          }
          st(dr + c * kLanes, ld(dr + c * kLanes) + a0);
          if (two) st(dr + (c + 1) * kLanes, ld(dr + (c + 1) * kLanes) + a1);
        }
        continue;
      }
      const float* __restrict wr = s.Wp + j * wp;
      bool any_tx = false;
      for (int32_t e = e0; e < e1; ++e) {
        const float* __restrict g = s.G + (ev[e].row_tx >> 1) * wp;
        vf d0 = zero, d1 = zero;
        if (ev[e].row_tx & 1) {
          // Transmitted: one pass over the row gives the dot for ds and
          // the gradient contribution.
          if (!any_tx) {
            std::fill(s.acc, s.acc + wp, 0.f);
            any_tx = true;
          }
          int64_t c = 0;
          for (; c + 2 <= nch; c += 2) {
            const vf g0 = ld(g + c * kLanes), g1 = ld(g + (c + 1) * kLanes);
            d0 += ld(wr + c * kLanes) * g0;
            d1 += ld(wr + (c + 1) * kLanes) * g1;
            st(s.acc + c * kLanes, ld(s.acc + c * kLanes) + g0);
            st(s.acc + (c + 1) * kLanes, ld(s.acc + (c + 1) * kLanes) + g1);
          }
          if (c < nch) {
            const vf g0 = ld(g + c * kLanes);
            d0 += ld(wr + c * kLanes) * g0;
            st(s.acc + c * kLanes, ld(s.acc + c * kLanes) + g0);
          }
        } else {
          // Gradient carrier: not transmitted, dot only.
          int64_t c = 0;
          for (; c + 2 <= nch; c += 2) {
            d0 += ld(wr + c * kLanes) * ld(g + c * kLanes);
            d1 += ld(wr + (c + 1) * kLanes) * ld(g + (c + 1) * kLanes);
          }
          if (c < nch) d0 += ld(wr + c * kLanes) * ld(g + c * kLanes);
        }
        dsp[ev[e].out] += hsum(d0 + d1);
      }
      if (any_tx) {
        for (int64_t c = 0; c < nch; ++c) {
          st(dr + c * kLanes, ld(dr + c * kLanes) + ld(s.acc + c * kLanes));
        }
      }
    }
  }
  // Range 0 owns the output columns; other ranges (narrow layers only) keep
  // their own copy, summed once all units finished.
  if (range == 0) {
    for (int64_t j = 0; j < L.n_in; ++j) {
      std::memcpy(L.dw + j * L.n_out + c0, s.dWp + j * wp, w * sizeof(float));
    }
  } else {
    const int64_t pad = P.plan.tiling.pad;
    float* dst = P.priv + (tile * (P.plan.nsb - 1) + (range - 1)) * L.n_in * pad;
    for (int64_t j = 0; j < L.n_in; ++j) {
      std::memcpy(dst + j * pad, s.dWp + j * wp, w * sizeof(float));
    }
  }
}

class SnnSparseLifLayerGradOp : public OpKernel {
 public:
  explicit SnnSparseLifLayerGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, get_capacities(ctx, &caps_, &N_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_scale", &input_scale_));
  }

  void Compute(OpKernelContext* ctx) override {
    PROF_T0
    const Tensor& grad_logits = ctx->input(0);
    const Tensor& in_ids = ctx->input(1);
    const Tensor& in_count = ctx->input(2);
    OpInputList weights, alpha, ids, count, sur;
    OP_REQUIRES_OK(ctx, ctx->input_list("weights", &weights));
    OP_REQUIRES_OK(ctx, ctx->input_list("alpha", &alpha));
    OP_REQUIRES_OK(ctx, ctx->input_list("ids", &ids));
    OP_REQUIRES_OK(ctx, ctx->input_list("count", &count));
    OP_REQUIRES_OK(ctx, ctx->input_list("surrogate", &sur));
    std::vector<int64_t> sizes;
    OP_REQUIRES_OK(ctx, check_network(in_ids, in_count, weights, {&alpha}, {"alpha"}, caps_, &sizes));
    const int N = N_;
    const int64_t B = in_ids.dim_size(0), T = in_ids.dim_size(1), K0 = in_ids.dim_size(2);
    OP_REQUIRES(ctx,
                grad_logits.dims() == 2 && grad_logits.dim_size(0) == B &&
                    grad_logits.dim_size(1) == sizes[N],
                invalid("grad_logits must be [B, n_L] = [", B, ", ", sizes[N], "], got shape ",
                        grad_logits.shape().DebugString()));

    std::vector<BwdLayer> layers(N);
    OpOutputList dw_o;
    OP_REQUIRES_OK(ctx, ctx->output_list("grad_weights", &dw_o));
    for (int l = 0; l < N; ++l) {
      const int64_t K = caps_[l];
      const TensorShape s3({B, T, K}), s2({B, T});
      OP_REQUIRES(ctx, ids[l].shape() == s3 && sur[l].shape() == s3 && count[l].shape() == s2,
                  invalid("layer ", l, ": ids and surrogate must be ", s3.DebugString(),
                          " and count ", s2.DebugString(), ", got ", ids[l].shape().DebugString(),
                          ", ", sur[l].shape().DebugString(), ", ",
                          count[l].shape().DebugString()));
      BwdLayer& L = layers[l];
      L.wt = weights[l].flat<float>().data();
      L.alpha = alpha[l].flat<float>().data();
      L.n_in = sizes[l];
      L.n_out = sizes[l + 1];
      L.K = K;
      L.ids = ids[l].flat<int32_t>().data();
      L.count = count[l].flat<int32_t>().data();
      L.sur = sur[l].flat<float>().data();
      // Slots are spikes, then carriers, then -1 padding; anything else would
      // make the kernel index out of bounds.
      L.filled.resize(B * T);
      for (int64_t bt = 0; bt < B * T; ++bt) {
        const int32_t* sid = L.ids + bt * K;
        int64_t nf = 0;
        while (nf < K && sid[nf] >= 0) {
          OP_REQUIRES(ctx, sid[nf] < L.n_out,
                      invalid("ids[", l, "][", bt / T, ",", bt % T, ",", nf, "] = ", sid[nf],
                              " is outside [0, ", L.n_out, ")"));
          ++nf;
        }
        for (int64_t k = nf; k < K; ++k) {
          OP_REQUIRES(ctx, sid[k] == -1,
                      invalid("ids[", l, "][", bt / T, ",", bt % T, ",", k, "] = ", sid[k],
                              ": slots after the first -1 must be -1"));
        }
        const int32_t cnt = L.count[bt];
        OP_REQUIRES(ctx, cnt >= 0 && cnt <= nf,
                    invalid("count[", l, "][", bt / T, ",", bt % T, "] = ", cnt,
                            " must be in [0, ", nf, "] (the filled slots)"));
        L.filled[bt] = static_cast<int32_t>(nf);
      }
      Tensor* dw;
      OP_REQUIRES_OK(ctx, dw_o.allocate(l, weights[l].shape(), &dw));
      L.dw = dw->flat<float>().data();
    }
    if (B == 0 || T == 0) {
      for (int l = 0; l < N; ++l) {
        std::fill(layers[l].dw, layers[l].dw + sizes[l] * sizes[l + 1], 0.f);
      }
      return;
    }

    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const int nthreads = std::max(1, pool->NumThreads());

    std::vector<BwdPlan> plans(N);
    int64_t max_tile = 0, max_wp = 0, max_G = 0, max_priv = 0, max_dsp = 0, max_btk = 0;
    int64_t max_off = 0, max_ev = 0;
    for (int l = 0; l < N; ++l) {
      const BwdLayer& L = layers[l];
      BwdPlan& p = plans[l];
      const int64_t bytes_per_col = L.n_in * sizeof(float) * (l > 0 ? 2 : 1);
      // A tile count that divides evenly keeps all cores busy to the end.
      p.tiling = make_tiling(L.n_out, bytes_per_col, kBwdTileBytes, kLanes, nthreads, nthreads);
      p.S = std::max<int64_t>(1, std::min(B, kBwdGBytes / (T * p.tiling.pad * 4)));
      p.nblk = ceil_div(B, p.S);
      // Layers too narrow to give every thread a tile are also split by
      // sample blocks; those ranges need their own gradient copies.
      p.nsb = p.tiling.ntiles >= nthreads
                  ? 1
                  : std::min(p.nblk, ceil_div(nthreads, p.tiling.ntiles));
      p.ngroups = std::min<int64_t>(p.tiling.ntiles, kMaxGroups);
      p.kev = l > 0 ? layers[l - 1].K : K0;
      max_tile = std::max(max_tile, L.n_in * p.tiling.pad);
      max_wp = std::max(max_wp, p.tiling.pad);
      max_G = std::max(max_G, p.S * T * p.tiling.pad);
      max_priv = std::max(max_priv, p.tiling.ntiles * (p.nsb - 1) * L.n_in * p.tiling.pad);
      if (l > 0) max_dsp = std::max(max_dsp, p.ngroups * B * T * layers[l - 1].K);
      max_btk = std::max(max_btk, B * T * L.K);
      max_off = std::max(max_off, p.nblk * (L.n_in + 1));
      max_ev = std::max(max_ev, p.nblk * p.S * T * p.kev);
    }
    auto carve_worker = [&](Arena& a, BwdScratch* s) {
      s->Wp = a.take<float>(max_tile);
      s->dWp = a.take<float>(max_tile);
      s->G = a.take<float>(max_G);
      s->al = a.take<float>(max_wp);
      s->cf = a.take<float>(max_wp);
      s->eps = a.take<float>(max_wp);
      s->acc = a.take<float>(max_wp);
    };
    Arena wprobe(nullptr);
    BwdScratch sprobe;
    carve_worker(wprobe, &sprobe);
    const int64_t per_worker = wprobe.used();
    const int nworkers = nthreads + 1;
    Arena probe(nullptr);
    probe.take<float>(max_btk);
    probe.take<float>(max_btk);
    probe.take<float>(max_dsp);
    probe.take<float>(max_priv);
    probe.take<int32_t>(max_off);
    probe.take<Event>(max_ev);
    const int64_t shared_bytes = probe.used();
    Tensor scratch;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_INT8,
                                           TensorShape({shared_bytes + per_worker * nworkers + 64}),
                                           &scratch));
    char* base = reinterpret_cast<char*>(scratch.flat<int8_t>().data());
    base += (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
    Arena shared(base);
    float* ds_cur = shared.take<float>(max_btk);
    float* ds_next = shared.take<float>(max_btk);
    float* dsp = shared.take<float>(max_dsp);
    float* priv = shared.take<float>(max_priv);
    int32_t* off = shared.take<int32_t>(max_off);
    Event* ev = shared.take<Event>(max_ev);
    char* worker_base = base + shared_bytes;
    PROF_MARK("bwd setup");

    // Last layer: every filled slot receives the logit gradient of its neuron.
    {
      const BwdLayer& L = layers[N - 1];
      const float* g = grad_logits.flat<float>().data();
      for (int64_t bt = 0; bt < B * T; ++bt) {
        const int64_t b = bt / T;
        for (int64_t k = 0; k < L.K; ++k) {
          ds_cur[bt * L.K + k] = k < L.filled[bt] ? g[b * L.n_out + L.ids[bt * L.K + k]] : 0.f;
        }
      }
    }

    const int32_t* in_ids_p = in_ids.flat<int32_t>().data();
    const int32_t* in_count_p = in_count.flat<int32_t>().data();
    for (int l = N - 1; l >= 0; --l) {
      const BwdLayer& L = layers[l];
      const BwdPlan& p = plans[l];
      BwdPass P;
      P.L = &L;
      P.prev = l > 0 ? &layers[l - 1] : nullptr;
      P.plan = p;
      P.T = T;
      P.B = B;
      P.c_in = input_scale_;
      P.ds = ds_cur;
      P.dsp = dsp;
      P.off = off;
      P.ev = ev;
      P.priv = priv;
      parallel_units(pool, p.nblk, [&](int64_t blk, int) {
        bwd_bucket(P, in_ids_p, in_count_p, K0, blk, off + blk * (L.n_in + 1),
                   ev + blk * p.S * T * p.kev);
      });
      PROF_MARK("bwd bucket");
      const int64_t Kp = l > 0 ? layers[l - 1].K : 0;
      parallel_units(pool, p.ngroups * p.nsb, [&](int64_t u, int worker) {
        Arena a(worker_base + per_worker * worker);
        BwdScratch s;
        carve_worker(a, &s);
        const int64_t grp = u / p.nsb, range = u % p.nsb;
        const int64_t blk0 = range * p.nblk / p.nsb, blk1 = (range + 1) * p.nblk / p.nsb;
        float* my_dsp = dsp + grp * B * T * Kp;
        if (Kp > 0) {
          const int64_t b0 = blk0 * p.S, b1 = std::min(B, blk1 * p.S);
          std::fill(my_dsp + b0 * T * Kp, my_dsp + b1 * T * Kp, 0.f);
        }
        const int64_t t0 = grp * p.tiling.ntiles / p.ngroups;
        const int64_t t1 = (grp + 1) * p.tiling.ntiles / p.ngroups;
        for (int64_t tile = t0; tile < t1; ++tile) bwd_tile(P, tile, blk0, blk1, range, my_dsp, s);
      });
      PROF_MARK(l == 2 ? "bwd layer 2" : l == 1 ? "bwd layer 1" : "bwd layer 0");
      if (p.nsb > 1) {
        // Sum the other ranges' gradients into the output (narrow layers
        // only, so this is small).
        for (int64_t tile = 0; tile < p.tiling.ntiles; ++tile) {
          const int64_t c0 = p.tiling.begin(tile);
          const int64_t w = p.tiling.end(tile) - c0;
          for (int64_t r = 1; r < p.nsb; ++r) {
            const float* src = priv + (tile * (p.nsb - 1) + (r - 1)) * L.n_in * p.tiling.pad;
            for (int64_t j = 0; j < L.n_in; ++j) {
              float* d = L.dw + j * L.n_out + c0;
              const float* sr = src + j * p.tiling.pad;
              for (int64_t i = 0; i < w; ++i) d[i] += sr[i];
            }
          }
        }
      }
      if (l > 0) {
        // ds of the previous layer = the group partials summed in group
        // order, so the result does not depend on scheduling.
        const int64_t n = B * T * Kp;
        const int64_t ng = p.ngroups;
        parallel_units(pool, nthreads, [&](int64_t part, int) {
          const int64_t i0 = part * n / nthreads, i1 = (part + 1) * n / nthreads;
          for (int64_t i = i0; i < i1; ++i) {
            float acc = dsp[i];
            for (int64_t gi = 1; gi < ng; ++gi) acc += dsp[gi * n + i];
            ds_next[i] = acc;
          }
        });
        std::swap(ds_cur, ds_next);
      }
      PROF_MARK("bwd reduce");
      PROF_DUMP();
    }
  }

 private:
  int N_;
  std::vector<int32_t> caps_;
  float input_scale_;
};

REGISTER_KERNEL_BUILDER(Name("SnnSparseLifLayerGrad").Device(DEVICE_CPU), SnnSparseLifLayerGradOp);

}  // namespace
}  // namespace tensorflow
