// tensorflow-ipu custom op: the fused multi-layer LIF network over all time
// steps, and its BPTT weight gradient (IPU counterpart of
// ops/sparse_lif_layer.cc).
//
//   inputs:  in_ids [B, T, K0] i32, in_count [B, T] i32, then per layer (N of
//            each): weights [n_{l-1}, n_l], alpha [n_l], threshold [n_l],
//            threshold2 [n_l], all f32
//   outputs: logits [B, n_L] f32, then per layer ids [B, T, K_l] i32,
//            count [B, T] i32, dropped [B, T] i32, surrogate [B, T, K_l] f32
//   grad:    inputs_with_gradients = the weights -> outputs {grad_weights...}
//   attributes: the plan of snn_runner.ipu.planner.plan_network (capacities,
//     input_scale and beta included)
//
// Forward, one Repeat iteration per time step:
//   input step (row tiles of layer 0) -> ids to layer-0 tiles
//   LIF step of every layer on its compute tiles (layer l reads layer l-1's
//     transmission of the previous step, hence all layers run in parallel)
//   per-tile lists -> row tiles; merge, record, logits
//   transmitted ids -> tiles of the next layer
// Backward, one iteration per step, t = T-1 ... 0:
//   slot gradients (from the logits or from the sums of the previous
//     iteration) and presynaptic packets on the row tiles -> compute tiles
//   eps / input-current gradient per tile; weight-gradient rows and partial
//     dot products for the presynaptic slots
//   cross-tile sum of the partials -> d loss / d slot of layer l-1 at t-1
// Only spike ids, counts and per-slot values cross tiles.
//
// UNTESTED on IPU hardware (see docs/ipu.md); the vertices and this dataflow
// are checked on the host by tests/test_ipu_codelets.py.

#include "../../common/fused_layout.h"
#include "graph_util.hpp"

using namespace snn::ipu;
using snn::FusedLayout;
namespace prog = poplar::program;

