"""The `sparse_ops` implementation: the network built from small custom ops.

Each layer is one sparse binary matmul (input spikes -> currents) and one LIF
sequence op (the reset-and-integrate recursion over all T steps followed by the
two-threshold spike selection); every op has its own registered gradient, and
TensorFlow's autodiff composes BPTT.
The ops come from the backend (compiled TensorFlow ops on the CPU, Poplar
ops on the IPU). Thanks to the one-step delay between layers, each op runs once per layer on
all T steps at once (rows = T*B) instead of once per step.
"""

from __future__ import annotations

import tensorflow as tf

from snn_runner.model.network import ModelOutput, NetworkSpec, Parameters
from snn_runner.neuron.lif import leaky_readout
from snn_runner.sparse.spikes import SparseSpikes, frames_from_sparse


def time_major(spikes: SparseSpikes) -> SparseSpikes:
    return SparseSpikes(
        tf.transpose(spikes.ids, [1, 0, 2]), tf.transpose(spikes.count), tf.transpose(spikes.values, [1, 0, 2])
    )


def delay_one_step(spikes: SparseSpikes) -> SparseSpikes:
    """Shift time-major sparse spikes [T, B, K] one step later (empty step 0)."""
    return SparseSpikes(
        tf.pad(spikes.ids[:-1], [[1, 0], [0, 0], [0, 0]], constant_values=-1),
        tf.pad(spikes.count[:-1], [[1, 0], [0, 0]]),
        tf.pad(spikes.values[:-1], [[1, 0], [0, 0], [0, 0]]),
    )


def _flatten(spikes: SparseSpikes) -> SparseSpikes:
    k = spikes.ids.shape[-1]
    return SparseSpikes(tf.reshape(spikes.ids, [-1, k]), tf.reshape(spikes.count, [-1]),
                        tf.reshape(spikes.values, [-1, k]))


def membrane_readout(spec: NetworkSpec, params: Parameters, ops, spikes: SparseSpikes) -> tf.Tensor:
    """Logits [B, n_L] of the leaky-integrator readout fed by time-major ``spikes`` [T, B, K] (delayed already).

    The readout's input current is a sparse binary matmul of the slots, so
    d loss / d slot value reaches every slot (carriers too) as in a hidden layer.
    """
    steps = spikes.ids.shape[0]
    batch = spikes.ids.shape[1] if spikes.ids.shape[1] is not None else tf.shape(spikes.ids)[1]
    n = spec.sizes[-1]
    current = tf.reshape(ops.sparse_binary_matmul(params.weights[-1], _flatten(spikes)), [steps, batch, n])
    return leaky_readout(current, params.alpha[-1], spec.lif.input_scale, spec.readout)


def no_spikes(steps: int, batch) -> SparseSpikes:
    """Time-major spikes [T, B, 1] of a layer that never fires (the membrane readout)."""
    return SparseSpikes(tf.fill([steps, batch, 1], -1), tf.zeros([steps, batch], tf.int32),
                        tf.zeros([steps, batch, 1]))


def readout(spikes: SparseSpikes, n_out: int) -> tf.Tensor:
    """Logits [B, n_out]: each output neuron's spikes summed over time.

    Summing values (not counting ids) keeps the gradient path to every slot,
    so output carriers receive d(loss)/d(logit) like in the dense model.
    """
    onehot = tf.one_hot(spikes.ids, n_out)  # padding id -1 gives a zero row
    return tf.einsum("tbk,tbkn->bn", spikes.values, onehot)


class SparseOpsModel:
    name = "sparse_ops"

    def __init__(self, spec: NetworkSpec, params: Parameters, backend):
        self.spec = spec
        self.params = params
        self.backend = backend  # supplies sparse_binary_matmul and lif_sequence

    def __call__(self, ids: tf.Tensor, count: tf.Tensor) -> ModelOutput:
        return self._forward(ids, count)[0]

    def spike_trains(self, ids: tf.Tensor, count: tf.Tensor) -> list[tf.Tensor]:
        """Per layer, the 0/1 transmitted spikes [B, T, n] (for recording a few samples)."""
        return [frames_from_sparse(tf.transpose(s.ids, [1, 0, 2]), tf.transpose(s.count), n)
                for s, n in zip(self._forward(ids, count)[1], self.spec.sizes[1:])]

    def _forward(self, ids, count):
        spec, p, ops = self.spec, self.params, self.backend
        lif = spec.lif
        steps = ids.shape[1]
        # a static batch keeps every op's shapes static (the IPU ops are planned from them)
        batch = ids.shape[0] if ids.shape[0] is not None else tf.shape(ids)[0]
        spikes = time_major(SparseSpikes.from_ids(ids, count))
        totals, dropped, layers, per_step, dropped_per_step = [], [], [], [], []
        for l in range(spec.spiking_layers):
            if l > 0:
                spikes = delay_one_step(spikes)
            n = spec.sizes[l + 1]
            current = tf.reshape(ops.sparse_binary_matmul(p.weights[l], _flatten(spikes)), [steps, batch, n])
            # time-major [T, B, K] spikes and [T, B] dropped
            spikes, lost = ops.lif_sequence(current, p.alpha[l], p.threshold[l], p.threshold2[l],
                                            spec.capacities[l], lif.input_scale, lif.beta)
            layers.append(spikes)
            # summing values (1 per spike) keeps the count differentiable for rate regularisation
            totals.append(tf.reduce_sum(spikes.values))
            dropped.append(tf.reduce_sum(lost))
            if l < spec.layers - 1:
                per_step.append(tf.transpose(tf.reduce_sum(spikes.values, axis=2)))
                dropped_per_step.append(tf.transpose(tf.cast(lost, tf.float32)))
        if spec.membrane_readout:  # a leaky integrator that never fires
            logits = membrane_readout(spec, p, ops, delay_one_step(spikes))
            totals.append(tf.constant(0.0))
            dropped.append(tf.constant(0))
            layers.append(no_spikes(steps, batch))
        else:
            logits = readout(spikes, spec.sizes[-1])
        return ModelOutput(logits, tf.stack(totals), tf.stack(dropped), tf.stack(per_step),
                           tf.stack(dropped_per_step)), layers
