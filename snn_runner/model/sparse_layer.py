"""The `sparse_layer` implementation: the whole network as one fused op.

Forward (all layers, all T steps) and BPTT run inside the backend's fused
op (`SnnSparseLifLayer` and its gradient on the CPU, the sparse_lif_layer
Poplar op on the IPU). The per-layer spike totals are sums of the op's
differentiable `spike_count`, so activity regularisation trains the weights
as in `sparse_ops` (on the CPU; the IPU op refuses that gradient).
"""

from __future__ import annotations

import tensorflow as tf

from snn_runner.model.network import ModelOutput, NetworkSpec, Parameters
from snn_runner.sparse.spikes import frames_from_sparse


class SparseLayerModel:
    name = "sparse_layer"

    def __init__(self, spec: NetworkSpec, params: Parameters, backend):
        self.spec = spec
        self.params = params
        self.backend = backend  # supplies sparse_lif_layer

    def __call__(self, ids: tf.Tensor, count: tf.Tensor) -> ModelOutput:
        out = self._fused(ids, count)
        # summing the float counts keeps the totals differentiable for rate regularisation
        totals = tf.stack([tf.reduce_sum(c) for c in out.spike_count])
        dropped = tf.stack([tf.reduce_sum(d) for d in out.dropped])
        return ModelOutput(out.logits, totals, dropped)

    def spike_trains(self, ids: tf.Tensor, count: tf.Tensor) -> list[tf.Tensor]:
        """Per layer, the 0/1 transmitted spikes [B, T, n] (for recording a few samples)."""
        out = self._fused(ids, count)
        return [frames_from_sparse(i, c, n) for i, c, n in zip(out.ids, out.count, self.spec.sizes[1:])]

    def _fused(self, ids, count):
        spec, p = self.spec, self.params
        return self.backend.sparse_lif_layer(
            ids, count, p.weights, p.alpha, p.threshold, p.threshold2, list(spec.capacities),
            input_scale=spec.lif.input_scale, beta=spec.lif.beta,
        )