namespace {

struct Net {
  std::size_t layers, batch, steps, k0;
  std::vector<std::size_t> sizes;  // n_0 ... n_L
  Tensor inIds, inCount;
  std::vector<Tensor> weights, alpha, theta, theta2;
};

Net readInputs(const std::vector<Tensor>& in, const Plan& p) {
  const std::size_t n = p.layers.size();
  const FusedLayout io{static_cast<int>(n)};
  if (in.size() != static_cast<std::size_t>(io.num_inputs())) {
    fail("SnnSparseLifLayer takes in_ids, in_count and 4 tensors per layer (" + std::to_string(n) +
         " layers planned), got " + std::to_string(in.size()) + " inputs");
  }
  Net x;
  x.layers = n;
  x.inIds = in[FusedLayout::kInIds];
  x.inCount = in[FusedLayout::kInCount];
  if (x.inIds.rank() != 3) fail("in_ids must be [B, T, K0]");
  x.batch = x.inIds.dim(0);
  x.steps = x.inIds.dim(1);
  x.k0 = x.inIds.dim(2);
  if (x.k0 == 0) fail("in_ids must have at least one slot per step");
  expect(x.inIds, poplar::INT, {x.batch, x.steps, x.k0}, "in_ids");
  expect(x.inCount, poplar::INT, {x.batch, x.steps}, "in_count");
  if (static_cast<int>(x.steps) != p.timeSteps || static_cast<int>(x.k0) != p.inputCapacity) {
    fail("the plan is for T = " + std::to_string(p.timeSteps) + ", K0 = " + std::to_string(p.inputCapacity) +
         " but in_ids is [" + std::to_string(x.batch) + ", " + std::to_string(x.steps) + ", " +
         std::to_string(x.k0) + "]");
  }
  for (std::size_t l = 0; l < n; ++l) {
    const Tensor& w = in[io.weights(static_cast<int>(l))];
    if (w.rank() != 2) fail("weights[" + std::to_string(l) + "] must be a matrix");
    if (l == 0) x.sizes.push_back(w.dim(0));
    x.sizes.push_back(w.dim(1));
    expect(w, poplar::FLOAT, {x.sizes[l], x.sizes[l + 1]}, "weights[" + std::to_string(l) + "]");
    x.weights.push_back(w);
    const struct {
      FusedLayout::Param param;
      const char* name;
      std::vector<Tensor>* list;
    } vectors[] = {{FusedLayout::kAlpha, "alpha", &x.alpha},
                   {FusedLayout::kThreshold, "threshold", &x.theta},
                   {FusedLayout::kThreshold2, "threshold2", &x.theta2}};
    for (const auto& v : vectors) {
      const Tensor& t = in[io.param(v.param, static_cast<int>(l))];
      expect(t, poplar::FLOAT, {x.sizes[l + 1]}, std::string(v.name) + "[" + std::to_string(l) + "]");
      v.list->push_back(t);
    }
    checkPlanLayer(p, l, x.sizes[l], x.sizes[l + 1], x.batch, -1);
  }
  return x;
}


// One layer's tensors on its compute tiles.
struct LayerTiles {
  std::vector<Tensor> w, alpha, theta, theta2;  // per slice
  std::size_t kPre = 0, local = 0;
};

LayerTiles placeLayer(Graph& graph, const Net& x, const Plan& p, std::size_t l, prog::Sequence& seq,
                      const std::string& name, bool thresholds) {
  const LayerPlan& L = p.layers[l];
  LayerTiles t;
  t.w = slicesOf(graph, x.weights[l], L, seq, name + "/weights");
  t.alpha = slicesOf(graph, x.alpha[l], L, seq, name + "/alpha");
  if (thresholds) {
    t.theta = slicesOf(graph, x.theta[l], L, seq, name + "/threshold");
    t.theta2 = slicesOf(graph, x.theta2[l], L, seq, name + "/threshold2");
  }
  t.kPre = l == 0 ? x.k0 : static_cast<std::size_t>(p.layers[l - 1].capacity);
  t.local = L.localCapacity();
  return t;
}

Tensor zeros(Graph& graph, Tensor t, prog::Sequence& seq, const std::string& name) {
  popops::zero(graph, t, seq, {name});
  return t;
}

// The input spikes of one step per batch row, on layer 0's row tiles: the
// whole input sequence is staged there once, and an SnnInputStep vertex in
// `cs` takes the next step (forward) or the previous one (reverse) each time
// cs runs.
struct InputSteps {
  Tensor ids, count;  // [B, K0], [B]
};

InputSteps addInputSteps(Graph& graph, const Net& x, const LayerPlan& L0, prog::Sequence& seq,
                         poplar::ComputeSet& cs, bool reverse, const std::string& name) {
  const Tensor all = addRows(graph, poplar::INT, {x.steps * x.k0}, L0, name + "/input_ids");
  const Tensor allCount = addRows(graph, poplar::INT, {x.steps}, L0, name + "/input_count");
  seq.add(prog::Copy(x.inIds.reshape({x.batch, x.steps * x.k0}), all));
  seq.add(prog::Copy(x.inCount, allCount));
  const Tensor iter = zeros(graph, addRows(graph, poplar::UNSIGNED_INT, {}, L0, name + "/input_iteration"),
                            seq, name);
  InputSteps step{addRows(graph, poplar::INT, {x.k0}, L0, name + "/step_ids"),
                  addRows(graph, poplar::INT, {}, L0, name + "/step_count")};
  for (std::size_t b = 0; b < x.batch; ++b) {
    auto v = vertex(graph, cs, "SnnInputStep", L0.rowTiles[b],
                    {{"allIds", all[b]}, {"allCount", allCount[b]}, {"iteration", iter[b]},
                     {"ids", step.ids[b]}, {"count", step.count[b]}},
                    20 + 3 * x.k0);
    graph.setInitialValue(v["inputs"], static_cast<int>(x.sizes[0]));
    graph.setInitialValue(v["reverse"], reverse ? 1u : 0u);
  }
  return step;
}

}  // namespace

