// Input and output lists of the fused network op SnnSparseLifLayer and its
// gradient op, as flat indexes. TensorFlow hands a kernel (and the IPU
// builder) one flat list in which each `N * T` argument takes N places, so
// this is the one place that knows the order the REGISTER_OP calls in
// sparse_lif_layer_ops.cc declare. Plain C++: ops/poplar includes it too.
#ifndef SNN_OPS_COMMON_FUSED_LAYOUT_H_
#define SNN_OPS_COMMON_FUSED_LAYOUT_H_

namespace snn {

struct FusedLayout {
  int n;  // layers (the N attribute)

  // SnnSparseLifLayer inputs: in_ids, in_count, then N each of weights,
  // alpha, threshold, threshold2.
  static constexpr int kInIds = 0;
  static constexpr int kInCount = 1;
  enum Param { kWeights = 0, kAlpha = 1, kThreshold = 2, kThreshold2 = 3 };
  static constexpr int kParams = 4;
  int param(Param p, int l) const { return 2 + p * n + l; }
  int weights(int l) const { return param(kWeights, l); }
  int num_inputs() const { return 2 + kParams * n; }
  // Which (param, layer) a forward input index >= 2 is.
  Param param_of(int index) const { return static_cast<Param>((index - 2) / n); }
  int layer_of(int index) const { return (index - 2) % n; }

  // SnnSparseLifLayer outputs: logits, then N each of ids, count, dropped,
  // surrogate.
  static constexpr int kLogits = 0;
  enum Record { kIds = 0, kCount = 1, kDropped = 2, kSurrogate = 3 };
  static constexpr int kRecords = 4;
  int record(Record r, int l) const { return 1 + r * n + l; }
  int num_outputs() const { return 1 + kRecords * n; }

  // SnnSparseLifLayerGrad inputs: grad_logits, in_ids, in_count, then N each
  // of weights, alpha and the forward's ids, count, surrogate; outputs: the
  // N weight gradients. SnnSparseLifLayerGradWithValues takes the same inputs
  // followed by N grad_values (d loss / d value of each slot, [B, T, K_l]:
  // the gradient of the spike counts, as if each slot held a SparseSpikes
  // value), and has the same outputs.
  static constexpr int kGradLogits = 0;
  static constexpr int kGradInIds = 1;
  static constexpr int kGradInCount = 2;
  int grad_weights_input(int l) const { return 3 + l; }
  int grad_alpha_input(int l) const { return 3 + n + l; }
  int grad_record_input(Record r, int l) const {
    // ids, count and surrogate are passed back; dropped is not.
    return 3 + (r == kSurrogate ? 4 : 2 + r) * n + l;
  }
  int grad_values_input(int l) const { return 3 + 5 * n + l; }
  int num_grad_inputs(bool with_values) const { return 3 + (with_values ? 6 : 5) * n; }
  int grad_weights_output(int l) const { return l; }
};

}  // namespace snn

#endif  // SNN_OPS_COMMON_FUSED_LAYOUT_H_
