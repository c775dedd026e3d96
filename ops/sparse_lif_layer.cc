// Fused multi-layer LIF network with activity-sparse spike transmission:
// SnnSparseLifLayer runs the whole time loop of all layers, and
// SnnSparseLifLayerGrad its BPTT weight gradient.
//
// Why the kernels look the way they do (speed is the reason this op exists):
// * The membrane of neuron i depends only on column i of the weights; only
//   the capacity-limited selection couples the neurons of a layer. So both
//   kernels walk the transposed weights in column tiles and run the time
//   recursion of many samples against one tile while it sits in L2, instead
//   of gathering whole rows from L3 at every step.
// * Forward: samples are independent, so threads take blocks of samples and
//   run all layers for them (layer l+1 needs only layer l's spikes of the same
//   samples). Tiles are visited in ascending column order, so the first K
//   spikes and carriers are collected on the fly and no dense membrane buffer
//   is needed for the selection.
// * Backward: the weight gradient is a reduction over the batch, so threads
//   take column tiles instead: a tile owns its slice of dWt for all samples
//   and no per-thread dWt copies or final reduction are needed. The eps
//   recursion is elementwise and runs inside the tile; its gI rows for a
//   block of samples stay in L2 while the presynaptic events of the block,
//   bucketed by presynaptic neuron, are applied: each Wt/dWt row is then read
//   and updated once per block rather than once per spike, in ascending row
//   order. Layers go from last to first because ds of layer l needs layer
//   l+1's gI; the ds dot products are split over tiles, so tile groups write
//   partial sums that are added in a fixed order (results do not depend on
//   thread scheduling).

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/threadpool.h"