const char* const op::kName = "SnnSparseLifLayer";

// The per-layer inputs: everything but in_ids and in_count.
std::vector<std::int64_t> op::allocatingInputs(std::uint32_t numInputs) {
  std::vector<std::int64_t> out;
  for (std::int64_t i = FusedLayout::kInCount + 1; i < static_cast<std::int64_t>(numInputs); ++i) {
    out.push_back(i);
  }
  return out;
}

// weights[l] as [n_in, width] per slice, the per-neuron vectors as [width]
// per slice, each on its slice's tile.
Tensor op::allocate(Graph& graph, const Plan& p, std::int64_t operand,
                    const std::vector<std::size_t>& shape, poplar::Type type, const std::string& name) {
  const FusedLayout io{static_cast<int>(p.layers.size())};
  if (operand <= FusedLayout::kInCount || operand >= io.num_inputs()) {
    fail("unexpected operand " + std::to_string(operand));
  }
  const int l = io.layer_of(static_cast<int>(operand));
  const LayerPlan& L = p.layers[static_cast<std::size_t>(l)];
  if (io.param_of(static_cast<int>(operand)) == FusedLayout::kWeights) {
    if (shape.size() != 2) fail("weights must be a matrix");
    return addSliced(graph, type, {shape[0]}, L, name + "/weights" + std::to_string(l)).whole;
  }
  if (shape.size() != 1) fail("per-neuron parameters must be vectors");
  return addSliced(graph, type, {}, L, name + "/neuron_params" + std::to_string(operand)).whole;
}

