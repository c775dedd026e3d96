// Poplar codelets of the snn IPU ops, compiled by popc into snn_codelets.gp.
//
// The same file is compiled on the host against ops/poplar/host_shim by the
// host tests, so it may use nothing but the vertex API and plain C++: no
// standard library, no IPU intrinsics, no doubles (the tile has no double
// hardware), no heap.
//
// Layout conventions shared with the graph builders (ops/poplar/builders)
// and the host harness (ops/poplar/host_harness):
// * The neurons of a layer are split into contiguous slices, one per compute
//   tile. A tile stores, for its slice [offset, offset + width), the weight
//   columns of every presynaptic neuron as rows of `width` floats
//   (weights[j * width + i] = W^T[j][offset + i]), plus the per-neuron state.
//   Nothing but spike ids, counts and per-slot values ever leaves a tile.
// * Each batch row has a "row tile" per layer that merges the per-tile spike
//   lists into the global sparse format and keeps the per-row records.
// * Vertices that process one batch row take that row's slice of a buffer;
//   vertices that reduce over the batch (weight gradients) take all rows and
//   own a range of weight rows, so no two vertices write the same memory.
// * A vertex returns false on input the CPU ops reject with InvalidArgument
//   (ids out of range, counts outside [0, K]); Poplar turns that into a
//   runtime error instead of silently reading foreign memory.

#include <poplar/Vertex.hpp>

using namespace poplar;

// (beta * |u - theta| + 1)^2, the denominator of the SuperSpike surrogate.
// Callers divide by it themselves so that each vertex rounds exactly like its
// CPU counterpart (the select gradient computes g / d^2, the fused op 1 / d^2).
static inline float surrogateDenominator(float u, float theta, float beta) {
  float d = u - theta;
  if (d < 0.f) d = -d;
  d = beta * d + 1.f;
  return d * d;
}

// Slot ids in the sparse format: the first `count` slots are spikes and must
// name a row, the rest are carriers (a row) or padding (-1).
template <class Ids>
static bool validSlots(const Ids& ids, int count, int rows) {
  const int slots = ids.size();
  if (count < 0 || count > slots) return false;
  for (int k = 0; k < slots; ++k) {
    const int id = ids[k];
    if (id >= rows) return false;
    if (k < count ? id < 0 : id < -1) return false;
  }
  return true;
}

// acc[id - rowBegin] += weight(s) * rows[b] for the first count[b] slots s of
// every batch row b whose id lies in the vertex's weight rows [rowBegin,
// rowBegin + acc.size() / width): the weight-gradient scatter of the matmul
// and of the fused backward pass, where a vertex owns a range of rows.
template <class Ids, class Counts, class Rows, class Acc, class Weight>
static bool scatterRows(const Ids& ids, const Counts& count, const Rows& rowsIn, Acc& acc,
                        unsigned rowBegin, Weight weight) {
  const unsigned batch = count.size();
  const unsigned slots = ids.size() / batch;
  const unsigned width = rowsIn.size() / batch;
  const unsigned rows = acc.size() / width;
  for (unsigned b = 0; b < batch; ++b) {
    const int cnt = count[b];
    if (cnt < 0 || unsigned(cnt) > slots) return false;
    for (int k = 0; k < cnt; ++k) {
      const unsigned s = b * slots + k;
      const unsigned r = unsigned(ids[s]) - rowBegin;  // wraps for rows below the range
      if (r >= rows) continue;
      const float v = weight(s);
      for (unsigned i = 0; i < width; ++i) acc[r * width + i] += v * rowsIn[b * width + i];
    }
  }
  return true;
}

// ---------------------------------------------------------------------------
// Sparse binary matmul
// ---------------------------------------------------------------------------

// y = sum over spike slots of values[k] * (row ids[k] of this tile's columns).
// One vertex per (tile, batch row).
class SnnMatmulFwd : public Vertex {
 public:
  Input<Vector<float>> weights;  // [n_in * width]
  Input<Vector<int>> ids;        // [K]
  Input<int> count;
  Input<Vector<float>> values;  // [K]
  Output<Vector<float>> y;      // [width]