namespace tensorflow {
namespace {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

// ---------------------------------------------------------------------------
// Vector helpers. GCC vector extensions keep the hot loops explicit without
// tying the file to one instruction set: with AVX-512 a vf is one register,
// with AVX2 two, and the code still builds for any -march.
// vf values only travel between inline functions of this file, so GCC's
// warning that their ABI differs without AVX-512 does not concern us (helper
// parameters are const references because the pragma cannot silence the
// matching note for by-value parameters).
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int kLanes = 16;

inline vf ld(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void st(float* p, const vf& v) { std::memcpy(p, &v, sizeof(v)); }
inline vf splat(float x) {
  vf v = {x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
  return v;
}

// Bit i set where a[i] >= b[i] (false for NaN, like the scalar comparison).
inline uint32_t mask_ge(const vf& a, const vf& b) {
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
inline uint32_t mask_lt(const vf& a, const vf& b) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_LT_OQ);
#else
  vi m = a < b;
  uint32_t r = 0;
  for (int i = 0; i < kLanes; ++i) r |= (uint32_t)(m[i] & 1) << i;
  return r;
#endif
}
// Hides a value from the optimiser so a product is not fused into the
// following add (FMA contraction): the membrane update then rounds each
// product like the model's plain multiply-then-add on every build, which
// makes spike decisions reproducible against a reference implementation.
inline void no_contract(vf& x) {
#if defined(__AVX512F__)
  asm("" : "+v"(x));
#else
  asm("" : "+m"(x));
#endif
}

inline float hsum(const vf& v) {
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

// Cache budgets, tuned on a 2-core AMD EPYC (Zen 4: 1 MB L2 per core,
// 32 MB shared L3); the macros let another machine's build override them.
#ifndef SNN_FWD_TILE_BYTES
#define SNN_FWD_TILE_BYTES (768 << 10)
#endif
#ifndef SNN_BWD_TILE_BYTES
#define SNN_BWD_TILE_BYTES (4096 << 10)
#endif
#ifndef SNN_BWD_TILE0_BYTES
#define SNN_BWD_TILE0_BYTES (512 << 10)
#endif
#ifndef SNN_BWD_G_BYTES
#define SNN_BWD_G_BYTES (512 << 10)
#endif
// Forward: the packed weight tile stays in L2 while a sample block runs
// through it.
constexpr int64_t kFwdTileBytes = SNN_FWD_TILE_BYTES;
// A few sample blocks per thread balance the cores; each block re-reads the
// packed weights from L3 once, so not too many.
constexpr int64_t kFwdBlocksPerThread = 2;
// Backward, layers > 0: Wt + dWt tile. Rows are visited in ascending order
// once per sample block, so the tile may exceed L2; wider tiles mean fewer
// partial dot products (and horizontal sums) per event.
constexpr int64_t kBwdTileBytes = SNN_BWD_TILE_BYTES;
// Backward, first layer: no dot products, only the dWt tile, kept in L2.
constexpr int64_t kBwdTile0Bytes = SNN_BWD_TILE0_BYTES;
// gI rows of one sample block, read at random by the events: kept in L2.
constexpr int64_t kBwdGBytes = SNN_BWD_G_BYTES;
// Up to this many filled slots a linear scan finds a tile's slots faster
// than binary searches.
constexpr int64_t kLinearSlots = 24;
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
  const int64_t max_units =
      std::max<int64_t>(1, budget / std::max<int64_t>(1, bytes_per_col) / align);
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
      return invalid("in_count[", bt / T, ",", bt % T, "] = ", c, " is outside [0, ", K0,
                     "] (K0 = in_ids.shape[2])");
    }
    for (int64_t k = 0; k < c; ++k) {
      const int32_t j = ids(bt * K0 + k);
      if (j < 0 || j >= n0) {
        return invalid("in_ids[", bt / T, ",", bt % T, ",", k, "] = ", j, " is outside [0, ", n0,
                       ") (n_0 = weights[0].shape[0])");
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
    return invalid("capacities has ", capacities.size(), " entries but there are ", N, " layers");
  }
  if (in_ids.dims() != 3) {
    return invalid("in_ids must be [B, T, K0], got shape ", in_ids.shape().DebugString());
  }
  if (in_count.dims() != 2 || in_count.dim_size(0) != in_ids.dim_size(0) ||
      in_count.dim_size(1) != in_ids.dim_size(1)) {
    return invalid("in_count must be [B, T] = [", in_ids.dim_size(0), ", ", in_ids.dim_size(1),
                   "], got shape ", in_count.shape().DebugString());
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
      return invalid("weights[", l, "] has ", w.dim_size(0), " rows but layer ", l - 1, " has ",
                     (*sizes)[l], " neurons (weights[", l - 1, "].shape[1])");
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
        return invalid(vector_names[v], "[", l, "] must be a vector of length ", w.dim_size(1),
                       " (weights[", l, "].shape[1]), got shape ", x.shape().DebugString());
      }
    }
    if (capacities[l] < 1 || capacities[l] > w.dim_size(1)) {
      return invalid("capacities[", l, "] = ", capacities[l], " must be in [1, ", w.dim_size(1),
                     "] (layer size)");
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
                                 int in_ids_index, int weights_start,
                                 std::vector<DimensionHandle>* n_out, DimensionHandle* B,
                                 DimensionHandle* T) {
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
  float* al;         // alpha (0 in padding)
  float* cf;         // (1 - alpha) * c (0 in padding)
  float* th;         // theta (+inf in padding: never spikes)
  float* th2;        // theta2 (+inf in padding: never carries)
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
                             const float* al, const float* cf, const float* th, const float* th2,
                             uint64_t* ms, uint64_t* mc) {
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
    vf decayed = ld(al + i) * uu;
    vf input = ld(cf + i) * a[h];
    no_contract(decayed);
    no_contract(input);
    uu = decayed + input;
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
  // Chunks go in groups of up to four with one accumulator each; balanced
  // groups (5 = 3 + 2, not 4 + 1) avoid a lone, latency-bound accumulator.
  const int64_t ngroups = ceil_div(nch, 4);
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
      for (int64_t q = 0; q < ngroups; ++q) {
        const int64_t o = q * nch / ngroups;
        uint64_t ms, mc;
        switch ((q + 1) * nch / ngroups - o) {
          case 4:
            integrate_chunks<4>(s.rows, ne, o, s.u, al, cf, th, th2, &ms, &mc);
            break;
          case 3:
            integrate_chunks<3>(s.rows, ne, o, s.u, al, cf, th, th2, &ms, &mc);
            break;
          case 2:
            integrate_chunks<2>(s.rows, ne, o, s.u, al, cf, th, th2, &ms, &mc);
            break;
          default:
            integrate_chunks<1>(s.rows, ne, o, s.u, al, cf, th, th2, &ms, &mc);
            break;
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
    OP_REQUIRES_OK(
        ctx, ctx->allocate_temp(DT_INT8, TensorShape({shared_bytes + per_worker * nworkers + 64}),
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

    // Pack every tile of every layer once; all sample blocks share them.
    std::vector<std::pair<int, int64_t>> pack_units;
    for (int l = 0; l < N; ++l) {
      for (int64_t k = 0; k < layers[l].tiling.ntiles; ++k) pack_units.emplace_back(l, k);
    }
    const float c_in = input_scale_;
    parallel_units(pool, pack_units.size(), [&](int64_t u, int) {
      fwd_pack(layers[pack_units[u].first], pack_units[u].second, c_in);
    });

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
        for (int64_t tile = 0; tile < L.tiling.ntiles; ++tile) {
          fwd_tile(L, l > 0 ? &layers[l - 1] : nullptr, in_ids_p, in_count_p, K0, T, b0, b1, tile,
                   s);
        }
        fwd_select(L, T, b0, b1, beta, s, l == N - 1 ? logits : nullptr);
      }
    });
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
  const int32_t* ids;           // [B, T, K]
  const int32_t* count;         // [B, T]
  const float* sur;             // [B, T, K]
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
  const float* ds;     // [B, T, K] complete ds of this layer
  float* dsp;          // [ngroups, B, T, K_prev]
  const int32_t* off;  // [nblk, n_in + 1] CSR offsets by presynaptic neuron
  const Event* ev;     // [nblk, S * T * kev]
  float* priv;         // [ntiles, nsb - 1, n_in, pad]
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
  // off[j] serves as bucket j's fill cursor and ends at bucket j+1's start;
  // shifting by one restores the offsets.
  for_each([&](int32_t j, int32_t row, int tx, int32_t out) {
    ev[off[j]++] = Event{row << 1 | tx, out};
  });
  for (int64_t j = L.n_in; j > 0; --j) off[j] = off[j - 1];
  off[0] = 0;
}

// dr[chunks c..c+NC) += sum of the gI rows of n events.
template <int NC>
inline void add_rows(const float* G, int64_t wp, const Event* ev, int64_t n, int64_t c,
                     float* __restrict dr) {
  vf a[NC];
#pragma GCC unroll 4
  for (int h = 0; h < NC; ++h) a[h] = splat(0.f);
  for (int64_t e = 0; e < n; ++e) {
    const float* g = G + (ev[e].row_tx >> 1) * wp + c * kLanes;
#pragma GCC unroll 4
    for (int h = 0; h < NC; ++h) a[h] += ld(g + h * kLanes);
  }
#pragma GCC unroll 4
  for (int h = 0; h < NC; ++h) st(dr + (c + h) * kLanes, ld(dr + (c + h) * kLanes) + a[h]);
}

// Returns w . g over nch chunks and, if kAccumulate, adds g to acc.
template <bool kAccumulate>
inline float dot_rows(const float* __restrict w, const float* __restrict g, float* __restrict acc,
                      int64_t nch) {
  // Two partial sums measured faster than one or four here: the loads, not
  // the FMA latency, limit this loop.
  vf d0 = splat(0.f), d1 = splat(0.f);
  int64_t c = 0;
  for (; c + 2 <= nch; c += 2) {
    const int64_t i = c * kLanes;
    const vf g0 = ld(g + i), g1 = ld(g + i + kLanes);
    d0 += ld(w + i) * g0;
    d1 += ld(w + i + kLanes) * g1;
    if (kAccumulate) {
      st(acc + i, ld(acc + i) + g0);
      st(acc + i + kLanes, ld(acc + i + kLanes) + g1);
    }
  }
  if (c < nch) {
    const int64_t i = c * kLanes;
    const vf g0 = ld(g + i);
    d0 += ld(w + i) * g0;
    if (kAccumulate) st(acc + i, ld(acc + i) + g0);
  }
  return hsum(d0 + d1);
}

void bwd_tile(const BwdPass& P, int64_t tile, int64_t blk0, int64_t blk1, int64_t range, float* dsp,
              const BwdScratch& s) {
  const BwdLayer& L = *P.L;
  const int64_t c0 = P.plan.tiling.begin(tile);
  const int64_t w = P.plan.tiling.end(tile) - c0;
  const int64_t wp = round_up(w, kLanes);
  const int64_t nch = wp / kLanes;
  const bool need_ds = P.prev != nullptr;
  if (need_ds) pack_tile(L.wt, L.n_in, L.n_out, c0, w, wp, s.Wp);
  std::fill(s.dWp, s.dWp + L.n_in * wp, 0.f);
  for (int64_t i = 0; i < wp; ++i) {
    const float a = i < w ? L.alpha[c0 + i] : 0.f;
    s.al[i] = a;
    s.cf[i] = i < w ? (1.f - a) * P.c_in : 0.f;
  }
  const int64_t T = P.T, S = P.plan.S;
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const int64_t b0 = blk * S, b1 = std::min(P.B, b0 + S);
    // eps recursion of this tile; gI rows go to G for the event pass.
    {
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
          const int64_t nf = L.filled[bt];
          if (nf <= kLinearSlots) {
            for (int64_t k = 0; k < nf; ++k) {
              const int64_t i = sid[k] - c0;
              if (i >= 0 && i < w) s.eps[i] += sds[k] * ssur[k];
            }
          } else {
            // Spikes and carriers are each ascending (checked on entry), so
            // the tile's slots are one range in each run.
            const int64_t runs[3] = {0, L.count[bt], nf};
            for (int r = 0; r < 2; ++r) {
              const int32_t* lo = std::lower_bound(sid + runs[r], sid + runs[r + 1], c0);
              const int32_t* hi = std::lower_bound(lo, sid + runs[r + 1], c0 + w);
              for (const int32_t* q = lo; q < hi; ++q) {
                const int64_t k = q - sid;
                s.eps[*q - c0] += sds[k] * ssur[k];
              }
            }
          }
          float* g = s.G + ((b - b0) * T + t) * wp;
          for (int64_t c = 0; c < nch; ++c) {
            st(g + c * kLanes, ld(s.cf + c * kLanes) * ld(s.eps + c * kLanes));
          }
        }
      }
    }
    const int32_t* off = P.off + blk * (L.n_in + 1);
    const Event* ev = P.ev + blk * S * T * P.plan.kev;
    for (int64_t j = 0; j < L.n_in; ++j) {
      const int32_t e0 = off[j], e1 = off[j + 1];
      if (e0 == e1) continue;
      float* __restrict dr = s.dWp + j * wp;
      if (!need_ds) {
        // Input spikes: only the weight gradient, summed in registers over
        // all events of this neuron before one update of its row.
        for (int64_t c = 0; c < nch; c += 4) {
          switch (std::min<int64_t>(4, nch - c)) {
            case 4:
              add_rows<4>(s.G, wp, ev + e0, e1 - e0, c, dr);
              break;
            case 3:
              add_rows<3>(s.G, wp, ev + e0, e1 - e0, c, dr);
              break;
            case 2:
              add_rows<2>(s.G, wp, ev + e0, e1 - e0, c, dr);
              break;
            default:
              add_rows<1>(s.G, wp, ev + e0, e1 - e0, c, dr);
              break;
          }
        }
        continue;
      }
      const float* __restrict wr = s.Wp + j * wp;
      bool any_tx = false;
      for (int32_t e = e0; e < e1; ++e) {
        const float* __restrict g = s.G + (ev[e].row_tx >> 1) * wp;
        float dot;
        if (ev[e].row_tx & 1) {
          // Transmitted: one pass over the row gives the dot for ds and
          // the gradient contribution.
          if (!any_tx) {
            std::fill(s.acc, s.acc + wp, 0.f);
            any_tx = true;
          }
          dot = dot_rows<true>(wr, g, s.acc, nch);
        } else {
          // Gradient carrier: not transmitted, dot only.
          dot = dot_rows<false>(wr, g, s.acc, nch);
        }
        dsp[ev[e].out] += dot;
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

// Slots must be spikes, then carriers, then -1 padding, each run ascending
// (as the forward op emits them); anything else would make the kernel index
// out of bounds or miss slots. Also fills L.filled for sample b.
absl::Status check_slots(BwdLayer& L, int l, int64_t b, int64_t T) {
  const int64_t K = L.K;
  for (int64_t bt = b * T; bt < (b + 1) * T; ++bt) {
    const int32_t* sid = L.ids + bt * K;
    int64_t nf = 0;
    while (nf < K && sid[nf] >= 0) {
      if (sid[nf] >= L.n_out) {
        return invalid("ids[", l, "][", b, ",", bt % T, ",", nf, "] = ", sid[nf],
                       " is outside [0, ", L.n_out, ")");
      }
      ++nf;
    }
    for (int64_t k = nf; k < K; ++k) {
      if (sid[k] != -1) {
        return invalid("ids[", l, "][", b, ",", bt % T, ",", k, "] = ", sid[k],
                       ": slots after the first -1 must be -1");
      }
    }
    const int32_t cnt = L.count[bt];
    if (cnt < 0 || cnt > nf) {
      return invalid("count[", l, "][", b, ",", bt % T, "] = ", cnt, " must be in [0, ", nf,
                     "] (the filled slots)");
    }
    for (int64_t k = 1; k < nf; ++k) {
      if (k != cnt && sid[k] <= sid[k - 1]) {
        return invalid("ids[", l, "][", b, ",", bt % T, ",", k,
                       "]: spikes and carriers must each be in ascending order, as the forward "
                       "op emits them");
      }
    }
    L.filled[bt] = static_cast<int32_t>(nf);
  }
  return absl::OkStatus();
}

class SnnSparseLifLayerGradOp : public OpKernel {
 public:
  explicit SnnSparseLifLayerGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, get_capacities(ctx, &caps_, &N_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_scale", &input_scale_));
  }

  void Compute(OpKernelContext* ctx) override {
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
    OP_REQUIRES_OK(ctx,
                   check_network(in_ids, in_count, weights, {&alpha}, {"alpha"}, caps_, &sizes));
    const int N = N_;
    const int64_t B = in_ids.dim_size(0), T = in_ids.dim_size(1), K0 = in_ids.dim_size(2);
    OP_REQUIRES(ctx,
                grad_logits.dims() == 2 && grad_logits.dim_size(0) == B &&
                    grad_logits.dim_size(1) == sizes[N],
                invalid("grad_logits must be [B, n_L] = [", B, ", ", sizes[N], "], got shape ",
                        grad_logits.shape().DebugString()));

    // Events address ds and gI rows with 32-bit indices.
    const int64_t max_slots = std::max<int64_t>(K0, *std::max_element(caps_.begin(), caps_.end()));
    OP_REQUIRES(
        ctx, B * T * max_slots < (int64_t{1} << 30),
        invalid("B * T * max(K0, capacities) = ", B * T * max_slots, " is too large (limit 2^30)"));

    std::vector<BwdLayer> layers(N);
    OpOutputList dw_o;
    OP_REQUIRES_OK(ctx, ctx->output_list("grad_weights", &dw_o));
    for (int l = 0; l < N; ++l) {
      const int64_t K = caps_[l];
      const TensorShape s3({B, T, K}), s2({B, T});
      OP_REQUIRES(
          ctx, ids[l].shape() == s3 && sur[l].shape() == s3 && count[l].shape() == s2,
          invalid("layer ", l, ": ids and surrogate must be ", s3.DebugString(), " and count ",
                  s2.DebugString(), ", got ", ids[l].shape().DebugString(), ", ",
                  sur[l].shape().DebugString(), ", ", count[l].shape().DebugString()));
      BwdLayer& L = layers[l];
      L.wt = weights[l].flat<float>().data();
      L.alpha = alpha[l].flat<float>().data();
      L.n_in = sizes[l];
      L.n_out = sizes[l + 1];
      L.K = K;
      L.ids = ids[l].flat<int32_t>().data();
      L.count = count[l].flat<int32_t>().data();
      L.sur = sur[l].flat<float>().data();
      L.filled.resize(B * T);
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

    {
      // Samples are checked in parallel; the first bad one is reported.
      std::vector<absl::Status> status(B);
      parallel_units(pool, std::min<int64_t>(B, 4 * nthreads), [&](int64_t part, int) {
        const int64_t n = std::min<int64_t>(B, 4 * nthreads);
        for (int64_t b = part * B / n; b < (part + 1) * B / n; ++b) {
          for (int l = 0; l < N && status[b].ok(); ++l) {
            status[b] = check_slots(layers[l], l, b, T);
          }
        }
      });
      for (const absl::Status& st : status) OP_REQUIRES_OK(ctx, st);
    }

    std::vector<BwdPlan> plans(N);
    int64_t max_tile = 0, max_wp = 0, max_G = 0, max_priv = 0, max_dsp = 0, max_btk = 0;
    int64_t max_off = 0, max_ev = 0;
    for (int l = 0; l < N; ++l) {
      const BwdLayer& L = layers[l];
      BwdPlan& p = plans[l];
      // A tile count that divides evenly keeps all cores busy to the end.
      if (l == 0) {
        p.tiling = make_tiling(L.n_out, L.n_in * sizeof(float), kBwdTile0Bytes, kLanes, nthreads,
                               nthreads);
      } else {
        p.tiling = make_tiling(L.n_out, L.n_in * sizeof(float) * 2, kBwdTileBytes, kLanes, nthreads,
                               nthreads);
      }
      p.S = std::max<int64_t>(1, std::min(B, kBwdGBytes / (T * p.tiling.pad * 4)));
      // Layers too narrow to give every thread a tile are also split into
      // ranges of sample blocks; those ranges need their own gradient copies.
      p.nsb = 1;
      if (p.tiling.ntiles < nthreads) {
        p.nsb = std::min(B, ceil_div(nthreads, p.tiling.ntiles));
        p.S = std::min(p.S, ceil_div(B, p.nsb));
      }
      p.nblk = ceil_div(B, p.S);
      p.nsb = std::min(p.nsb, p.nblk);
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
    OP_REQUIRES_OK(
        ctx, ctx->allocate_temp(DT_INT8, TensorShape({shared_bytes + per_worker * nworkers + 64}),
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
