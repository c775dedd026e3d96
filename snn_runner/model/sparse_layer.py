"""The `sparse_layer` implementation: the whole network as one fused op.

Forward (all layers, all T steps) and BPTT run inside the compiled
`SnnSparseLifLayer` kernel and its gradient kernel (ops/sparse_lif_layer.cc).
"""

from __future__ import annotations

import tensorflow as tf

from snn_runner.model.network import ModelOutput, NetworkSpec, Parameters
from snn_runner.sparse.fused import sparse_lif_layer


class SparseLayerModel:
    name = "sparse_layer"

    def __init__(self, spec: NetworkSpec, params: Parameters):
        self.spec = spec
        self.params = params

    def __call__(self, ids: tf.Tensor, count: tf.Tensor) -> ModelOutput:
        spec, p = self.spec, self.params
        out = sparse_lif_layer(
            ids, count, p.weights, p.alpha, p.threshold, p.threshold2, list(spec.capacities),
            input_scale=spec.input_scale, beta=spec.beta,
        )
        totals = tf.stack([tf.cast(tf.reduce_sum(c), tf.float32) for c in out.count])
        dropped = tf.stack([tf.reduce_sum(d) for d in out.dropped])
        return ModelOutput(out.logits, totals, dropped)