  bool compute() {
    const unsigned width = y.size();
    const int rows = weights.size() / width;
    const int cnt = *count;
    if (!validSlots(ids, cnt, rows)) return false;
    for (unsigned i = 0; i < width; ++i) y[i] = 0.f;
    for (int k = 0; k < cnt; ++k) {
      const float v = values[k];
      const unsigned base = unsigned(ids[k]) * width;
      for (unsigned i = 0; i < width; ++i) y[i] += v * weights[base + i];
    }
    return true;
  }
};

// Weight gradient of the matmul for the weight rows [rowBegin, rowBegin +
// rows) of this tile's columns: a scatter of grad_y rows into the rows named
// by spike slots (carriers did not contribute to y). Slot validity is checked
// by SnnMatmulGradValuesPartial, which sees every slot.
class SnnMatmulGradWeights : public Vertex {
 public:
  Input<Vector<int>> ids;        // [B * K]
  Input<Vector<int>> count;      // [B]
  Input<Vector<float>> values;   // [B * K]
  Input<Vector<float>> gradY;    // [B * width]
  Output<Vector<float>> gradW;   // [rows * width]
  unsigned rowBegin;

  bool compute() {
    for (unsigned e = 0; e < gradW.size(); ++e) gradW[e] = 0.f;
    return scatterRows(ids, count, gradY, gradW, rowBegin, [this](unsigned s) { return values[s]; });
  }
};

// This tile's share of grad_values[k] = dot(W^T[ids[k]], grad_y) for every
// slot with an id (spikes and carriers alike), 0 for padding. The graph sums
// the shares of all tiles with popops::reduceWithOutput (a multi-stage
// reduction, so no single tile has to receive every share). Also used by
// the fused backward pass for d loss / d presynaptic slot.
class SnnMatmulGradValuesPartial : public Vertex {
 public:
  Input<Vector<float>> weights;  // [n_in * width]
  Input<Vector<int>> ids;        // [K]
  Input<int> count;
  Input<Vector<float>> gradY;     // [width]
  Output<Vector<float>> partial;  // [K]

  bool compute() {
    const unsigned width = gradY.size();
    const int rows = weights.size() / width;
    if (!validSlots(ids, *count, rows)) return false;
    for (unsigned k = 0; k < ids.size(); ++k) {
      const int id = ids[k];
      float acc = 0.f;
      if (id >= 0) {
        const unsigned base = unsigned(id) * width;
        for (unsigned i = 0; i < width; ++i) acc += weights[base + i] * gradY[i];
      }
      partial[k] = acc;
    }
    return true;
  }
};

// ---------------------------------------------------------------------------
// Spike selection
// ---------------------------------------------------------------------------

// Writes the per-slot picks of the global selection from the landed per-tile
// lists: spikes of all tiles in tile order (ascending ids, since slices are
// ascending), then carriers in tile order, then padding. A tile's lists hold
// at most `local` entries; a tile that saw more spikes than that has already
// filled every one of the K slots on its own (local = min(K, widest slice)),
// so nothing that could be kept is missing. Returns the number of spikes
// kept; *total receives all spikes seen, kept or not.
template <class Ids, class Counts, class Sink>
static unsigned mergeSlots(const Ids& spikeIds, const Ids& carrierIds, const Counts& counts,
                           unsigned slots, Sink& sink, unsigned* total) {
  const unsigned tiles = counts.size() / 2;
  const unsigned local = spikeIds.size() / tiles;
  unsigned slot = 0, seen = 0;
  for (unsigned t = 0; t < tiles; ++t) {
    const unsigned n = counts[2 * t];
    seen += n;
    const unsigned stored = n < local ? n : local;
    for (unsigned j = 0; j < stored && slot < slots; ++j) {
      sink.put(slot++, spikeIds[t * local + j], true, t * local + j);
    }
  }
  const unsigned kept = slot;
  for (unsigned t = 0; t < tiles && slot < slots; ++t) {
    unsigned n = counts[2 * t + 1];
    if (n > local) n = local;
    for (unsigned j = 0; j < n && slot < slots; ++j) {
      sink.put(slot++, carrierIds[t * local + j], false, t * local + j);
    }
  }
  for (; slot < slots; ++slot) sink.pad(slot);
  *total = seen;
  return kept;
}