void op::build(Graph& graph, OpBuild& job, const std::vector<Tensor>& inputs,
               std::vector<Tensor>& outputs) {
  const Plan& p = job.plan;
  const Net x = readInputs(inputs, p);
  const std::size_t N = x.layers, B = x.batch, T = x.steps;
  prog::Sequence body;

  poplar::ComputeSet csInput = graph.addComputeSet({job.name + "/input"});
  poplar::ComputeSet csStep = graph.addComputeSet({job.name + "/step"});
  poplar::ComputeSet csMerge = graph.addComputeSet({job.name + "/merge"});
  poplar::ComputeSet csLogits = graph.addComputeSet({job.name + "/logits"});
  const InputSteps in = addInputSteps(graph, x, p.layers[0], job.seq, csInput, false, job.name);

  std::vector<Tensor> preIds(N), preCount(N), sendIds(N), sendCount(N);
  std::vector<Tensor> recIds(N), recSur(N), recCount(N), recDropped(N);
  // Per layer: spike ids, spike surrogates, carrier ids, carrier surrogates,
  // counts; on the compute tiles ([slices, B, ...]) and landed on the row
  // tiles ([B, slices, ...]).
  std::vector<std::vector<Tensor>> lists(N), landed(N);
  Tensor logits;
  for (std::size_t l = 0; l < N; ++l) {
    const LayerPlan& L = p.layers[l];
    const std::string ln = job.name + "/layer" + std::to_string(l);
    const LayerTiles t = placeLayer(graph, x, p, l, job.seq, ln, true);
    const std::size_t K = L.capacity, S = L.numSlices();
    const Sliced u = addSliced(graph, poplar::FLOAT, {B}, L, ln + "/u");
    zeros(graph, u.whole, job.seq, ln + "/zero_u");
    preIds[l] = addPerSlice(graph, poplar::INT, {B, t.kPre}, L, ln + "/pre_ids");
    preCount[l] = zeros(graph, addPerSlice(graph, poplar::INT, {B}, L, ln + "/pre_count"), job.seq, ln + "/zero");
    lists[l] = {addPerSlice(graph, poplar::INT, {B, t.local}, L, ln + "/spike_ids"),
                addPerSlice(graph, poplar::FLOAT, {B, t.local}, L, ln + "/spike_sur"),
                addPerSlice(graph, poplar::INT, {B, t.local}, L, ln + "/carrier_ids"),
                addPerSlice(graph, poplar::FLOAT, {B, t.local}, L, ln + "/carrier_sur"),
                addPerSlice(graph, poplar::UNSIGNED_INT, {B, 2}, L, ln + "/counts")};
    for (std::size_t s = 0; s < S; ++s) {
      for (std::size_t b = 0; b < B; ++b) {
        auto v = vertex(graph, csStep, "SnnLifStep", L.tiles[s],
                        {{"weights", t.w[s].flatten()}, {"alpha", t.alpha[s]}, {"theta", t.theta[s]},
                         {"theta2", t.theta2[s]}, {"preIds", preIds[l][s][b]}, {"preCount", preCount[l][s][b]},
                         {"u", u.parts[s][b]}, {"spikeIds", lists[l][0][s][b]}, {"spikeSur", lists[l][1][s][b]},
                         {"carrierIds", lists[l][2][s][b]}, {"carrierSur", lists[l][3][s][b]},
                         {"counts", lists[l][4][s][b]}},
                        20 + L.width(s) * (12 + 2 * t.kPre));
        graph.setInitialValue(v["offset"], L.begin(s));
        graph.setInitialValue(v["inputScale"], p.inputScale);
        graph.setInitialValue(v["beta"], p.beta);
      }
    }
    landed[l] = {addRows(graph, poplar::INT, {S, t.local}, L, ln + "/landed_spike_ids"),
                 addRows(graph, poplar::FLOAT, {S, t.local}, L, ln + "/landed_spike_sur"),
                 addRows(graph, poplar::INT, {S, t.local}, L, ln + "/landed_carrier_ids"),
                 addRows(graph, poplar::FLOAT, {S, t.local}, L, ln + "/landed_carrier_sur"),
                 addRows(graph, poplar::UNSIGNED_INT, {S, 2}, L, ln + "/landed_counts")};
    const Tensor iter = zeros(graph, addRows(graph, poplar::UNSIGNED_INT, {}, L, ln + "/iteration"), job.seq, ln);
    recIds[l] = zeros(graph, addRows(graph, poplar::INT, {T, K}, L, ln + "/ids"), job.seq, ln);
    recSur[l] = zeros(graph, addRows(graph, poplar::FLOAT, {T, K}, L, ln + "/surrogate"), job.seq, ln);
    recCount[l] = zeros(graph, addRows(graph, poplar::INT, {T}, L, ln + "/count"), job.seq, ln);
    recDropped[l] = zeros(graph, addRows(graph, poplar::INT, {T}, L, ln + "/dropped"), job.seq, ln);
    sendIds[l] = addRows(graph, poplar::INT, {K}, L, ln + "/send_ids");
    sendCount[l] = addRows(graph, poplar::INT, {}, L, ln + "/send_count");
    for (std::size_t b = 0; b < B; ++b) {
      vertex(graph, csMerge, "SnnLifMerge", L.rowTiles[b],
             {{"spikeIds", landed[l][0][b].flatten()}, {"spikeSur", landed[l][1][b].flatten()},
              {"carrierIds", landed[l][2][b].flatten()}, {"carrierSur", landed[l][3][b].flatten()},
              {"counts", landed[l][4][b].flatten()}, {"iteration", iter[b]}, {"recIds", recIds[l][b].flatten()},
              {"recSur", recSur[l][b].flatten()}, {"recCount", recCount[l][b]}, {"recDropped", recDropped[l][b]},
              {"sendIds", sendIds[l][b]}, {"sendCount", sendCount[l][b]}},
             20 + 6 * (S + K));
    }
    if (l + 1 == N) {
      logits = zeros(graph, addRows(graph, poplar::FLOAT, {x.sizes[N]}, L, job.name + "/logits"), job.seq,
                     job.name);
      for (std::size_t b = 0; b < B; ++b) {
        vertex(graph, csLogits, "SnnAccumulateLogits", L.rowTiles[b],
               {{"ids", sendIds[l][b]}, {"count", sendCount[l][b]}, {"logits", logits[b]}}, 20 + 4 * K);
      }
    }
  }

  body.add(prog::Execute(csInput));
  broadcastTo(body, in.ids, preIds[0]);
  broadcastTo(body, in.count, preCount[0]);
  body.add(prog::Execute(csStep));
  for (std::size_t l = 0; l < N; ++l) {
    for (int i = 0; i < 5; ++i) landOnRows(body, lists[l][i], landed[l][i]);
  }
  body.add(prog::Execute(csMerge));
  body.add(prog::Execute(csLogits));
  for (std::size_t l = 0; l + 1 < N; ++l) {
    broadcastTo(body, sendIds[l], preIds[l + 1]);
    broadcastTo(body, sendCount[l], preCount[l + 1]);
  }
  job.seq.add(prog::Repeat(static_cast<unsigned>(T), body, {job.name + "/time"}));

  const FusedLayout io{static_cast<int>(N)};
  outputs.assign(io.num_outputs(), Tensor());
  outputs[FusedLayout::kLogits] = logits;
  for (std::size_t l = 0; l < N; ++l) {
    const int li = static_cast<int>(l);
    outputs[io.record(FusedLayout::kIds, li)] = recIds[l];
    outputs[io.record(FusedLayout::kCount, li)] = recCount[l];
    outputs[io.record(FusedLayout::kDropped, li)] = recDropped[l];
    outputs[io.record(FusedLayout::kSurrogate, li)] = recSur[l];
  }
}

