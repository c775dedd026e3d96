// tensorflow-ipu custom op: the sparse binary matmul and its gradient
// (IPU counterpart of ops/sparse_binary_matmul.cc).
//
//   inputs:  weights [n_in, n_out] f32, ids [B, K] i32, count [B] i32, values [B, K] f32
//   outputs: y [B, n_out] f32
//   grad:    inputs_with_gradients = {0, 3} -> outputs {grad_weights, grad_values}
//   attributes: the plan of snn_runner.ipu.planner.plan_layer("matmul", ...)
//
// Each compute tile owns the weight columns of its output slice; only the
// spike slots are broadcast to the tiles, and only the per-slot partial dots
// of the values gradient leave them.
//
// UNTESTED on IPU hardware (see docs/ipu.md); the vertices and this dataflow
// are checked on the host by tests/test_ipu_codelets.py.

#include "graph_util.hpp"

using namespace snn::ipu;
namespace prog = poplar::program;

namespace {

struct Inputs {
  Tensor weights, ids, count, values;
  std::size_t nIn, nOut, batch, slots;
};

// The inputs, checked against each other and against the plan.
Inputs readInputs(const OpBuild& job, const std::vector<Tensor>& in) {
  if (in.size() != 4) fail("SnnSparseBinaryMatmul takes weights, ids, count, values");
  Inputs x{in[0], in[1], in[2], in[3], 0, 0, 0, 0};
  if (x.weights.rank() != 2 || x.ids.rank() != 2) fail("weights and ids must be matrices");
  x.nIn = x.weights.dim(0);
  x.nOut = x.weights.dim(1);
  x.batch = x.ids.dim(0);
  x.slots = x.ids.dim(1);
  if (x.slots == 0) fail("ids must have at least one slot");
  expect(x.weights, poplar::FLOAT, {x.nIn, x.nOut}, "weights");
  expect(x.ids, poplar::INT, {x.batch, x.slots}, "ids");
  expect(x.count, poplar::INT, {x.batch}, "count");
  expect(x.values, poplar::FLOAT, {x.batch, x.slots}, "values");
  checkPlanLayer(job.plan, 0, static_cast<long long>(x.nIn), static_cast<long long>(x.nOut),
                 static_cast<long long>(x.batch), -1);
  return x;
}

// The spike slots on every slice's tile.
struct Landed {
  Tensor ids, count, values;  // [slices, B, K], [slices, B], [slices, B, K]
};

Landed landSpikes(Graph& graph, const Inputs& x, const LayerPlan& L, prog::Sequence& seq,
                  const std::string& name) {
  Landed d;
  d.ids = addPerSlice(graph, poplar::INT, {x.batch, x.slots}, L, name + "/ids");
  d.count = addPerSlice(graph, poplar::INT, {x.batch}, L, name + "/count");
  d.values = addPerSlice(graph, poplar::FLOAT, {x.batch, x.slots}, L, name + "/values");
  broadcastTo(seq, x.ids, d.ids);
  broadcastTo(seq, x.count, d.count);
  broadcastTo(seq, x.values, d.values);
  return d;
}

}  // namespace

const char* const op::kName = "SnnSparseBinaryMatmul";

std::vector<std::int64_t> op::allocatingInputs(std::uint32_t) { return {0}; }

// Weights: one [n_in, width] variable per slice, on the slice's tile.
Tensor op::allocate(Graph& graph, const Plan& p, std::int64_t operand,
                    const std::vector<std::size_t>& shape, poplar::Type type, const std::string& name) {
  if (operand != 0 || shape.size() != 2) fail("only the weights are allocated by the op");
  return addSliced(graph, type, {shape[0]}, p.layers[0], name + "/weights").whole;
}

void op::build(Graph& graph, OpBuild& job, const std::vector<Tensor>& inputs,
               std::vector<Tensor>& outputs) {
  const Inputs x = readInputs(job, inputs);
  const LayerPlan& L = job.plan.layers[0];
  const auto w = slicesOf(graph, x.weights, L, job.seq, job.name + "/weights");
  const Landed in = landSpikes(graph, x, L, job.seq, job.name);
  const Sliced y = addSliced(graph, poplar::FLOAT, {x.batch}, L, job.name + "/y");

  poplar::ComputeSet cs = graph.addComputeSet({job.name + "/gather"});
  for (int s = 0; s < L.numSlices(); ++s) {
    for (std::size_t b = 0; b < x.batch; ++b) {
      vertex(graph, cs, "SnnMatmulFwd", L.tiles[s],
             {{"weights", w[s].flatten()}, {"ids", in.ids[s][b]}, {"count", in.count[s][b]},
              {"values", in.values[s][b]}, {"y", y.parts[s][b]}},
             20 + 2 * x.slots * L.width(s));
    }
  }
  job.seq.add(prog::Execute(cs));
  outputs = {y.whole};
}

void op::buildGrad(Graph& graph, OpBuild& job, const std::vector<Tensor>& gradients,
                   const std::vector<Tensor>& fwdInputs, const std::vector<Tensor>&,
                   std::vector<Tensor>& outputs) {
  const Inputs x = readInputs(job, fwdInputs);
  if (gradients.size() != 1) fail("SnnSparseBinaryMatmul has one output gradient");
  expect(gradients[0], poplar::FLOAT, {x.batch, x.nOut}, "grad_y");
  const LayerPlan& L = job.plan.layers[0];
  const std::string& name = job.name;
  prog::Sequence& seq = job.seq;

  const auto w = slicesOf(graph, x.weights, L, seq, name + "/weights");
  const auto gy = slicesOf(graph, gradients[0], L, seq, name + "/grad_y");
  const Landed in = landSpikes(graph, x, L, seq, name);
  const Sliced gw = addSliced(graph, poplar::FLOAT, {x.nIn}, L, name + "/grad_weights");
  const Tensor partial = addPerSlice(graph, poplar::FLOAT, {x.batch, x.slots}, L, name + "/partial");

  poplar::ComputeSet cs = graph.addComputeSet({name + "/slices"});
  for (int s = 0; s < L.numSlices(); ++s) {
    const unsigned tile = L.tiles[s];
    for (const auto& r : snn::plan::rowRanges(static_cast<int>(x.nIn), job.plan.workers)) {
      auto v = vertex(graph, cs, "SnnMatmulGradWeights", tile,
                      {{"ids", in.ids[s].flatten()}, {"count", in.count[s]}, {"values", in.values[s].flatten()},
                       {"gradY", gy[s].flatten()}, {"gradW", gw.parts[s].slice(r.first, r.second, 0).flatten()}},
                      20 + (r.second - r.first) * L.width(s) + 4 * x.batch * x.slots);
      graph.setInitialValue(v["rowBegin"], static_cast<unsigned>(r.first));
    }
    for (std::size_t b = 0; b < x.batch; ++b) {
      vertex(graph, cs, "SnnMatmulGradValuesPartial", tile,
             {{"weights", w[s].flatten()}, {"ids", in.ids[s][b]}, {"count", in.count[s][b]},
              {"gradY", gy[s][b]}, {"partial", partial[s][b]}},
             20 + 2 * x.slots * L.width(s));
    }
  }
  seq.add(prog::Execute(cs));
  const Tensor gv = addRows(graph, poplar::FLOAT, {x.slots}, L, name + "/grad_values");
  sumOverSlices(graph, partial, gv, seq, name + "/sum_partials");
  outputs = {gw.whole, gv};
}
