"""The dense baseline: plain TensorFlow ops, every neuron computed every step.

Tuned to be the strongest dense version on a CPU (it is what every speed-up is
measured against): each layer's input currents for all time steps are
one large matmul, the time loop is unrolled into one graph, and XLA is not
used on the CPU because on this model graph mode measured faster. It needs
no custom ops, so on the IPU backend the same graph is compiled for the IPU.
"""

from __future__ import annotations

import tensorflow as tf

from snn_runner.model.network import ModelOutput, NetworkSpec, Parameters
from snn_runner.sparse.spikes import frames_from_sparse
from snn_runner.neuron.lif import leaky_readout, make_spike_fn, membrane_sequence


def delay_one_step(x: tf.Tensor) -> tf.Tensor:
    """Shift time-major [T, ...] one step later (step 0 gets zeros)."""
    return tf.pad(x[:-1], [[1, 0]] + [[0, 0]] * (len(x.shape) - 1))


class DenseModel:
    name = "dense"

    def __init__(self, spec: NetworkSpec, params: Parameters, backend):
        self.spec = spec
        self.params = params
        self.backend = backend  # runs plain TensorFlow ops only; kept so Steps can check where it runs
        # one surrogate per layer, so a layer's surrogate can be swapped (the
        # equivalence tests mask hidden layers to u > theta2)
        self.spike_fns = [make_spike_fn(spec.lif.beta) for _ in range(spec.layers)]

    def __call__(self, ids: tf.Tensor, count: tf.Tensor) -> ModelOutput:
        return self._forward(ids, count)[0]

    def spike_trains(self, ids: tf.Tensor, count: tf.Tensor) -> list[tf.Tensor]:
        """Per layer, the 0/1 spikes [B, T, n] (for recording a few samples)."""
        return [tf.transpose(x, [1, 0, 2]) for x in self._forward(ids, count)[1]]

    def _forward(self, ids, count):
        spec, p = self.spec, self.params
        x = tf.transpose(frames_from_sparse(ids, count, spec.sizes[0]), [1, 0, 2])  # [T, B, n]
        totals, trains = [], []
        # With the one-step delay between layers, layer l's whole input
        # sequence is known once layer l-1 has run through all steps, so each
        # layer's currents for all T steps are one large matmul, and only the
        # cheap elementwise reset-and-integrate runs step by step.
        for l in range(spec.spiking_layers):
            if l > 0:
                x = delay_one_step(x)
            current = tf.einsum("tbn,nm->tbm", x, p.weights[l])
            u = membrane_sequence(current, p.alpha[l], p.threshold[l], spec.lif.input_scale)
            x = self.spike_fns[l](u - p.threshold[l])
            totals.append(tf.reduce_sum(x))
            trains.append(x)
        if spec.membrane_readout:  # a leaky integrator that never fires
            current = tf.einsum("tbn,nm->tbm", delay_one_step(x), p.weights[-1])
            logits = leaky_readout(current, p.alpha[-1], spec.lif.input_scale, spec.readout)
            totals.append(tf.constant(0.0))
            trains.append(tf.zeros_like(current))
        else:
            logits = tf.reduce_sum(x, axis=0)
        steps = tf.stack([tf.transpose(tf.reduce_sum(x, axis=2)) for x in trains[:spec.layers - 1]])
        return ModelOutput(logits, tf.stack(totals), tf.zeros([spec.layers], tf.int32), steps,
                           tf.zeros_like(steps)), trains
