// Host harness: runs the snn codelets on the CPU in the same dataflow as the
// Poplar graph builders (ops/poplar/builders), so that the IPU kernels can be
// checked against the CPU TensorFlow ops without an IPU.
//
// Every "tile" gets its own buffers; what the graph does with exchange
// (program::Copy between tiles) is an explicit copy here, and a compute set
// is a loop over the vertices it holds. The plan string is the one the
// builders receive and is parsed by the same code. The functions are
// extern "C" for ctypes (tests/test_ipu_codelets.py) and return
//   0 ok, 1 a vertex returned false (input the CPU op rejects),
//   2 bad plan or shapes, 3 a vertex accessed memory out of bounds,
//   4 any other error,
// with a message in `err`.
//
// Build (done by the tests):
//   g++ -std=c++17 -O1 -shared -fPIC -ffp-contract=off
//       -DSNN_SHIM_BOUNDS_CHECK -DSNN_SHIM_POISON_OUTPUTS
//       -I ops/poplar/host_shim ops/poplar/host_harness/harness.cpp -o libsnn_ipu_host.so

#include <poplar/Vertex.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "../codelets/snn_codelets.cpp"
#include "../common/plan.hpp"

namespace {

using snn::plan::LayerPlan;
using snn::plan::Plan;
using snn::plan::rowRanges;

struct VertexFailed : std::runtime_error {
  explicit VertexFailed(const std::string& what) : std::runtime_error(what) {}
};

template <class V>
void run(V& v, const std::string& what) {
  if (!v.compute()) throw VertexFailed(what + " returned false");
}

std::string where(const char* vertex, int layer, int slice, int row) {
  std::string s = vertex;
  if (layer >= 0) s += " layer " + std::to_string(layer);
  if (slice >= 0) s += " slice " + std::to_string(slice);
  if (row >= 0) s += " row " + std::to_string(row);
  return s;
}

template <class F>
int guarded(char* err, int errlen, F&& body) {
  auto say = [&](const std::string& m) {
    if (err && errlen > 0) std::snprintf(err, static_cast<size_t>(errlen), "%s", m.c_str());
  };
  say("");
  try {
    body();
    return 0;
  } catch (const VertexFailed& e) {
    say(e.what());
    return 1;
  } catch (const std::invalid_argument& e) {
    say(e.what());
    return 2;
  } catch (const poplar::shim::OutOfBounds& e) {
    say(e.what());
    return 3;
  } catch (const std::exception& e) {
    say(e.what());
    return 4;
  }
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

// The columns [begin, begin + width) of every row of a [rows, cols] matrix,
// as one tile stores them.
std::vector<float> columns(const float* m, int rows, int cols, int begin, int width) {
  std::vector<float> out(static_cast<size_t>(rows) * width);
  for (int r = 0; r < rows; ++r) {
    std::memcpy(&out[static_cast<size_t>(r) * width], m + static_cast<size_t>(r) * cols + begin,
                sizeof(float) * width);
  }
  return out;
}

void putColumns(const std::vector<float>& part, int rows, int cols, int begin, int width,
                float* m) {
  for (int r = 0; r < rows; ++r) {
    std::memcpy(m + static_cast<size_t>(r) * cols + begin, &part[static_cast<size_t>(r) * width],
                sizeof(float) * width);
  }
}

template <class T>
T* at(std::vector<T>& v, size_t offset) {
  return v.data() + offset;
}

// ---------------------------------------------------------------------------
// Sparse binary matmul
// ---------------------------------------------------------------------------

struct MatmulSlice {
  int begin, width;
  std::vector<float> w;       // [n_in, width]
  std::vector<int> ids;       // broadcast landing [B, K]
  std::vector<int> count;     // [B]
  std::vector<float> values;  // [B, K]
};

std::vector<MatmulSlice> matmulSlices(const LayerPlan& L, const float* w, const int* ids,
                                      const int* count, const float* values, int B, int K) {
  std::vector<MatmulSlice> slices;
  for (int s = 0; s < L.numSlices(); ++s) {
    MatmulSlice t;
    t.begin = L.begin(s);
    t.width = L.width(s);
    t.w = columns(w, L.nIn, L.nOut, t.begin, t.width);
    t.ids.assign(ids, ids + static_cast<size_t>(B) * K);
    t.count.assign(count, count + B);
    t.values.assign(values, values + static_cast<size_t>(B) * K);
    slices.push_back(std::move(t));
  }
  return slices;
}

// ---------------------------------------------------------------------------
// Fused network
// ---------------------------------------------------------------------------

struct LifSlice {
  int begin = 0, width = 0;
  std::vector<float> w, alpha, theta, theta2;
  std::vector<float> u;             // [B, width]
  std::vector<int> preIds;          // landing [B, K_pre]
  std::vector<int> preCount;        // [B]
  std::vector<int> spikeIds, carrierIds;       // [B, local]
  std::vector<float> spikeSur, carrierSur;     // [B, local]
  std::vector<unsigned> counts;                // [B, 2]
  // backward
  std::vector<float> eps, gI;       // [B, width]
  std::vector<int> slotIds;         // landing [B, K]
  std::vector<float> slotGrad;      // [B, K]
  std::vector<float> gw;            // [n_in, width]
  std::vector<float> partial;       // [B, K_pre]
};

struct LifRow {  // one batch row of one layer, on its row tile
  std::vector<int> landSpikeIds, landCarrierIds;  // [slices * local]
  std::vector<float> landSpikeSur, landCarrierSur;
  std::vector<unsigned> landCounts;               // [slices * 2]
  unsigned iteration = 0;
  std::vector<int> recIds;     // [T, K]
  std::vector<float> recSur;   // [T, K]
  std::vector<int> recCount, recDropped;  // [T]
  std::vector<int> sendIds;    // [K]
  int sendCount = 0;
  // backward
  unsigned slotIteration = 0, preIteration = 0;
  std::vector<int> slotIds;     // [K]
  std::vector<float> slotGrad;  // [K]
  std::vector<float> ds;        // [K]
  std::vector<float> landPartial;  // [slices of layer l+1, K] partials to sum
  std::vector<int> preIds;      // [K] presynaptic packet for layer l+1
  int preCount = 0;
};

struct LifNet {
  const Plan* plan = nullptr;
  int B = 0, T = 0, K0 = 0, L = 0;
  std::vector<int> sizes;
  std::vector<std::vector<LifSlice>> slices;  // [layer][slice]
  std::vector<std::vector<LifRow>> rows;      // [layer][batch row]
};

LifNet makeNet(const Plan& p, int B, int T, int K0, int L, const int* sizes, const int* caps,
               const float* const* weights, const float* const* alpha) {
  require(L >= 1, "at least one layer");
  require(static_cast<int>(p.layers.size()) == L, "plan has " + std::to_string(p.layers.size()) +
                                                      " layers, network has " + std::to_string(L));
  require(K0 >= 1, "input capacity K0 must be >= 1");
  require(p.timeSteps == T, "plan time_steps differs from T");
  require(p.inputCapacity == K0, "plan input_capacity differs from K0");
  LifNet net;
  net.plan = &p;
  net.B = B;
  net.T = T;
  net.K0 = K0;
  net.L = L;
  net.sizes.assign(sizes, sizes + L + 1);
  net.slices.resize(L);
  net.rows.resize(L);
  for (int l = 0; l < L; ++l) {
    snn::plan::checkLayer(p, l, sizes[l], sizes[l + 1], B, caps[l]);
    const LayerPlan& lp = p.layers[l];
    const int K = caps[l], Kp = l == 0 ? K0 : caps[l - 1];
    const int local = lp.localCapacity();
    for (int s = 0; s < lp.numSlices(); ++s) {
      LifSlice t;
      t.begin = lp.begin(s);
      t.width = lp.width(s);
      t.w = columns(weights[l], sizes[l], sizes[l + 1], t.begin, t.width);
      t.alpha.assign(alpha[l] + t.begin, alpha[l] + t.begin + t.width);
      t.u.assign(static_cast<size_t>(B) * t.width, 0.f);
      t.preIds.assign(static_cast<size_t>(B) * Kp, -1);
      t.preCount.assign(B, 0);
      t.spikeIds.resize(static_cast<size_t>(B) * local);
      t.carrierIds.resize(static_cast<size_t>(B) * local);
      t.spikeSur.resize(static_cast<size_t>(B) * local);
      t.carrierSur.resize(static_cast<size_t>(B) * local);
      t.counts.resize(static_cast<size_t>(B) * 2);
      t.eps.assign(static_cast<size_t>(B) * t.width, 0.f);
      t.gI.resize(static_cast<size_t>(B) * t.width);
      t.slotIds.resize(static_cast<size_t>(B) * K);
      t.slotGrad.resize(static_cast<size_t>(B) * K);
      t.gw.assign(static_cast<size_t>(sizes[l]) * t.width, 0.f);
      t.partial.resize(static_cast<size_t>(B) * Kp);
      net.slices[l].push_back(std::move(t));
    }
    const int ns = lp.numSlices();
    for (int b = 0; b < B; ++b) {
      LifRow r;
      r.landSpikeIds.resize(static_cast<size_t>(ns) * local);
      r.landCarrierIds.resize(static_cast<size_t>(ns) * local);
      r.landSpikeSur.resize(static_cast<size_t>(ns) * local);
      r.landCarrierSur.resize(static_cast<size_t>(ns) * local);
      r.landCounts.resize(static_cast<size_t>(ns) * 2);
      r.recIds.assign(static_cast<size_t>(T) * K, 0);
      r.recSur.assign(static_cast<size_t>(T) * K, 0.f);
      r.recCount.assign(T, 0);
      r.recDropped.assign(T, 0);
      r.sendIds.resize(K);
      r.slotIds.resize(K);
      r.slotGrad.resize(K);
      r.ds.assign(K, 0.f);
      r.preIds.resize(K);
      if (l + 1 < L) r.landPartial.resize(static_cast<size_t>(p.layers[l + 1].numSlices()) * K);
      net.rows[l].push_back(std::move(r));
    }
  }
  return net;
}

// The input spikes of one step per batch row, on layer 0's row tiles, from
// the whole input sequence (SnnInputStep; reverse for the backward pass).
struct InputSteps {
  const int* allIds;    // [B, T, K0]
  const int* allCount;  // [B, T]
  int B, T, K0, inputs;
  std::vector<unsigned> iteration;
  std::vector<int> ids, count;  // [B, K0], [B]

  InputSteps(const int* allIds, const int* allCount, int B, int T, int K0, int inputs)
      : allIds(allIds), allCount(allCount), B(B), T(T), K0(K0), inputs(inputs), iteration(B, 0),
        ids(static_cast<size_t>(B) * K0), count(B) {}

  // Compute set: the next step of every row.
  void step(unsigned reverse) {
    for (int b = 0; b < B; ++b) {
      SnnInputStep v;
      v.allIds.bind(allIds + static_cast<size_t>(b) * T * K0, static_cast<size_t>(T) * K0);
      v.allCount.bind(allCount + static_cast<size_t>(b) * T, T);
      v.iteration.bind(&iteration[b]);
      v.ids.bind(at(ids, static_cast<size_t>(b) * K0), K0);
      v.count.bind(&count[b]);
      v.inputs = inputs;
      v.reverse = reverse;
      run(v, where("SnnInputStep", -1, -1, b));
    }
  }
};

// Exchange: the transmitted ids of layer l's rows to every slice of layer l+1.
void broadcastSend(LifNet& net, int l) {
  const int K = static_cast<int>(net.rows[l][0].sendIds.size());
  for (LifSlice& t : net.slices[l + 1]) {
    for (int b = 0; b < net.B; ++b) {
      std::memcpy(at(t.preIds, static_cast<size_t>(b) * K), net.rows[l][b].sendIds.data(),
                  sizeof(int) * K);
      t.preCount[b] = net.rows[l][b].sendCount;
    }
  }
}

// Exchange: every slice's lists of row b to the row tile (slice-major).
void landLists(LifNet& net, int l, int local) {
  for (int b = 0; b < net.B; ++b) {
    LifRow& r = net.rows[l][b];
    for (size_t s = 0; s < net.slices[l].size(); ++s) {
      const LifSlice& t = net.slices[l][s];
      const size_t src = static_cast<size_t>(b) * local, dst = s * local;
      std::memcpy(&r.landSpikeIds[dst], &t.spikeIds[src], sizeof(int) * local);
      std::memcpy(&r.landCarrierIds[dst], &t.carrierIds[src], sizeof(int) * local);
      std::memcpy(&r.landSpikeSur[dst], &t.spikeSur[src], sizeof(float) * local);
      std::memcpy(&r.landCarrierSur[dst], &t.carrierSur[src], sizeof(float) * local);
      r.landCounts[2 * s] = t.counts[2 * b];
      r.landCounts[2 * s + 1] = t.counts[2 * b + 1];
    }
  }
}

// Stands in for popops::reduceWithOutput over the tile dimension, which the
// graph uses for the cross-tile sums of partial dot products: parts is
// [tiles, slots], summed in tile order. The IPU may add in another order, so
// tests compare these sums with a float tolerance.
void sumPartials(const std::vector<float>& parts, int slots, float* out) {
  const size_t tiles = parts.size() / static_cast<size_t>(slots);
  for (int k = 0; k < slots; ++k) {
    float acc = 0.f;
    for (size_t t = 0; t < tiles; ++t) acc += parts[t * slots + k];
    out[k] = acc;
  }
}

}  // namespace

extern "C" {

// ---------------------------------------------------------------------------
// Plan round trip and shim self test
// ---------------------------------------------------------------------------

// Parses a plan and writes its canonical form (what the builders will use).
int snn_host_plan_format(const char* attributes, char* out, int outlen, char* err, int errlen) {
  return guarded(err, errlen, [&] {
    const std::string s = snn::plan::format(snn::plan::parse(attributes));
    require(static_cast<int>(s.size()) < outlen, "output buffer too small");
    std::memcpy(out, s.c_str(), s.size() + 1);
  });
}

// Exercises the shim parts no codelet uses (VectorList, vectors of edges,
// bounds checks, output poisoning), so that a codelet that starts using them
// compiles and behaves as on the IPU.
int snn_host_shim_selftest(char* err, int errlen) {
  struct ListSum : poplar::Vertex {
    poplar::Input<poplar::VectorList<float, poplar::VectorListLayout::DELTANELEMENTS>> in;
    poplar::Vector<poplar::Input<poplar::Vector<int>>> many;
    poplar::Output<poplar::Vector<float>> out;
    poplar::InOut<unsigned> calls;
    bool compute() {
      for (unsigned i = 0; i < in.size(); ++i) {
        float s = 0.f;
        for (unsigned j = 0; j < in[i].size(); ++j) s += in[i][j];
        out[i] = s;
      }
      for (unsigned i = 0; i < many.size(); ++i) out[in.size() + i] = float(many[i].size());
      *calls = *calls + 1;
      return true;
    }
  };
  return guarded(err, errlen, [&] {
    float a[3] = {1, 2, 3}, b[1] = {10}, out[4];
    int x[2] = {0, 0}, y[5] = {0};
    unsigned calls = 0;
    ListSum v;
    v.in.add(a, 3);
    v.in.add(b, 1);
    v.many.resize(2);
    v.many[0].bind(x, 2);
    v.many[1].bind(y, 5);
    v.out.bind(out, 4);
    require(std::isnan(out[0]), "outputs are poisoned when bound");
    v.calls.bind(&calls);
    run(v, "ListSum");
    require(out[0] == 6.f && out[1] == 10.f && out[2] == 2.f && out[3] == 5.f && calls == 1,
            "VectorList / Vector-of-edges results");
    bool threw = false;
    try {
      (void)v.out[4];
    } catch (const poplar::shim::OutOfBounds&) {
      threw = true;
    }
    require(threw, "out-of-range access must throw");
  });
}

// ---------------------------------------------------------------------------
// Sparse binary matmul
// ---------------------------------------------------------------------------

int snn_host_matmul_fwd(const char* attributes, const float* w, int nIn, int nOut, const int* ids,
                        const int* count, const float* values, int B, int K, float* y, char* err,
                        int errlen) {
  return guarded(err, errlen, [&] {
    const Plan p = snn::plan::parse(attributes);
    snn::plan::checkLayer(p, 0, nIn, nOut, B, -1);
    const LayerPlan& L = p.layers[0];
    auto slices = matmulSlices(L, w, ids, count, values, B, K);
    for (int s = 0; s < L.numSlices(); ++s) {
      MatmulSlice& t = slices[s];
      std::vector<float> out(static_cast<size_t>(B) * t.width);
      for (int b = 0; b < B; ++b) {
        SnnMatmulFwd v;
        v.weights.bind(t.w.data(), t.w.size());
        v.ids.bind(at(t.ids, static_cast<size_t>(b) * K), K);
        v.count.bind(&t.count[b]);
        v.values.bind(at(t.values, static_cast<size_t>(b) * K), K);
        v.y.bind(at(out, static_cast<size_t>(b) * t.width), t.width);
        run(v, where("SnnMatmulFwd", 0, s, b));
      }
      putColumns(out, B, nOut, t.begin, t.width, y);
    }
  });
}

int snn_host_matmul_grad(const char* attributes, const float* w, int nIn, int nOut, const int* ids,
                         const int* count, const float* values, int B, int K, const float* gradY,
                         float* gradW, float* gradValues, char* err, int errlen) {
  return guarded(err, errlen, [&] {
    const Plan p = snn::plan::parse(attributes);
    snn::plan::checkLayer(p, 0, nIn, nOut, B, -1);
    const LayerPlan& L = p.layers[0];
    auto slices = matmulSlices(L, w, ids, count, values, B, K);
    const int ns = L.numSlices();
    // Every slice's partial dots per row, [slices, K], for the cross-tile sum.
    std::vector<std::vector<float>> land(B, std::vector<float>(static_cast<size_t>(ns) * K));
    for (int s = 0; s < ns; ++s) {
      MatmulSlice& t = slices[s];
      std::vector<float> gy = columns(gradY, B, nOut, t.begin, t.width);
      std::vector<float> gw(static_cast<size_t>(nIn) * t.width);
      for (auto r : rowRanges(nIn, p.workers)) {
        SnnMatmulGradWeights v;
        v.ids.bind(t.ids.data(), t.ids.size());
        v.count.bind(t.count.data(), t.count.size());
        v.values.bind(t.values.data(), t.values.size());
        v.gradY.bind(gy.data(), gy.size());
        v.gradW.bind(at(gw, static_cast<size_t>(r.first) * t.width),
                     static_cast<size_t>(r.second - r.first) * t.width);
        v.rowBegin = r.first;
        run(v, where("SnnMatmulGradWeights", 0, s, -1));
      }
      putColumns(gw, nIn, nOut, t.begin, t.width, gradW);
      std::vector<float> partial(static_cast<size_t>(B) * K);
      for (int b = 0; b < B; ++b) {
        SnnMatmulGradValuesPartial v;
        v.weights.bind(t.w.data(), t.w.size());
        v.ids.bind(at(t.ids, static_cast<size_t>(b) * K), K);
        v.count.bind(&t.count[b]);
        v.gradY.bind(at(gy, static_cast<size_t>(b) * t.width), t.width);
        v.partial.bind(at(partial, static_cast<size_t>(b) * K), K);
        run(v, where("SnnMatmulGradValuesPartial", 0, s, b));
        std::memcpy(&land[b][static_cast<size_t>(s) * K], &partial[static_cast<size_t>(b) * K],
                    sizeof(float) * K);
      }
    }
    for (int b = 0; b < B; ++b) sumPartials(land[b], K, gradValues + static_cast<size_t>(b) * K);
  });
}

// ---------------------------------------------------------------------------
// Spike selection
// ---------------------------------------------------------------------------

int snn_host_select(const char* attributes, const float* u, const float* theta,
                    const float* theta2, int B, int n, int* ids, int* count, int* dropped,
                    float* values, char* err, int errlen) {
  return guarded(err, errlen, [&] {
    const Plan p = snn::plan::parse(attributes);
    snn::plan::checkLayer(p, 0, -1, n, B, -1);
    const LayerPlan& L = p.layers[0];
    const int K = L.capacity, ns = L.numSlices(), local = L.localCapacity();
    std::vector<std::vector<int>> landSpk(B, std::vector<int>(static_cast<size_t>(ns) * local));
    std::vector<std::vector<int>> landCar(B, std::vector<int>(static_cast<size_t>(ns) * local));
    std::vector<std::vector<unsigned>> landCnt(B, std::vector<unsigned>(static_cast<size_t>(ns) * 2));
    for (int s = 0; s < ns; ++s) {
      const int begin = L.begin(s), width = L.width(s);
      std::vector<float> tu = columns(u, B, n, begin, width);
      std::vector<float> th(theta + begin, theta + begin + width);
      std::vector<float> th2(theta2 + begin, theta2 + begin + width);
      std::vector<int> spk(static_cast<size_t>(B) * local), car(static_cast<size_t>(B) * local);
      std::vector<unsigned> cnt(static_cast<size_t>(B) * 2);
      for (int b = 0; b < B; ++b) {
        SnnSelectLocal v;
        v.u.bind(at(tu, static_cast<size_t>(b) * width), width);
        v.theta.bind(th.data(), width);
        v.theta2.bind(th2.data(), width);
        v.spikeIds.bind(at(spk, static_cast<size_t>(b) * local), local);
        v.carrierIds.bind(at(car, static_cast<size_t>(b) * local), local);
        v.counts.bind(at(cnt, static_cast<size_t>(b) * 2), 2);
        v.offset = begin;
        run(v, where("SnnSelectLocal", 0, s, b));
        std::memcpy(&landSpk[b][static_cast<size_t>(s) * local], &spk[static_cast<size_t>(b) * local],
                    sizeof(int) * local);
        std::memcpy(&landCar[b][static_cast<size_t>(s) * local], &car[static_cast<size_t>(b) * local],
                    sizeof(int) * local);
        landCnt[b][2 * s] = cnt[2 * b];
        landCnt[b][2 * s + 1] = cnt[2 * b + 1];
      }
    }
    for (int b = 0; b < B; ++b) {
      SnnSelectMerge v;
      v.spikeIds.bind(landSpk[b].data(), landSpk[b].size());
      v.carrierIds.bind(landCar[b].data(), landCar[b].size());
      v.counts.bind(landCnt[b].data(), landCnt[b].size());
      v.ids.bind(ids + static_cast<size_t>(b) * K, K);
      v.values.bind(values + static_cast<size_t>(b) * K, K);
      v.count.bind(count + b);
      v.dropped.bind(dropped + b);
      run(v, where("SnnSelectMerge", 0, -1, b));
    }
  });
}

int snn_host_select_grad(const char* attributes, const float* u, const float* theta, int B, int n,
                         const int* ids, const float* gradValues, int K, float* gradU, char* err,
                         int errlen) {
  return guarded(err, errlen, [&] {
    const Plan p = snn::plan::parse(attributes);
    snn::plan::checkLayer(p, 0, -1, n, B, K);
    const LayerPlan& L = p.layers[0];
    for (int s = 0; s < L.numSlices(); ++s) {
      const int begin = L.begin(s), width = L.width(s);
      std::vector<float> tu = columns(u, B, n, begin, width);
      std::vector<float> th(theta + begin, theta + begin + width);
      std::vector<int> tids(ids, ids + static_cast<size_t>(B) * K);
      std::vector<float> tgv(gradValues, gradValues + static_cast<size_t>(B) * K);
      std::vector<float> gu(static_cast<size_t>(B) * width);
      for (int b = 0; b < B; ++b) {
        SnnSelectGrad v;
        v.u.bind(at(tu, static_cast<size_t>(b) * width), width);
        v.theta.bind(th.data(), width);
        v.ids.bind(at(tids, static_cast<size_t>(b) * K), K);
        v.gradValues.bind(at(tgv, static_cast<size_t>(b) * K), K);
        v.gradU.bind(at(gu, static_cast<size_t>(b) * width), width);
        v.offset = begin;
        v.neurons = n;
        v.beta = p.beta;
        run(v, where("SnnSelectGrad", 0, s, b));
      }
      putColumns(gu, B, n, begin, width, gradU);
    }
  });
}

// ---------------------------------------------------------------------------
// Fused multi-layer LIF network
// ---------------------------------------------------------------------------

// Forward over all steps. Per-layer outputs are arrays of L pointers. margin
// receives the smallest |u - theta| (and |u - theta2| where theta2 is finite)
// seen after any update: a test uses it to make sure no spike decision could
// flip between two correctly rounded implementations.
int snn_host_lif_fwd(const char* attributes, const int* inIds, const int* inCount, int B, int T,
                     int K0, int L, const int* sizes, const int* caps, const float* const* weights,
                     const float* const* alpha, const float* const* theta,
                     const float* const* theta2, float* logits, int* const* ids,
                     int* const* count, int* const* dropped, float* const* surrogate,
                     float* margin, char* err, int errlen) {
  return guarded(err, errlen, [&] {
    const Plan p = snn::plan::parse(attributes);
    LifNet net = makeNet(p, B, T, K0, L, sizes, caps, weights, alpha);
    for (int l = 0; l < L; ++l) {
      for (LifSlice& t : net.slices[l]) {
        t.theta.assign(theta[l] + t.begin, theta[l] + t.begin + t.width);
        t.theta2.assign(theta2[l] + t.begin, theta2[l] + t.begin + t.width);
      }
    }
    const int nL = sizes[L];
    std::fill(logits, logits + static_cast<size_t>(B) * nL, 0.f);
    InputSteps inputs(inIds, inCount, B, T, K0, sizes[0]);
    float low = std::numeric_limits<float>::infinity();

    for (int step = 0; step < T; ++step) {
      // Compute set: the input spikes of this step, per row.
      inputs.step(0);
      // Exchange: input spikes to every slice of layer 0.
      for (LifSlice& t : net.slices[0]) {
        t.preIds = inputs.ids;
        t.preCount = inputs.count;
      }
      // Compute set: one LIF step of every layer (layer l reads layer l-1's
      // transmission of the previous step, delivered at its end).
      for (int l = 0; l < L; ++l) {
        const LayerPlan& lp = p.layers[l];
        const int local = lp.localCapacity();
        const int Kp = l == 0 ? K0 : caps[l - 1];
        for (int s = 0; s < lp.numSlices(); ++s) {
          LifSlice& t = net.slices[l][s];
          for (int b = 0; b < B; ++b) {
            SnnLifStep v;
            v.weights.bind(t.w.data(), t.w.size());
            v.alpha.bind(t.alpha.data(), t.width);
            v.theta.bind(t.theta.data(), t.width);
            v.theta2.bind(t.theta2.data(), t.width);
            v.preIds.bind(at(t.preIds, static_cast<size_t>(b) * Kp), Kp);
            v.preCount.bind(&t.preCount[b]);
            v.u.bind(at(t.u, static_cast<size_t>(b) * t.width), t.width);
            v.spikeIds.bind(at(t.spikeIds, static_cast<size_t>(b) * local), local);
            v.spikeSur.bind(at(t.spikeSur, static_cast<size_t>(b) * local), local);
            v.carrierIds.bind(at(t.carrierIds, static_cast<size_t>(b) * local), local);
            v.carrierSur.bind(at(t.carrierSur, static_cast<size_t>(b) * local), local);
            v.counts.bind(at(t.counts, static_cast<size_t>(b) * 2), 2);
            v.offset = t.begin;
            v.inputScale = p.inputScale;
            v.beta = p.beta;
            run(v, where("SnnLifStep", l, s, b));
            for (int i = 0; i < t.width; ++i) {
              const float x = t.u[static_cast<size_t>(b) * t.width + i];
              low = std::min(low, std::fabs(x - t.theta[i]));
              if (std::isfinite(t.theta2[i])) low = std::min(low, std::fabs(x - t.theta2[i]));
            }
          }
        }
      }
      // Exchange: per-slice lists to the row tiles.
      for (int l = 0; l < L; ++l) landLists(net, l, p.layers[l].localCapacity());
      // Compute set: merge, record, hand over.
      for (int l = 0; l < L; ++l) {
        for (int b = 0; b < B; ++b) {
          LifRow& r = net.rows[l][b];
          SnnLifMerge v;
          v.spikeIds.bind(r.landSpikeIds.data(), r.landSpikeIds.size());
          v.spikeSur.bind(r.landSpikeSur.data(), r.landSpikeSur.size());
          v.carrierIds.bind(r.landCarrierIds.data(), r.landCarrierIds.size());
          v.carrierSur.bind(r.landCarrierSur.data(), r.landCarrierSur.size());
          v.counts.bind(r.landCounts.data(), r.landCounts.size());
          v.iteration.bind(&r.iteration);
          v.recIds.bind(r.recIds.data(), r.recIds.size());
          v.recSur.bind(r.recSur.data(), r.recSur.size());
          v.recCount.bind(r.recCount.data(), r.recCount.size());
          v.recDropped.bind(r.recDropped.data(), r.recDropped.size());
          v.sendIds.bind(r.sendIds.data(), r.sendIds.size());
          v.sendCount.bind(&r.sendCount);
          run(v, where("SnnLifMerge", l, -1, b));
        }
      }
      // Compute set: logits of the last layer.
      for (int b = 0; b < B; ++b) {
        LifRow& r = net.rows[L - 1][b];
        SnnAccumulateLogits v;
        v.ids.bind(r.sendIds.data(), r.sendIds.size());
        v.count.bind(&r.sendCount);
        v.logits.bind(logits + static_cast<size_t>(b) * nL, nL);
        run(v, where("SnnAccumulateLogits", L - 1, -1, b));
      }
      // Exchange: transmitted ids to the next layer, used at the next step.
      for (int l = 0; l + 1 < L; ++l) broadcastSend(net, l);
    }

    for (int l = 0; l < L; ++l) {
      const int K = caps[l];
      for (int b = 0; b < B; ++b) {
        const LifRow& r = net.rows[l][b];
        std::memcpy(ids[l] + static_cast<size_t>(b) * T * K, r.recIds.data(), sizeof(int) * T * K);
        std::memcpy(surrogate[l] + static_cast<size_t>(b) * T * K, r.recSur.data(),
                    sizeof(float) * T * K);
        std::memcpy(count[l] + static_cast<size_t>(b) * T, r.recCount.data(), sizeof(int) * T);
        std::memcpy(dropped[l] + static_cast<size_t>(b) * T, r.recDropped.data(), sizeof(int) * T);
      }
    }
    *margin = low;
  });
}

// BPTT weight gradients, given the forward's records (ids, count, surrogate).
int snn_host_lif_grad(const char* attributes, const float* gradLogits, const int* inIds,
                      const int* inCount, int B, int T, int K0, int L, const int* sizes,
                      const int* caps, const float* const* weights, const float* const* alpha,
                      const int* const* ids, const int* const* count,
                      const float* const* surrogate, float* const* gradWeights, char* err,
                      int errlen) {
  return guarded(err, errlen, [&] {
    const Plan p = snn::plan::parse(attributes);
    LifNet net = makeNet(p, B, T, K0, L, sizes, caps, weights, alpha);
    const int nL = sizes[L];
    for (int l = 0; l < L; ++l) {
      const int K = caps[l];
      for (int b = 0; b < B; ++b) {
        LifRow& r = net.rows[l][b];
        r.recIds.assign(ids[l] + static_cast<size_t>(b) * T * K, ids[l] + static_cast<size_t>(b + 1) * T * K);
        r.recSur.assign(surrogate[l] + static_cast<size_t>(b) * T * K,
                        surrogate[l] + static_cast<size_t>(b + 1) * T * K);
        r.recCount.assign(count[l] + static_cast<size_t>(b) * T, count[l] + static_cast<size_t>(b + 1) * T);
      }
    }
    InputSteps inputs(inIds, inCount, B, T, K0, sizes[0]);

    for (int it = 0; it < T; ++it) {
      // Compute set: per-row packets of step t = T-1-it.
      for (int l = 0; l < L; ++l) {
        for (int b = 0; b < B; ++b) {
          LifRow& r = net.rows[l][b];
          // Both slot-gradient vertices read the row's records and fill
          // its slot packet; they differ in where the gradient comes from.
          auto slotGrad = [&](auto& v, const char* vertex) {
            v.recIds.bind(r.recIds.data(), r.recIds.size());
            v.recSur.bind(r.recSur.data(), r.recSur.size());
            v.iteration.bind(&r.slotIteration);
            v.slotIds.bind(r.slotIds.data(), r.slotIds.size());
            v.slotGrad.bind(r.slotGrad.data(), r.slotGrad.size());
            run(v, where(vertex, l, -1, b));
          };
          if (l == L - 1) {
            SnnSlotGradFromLogits v;
            v.gradLogits.bind(gradLogits + static_cast<size_t>(b) * nL, nL);
            slotGrad(v, "SnnSlotGradFromLogits");
          } else {
            SnnSlotGradFromDs v;
            v.ds.bind(r.ds.data(), r.ds.size());
            slotGrad(v, "SnnSlotGradFromDs");
          }
          if (l + 1 < L) {
            SnnPresynFromRecord v;
            v.recIds.bind(r.recIds.data(), r.recIds.size());
            v.recCount.bind(r.recCount.data(), r.recCount.size());
            v.iteration.bind(&r.preIteration);
            v.ids.bind(r.preIds.data(), r.preIds.size());
            v.count.bind(&r.preCount);
            run(v, where("SnnPresynFromRecord", l, -1, b));
          }
        }
      }
      inputs.step(1);
      // Exchange: slot packets and presynaptic packets to the slices.
      for (int l = 0; l < L; ++l) {
        const int K = caps[l], Kp = l == 0 ? K0 : caps[l - 1];
        for (LifSlice& t : net.slices[l]) {
          for (int b = 0; b < B; ++b) {
            const LifRow& r = net.rows[l][b];
            std::memcpy(at(t.slotIds, static_cast<size_t>(b) * K), r.slotIds.data(), sizeof(int) * K);
            std::memcpy(at(t.slotGrad, static_cast<size_t>(b) * K), r.slotGrad.data(), sizeof(float) * K);
            if (l == 0) {
              std::memcpy(at(t.preIds, static_cast<size_t>(b) * Kp), &inputs.ids[static_cast<size_t>(b) * K0],
                          sizeof(int) * Kp);
              t.preCount[b] = inputs.count[b];
            } else {
              const LifRow& q = net.rows[l - 1][b];
              std::memcpy(at(t.preIds, static_cast<size_t>(b) * Kp), q.preIds.data(), sizeof(int) * Kp);
              t.preCount[b] = q.preCount;
            }
          }
        }
      }
      // Compute set: eps and gI per (slice, row).
      for (int l = 0; l < L; ++l) {
        const int K = caps[l];
        for (size_t s = 0; s < net.slices[l].size(); ++s) {
          LifSlice& t = net.slices[l][s];
          for (int b = 0; b < B; ++b) {
            SnnLifBwdEps v;
            v.alpha.bind(t.alpha.data(), t.width);
            v.slotIds.bind(at(t.slotIds, static_cast<size_t>(b) * K), K);
            v.slotGrad.bind(at(t.slotGrad, static_cast<size_t>(b) * K), K);
            v.eps.bind(at(t.eps, static_cast<size_t>(b) * t.width), t.width);
            v.gI.bind(at(t.gI, static_cast<size_t>(b) * t.width), t.width);
            v.offset = t.begin;
            v.inputScale = p.inputScale;
            run(v, where("SnnLifBwdEps", l, static_cast<int>(s), b));
          }
        }
      }
      // Compute set: weight gradient rows and presynaptic slot partials.
      for (int l = 0; l < L; ++l) {
        const int Kp = l == 0 ? K0 : caps[l - 1];
        for (size_t s = 0; s < net.slices[l].size(); ++s) {
          LifSlice& t = net.slices[l][s];
          for (auto r : rowRanges(sizes[l], p.workers)) {
            SnnScatterAddRows v;
            v.ids.bind(t.preIds.data(), t.preIds.size());
            v.count.bind(t.preCount.data(), t.preCount.size());
            v.rowsIn.bind(t.gI.data(), t.gI.size());
            v.acc.bind(at(t.gw, static_cast<size_t>(r.first) * t.width),
                       static_cast<size_t>(r.second - r.first) * t.width);
            v.rowBegin = r.first;
            run(v, where("SnnScatterAddRows", l, static_cast<int>(s), -1));
          }
          if (l == 0) continue;
          for (int b = 0; b < B; ++b) {
            SnnMatmulGradValuesPartial v;
            v.weights.bind(t.w.data(), t.w.size());
            v.ids.bind(at(t.preIds, static_cast<size_t>(b) * Kp), Kp);
            v.count.bind(&t.preCount[b]);
            v.gradY.bind(at(t.gI, static_cast<size_t>(b) * t.width), t.width);
            v.partial.bind(at(t.partial, static_cast<size_t>(b) * Kp), Kp);
            run(v, where("SnnMatmulGradValuesPartial", l, static_cast<int>(s), b));
          }
        }
      }
      // Cross-tile sums of the partials: d loss / d slot of layer l-1 at step
      // t-1, left on its row tiles for the next iteration.
      for (int l = 1; l < L; ++l) {
        const int Kp = caps[l - 1];
        for (int b = 0; b < B; ++b) {
          LifRow& q = net.rows[l - 1][b];
          for (size_t s = 0; s < net.slices[l].size(); ++s) {
            std::memcpy(&q.landPartial[s * Kp], &net.slices[l][s].partial[static_cast<size_t>(b) * Kp],
                        sizeof(float) * Kp);
          }
          sumPartials(q.landPartial, Kp, q.ds.data());
        }
      }
    }
    for (int l = 0; l < L; ++l) {
      for (const LifSlice& t : net.slices[l]) {
        putColumns(t.gw, sizes[l], sizes[l + 1], t.begin, t.width, gradWeights[l]);
      }
    }
  });
}

}  // extern "C"