// Per (tile, batch row): this slice's spikes (u >= theta) and carriers
// (theta2 < u < theta), each in ascending id order, at most spikeIds.size()
// of each stored; counts = {spikes seen (all of them), carriers stored}.
class SnnSelectLocal : public Vertex {
 public:
  Input<Vector<float>> u;       // [width]
  Input<Vector<float>> theta;   // [width]
  Input<Vector<float>> theta2;  // [width]
  Output<Vector<int>> spikeIds;    // [local]
  Output<Vector<int>> carrierIds;  // [local]
  Output<Vector<unsigned>> counts;  // [2]
  int offset;

  bool compute() {
    const unsigned local = spikeIds.size();
    unsigned ns = 0, nc = 0;
    for (unsigned i = 0; i < u.size(); ++i) {
      const float x = u[i];
      if (x >= theta[i]) {
        if (ns < local) spikeIds[ns] = offset + int(i);
        ++ns;
      } else if (theta2[i] < x && x < theta[i] && nc < local) {
        carrierIds[nc++] = offset + int(i);
      }
    }
    for (unsigned j = ns; j < local; ++j) spikeIds[j] = -1;
    for (unsigned j = nc; j < local; ++j) carrierIds[j] = -1;
    counts[0] = ns;
    counts[1] = nc;
    return true;
  }
};

// Per batch row on its row tile: the K slots of the sparse format.
class SnnSelectMerge : public Vertex {
 public:
  Input<Vector<int>> spikeIds;      // [tiles * local]
  Input<Vector<int>> carrierIds;    // [tiles * local]
  Input<Vector<unsigned>> counts;   // [tiles * 2]
  Output<Vector<int>> ids;          // [K]
  Output<Vector<float>> values;     // [K]
  Output<int> count;
  Output<int> dropped;

  bool compute() {
    struct Sink {
      Output<Vector<int>>& ids;
      Output<Vector<float>>& values;
      void put(unsigned slot, int id, bool spike, unsigned) {
        ids[slot] = id;
        values[slot] = spike ? 1.f : 0.f;
      }
      void pad(unsigned slot) {
        ids[slot] = -1;
        values[slot] = 0.f;
      }
    } sink{ids, values};
    unsigned total = 0;
    const unsigned kept = mergeSlots(spikeIds, carrierIds, counts, ids.size(), sink, &total);
    *count = int(kept);
    *dropped = int(total - kept);
    return true;
  }
};

// Surrogate gradient of the selection for this tile's slice:
// grad_u[id] += grad_values[k] / (beta |u - theta| + 1)^2 for every slot whose
// id lies in the slice (spikes and carriers); zero elsewhere.
class SnnSelectGrad : public Vertex {
 public:
  Input<Vector<float>> u;           // [width]
  Input<Vector<float>> theta;       // [width]
  Input<Vector<int>> ids;           // [K]
  Input<Vector<float>> gradValues;  // [K]
  Output<Vector<float>> gradU;      // [width]
  int offset;
  int neurons;  // n, for the same id check as the CPU op
  float beta;

  bool compute() {
    const unsigned width = gradU.size();
    for (unsigned i = 0; i < width; ++i) gradU[i] = 0.f;
    for (unsigned k = 0; k < ids.size(); ++k) {
      const int id = ids[k];
      if (id < -1 || id >= neurons) return false;
      const unsigned i = unsigned(id - offset);
      if (id < 0 || i >= width) continue;
      gradU[i] += gradValues[k] / surrogateDenominator(u[i], theta[i], beta);
    }
    return true;
  }
};

// ---------------------------------------------------------------------------
// Fused multi-layer LIF network
// ---------------------------------------------------------------------------

