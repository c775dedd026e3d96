"""The `sparse_layer` implementation: the whole network as one fused op.

Forward (all layers, all T steps) and BPTT run inside the backend's fused
op (`SnnSparseLifLayer` and its gradient on the CPU, the sparse_lif_layer
Poplar op on the IPU). The per-layer spike totals are sums of the op's
differentiable `spike_count`, so activity regularisation trains the weights
as in `sparse_ops` (on the CPU; the IPU op refuses that gradient).

With a membrane readout the op runs the spiking layers only; the readout
integrator (n_L neurons, no spikes, no capacity) reads the last hidden
layer's slots through their differentiable values, whose gradient the op's
BPTT takes like the rate regulariser's (see ``fused.slot_values``).
"""

from __future__ import annotations

import tensorflow as tf

from snn_runner.model.network import ModelOutput, NetworkSpec, Parameters
from snn_runner.model.sparse_ops import delay_one_step, membrane_readout, time_major
from snn_runner.sparse.spikes import SparseSpikes, frames_from_sparse


class SparseLayerModel:
    name = "sparse_layer"

    def __init__(self, spec: NetworkSpec, params: Parameters, backend):
        self.spec = spec
        self.params = params
        self.backend = backend  # supplies sparse_lif_layer (and sparse_binary_matmul for a membrane readout)

    def __call__(self, ids: tf.Tensor, count: tf.Tensor) -> ModelOutput:
        out = self._fused(ids, count)
        # summing the float counts keeps the totals differentiable for rate regularisation
        totals = [tf.reduce_sum(c) for c in out.spike_count]
        dropped = [tf.reduce_sum(d) for d in out.dropped]
        logits = out.logits
        if self.spec.membrane_readout:
            last = time_major(SparseSpikes(out.ids[-1], out.count[-1], out.values[-1]))
            logits = membrane_readout(self.spec, self.params, self.backend, delay_one_step(last))
            totals.append(tf.constant(0.0))
            dropped.append(tf.constant(0))
        hidden = self.spec.layers - 1
        return ModelOutput(logits, tf.stack(totals), tf.stack(dropped), tf.stack(out.spike_count[:hidden]),
                           tf.stack([tf.cast(d, tf.float32) for d in out.dropped[:hidden]]))

    def spike_trains(self, ids: tf.Tensor, count: tf.Tensor) -> list[tf.Tensor]:
        """Per layer, the 0/1 transmitted spikes [B, T, n] (for recording a few samples)."""
        out = self._fused(ids, count)
        trains = [frames_from_sparse(i, c, n) for i, c, n in zip(out.ids, out.count, self.spec.sizes[1:])]
        if self.spec.membrane_readout:  # the readout never fires
            trains.append(tf.zeros([tf.shape(ids)[0], tf.shape(ids)[1], self.spec.sizes[-1]]))
        return trains

    def slot_fill(self, ids: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
        """[L_spiking] filled slots (spikes and carriers) per layer over the batch and all steps: the work counter of the bench."""
        return tf.stack([tf.reduce_sum(tf.cast(i >= 0, tf.float32)) for i in self._fused(ids, count).ids])

    def _fused(self, ids, count):
        spec, p = self.spec, self.params
        n = spec.spiking_layers
        return self.backend.sparse_lif_layer(
            ids, count, p.weights[:n], p.alpha[:n], p.threshold[:n], p.threshold2[:n], list(spec.capacities[:n]),
            input_scale=spec.lif.input_scale, beta=spec.lif.beta,
        )
