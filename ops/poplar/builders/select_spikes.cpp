// tensorflow-ipu custom op: two-threshold spike selection and its surrogate
// gradient (IPU counterpart of ops/select_spikes.cc).
//
//   inputs:  u [B, n] f32, threshold [n] f32, threshold2 [n] f32
//   outputs: ids [B, K] i32, count [B] i32, dropped [B] i32, values [B, K] f32
//   grad:    inputs_with_gradients = {0} -> outputs {grad_u}
//   attributes: the plan of snn_runner.ipu.planner.plan_layer("select", ...);
//     K is the layer's capacity, beta the plan's beta.
//
// Each compute tile scans its own slice of neurons and sends at most
// min(K, width) spike ids and as many carrier ids to the row tile of each
// batch row, which merges them (tiles in ascending neuron order) into the K
// slots; for the gradient the K selected ids go back to every tile.
//
// UNTESTED on IPU hardware (see docs/ipu.md); the vertices and this dataflow
// are checked on the host by tests/test_ipu_codelets.py.

#include "graph_util.hpp"

using namespace snn::ipu;
namespace prog = poplar::program;

namespace {

struct Inputs {
  Tensor u, theta, theta2;
  std::size_t batch, n;
};

// The inputs, checked against each other and against the plan.
Inputs readInputs(const OpBuild& job, const std::vector<Tensor>& in) {
  if (in.size() != 3) fail("SnnSelectSpikes takes u, threshold, threshold2");
  if (in[0].rank() != 2) fail("u must be a matrix [B, n]");
  Inputs x{in[0], in[1], in[2], in[0].dim(0), in[0].dim(1)};
  expect(x.u, poplar::FLOAT, {x.batch, x.n}, "u");
  expect(x.theta, poplar::FLOAT, {x.n}, "threshold");
  expect(x.theta2, poplar::FLOAT, {x.n}, "threshold2");
  checkPlanLayer(job.plan, 0, -1, x.n, x.batch, -1);
  return x;
}

}  // namespace

const char* const op::kName = "SnnSelectSpikes";

std::vector<std::int64_t> op::allocatingInputs(std::uint32_t) { return {0, 1, 2}; }

// u [B, n] and the thresholds [n]: one variable per neuron slice, on its tile.
Tensor op::allocate(Graph& graph, const Plan& p, std::int64_t operand,
                    const std::vector<std::size_t>& shape, poplar::Type type, const std::string& name) {
  if (operand == 0 && shape.size() == 2) {
    return addSliced(graph, type, {shape[0]}, p.layers[0], name + "/u").whole;
  }
  if ((operand == 1 || operand == 2) && shape.size() == 1) {
    return addSliced(graph, type, {}, p.layers[0], name + "/threshold").whole;
  }
  fail("unexpected operand " + std::to_string(operand) + " for the allocator");
}

