// Forward pass of SnnSparseLifLayer (see sparse_lif_layer.h for the
// layout of the work): per sample block, every layer's column tiles in
// ascending order, then the K slots of each step.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "common/profile.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "common/threading.h"
#include "sparse_lif_layer.h"

namespace tensorflow {
namespace snn {
namespace {

// Cache budgets, tuned on a 2-core AMD EPYC (Zen 4: 1 MB L2 per core,
// 32 MB shared L3); the macros let another machine's build override them.
#ifndef SNN_FWD_TILE_BYTES
#define SNN_FWD_TILE_BYTES (768 << 10)
#endif
// Forward: the packed weight tile stays in L2 while a sample block runs
// through it.
constexpr int64_t kFwdTileBytes = SNN_FWD_TILE_BYTES;
// A few sample blocks per thread balance the cores; each block re-reads the
// packed weights from L3 once, so not too many.
constexpr int64_t kFwdBlocksPerThread = 2;

// A layer with its tiling and the tile-major packed copy of its weights and
// per-neuron parameters.
struct Layer : FwdLayer {
  Tiling tiling;
  // Tile k at k * n_in * pad, rows of stride RoundUp(width_k, kLanes);
  // params at k * pad.
  float* packed;
  float* al;   // alpha (0 in padding)
  float* cf;   // (1 - alpha) * c (0 in padding)
  float* th;   // theta (+inf in padding: never spikes)
  float* th2;  // theta2 (+inf in padding: never carries)
};

void PackForwardTile(const Layer& L, int64_t tile, float c_in) {
  const int64_t c0 = L.tiling.begin(tile), w = L.tiling.end(tile) - c0;
  const int64_t wp = RoundUp(w, kLanes);
  PackTile(L.wt, L.n_in, L.n_out, c0, w, wp, L.packed + tile * L.n_in * L.tiling.pad);
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

#ifndef SNN_FWD_GROUP_CHUNKS
#define SNN_FWD_GROUP_CHUNKS 12
#endif
// Chunks of kLanes neurons summed in one walk over a step's event rows, one
// vector accumulator each. The forward tiles are 8-10 chunks wide, so one
// group covers a whole tile: the rows are walked once per step instead of
// once per group of four, and 8-10 independent add chains instead of
// 2-4 hide the add latency (with the small event counts of layers > 1 a
// group of four was latency-bound). 12 accumulators leave registers for
// the row loads on AVX-512 (32 vector registers).
constexpr int kFwdGroupChunks = SNN_FWD_GROUP_CHUNKS;

// Sums the event rows over NC chunks starting at chunk o, updates the
// membranes and returns the spike / carrier lane masks of each chunk.
template <int NC>
inline void IntegrateChunks(const float* const* rows, int64_t ne, int64_t o, float* u,
                             const float* al, const float* cf, const float* th, const float* th2,
                             uint32_t* ms, uint32_t* mc) {
  Vf a[NC];
#pragma GCC unroll 16
  for (int h = 0; h < NC; ++h) a[h] = Splat(0.f);
  // Independent accumulators hide the add latency; row loads from L2 are
  // the real limit.
  for (int64_t e = 0; e < ne; ++e) {
    const float* r = rows[e] + o * kLanes;
#pragma GCC unroll 16
    for (int h = 0; h < NC; ++h) a[h] += Load(r + h * kLanes);
  }
#pragma GCC unroll 16
  for (int h = 0; h < NC; ++h) {
    const int64_t i = (o + h) * kLanes;
    Vf uu = Load(u + i);
    const Vf thv = Load(th + i);
    // Reset of the neurons that fired last step: u - u*H(u - theta) is
    // exactly 0 for them.
    uu = (Vf)((Vi)uu & ~(uu >= thv));
    Vf decayed = Load(al + i) * uu;
    Vf input = Load(cf + i) * a[h];
    NoContract(decayed);
    NoContract(input);
    uu = decayed + input;
    Store(u + i, uu);
    ms[h] = MaskGe(uu, thv);
    mc[h] = MaskLt(Load(th2 + i), uu) & ~ms[h];
  }
}

// IntegrateChunks<nc> for a run-time nc in [1, NC].
template <int NC>
inline void IntegrateGroup(int64_t nc, const float* const* rows, int64_t ne, int64_t o, float* u,
                           const float* al, const float* cf, const float* th, const float* th2,
                           uint32_t* ms, uint32_t* mc) {
  if constexpr (NC > 1) {
    if (nc < NC) return IntegrateGroup<NC - 1>(nc, rows, ne, o, u, al, cf, th, th2, ms, mc);
  }
  IntegrateChunks<NC>(rows, ne, o, u, al, cf, th, th2, ms, mc);
}

// Integrates one column tile of one layer for the samples [b0, b1).
void IntegrateTile(const Layer& L, const Layer* prev, const LifInput& in, int64_t b0, int64_t b1,
                   int64_t tile, const FwdScratch& s) {
  const int64_t T = in.T, K0 = in.K0;
  const int64_t c0 = L.tiling.begin(tile), w = L.tiling.end(tile) - c0;
  const int64_t wp = RoundUp(w, kLanes);
  const int64_t nch = wp / kLanes;
  // Balanced groups (13 = 7 + 6, not 12 + 1) avoid a lone, latency-bound
  // accumulator.
  const int64_t ngroups = CeilDiv(nch, kFwdGroupChunks);
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
        const int32_t* src = in.ids + (b * T + t) * K0;
        const int64_t cnt = in.count[b * T + t];
        for (int64_t e = 0; e < cnt; ++e) s.rows[ne++] = Wp + src[e] * wp;
      } else if (t > 0) {
        const int32_t* src = prev->ids + (b * T + t - 1) * prev->K;
        const int64_t cnt = prev->count[b * T + t - 1];
        for (int64_t e = 0; e < cnt; ++e) s.rows[ne++] = Wp + src[e] * wp;
      }
      const int64_t bt = (b - b0) * T + t;
      for (int64_t q = 0; q < ngroups; ++q) {
        const int64_t o = q * nch / ngroups;
        const int64_t nc = (q + 1) * nch / ngroups - o;
        uint32_t msk[kFwdGroupChunks], mck[kFwdGroupChunks];
        IntegrateGroup<kFwdGroupChunks>(nc, s.rows, ne, o, s.u, al, cf, th, th2, msk, mck);
        for (int64_t h = 0; h < nc; ++h) {
          const int64_t base = (o + h) * kLanes;
          uint32_t ms = msk[h], mc = mck[h];
          if (ms) {
            int64_t n = s.nspk[bt];
            s.nspk[bt] = static_cast<int32_t>(n + __builtin_popcount(ms));
            for (; ms && n < K; ms &= ms - 1, ++n) {
              const int64_t i = base + __builtin_ctz(ms);
              s.spk_id[bt * K + n] = static_cast<int32_t>(c0 + i);
              s.spk_u[bt * K + n] = s.u[i];
            }
          }
          if (mc) {
            int64_t n = s.ncar[bt];
            for (; mc && n < K; mc &= mc - 1, ++n) {
              const int64_t i = base + __builtin_ctz(mc);
              s.car_id[bt * K + n] = static_cast<int32_t>(c0 + i);
              s.car_u[bt * K + n] = s.u[i];
            }
            s.ncar[bt] = static_cast<int32_t>(n);
          }
        }
      }
    }
  }
}

// Writes the slots of samples [b0, b1) from the collected lists.
void WriteSlots(const Layer& L, int64_t T, int64_t b0, int64_t b1, float beta,
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

}  // namespace

absl::Status LifForward(OpKernelContext* ctx, const LifInput& in,
                        const std::vector<FwdLayer>& fwd_layers, float input_scale, float beta,
                        float* logits) {
  const ProfTimer wall(0, kProfWall);
  const int N = static_cast<int>(fwd_layers.size());
  const int64_t B = in.B, T = in.T, K0 = in.K0;
  std::vector<Layer> layers(N);
  int64_t packed_floats = 0, param_floats = 0, max_pad = 0, max_K = 0;
  for (int l = 0; l < N; ++l) {
    Layer& L = layers[l];
    static_cast<FwdLayer&>(L) = fwd_layers[l];
    L.tiling = MakeTiling(L.n_out, L.n_in * sizeof(float), kFwdTileBytes, kLanes, 1, 1);
    packed_floats += L.tiling.ntiles * L.n_in * L.tiling.pad;
    param_floats += L.tiling.ntiles * L.tiling.pad;
    max_pad = std::max(max_pad, L.tiling.pad);
    max_K = std::max(max_K, L.K);
  }

  const CpuPool pool(ctx);
  const int nthreads = pool.NumThreads();
  const int64_t sb = CeilDiv(B, std::min<int64_t>(B, kFwdBlocksPerThread * nthreads));
  const int64_t nblocks = CeilDiv(B, sb);

  auto carve_worker = [&](Arena& a, FwdScratch* s) {
    s->nspk = a.Take<int32_t>(sb * T);
    s->ncar = a.Take<int32_t>(sb * T);
    s->spk_id = a.Take<int32_t>(sb * T * max_K);
    s->spk_u = a.Take<float>(sb * T * max_K);
    s->car_id = a.Take<int32_t>(sb * T * max_K);
    s->car_u = a.Take<float>(sb * T * max_K);
    s->u = a.Take<float>(max_pad);
    s->rows = a.Take<const float*>(std::max<int64_t>(K0, max_K));
  };
  const int64_t shared_bytes = ArenaBytes([&](Arena& a) {
    a.Take<float>(packed_floats);
    for (int i = 0; i < 4; ++i) a.Take<float>(param_floats);
  });
  const int64_t per_worker = ArenaBytes([&](Arena& a) {
    FwdScratch s;
    carve_worker(a, &s);
  });
  Scratch scratch;
  TF_RETURN_IF_ERROR(scratch.Allocate(ctx, shared_bytes, per_worker, pool.NumWorkers()));
  Arena shared(scratch.Shared());
  for (Layer& L : layers) {
    const int64_t np = L.tiling.ntiles * L.tiling.pad;
    L.packed = shared.Take<float>(L.tiling.ntiles * L.n_in * L.tiling.pad);
    L.al = shared.Take<float>(np);
    L.cf = shared.Take<float>(np);
    L.th = shared.Take<float>(np);
    L.th2 = shared.Take<float>(np);
  }

  // Pack every tile of every layer once; all sample blocks share them.
  std::vector<std::pair<int, int64_t>> pack_units;
  for (int l = 0; l < N; ++l) {
    for (int64_t k = 0; k < layers[l].tiling.ntiles; ++k) pack_units.emplace_back(l, k);
  }
  pool.ForEachUnit(pack_units.size(), [&](int64_t u, int) {
    const ProfTimer timer(pack_units[u].first, kProfFwdPack);
    PackForwardTile(layers[pack_units[u].first], pack_units[u].second, input_scale);
  });

  pool.ForEachUnit(nblocks, [&](int64_t blk, int worker) {
    Arena a(scratch.Worker(worker));
    FwdScratch s;
    carve_worker(a, &s);
    const int64_t b0 = blk * sb, b1 = std::min(B, b0 + sb);
    for (int l = 0; l < N; ++l) {
      const Layer& L = layers[l];
      {
        const ProfTimer timer(l, kProfFwdIntegrate);
        std::fill(s.nspk, s.nspk + (b1 - b0) * T, 0);
        std::fill(s.ncar, s.ncar + (b1 - b0) * T, 0);
        for (int64_t tile = 0; tile < L.tiling.ntiles; ++tile) {
          IntegrateTile(L, l > 0 ? &layers[l - 1] : nullptr, in, b0, b1, tile, s);
        }
      }
      const ProfTimer timer(l, kProfFwdSlots);
      WriteSlots(L, T, b0, b1, beta, s, l == N - 1 ? logits : nullptr);
    }
  });
  return absl::OkStatus();
}

}  // namespace snn
}  // namespace tensorflow
