// The entry points tensorflow-ipu looks up (with dlsym) in an op library,
// compiled into every libsnn_ipu_<op>.so next to builders/<op>.cpp, which
// defines the snn::ipu::op functions they forward to.
//
// UNTESTED: written against the Poplar SDK 2.x/3.x API without an SDK at
// hand (see graph_util.hpp).

#include "graph_util.hpp"

using namespace snn::ipu;

namespace {

// Every snn op is a pure function of its inputs (stateless, hashable), not
// elementwise, and lays out the inputs in `allocating` itself
// (Build_allocator).
void describe(std::vector<std::int64_t>& allocating_indices,
              std::vector<std::int64_t>& replica_identical_output_indices,
              std::map<std::int64_t, std::int64_t>& input_to_output_tensor_aliasing,
              bool& is_elementwise, bool& is_stateless, bool& is_hashable,
              std::vector<std::int64_t> allocating) {
  allocating_indices = std::move(allocating);
  replica_identical_output_indices.clear();
  input_to_output_tensor_aliasing.clear();
  is_elementwise = false;
  is_stateless = true;
  is_hashable = true;
}

OpBuild begin(const Graph& graph, const std::string& attributes, const std::string& debug_prefix,
              const char* suffix) {
  return OpBuild{parsePlan(graph, attributes), debug_prefix + "/" + op::kName + suffix, Sequence()};
}

}  // namespace

extern "C" {

// tensorflow-ipu refuses a library whose level differs from its own; 5 is
// the level of the TF 2.6 releases of tensorflow-ipu (SDK 2.x and 3.x): it
// is the one whose metadata functions also take
// replica_identical_output_indices, as below.
int32_t custom_op_api_level = 5;

void Build_metadata(std::vector<std::int64_t>& allocating_indices,
                    std::vector<std::int64_t>& replica_identical_output_indices,
                    std::map<std::int64_t, std::int64_t>& input_to_output_tensor_aliasing,
                    bool& is_elementwise, bool& is_stateless, bool& is_hashable,
                    std::uint32_t num_inputs) {
  describe(allocating_indices, replica_identical_output_indices, input_to_output_tensor_aliasing,
           is_elementwise, is_stateless, is_hashable, op::allocatingInputs(num_inputs));
}

void Build_grad_metadata(std::vector<std::int64_t>& allocating_indices,
                         std::vector<std::int64_t>& replica_identical_output_indices,
                         std::map<std::int64_t, std::int64_t>& input_to_output_tensor_aliasing,
                         bool& is_elementwise, bool& is_stateless, bool& is_hashable,
                         std::uint32_t) {
  describe(allocating_indices, replica_identical_output_indices, input_to_output_tensor_aliasing,
           is_elementwise, is_stateless, is_hashable, {});
}

poplar::Tensor Build_allocator(poplar::Graph& graph, std::int64_t operand,
                               const std::vector<std::size_t>& shape, poplar::Type type,
                               const std::string& attributes, const std::string& debug_prefix) {
  return op::allocate(graph, parsePlan(graph, attributes), operand, shape, type, debug_prefix);
}

poplar::program::Program Build(poplar::Graph& graph, const std::vector<poplar::Tensor>& inputs,
                               std::vector<poplar::Tensor>& outputs, const std::string& attributes,
                               const std::string& debug_prefix) {
  OpBuild b = begin(graph, attributes, debug_prefix, "");
  op::build(graph, b, inputs, outputs);
  return b.seq;
}

poplar::program::Program Build_grad(poplar::Graph& graph, int input_grad_index,
                                    const std::vector<poplar::Tensor>& gradients,
                                    const std::vector<poplar::Tensor>& fwd_inputs,
                                    const std::vector<poplar::Tensor>& fwd_outputs,
                                    std::vector<poplar::Tensor>& outputs, const std::string& attributes,
                                    const std::string& debug_prefix) {
  (void)input_grad_index;
  OpBuild b = begin(graph, attributes, debug_prefix, "Grad");
  op::buildGrad(graph, b, gradients, fwd_inputs, fwd_outputs, outputs);
  return b.seq;
}

}  // extern "C"