void op::buildGrad(Graph& graph, OpBuild& job, const std::vector<Tensor>& gradients,
                   const std::vector<Tensor>& fwdInputs, const std::vector<Tensor>& fwdOutputs,
                   std::vector<Tensor>& outputs) {
  const Plan& p = job.plan;
  const Net x = readInputs(fwdInputs, p);
  const std::size_t N = x.layers, B = x.batch, T = x.steps;
  const FusedLayout io{static_cast<int>(N)};
  const std::size_t numOutputs = static_cast<std::size_t>(io.num_outputs());
  if (fwdOutputs.size() != numOutputs || gradients.size() != numOutputs) {
    fail("SnnSparseLifLayer has 1 + 4 * layers outputs");
  }
  // Only the logits carry a gradient; the recorded slots are read from the
  // forward outputs. (What arrives at the surrogate outputs would be the
  // slot-value gradients of activity regularisation, which the CPU op takes
  // through SnnSparseLifLayerGradWithValues; the IPU backend refuses them at
  // trace time, snn_runner/backend/ipu.py, so none reach this builder.)
  expect(gradients[FusedLayout::kLogits], poplar::FLOAT, {B, x.sizes[N]}, "grad_logits");
  prog::Sequence body;

  poplar::ComputeSet csPrep = graph.addComputeSet({job.name + "/prepare"});
  poplar::ComputeSet csEps = graph.addComputeSet({job.name + "/eps"});
  poplar::ComputeSet csGrad = graph.addComputeSet({job.name + "/grad"});
  const InputSteps in0 = addInputSteps(graph, x, p.layers[0], job.seq, csPrep, true, job.name);

  std::vector<Tensor> recIds(N), recSur(N), recCount(N), ds(N), slotIds(N), slotGrad(N);
  std::vector<Tensor> packIds(N), packCount(N);  // presynaptic packet built on layer l's rows for l+1
  std::vector<Tensor> landSlotIds(N), landSlotGrad(N), landPreIds(N), landPreCount(N), partial(N);
  std::vector<Tensor> gradW(N);
  for (std::size_t l = 0; l < N; ++l) {
    const LayerPlan& L = p.layers[l];
    const std::size_t K = L.capacity, S = L.numSlices();
    const std::string ln = job.name + "/layer" + std::to_string(l);
    recIds[l] = addRows(graph, poplar::INT, {T * K}, L, ln + "/ids");
    recSur[l] = addRows(graph, poplar::FLOAT, {T * K}, L, ln + "/surrogate");
    recCount[l] = addRows(graph, poplar::INT, {T}, L, ln + "/count");
    const int li = static_cast<int>(l);
    const Tensor& fwdIds = fwdOutputs[io.record(FusedLayout::kIds, li)];
    const Tensor& fwdCount = fwdOutputs[io.record(FusedLayout::kCount, li)];
    const Tensor& fwdSur = fwdOutputs[io.record(FusedLayout::kSurrogate, li)];
    expect(fwdIds, poplar::INT, {B, T, K}, "ids[" + std::to_string(l) + "]");
    expect(fwdCount, poplar::INT, {B, T}, "count[" + std::to_string(l) + "]");
    expect(fwdSur, poplar::FLOAT, {B, T, K}, "surrogate[" + std::to_string(l) + "]");
    job.seq.add(prog::Copy(fwdIds.reshape({B, T * K}), recIds[l]));
    job.seq.add(prog::Copy(fwdCount, recCount[l]));
    job.seq.add(prog::Copy(fwdSur.reshape({B, T * K}), recSur[l]));
    slotIds[l] = addRows(graph, poplar::INT, {K}, L, ln + "/slot_ids");
    slotGrad[l] = addRows(graph, poplar::FLOAT, {K}, L, ln + "/slot_grad");
    const Tensor slotIter =
        zeros(graph, addRows(graph, poplar::UNSIGNED_INT, {}, L, ln + "/slot_iteration"), job.seq, ln);
    if (l + 1 == N) {
      const Tensor g = addRows(graph, poplar::FLOAT, {x.sizes[N]}, L, ln + "/grad_logits");
      job.seq.add(prog::Copy(gradients[FusedLayout::kLogits], g));
      for (std::size_t b = 0; b < B; ++b) {
        vertex(graph, csPrep, "SnnSlotGradFromLogits", L.rowTiles[b],
               {{"gradLogits", g[b]}, {"recIds", recIds[l][b]}, {"recSur", recSur[l][b]}, {"iteration", slotIter[b]},
                {"slotIds", slotIds[l][b]}, {"slotGrad", slotGrad[l][b]}},
               20 + 6 * K);
      }
    } else {
      ds[l] = zeros(graph, addRows(graph, poplar::FLOAT, {K}, L, ln + "/ds"), job.seq, ln);
      packIds[l] = addRows(graph, poplar::INT, {K}, L, ln + "/pre_packet_ids");
      packCount[l] = addRows(graph, poplar::INT, {}, L, ln + "/pre_packet_count");
      const Tensor preIter =
          zeros(graph, addRows(graph, poplar::UNSIGNED_INT, {}, L, ln + "/pre_iteration"), job.seq, ln);
      for (std::size_t b = 0; b < B; ++b) {
        vertex(graph, csPrep, "SnnSlotGradFromDs", L.rowTiles[b],
               {{"ds", ds[l][b]}, {"recIds", recIds[l][b]}, {"recSur", recSur[l][b]}, {"iteration", slotIter[b]},
                {"slotIds", slotIds[l][b]}, {"slotGrad", slotGrad[l][b]}},
               20 + 6 * K);
        vertex(graph, csPrep, "SnnPresynFromRecord", L.rowTiles[b],
               {{"recIds", recIds[l][b]}, {"recCount", recCount[l][b]}, {"iteration", preIter[b]},
                {"ids", packIds[l][b]}, {"count", packCount[l][b]}},
               20 + 2 * K);
      }
    }

    const LayerTiles t = placeLayer(graph, x, p, l, job.seq, ln, false);
    const Sliced eps = addSliced(graph, poplar::FLOAT, {B}, L, ln + "/eps");
    zeros(graph, eps.whole, job.seq, ln);
    const Sliced gI = addSliced(graph, poplar::FLOAT, {B}, L, ln + "/grad_current");
    const Sliced gw = addSliced(graph, poplar::FLOAT, {x.sizes[l]}, L, ln + "/grad_weights");
    gradW[l] = zeros(graph, gw.whole, job.seq, ln);
    landSlotIds[l] = addPerSlice(graph, poplar::INT, {B, K}, L, ln + "/landed_slot_ids");
    landSlotGrad[l] = addPerSlice(graph, poplar::FLOAT, {B, K}, L, ln + "/landed_slot_grad");
    landPreIds[l] = addPerSlice(graph, poplar::INT, {B, t.kPre}, L, ln + "/landed_pre_ids");
    landPreCount[l] = addPerSlice(graph, poplar::INT, {B}, L, ln + "/landed_pre_count");
    if (l > 0) partial[l] = addPerSlice(graph, poplar::FLOAT, {B, t.kPre}, L, ln + "/partial");
    for (std::size_t s = 0; s < S; ++s) {
      const unsigned tile = L.tiles[s];
      for (std::size_t b = 0; b < B; ++b) {
        auto v = vertex(graph, csEps, "SnnLifBwdEps", tile,
                        {{"alpha", t.alpha[s]}, {"slotIds", landSlotIds[l][s][b]}, {"slotGrad", landSlotGrad[l][s][b]},
                         {"eps", eps.parts[s][b]}, {"gI", gI.parts[s][b]}},
                        20 + 6 * L.width(s) + 8 * K);
        graph.setInitialValue(v["offset"], L.begin(s));
        graph.setInitialValue(v["inputScale"], p.inputScale);
        if (l > 0) {
          vertex(graph, csGrad, "SnnMatmulGradValuesPartial", tile,
                 {{"weights", t.w[s].flatten()}, {"ids", landPreIds[l][s][b]}, {"count", landPreCount[l][s][b]},
                  {"gradY", gI.parts[s][b]}, {"partial", partial[l][s][b]}},
                 20 + 2 * t.kPre * L.width(s));
        }
      }
      for (const auto& r : snn::plan::rowRanges(static_cast<int>(x.sizes[l]), p.workers)) {
        auto v = vertex(graph, csGrad, "SnnScatterAddRows", tile,
                        {{"ids", landPreIds[l][s].flatten()}, {"count", landPreCount[l][s]},
                         {"rowsIn", gI.parts[s].flatten()}, {"acc", gw.parts[s].slice(r.first, r.second, 0).flatten()}},
                        20 + 4 * B * t.kPre + (r.second - r.first) * L.width(s));
        graph.setInitialValue(v["rowBegin"], static_cast<unsigned>(r.first));
      }
    }
  }

  body.add(prog::Execute(csPrep));
  for (std::size_t l = 0; l < N; ++l) {
    broadcastTo(body, slotIds[l], landSlotIds[l]);
    broadcastTo(body, slotGrad[l], landSlotGrad[l]);
    broadcastTo(body, l == 0 ? in0.ids : packIds[l - 1], landPreIds[l]);
    broadcastTo(body, l == 0 ? in0.count : packCount[l - 1], landPreCount[l]);
  }
  body.add(prog::Execute(csEps));
  body.add(prog::Execute(csGrad));
  for (std::size_t l = 1; l < N; ++l) {
    sumOverSlices(graph, partial[l], ds[l - 1], body, job.name + "/layer" + std::to_string(l) + "/sum_partials");
  }
  job.seq.add(prog::Repeat(static_cast<unsigned>(T), body, {job.name + "/time"}));
  outputs = gradW;
}