// Per batch row: the input spikes of one time step, taken from the row's
// whole input sequence. Steps run forward (0, 1, ...) or, for the backward
// pass, in reverse; the vertex keeps its own step counter so that no counter
// has to be broadcast between tiles. Slots past the count become -1.
class SnnInputStep : public Vertex {
 public:
  Input<Vector<int>> allIds;    // [T * K0]
  Input<Vector<int>> allCount;  // [T]
  InOut<unsigned> iteration;
  Output<Vector<int>> ids;      // [K0]
  Output<int> count;
  int inputs;        // n_0
  unsigned reverse;  // 0: steps 0, 1, ...; 1: steps T-1, T-2, ...

  bool compute() {
    const unsigned steps = allCount.size();
    const unsigned slots = ids.size();
    const unsigned it = *iteration;
    if (it >= steps) return false;
    const unsigned t = reverse ? steps - 1 - it : it;
    const int cnt = allCount[t];
    if (cnt < 0 || unsigned(cnt) > slots) return false;
    for (unsigned k = 0; k < slots; ++k) {
      const int id = allIds[t * slots + k];
      if (int(k) < cnt) {
        if (id < 0 || id >= inputs) return false;
        ids[k] = id;
      } else {
        ids[k] = -1;
      }
    }
    *count = cnt;
    *iteration = it + 1;
    return true;
  }
};

// One LIF step of this tile's slice for one batch row: input current from the
// transmitted presynaptic ids, reset of the neurons that fired last step,
// leaky integration, then this slice's spike and carrier lists with their
// surrogate derivatives. Summation and rounding follow the CPU fused op:
// current = sum of rows in slot order, v = alpha*v + ((1 - alpha)*c)*current.
class SnnLifStep : public Vertex {
 public:
  Input<Vector<float>> weights;  // [n_in * width]
  Input<Vector<float>> alpha;    // [width]
  Input<Vector<float>> theta;    // [width]
  Input<Vector<float>> theta2;   // [width]
  Input<Vector<int>> preIds;     // [K_pre]
  Input<int> preCount;
  InOut<Vector<float>> u;        // [width]
  Output<Vector<int>> spikeIds;      // [local]
  Output<Vector<float>> spikeSur;    // [local]
  Output<Vector<int>> carrierIds;    // [local]
  Output<Vector<float>> carrierSur;  // [local]
  Output<Vector<unsigned>> counts;   // [2]
  int offset;
  float inputScale;
  float beta;

  bool compute() {
    const unsigned width = u.size();
    const int rows = weights.size() / width;
    const int cnt = *preCount;
    if (cnt < 0 || unsigned(cnt) > preIds.size()) return false;
    for (int e = 0; e < cnt; ++e) {
      if (preIds[e] < 0 || preIds[e] >= rows) return false;
    }
    const unsigned local = spikeIds.size();
    unsigned ns = 0, nc = 0;
    for (unsigned i = 0; i < width; ++i) {
      // Tile memory has no cache: walking a column costs the same as a row,
      // so the current is summed per neuron and needs no scratch buffer.
      float current = 0.f;
      for (int e = 0; e < cnt; ++e) current += weights[unsigned(preIds[e]) * width + i];
      const float th = theta[i];
      float v = u[i];
      if (v >= th) v = 0.f;  // u - u*H(u - theta): exactly 0 after a spike
      const float a = alpha[i];
      v = a * v + ((1.f - a) * inputScale) * current;
      u[i] = v;
      if (v >= th) {
        if (ns < local) {
          spikeIds[ns] = offset + int(i);
          spikeSur[ns] = 1.f / surrogateDenominator(v, th, beta);
        }
        ++ns;
      } else if (theta2[i] < v && v < th && nc < local) {
        carrierIds[nc] = offset + int(i);
        carrierSur[nc] = 1.f / surrogateDenominator(v, th, beta);
        ++nc;
      }
    }
    for (unsigned j = ns; j < local; ++j) {
      spikeIds[j] = -1;
      spikeSur[j] = 0.f;
    }
    for (unsigned j = nc; j < local; ++j) {
      carrierIds[j] = -1;
      carrierSur[j] = 0.f;
    }
    counts[0] = ns;
    counts[1] = nc;
    return true;
  }
};