void op::build(Graph& graph, OpBuild& job, const std::vector<Tensor>& inputs,
               std::vector<Tensor>& outputs) {
  const Inputs x = readInputs(job, inputs);
  const LayerPlan& L = job.plan.layers[0];
  const std::size_t K = L.capacity, local = L.localCapacity(), slices = L.numSlices();
  const std::string& name = job.name;
  prog::Sequence& seq = job.seq;

  const auto u = slicesOf(graph, x.u, L, seq, name + "/u");
  const auto th = slicesOf(graph, x.theta, L, seq, name + "/threshold");
  const auto th2 = slicesOf(graph, x.theta2, L, seq, name + "/threshold2");
  const Tensor spk = addPerSlice(graph, poplar::INT, {x.batch, local}, L, name + "/spike_ids");
  const Tensor car = addPerSlice(graph, poplar::INT, {x.batch, local}, L, name + "/carrier_ids");
  const Tensor cnt = addPerSlice(graph, poplar::UNSIGNED_INT, {x.batch, 2}, L, name + "/counts");

  poplar::ComputeSet scan = graph.addComputeSet({name + "/scan"});
  for (std::size_t s = 0; s < slices; ++s) {
    for (std::size_t b = 0; b < x.batch; ++b) {
      auto v = vertex(graph, scan, "SnnSelectLocal", L.tiles[s],
                      {{"u", u[s][b]}, {"theta", th[s]}, {"theta2", th2[s]}, {"spikeIds", spk[s][b]},
                       {"carrierIds", car[s][b]}, {"counts", cnt[s][b]}},
                      20 + 6 * L.width(s));
      graph.setInitialValue(v["offset"], L.begin(s));
    }
  }
  seq.add(prog::Execute(scan));

  // Exchange: the short per-slice lists to each batch row's row tile.
  const Tensor landSpk = addRows(graph, poplar::INT, {slices, local}, L, name + "/landed_spike_ids");
  const Tensor landCar = addRows(graph, poplar::INT, {slices, local}, L, name + "/landed_carrier_ids");
  const Tensor landCnt = addRows(graph, poplar::UNSIGNED_INT, {slices, 2}, L, name + "/landed_counts");
  landOnRows(seq, spk, landSpk);
  landOnRows(seq, car, landCar);
  landOnRows(seq, cnt, landCnt);

  const Tensor ids = addRows(graph, poplar::INT, {K}, L, name + "/ids");
  const Tensor values = addRows(graph, poplar::FLOAT, {K}, L, name + "/values");
  const Tensor count = addRows(graph, poplar::INT, {}, L, name + "/count");
  const Tensor dropped = addRows(graph, poplar::INT, {}, L, name + "/dropped");
  poplar::ComputeSet merge = graph.addComputeSet({name + "/merge"});
  for (std::size_t b = 0; b < x.batch; ++b) {
    vertex(graph, merge, "SnnSelectMerge", L.rowTiles[b],
           {{"spikeIds", landSpk[b].flatten()}, {"carrierIds", landCar[b].flatten()},
            {"counts", landCnt[b].flatten()}, {"ids", ids[b]}, {"values", values[b]}, {"count", count[b]},
            {"dropped", dropped[b]}},
           20 + 4 * (slices + K));
  }
  seq.add(prog::Execute(merge));
  outputs = {ids, count, dropped, values};
}

void op::buildGrad(Graph& graph, OpBuild& job, const std::vector<Tensor>& gradients,
                   const std::vector<Tensor>& fwdInputs, const std::vector<Tensor>& fwdOutputs,
                   std::vector<Tensor>& outputs) {
  const Inputs x = readInputs(job, fwdInputs);
  const LayerPlan& L = job.plan.layers[0];
  const std::size_t K = L.capacity;
  if (gradients.size() != 4 || fwdOutputs.size() != 4) fail("SnnSelectSpikes has four outputs");
  // Only values is differentiable; the integer outputs' gradients are ignored.
  const Tensor& ids = fwdOutputs[0];
  const Tensor& gradValues = gradients[3];
  expect(ids, poplar::INT, {x.batch, K}, "ids");
  expect(gradValues, poplar::FLOAT, {x.batch, K}, "grad_values");
  const std::string& name = job.name;
  prog::Sequence& seq = job.seq;

  const auto u = slicesOf(graph, x.u, L, seq, name + "/u");
  const auto th = slicesOf(graph, x.theta, L, seq, name + "/threshold");
  const Tensor landIds = addPerSlice(graph, poplar::INT, {x.batch, K}, L, name + "/ids");
  const Tensor landGrad = addPerSlice(graph, poplar::FLOAT, {x.batch, K}, L, name + "/grad_values");
  broadcastTo(seq, ids, landIds);
  broadcastTo(seq, gradValues, landGrad);
  const Sliced gu = addSliced(graph, poplar::FLOAT, {x.batch}, L, name + "/grad_u");

  poplar::ComputeSet cs = graph.addComputeSet({name + "/scatter"});
  for (int s = 0; s < L.numSlices(); ++s) {
    for (std::size_t b = 0; b < x.batch; ++b) {
      auto v = vertex(graph, cs, "SnnSelectGrad", L.tiles[s],
                      {{"u", u[s][b]}, {"theta", th[s]}, {"ids", landIds[s][b]}, {"gradValues", landGrad[s][b]},
                       {"gradU", gu.parts[s][b]}},
                      20 + L.width(s) + 30 * K);
      graph.setInitialValue(v["offset"], L.begin(s));
      graph.setInitialValue(v["neurons"], static_cast<int>(x.n));
      graph.setInitialValue(v["beta"], job.plan.beta);
    }
  }
  seq.add(prog::Execute(cs));
  outputs = {gu.whole};
}
