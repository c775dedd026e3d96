// Poplar helpers shared by the snn graph builders: tensors laid out by the
// tile plan, exchange copies, vertex creation, and the functions each op
// library defines for the entry points of builders/entry_points.cpp.
//
// UNTESTED: written against the Poplar SDK 2.x/3.x API without an SDK at
// hand. The dataflow is the one the host harness runs (and the host tests
// check); what could not be checked here is the API usage itself.
#pragma once

#include <poplar/Graph.hpp>
#include <poplar/Program.hpp>
#include <poplar/Tensor.hpp>
#include <popops/Reduce.hpp>
#include <popops/Zero.hpp>
#include <poputil/exceptions.hpp>

#include <cstddef>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../common/plan.hpp"

namespace snn {
namespace ipu {

using poplar::Graph;
using poplar::Tensor;
using poplar::program::Sequence;
using plan::LayerPlan;
using plan::Plan;

[[noreturn]] inline void fail(const std::string& what) { throw poputil::poplibs_error("snn: " + what); }

inline Plan parsePlan(const Graph& graph, const std::string& attributes) {
  Plan p;
  try {
    p = plan::parse(attributes);
  } catch (const std::invalid_argument& e) {
    fail(e.what());
  }
  const unsigned tiles = graph.getTarget().getNumTiles();
  for (size_t l = 0; l < p.layers.size(); ++l) {
    const LayerPlan& L = p.layers[l];
    for (unsigned t : L.tiles) {
      if (t >= tiles) {
        fail("layer " + std::to_string(l) + " is planned on tile " + std::to_string(t) +
             " but the graph has " + std::to_string(tiles) + " tiles; plan for this target");
      }
    }
    for (unsigned t : L.rowTiles) {
      if (t >= tiles) fail("a row tile of layer " + std::to_string(l) + " is beyond the graph");
    }
  }
  return p;
}

inline void checkPlanLayer(const Plan& p, size_t l, long long nIn, long long nOut, long long batch,
                       long long capacity) {
  try {
    plan::checkLayer(p, l, nIn, nOut, batch, capacity);
  } catch (const std::invalid_argument& e) {
    fail(e.what());
  }
}

inline void expect(const Tensor& t, poplar::Type type, const std::vector<std::size_t>& shape,
                   const std::string& what) {
  if (t.elementType() != type || t.shape() != shape) {
    std::string s;
    for (auto d : shape) s += (s.empty() ? "" : ",") + std::to_string(d);
    fail(what + " must be " + type.toString() + " [" + s + "]");
  }
}

// A tensor of shape lead + [n] whose columns [starts[s], starts[s+1]) are a
// separate variable on tile tiles[s]: every slice is contiguous on its tile,
// which is what the vertices need.
struct Sliced {
  std::vector<Tensor> parts;
  Tensor whole;
};

inline Sliced addSliced(Graph& graph, poplar::Type type, const std::vector<std::size_t>& lead,
                        const LayerPlan& L, const std::string& name) {
  Sliced out;
  for (int s = 0; s < L.numSlices(); ++s) {
    std::vector<std::size_t> shape = lead;
    shape.push_back(static_cast<std::size_t>(L.width(s)));
    Tensor t = graph.addVariable(type, shape, {name + "/slice" + std::to_string(s)});
    graph.setTileMapping(t, L.tiles[s]);
    out.parts.push_back(t);
  }
  out.whole = poplar::concat(out.parts, static_cast<unsigned>(lead.size()));
  return out;
}

inline bool residentOn(const Graph& graph, const Tensor& t, unsigned tile) {
  if (!t.isContiguous()) return false;
  const auto mapping = graph.getTileMapping(t);
  if (tile >= mapping.size()) return false;
  std::size_t n = 0;
  for (const auto& interval : mapping[tile]) n += interval.size();
  return n == t.numElements();
}

// Per-slice views of t (sliced along its last dimension). A view that is not
// already contiguous on its slice's tile (the input did not come from our
// allocator) is copied into one that is, at the start of `prog`.
inline std::vector<Tensor> slicesOf(Graph& graph, const Tensor& t, const LayerPlan& L,
                                    Sequence& prog, const std::string& name) {
  std::vector<Tensor> parts;
  const unsigned dim = t.rank() - 1;
  if (t.dim(dim) != static_cast<std::size_t>(L.nOut)) {
    fail(name + ": last dimension " + std::to_string(t.dim(dim)) + " differs from the planned " +
         std::to_string(L.nOut));
  }
  for (int s = 0; s < L.numSlices(); ++s) {
    Tensor v = t.slice(L.starts[s], L.starts[s + 1], dim);
    if (!residentOn(graph, v, L.tiles[s])) {
      Tensor c = graph.addVariable(v.elementType(), v.shape(), {name + "/staged" + std::to_string(s)});
      graph.setTileMapping(c, L.tiles[s]);
      prog.add(poplar::program::Copy(v, c));
      v = c;
    }
    parts.push_back(v);
  }
  return parts;
}

// Shape [batch] + inner, row b on the layer's row tile of b.
inline Tensor addRows(Graph& graph, poplar::Type type, const std::vector<std::size_t>& inner,
                      const LayerPlan& L, const std::string& name) {
  std::vector<std::size_t> shape{L.rowTiles.size()};
  shape.insert(shape.end(), inner.begin(), inner.end());
  Tensor t = graph.addVariable(type, shape, {name});
  for (std::size_t b = 0; b < L.rowTiles.size(); ++b) graph.setTileMapping(t[b], L.rowTiles[b]);
  return t;
}

// Shape [slices] + inner, part s on the tile of slice s (landing buffers).
inline Tensor addPerSlice(Graph& graph, poplar::Type type, const std::vector<std::size_t>& inner,
                          const LayerPlan& L, const std::string& name) {
  std::vector<std::size_t> shape{static_cast<std::size_t>(L.numSlices())};
  shape.insert(shape.end(), inner.begin(), inner.end());
  Tensor t = graph.addVariable(type, shape, {name});
  for (int s = 0; s < L.numSlices(); ++s) graph.setTileMapping(t[s], L.tiles[s]);
  return t;
}

// Exchange: the same src to every slice's landing buffer dst = [slices, src...].
inline void broadcastTo(Sequence& prog, const Tensor& src, const Tensor& dst) {
  prog.add(poplar::program::Copy(src.expand({0}).broadcast(static_cast<unsigned>(dst.dim(0)), 0), dst));
}

// Exchange: per-slice lists [slices, batch, ...] to the row tiles [batch, slices, ...].
inline void landOnRows(Sequence& prog, const Tensor& perSlice, const Tensor& rows) {
  std::vector<unsigned> order{1, 0};
  for (unsigned d = 2; d < perSlice.rank(); ++d) order.push_back(d);
  prog.add(poplar::program::Copy(perSlice.dimShuffle(order), rows));
}

inline poplar::VertexRef vertex(Graph& graph, poplar::ComputeSet& cs, const char* type, unsigned tile,
                                std::vector<std::pair<std::string, Tensor>> edges,
                                std::uint64_t cycles) {
  poplar::VertexRef v = graph.addVertex(cs, type);
  for (auto& e : edges) graph.connect(v[e.first], e.second);
  graph.setTileMapping(v, tile);
  // Only the IPU Model (simulator) reads this; hardware ignores it.
  graph.setPerfEstimate(v, cycles);
  return v;
}

inline void sumOverSlices(Graph& graph, const Tensor& partials, const Tensor& out, Sequence& prog,
                          const std::string& name) {
  popops::reduceWithOutput(graph, partials, out, {0}, popops::ReduceParams(popops::Operation::ADD), prog,
                           {name});
}

// What every Build and Build_grad works with: the plan (checked against the
// graph), the op's debug name and the program its steps are added to.
struct OpBuild {
  Plan plan;
  std::string name;
  Sequence seq;
};

// Each op library defines these in builders/<op>.cpp; builders/entry_points.cpp
// exports them under the names and signatures tensorflow-ipu looks up.
namespace op {
// The TensorFlow op; Build_grad's debug name adds "Grad".
extern const char* const kName;
// Forward inputs the op lays out itself (through allocate).
std::vector<std::int64_t> allocatingInputs(std::uint32_t numInputs);
Tensor allocate(Graph& graph, const Plan& p, std::int64_t operand, const std::vector<std::size_t>& shape,
                poplar::Type type, const std::string& name);
void build(Graph& graph, OpBuild& job, const std::vector<Tensor>& inputs, std::vector<Tensor>& outputs);
void buildGrad(Graph& graph, OpBuild& job, const std::vector<Tensor>& gradients,
               const std::vector<Tensor>& fwdInputs, const std::vector<Tensor>& fwdOutputs,
               std::vector<Tensor>& outputs);
}  // namespace op

}  // namespace ipu
}  // namespace snn