// Per (layer, batch row) on the row tile: merges the landed per-tile lists of
// one step, appends the step to the row's records and hands the transmitted
// ids to the next layer.
class SnnLifMerge : public Vertex {
 public:
  Input<Vector<int>> spikeIds;       // [tiles * local]
  Input<Vector<float>> spikeSur;     // [tiles * local]
  Input<Vector<int>> carrierIds;     // [tiles * local]
  Input<Vector<float>> carrierSur;   // [tiles * local]
  Input<Vector<unsigned>> counts;    // [tiles * 2]
  InOut<unsigned> iteration;
  InOut<Vector<int>> recIds;        // [T * K]
  InOut<Vector<float>> recSur;      // [T * K]
  InOut<Vector<int>> recCount;      // [T]
  InOut<Vector<int>> recDropped;    // [T]
  Output<Vector<int>> sendIds;      // [K]
  Output<int> sendCount;

  bool compute() {
    const unsigned slots = sendIds.size();
    const unsigned steps = recCount.size();
    const unsigned t = *iteration;
    if (t >= steps) return false;
    struct Sink {
      Input<Vector<float>>& spikeSur;
      Input<Vector<float>>& carrierSur;
      InOut<Vector<int>>& recIds;
      InOut<Vector<float>>& recSur;
      Output<Vector<int>>& sendIds;
      unsigned base;
      void put(unsigned slot, int id, bool spike, unsigned src) {
        recIds[base + slot] = id;
        recSur[base + slot] = spike ? spikeSur[src] : carrierSur[src];
        sendIds[slot] = id;
      }
      void pad(unsigned slot) {
        recIds[base + slot] = -1;
        recSur[base + slot] = 0.f;
        sendIds[slot] = -1;
      }
    } sink{spikeSur, carrierSur, recIds, recSur, sendIds, t * slots};
    unsigned total = 0;
    const unsigned kept = mergeSlots(spikeIds, carrierIds, counts, slots, sink, &total);
    recCount[t] = int(kept);
    recDropped[t] = int(total - kept);
    *sendCount = int(kept);
    *iteration = t + 1;
    return true;
  }
};

// Last layer: spike counts over time are the logits.
class SnnAccumulateLogits : public Vertex {
 public:
  Input<Vector<int>> ids;  // [K]
  Input<int> count;
  InOut<Vector<float>> logits;  // [n_L]

  bool compute() {
    const int cnt = *count;
    for (int k = 0; k < cnt; ++k) logits[unsigned(ids[k])] += 1.f;
    return true;
  }
};

// Backward, per batch row: the step of this iteration when steps run in
// reverse (T-1, T-2, ...), counting the iteration; false once all steps ran.
template <class Iteration>
static bool reverseStep(Iteration& iteration, unsigned steps, unsigned* t) {
  const unsigned it = *iteration;
  if (it >= steps) return false;
  *t = steps - 1 - it;
  *iteration = it + 1;
  return true;
}

// Backward, per batch row, steps in reverse: the recorded slots of step t
// with slotGrad[k] = g * surrogate for every filled slot (0 for padding),
// where grad(k, id, &g) sets g and returns false on an id it cannot take.
template <class V, class Grad>
static bool slotGradStep(V& v, Grad grad) {
  const unsigned slots = v.slotIds.size();
  unsigned t;
  if (!reverseStep(v.iteration, v.recIds.size() / slots, &t)) return false;
  const unsigned base = t * slots;
  for (unsigned k = 0; k < slots; ++k) {
    const int id = v.recIds[base + k];
    float g = 0.f;
    if (!grad(k, id, &g)) return false;
    v.slotIds[k] = id;
    v.slotGrad[k] = id >= 0 ? g * v.recSur[base + k] : 0.f;
  }
  return true;
}

// Backward, last layer: every filled slot of step t receives d loss / d logit
// of its neuron, times its surrogate.
class SnnSlotGradFromLogits : public Vertex {
 public:
  Input<Vector<float>> gradLogits;  // [n_L]
  Input<Vector<int>> recIds;        // [T * K]
  Input<Vector<float>> recSur;      // [T * K]
  InOut<unsigned> iteration;
  Output<Vector<int>> slotIds;      // [K]
  Output<Vector<float>> slotGrad;   // [K]

