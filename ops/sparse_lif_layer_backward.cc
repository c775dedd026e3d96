// Backward pass of SnnSparseLifLayer, run by SnnSparseLifLayerGrad (see
// sparse_lif_layer.h for the layout of the work): layers from last to
// first, column tiles in parallel, presynaptic events bucketed by neuron.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "common/profile.h"
#include "common/row_dots.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "common/threading.h"
#include "sparse_lif_layer.h"

namespace tensorflow {
namespace snn {
namespace {

// Cache budgets, tuned on a 2-core AMD EPYC (Zen 4: 1 MB L2 per core,
// 32 MB shared L3); the macros let another machine's build override them.
#ifndef SNN_BWD_TILE_BYTES
#define SNN_BWD_TILE_BYTES (4096 << 10)
#endif
#ifndef SNN_BWD_TILE0_BYTES
#define SNN_BWD_TILE0_BYTES (512 << 10)
#endif
#ifndef SNN_BWD_G_BYTES
#define SNN_BWD_G_BYTES (512 << 10)
#endif
// Backward, layers > 0: Wt + dWt tile. Rows are visited in ascending order
// once per sample block, so the tile may exceed L2; wider tiles mean fewer
// partial dot products (and horizontal sums) per event.
constexpr int64_t kBwdTileBytes = SNN_BWD_TILE_BYTES;
// Backward, first layer: no dot products, only the dWt tile, kept in L2.
constexpr int64_t kBwdTile0Bytes = SNN_BWD_TILE0_BYTES;
// gI rows of one sample block, read at random by the events: kept in L2.
constexpr int64_t kBwdGBytes = SNN_BWD_G_BYTES;
// Upper bound on ds partial buffers in the backward pass (one per tile group).
constexpr int kMaxGroups = 16;
#ifndef SNN_BWD_PLAN_UNITS
#define SNN_BWD_PLAN_UNITS 8
#endif
// The backward pass is planned for this many parallel units per layer (tiles,
// or tiles x sample ranges for narrow layers), whatever the pool's size: the
// plan fixes the order of every floating-point sum (dW over sample ranges, ds
// over tile groups), so a fixed plan gives the same bits on 1 thread or 64.
constexpr int64_t kPlanUnits = SNN_BWD_PLAN_UNITS;

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

// One filled slot of this layer, bucketed by the column tile its neuron is
// in: the column within the tile and the slot's d loss / d u (ds times the
// surrogate), which the eps recursion adds in.
// Up to this many slots per step the eps recursion scans a step's slots for
// its tile's (cheaper than bucketing them first); above, it uses the buckets.
constexpr int64_t kLinearSlots = 24;

struct SlotEntry {
  int32_t col;
  float v;
};

struct BwdScratch {
  float* Wp;   // packed weight tile [n_in, wp]
  float* dWp;  // gradient tile [n_in, wp]
  float* G;    // gI of the block [S * T, wp]
  float* al;
  float* cf;
  float* eps;
};

// Everything the units of one layer share.
struct BwdPass {
  int layer;  // index, for the phase timers
  const BwdLayer* L;
  const BwdLayer* prev;  // null for the first layer (input spikes)
  BwdPlan plan;
  int64_t T, B;
  float c_in;
  const float* ds;     // [B, T, K] complete ds of this layer
  float* dsp;          // [ngroups, B, T, K_prev]
  const int32_t* off;  // [nblk, n_in + 1] CSR offsets by presynaptic neuron
  const Event* ev;     // [nblk, S * T * kev]
  const int32_t* soff;      // [ntiles * B * T + 1] CSR offsets by (tile, b, t)
  const SlotEntry* slots;  // the filled slots in that order
  float* priv;         // [ntiles, nsb - 1, n_in, pad]
};

// Buckets the presynaptic events of sample block blk by neuron (counting
// sort, keeping (sample, step, slot) order inside a bucket).
void BucketEvents(const BwdPass& P, const LifInput& in, int64_t blk, int32_t* off, Event* ev) {
  const int64_t K0 = in.K0;
  const BwdLayer& L = *P.L;
  const int64_t T = P.T, S = P.plan.S;
  const int64_t b0 = blk * S, b1 = std::min(P.B, b0 + S);
  std::fill(off, off + L.n_in + 1, 0);
  auto for_each = [&](auto&& fn) {
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        const int32_t row = static_cast<int32_t>((b - b0) * T + t);
        if (P.prev == nullptr) {
          const int32_t* src = in.ids + (b * T + t) * K0;
          for (int64_t e = 0; e < in.count[b * T + t]; ++e) fn(src[e], row, 1, -1);
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

// Buckets the filled slots of the layer by (column tile, sample, step), so
// that the eps recursion of a tile visits only its own slots at each step,
// for layers with K > kLinearSlots. Before, each tile and step found its
// slots with binary searches in the step's spikes and carriers:
// mispredicted branches per tile and step that, at K = 74 (max_activity
// 0.05), took three times as long as the recursion itself. Keys of different (b, t) never collide, so samples are bucketed in
// parallel; soff must hold ntiles * B * T + 1 entries.
void BucketSlots(const CpuPool& pool, int layer, const BwdLayer& L, const Tiling& tiling, int64_t B,
                 int64_t T, const float* ds, int32_t* col_tile, int32_t* soff,
                 SlotEntry* slots) {
  const int64_t BT = B * T, K = L.K;
  for (int64_t k = 0; k < tiling.ntiles; ++k) {
    std::fill(col_tile + tiling.begin(k), col_tile + tiling.end(k), static_cast<int32_t>(k));
  }
  std::fill(soff, soff + tiling.ntiles * BT + 1, 0);
  const int64_t parts = std::min<int64_t>(B, 4 * pool.NumThreads());
  auto for_parts = [&](auto&& fn) {
    pool.ForEachUnit(parts, [&](int64_t part, int) {
      const ProfTimer timer(layer, kProfBwdBucket);
      for (int64_t bt = part * B / parts * T; bt < (part + 1) * B / parts * T; ++bt) {
        for (int64_t k = 0; k < L.filled[bt]; ++k) fn(bt, bt * K + k);
      }
    });
  };
  for_parts([&](int64_t bt, int64_t i) { ++soff[col_tile[L.ids[i]] * BT + bt + 1]; });
  for (int64_t key = 0; key < tiling.ntiles * BT; ++key) soff[key + 1] += soff[key];
  // As in BucketEvents: soff[key] is the fill cursor, then shifted back.
  for_parts([&](int64_t bt, int64_t i) {
    const int32_t id = L.ids[i];
    const int32_t tile = col_tile[id];
    slots[soff[tile * BT + bt]++] =
        SlotEntry{static_cast<int32_t>(id - tiling.begin(tile)), ds[i] * L.sur[i]};
  });
  for (int64_t key = tiling.ntiles * BT; key > 0; --key) soff[key] = soff[key - 1];
  soff[0] = 0;
}

// dr[chunks c..c+NC) += sum of the gI rows of n events.
template <int NC>
inline void AddRows(const float* G, int64_t wp, const Event* ev, int64_t n, int64_t c,
                     float* __restrict dr) {
  Vf a[NC];
#pragma GCC unroll 4
  for (int h = 0; h < NC; ++h) a[h] = Splat(0.f);
  for (int64_t e = 0; e < n; ++e) {
    const float* g = G + (ev[e].row_tx >> 1) * wp + c * kLanes;
#pragma GCC unroll 4
    for (int h = 0; h < NC; ++h) a[h] += Load(g + h * kLanes);
  }
#pragma GCC unroll 4
  for (int h = 0; h < NC; ++h) Store(dr + (c + h) * kLanes, Load(dr + (c + h) * kLanes) + a[h]);
}

// For NE (<= 4) events of one presynaptic neuron: adds the dot product of
// its weight row w with each event's gI row to the event's ds partial, and
// adds the gI rows of the transmitted ones to its gradient row dr (the
// factor is 1 or 0: r + g * tx is exactly r + g or r, fused or not).
template <int NE>
inline void DotEventsTx(const float* w, const float* G, int64_t wp, const Event* ev, int64_t nch,
                        float* dr, float* dsp) {
  const float* g[NE];
  Vf tx[NE];
  bool any = false;
#pragma GCC unroll 4
  for (int q = 0; q < NE; ++q) {
    g[q] = G + (ev[q].row_tx >> 1) * wp;
    tx[q] = Splat(static_cast<float>(ev[q].row_tx & 1));
    any |= (ev[q].row_tx & 1) != 0;
  }
  float sums[4];
  DotAxpyRowsIfAny<NE>(w, g, tx, any, nch, dr, sums);
#pragma GCC unroll 4
  for (int q = 0; q < NE; ++q) dsp[ev[q].out] += sums[q];
}

void BackwardTile(const BwdPass& P, int64_t tile, int64_t blk0, int64_t blk1, int64_t range, float* dsp,
              const BwdScratch& s) {
  const BwdLayer& L = *P.L;
  const int64_t c0 = P.plan.tiling.begin(tile);
  const int64_t w = P.plan.tiling.end(tile) - c0;
  const int64_t wp = RoundUp(w, kLanes);
  const int64_t nch = wp / kLanes;
  const bool need_ds = P.prev != nullptr;
  {
    const ProfTimer timer(P.layer, kProfBwdSetup);
    if (need_ds) PackTile(L.wt, L.n_in, L.n_out, c0, w, wp, s.Wp);
    std::fill(s.dWp, s.dWp + L.n_in * wp, 0.f);
    for (int64_t i = 0; i < wp; ++i) {
      const float a = i < w ? L.alpha[c0 + i] : 0.f;
      s.al[i] = a;
      s.cf[i] = i < w ? (1.f - a) * P.c_in : 0.f;
    }
  }
  const int64_t T = P.T, S = P.plan.S;
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const int64_t b0 = blk * S, b1 = std::min(P.B, b0 + S);
    // eps recursion of this tile, eps_t = alpha * eps_{t+1} + (slot gradients
    // of step t); gI rows (1 - alpha) c eps_t go to G for the event pass.
    // Step t's gI store and the decay for step t - 1 share one pass over the
    // row (eps holds alpha * eps_{t+1} when step t begins): the same
    // arithmetic as a decay pass and a store pass, with half the traffic.
    {
      const ProfTimer timer(P.layer, kProfBwdEps);
      for (int64_t b = b0; b < b1; ++b) {
        std::fill(s.eps, s.eps + wp, 0.f);  // alpha * eps_T, with eps_T = 0
        for (int64_t t = T - 1; t >= 0; --t) {
          const int64_t bt = b * T + t;
          if (L.K <= kLinearSlots) {
            const int32_t* sid = L.ids + bt * L.K;
            const float* sds = P.ds + bt * L.K;
            const float* ssur = L.sur + bt * L.K;
            for (int64_t k = 0; k < L.filled[bt]; ++k) {
              const int64_t i = sid[k] - c0;
              if (i >= 0 && i < w) s.eps[i] += sds[k] * ssur[k];
            }
          } else {
            const int64_t key = tile * P.B * T + bt;
            for (int32_t q = P.soff[key]; q < P.soff[key + 1]; ++q) {
              s.eps[P.slots[q].col] += P.slots[q].v;
            }
          }
          float* g = s.G + ((b - b0) * T + t) * wp;
          for (int64_t c = 0; c < nch; ++c) {
            const Vf e = Load(s.eps + c * kLanes);
            Store(g + c * kLanes, Load(s.cf + c * kLanes) * e);
            Store(s.eps + c * kLanes, Load(s.al + c * kLanes) * e);
          }
        }
      }
    }
    const ProfTimer timer(P.layer, kProfBwdEvents);
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
              AddRows<4>(s.G, wp, ev + e0, e1 - e0, c, dr);
              break;
            case 3:
              AddRows<3>(s.G, wp, ev + e0, e1 - e0, c, dr);
              break;
            case 2:
              AddRows<2>(s.G, wp, ev + e0, e1 - e0, c, dr);
              break;
            default:
              AddRows<1>(s.G, wp, ev + e0, e1 - e0, c, dr);
              break;
          }
        }
        continue;
      }
      const float* __restrict wr = s.Wp + j * wp;
      int32_t e = e0;
      for (; e + 4 <= e1; e += 4) DotEventsTx<4>(wr, s.G, wp, ev + e, nch, dr, dsp);
      switch (e1 - e) {
        case 3:
          DotEventsTx<3>(wr, s.G, wp, ev + e, nch, dr, dsp);
          break;
        case 2:
          DotEventsTx<2>(wr, s.G, wp, ev + e, nch, dr, dsp);
          break;
        case 1:
          DotEventsTx<1>(wr, s.G, wp, ev + e, nch, dr, dsp);
          break;
        default:
          break;
      }
    }
  }
  // Range 0 owns the output columns; other ranges (narrow layers only) keep
  // their own copy, summed once all units finished.
  const ProfTimer timer(P.layer, kProfBwdStore);
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

}  // namespace

absl::Status LifBackward(OpKernelContext* ctx, const LifInput& in,
                         const std::vector<BwdLayer>& layers, float input_scale,
                         const float* grad_logits) {
  const ProfTimer wall(1, kProfWall);
  const int N = static_cast<int>(layers.size());
  const int64_t B = in.B, T = in.T, K0 = in.K0;
  const CpuPool pool(ctx);
  const int nthreads = pool.NumThreads();

  std::vector<BwdPlan> plans(N);
  int64_t max_tile = 0, max_wp = 0, max_G = 0, max_priv = 0, max_dsp = 0, max_btk = 0;
  int64_t max_off = 0, max_ev = 0, max_soff = 0, max_cols = 0;
  for (int l = 0; l < N; ++l) {
    const BwdLayer& L = layers[l];
    BwdPlan& p = plans[l];
    // A tile count that divides evenly by the plan's units keeps 1, 2, 4 or 8
    // cores busy to the end.
    if (l == 0) {
      p.tiling = MakeTiling(L.n_out, L.n_in * sizeof(float), kBwdTile0Bytes, kLanes, kPlanUnits,
                             kPlanUnits);
    } else {
      p.tiling = MakeTiling(L.n_out, L.n_in * sizeof(float) * 2, kBwdTileBytes, kLanes, kPlanUnits,
                             kPlanUnits);
    }
    p.S = std::max<int64_t>(1, std::min(B, kBwdGBytes / (T * p.tiling.pad * 4)));
    // Layers too narrow to give every unit a tile are also split into
    // ranges of sample blocks; those ranges need their own gradient copies.
    p.nsb = 1;
    if (p.tiling.ntiles < kPlanUnits) {
      p.nsb = std::min(B, CeilDiv(kPlanUnits, p.tiling.ntiles));
      p.S = std::min(p.S, CeilDiv(B, p.nsb));
    }
    p.nblk = CeilDiv(B, p.S);
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
    max_soff = std::max(max_soff, p.tiling.ntiles * B * T + 1);
    max_cols = std::max(max_cols, L.n_out);
  }
  auto carve_worker = [&](Arena& a, BwdScratch* s) {
    s->Wp = a.Take<float>(max_tile);
    s->dWp = a.Take<float>(max_tile);
    s->G = a.Take<float>(max_G);
    s->al = a.Take<float>(max_wp);
    s->cf = a.Take<float>(max_wp);
    s->eps = a.Take<float>(max_wp);
  };
  // Shared: ds of the current and the previous layer, the ds partials of
  // the tile groups, the other ranges' gradient copies, the event buckets.
  float *ds_cur, *ds_next, *dsp, *priv;
  int32_t *off, *soff, *col_tile;
  Event* ev;
  SlotEntry* slots;
  auto carve_shared = [&](Arena& a) {
    ds_cur = a.Take<float>(max_btk);
    ds_next = a.Take<float>(max_btk);
    dsp = a.Take<float>(max_dsp);
    priv = a.Take<float>(max_priv);
    off = a.Take<int32_t>(max_off);
    ev = a.Take<Event>(max_ev);
    soff = a.Take<int32_t>(max_soff);
    col_tile = a.Take<int32_t>(max_cols);
    slots = a.Take<SlotEntry>(max_btk);
  };
  const int64_t per_worker = ArenaBytes([&](Arena& a) {
    BwdScratch s;
    carve_worker(a, &s);
  });
  Scratch scratch;
  TF_RETURN_IF_ERROR(
      scratch.Allocate(ctx, ArenaBytes(carve_shared), per_worker, pool.NumWorkers()));
  Arena shared(scratch.Shared());
  carve_shared(shared);

  // Last layer: every filled slot receives the logit gradient of its neuron
  // (and its own value gradient, if any).
  {
    const BwdLayer& L = layers[N - 1];
    const float* g = grad_logits;
    const float* gv = L.grad_values;
    for (int64_t bt = 0; bt < B * T; ++bt) {
      const int64_t b = bt / T;
      for (int64_t k = 0; k < L.K; ++k) {
        const int64_t i = bt * L.K + k;
        ds_cur[i] = k < L.filled[bt] ? g[b * L.n_out + L.ids[i]] + (gv ? gv[i] : 0.f) : 0.f;
      }
    }
  }

  for (int l = N - 1; l >= 0; --l) {
    const BwdLayer& L = layers[l];
    const BwdPlan& p = plans[l];
    BwdPass P;
    P.layer = l;
    P.L = &L;
    P.prev = l > 0 ? &layers[l - 1] : nullptr;
    P.plan = p;
    P.T = T;
    P.B = B;
    P.c_in = input_scale;
    P.ds = ds_cur;
    P.dsp = dsp;
    P.off = off;
    P.ev = ev;
    P.soff = soff;
    P.slots = slots;
    P.priv = priv;
    if (L.K > kLinearSlots) BucketSlots(pool, l, L, p.tiling, B, T, ds_cur, col_tile, soff, slots);
    pool.ForEachUnit(p.nblk, [&](int64_t blk, int) {
      const ProfTimer timer(l, kProfBwdBucket);
      BucketEvents(P, in, blk, off + blk * (L.n_in + 1), ev + blk * p.S * T * p.kev);
    });
    const int64_t Kp = l > 0 ? layers[l - 1].K : 0;
    pool.ForEachUnit(p.ngroups * p.nsb, [&](int64_t u, int worker) {
      Arena a(scratch.Worker(worker));
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
      for (int64_t tile = t0; tile < t1; ++tile) BackwardTile(P, tile, blk0, blk1, range, my_dsp, s);
    });
    const ProfTimer reduce_timer(l, kProfBwdReduce);
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
      // order, so the result does not depend on scheduling, plus that
      // layer's value gradients if any (padding slots too: never read).
      const int64_t n = B * T * Kp;
      const int64_t ng = p.ngroups;
      const float* gv = layers[l - 1].grad_values;
      pool.ForEachUnit(nthreads, [&](int64_t part, int) {
        const int64_t i0 = part * n / nthreads, i1 = (part + 1) * n / nthreads;
        for (int64_t i = i0; i < i1; ++i) {
          float acc = dsp[i];
          for (int64_t gi = 1; gi < ng; ++gi) acc += dsp[gi * n + i];
          ds_next[i] = acc;
        }
        if (gv != nullptr) {
          for (int64_t i = i0; i < i1; ++i) ds_next[i] += gv[i];
        }
      });
      std::swap(ds_cur, ds_next);
    }
  }
  return absl::OkStatus();
}

}  // namespace snn
}  // namespace tensorflow