  bool compute() {
    return slotGradStep(*this, [this](unsigned, int id, float* g) {
      if (id < -1 || id >= int(gradLogits.size())) return false;
      if (id >= 0) *g = gradLogits[unsigned(id)];
      return true;
    });
  }
};

// Backward, hidden layer: d loss / d slot (summed from the next layer's tiles
// one iteration earlier) times the surrogate.
class SnnSlotGradFromDs : public Vertex {
 public:
  Input<Vector<float>> ds;        // [K]
  Input<Vector<int>> recIds;      // [T * K]
  Input<Vector<float>> recSur;    // [T * K]
  InOut<unsigned> iteration;
  Output<Vector<int>> slotIds;    // [K]
  Output<Vector<float>> slotGrad; // [K]

  bool compute() {
    return slotGradStep(*this, [this](unsigned k, int, float* g) {
      *g = ds[k];
      return true;
    });
  }
};

// Backward, per batch row, steps in reverse: the presynaptic slots that fed
// layer l at step t, i.e. layer l-1's record of step t-1 (none at t = 0).
class SnnPresynFromRecord : public Vertex {
 public:
  Input<Vector<int>> recIds;    // [T * K_pre]
  Input<Vector<int>> recCount;  // [T]
  InOut<unsigned> iteration;
  Output<Vector<int>> ids;      // [K_pre]
  Output<int> count;

  bool compute() {
    const unsigned slots = ids.size();
    unsigned t;
    if (!reverseStep(iteration, recCount.size(), &t)) return false;
    if (t == 0) {
      for (unsigned k = 0; k < slots; ++k) ids[k] = -1;
      *count = 0;
    } else {
      const unsigned base = (t - 1) * slots;
      for (unsigned k = 0; k < slots; ++k) ids[k] = recIds[base + k];
      *count = recCount[t - 1];
    }
    return true;
  }
};

// Backward, per (tile, batch row): eps <- alpha*eps + scatter of the slot
// gradients into this slice, and the input-current gradient
// gI = (1 - alpha)*c*eps that the weight gradient and the presynaptic slot
// gradients are built from. The reset term carries no gradient (it is under
// stop_gradient in the model), so eps needs no spike information.
class SnnLifBwdEps : public Vertex {
 public:
  Input<Vector<float>> alpha;      // [width]
  Input<Vector<int>> slotIds;      // [K]
  Input<Vector<float>> slotGrad;   // [K]
  InOut<Vector<float>> eps;        // [width]
  Output<Vector<float>> gI;        // [width]
  int offset;
  float inputScale;

  bool compute() {
    const unsigned width = eps.size();
    for (unsigned i = 0; i < width; ++i) eps[i] = alpha[i] * eps[i];
    for (unsigned k = 0; k < slotIds.size(); ++k) {
      const int id = slotIds[k];
      const unsigned i = unsigned(id - offset);
      if (id >= 0 && i < width) eps[i] += slotGrad[k];
    }
    for (unsigned i = 0; i < width; ++i) gI[i] = ((1.f - alpha[i]) * inputScale) * eps[i];
    return true;
  }
};

// Backward, per (tile, weight-row range): acc[ids[b][k]] += rows[b] for the
// transmitted presynaptic slots of every batch row (an unweighted scatter:
// transmitted spikes have value 1).
class SnnScatterAddRows : public Vertex {
 public:
  Input<Vector<int>> ids;       // [B * K_pre]
  Input<Vector<int>> count;     // [B]
  Input<Vector<float>> rowsIn;  // [B * width]
  InOut<Vector<float>> acc;     // [rows * width]
  unsigned rowBegin;

  bool compute() {
    // Transmitted spikes have value 1, and 1 * x is x: the same sums as an
    // unweighted scatter.
    return scatterRows(ids, count, rowsIn, acc, rowBegin, [](unsigned) { return 1.f; });
  }
};
