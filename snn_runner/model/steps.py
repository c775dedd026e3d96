"""Compiled train and evaluation steps shared by every implementation."""

from __future__ import annotations

import tensorflow as tf

from snn_runner.backend.cpu import GRAPH_MODE

__all__ = ["GRAPH_MODE", "Steps", "capacity_penalty", "cross_entropy", "rate_penalty"]


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-sample softmax cross-entropy of summed output spikes against labels."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)


class Steps:
    """The train, evaluate and spike-recording steps of one model, compiled by its backend.

    ``mode`` says how they were compiled (the backend's ``mode``; on the CPU
    ``GRAPH_MODE``), for the run's record.
    """

    def __init__(self, model, params, optimizer, time_steps: int, capacity: int, rate_penalty, backend,
                 clip_norm: float = 0.0, capacity_penalty=None):
        if model.backend is not backend:
            # the record names `backend`; the model's ops must be that backend's
            raise ValueError(f"the model was built for backend {model.backend.name!r}, not {backend.name!r}")
        self.model = model
        self.params = params
        self.optimizer = optimizer
        self.rate_penalty = rate_penalty  # callable(spikes per layer, batch) -> scalar, or None
        self.capacity_penalty = capacity_penalty  # callable(ModelOutput) -> scalar, or None
        self.clip_norm = float(clip_norm)  # global-norm gradient clipping; 0: off
        self.mode = backend.mode
        signature = (
            tf.TensorSpec([None, time_steps, capacity], tf.int32),
            tf.TensorSpec([None, time_steps], tf.int32),
            tf.TensorSpec([None], tf.int64),
        )
        self.train = backend.compile(self._train, signature)
        self.evaluate = backend.compile(self._evaluate, signature)
        self.spike_trains = backend.compile(model.spike_trains, signature[:2])

    def _outputs(self, out, losses, labels):
        correct = tf.reduce_sum(tf.cast(tf.argmax(out.logits, axis=1) == labels, tf.int32))
        return tf.reduce_sum(losses), correct, out.spikes, out.dropped

    def _train(self, ids, count, labels):
        with tf.GradientTape() as tape:
            out = self.model(ids, count)
            losses = cross_entropy(labels, out.logits)
            loss = tf.reduce_mean(losses)
            if self.rate_penalty is not None:
                loss = loss + self.rate_penalty(out.spikes, tf.shape(labels)[0])
            if self.capacity_penalty is not None:
                loss = loss + self.capacity_penalty(out)
        grads = tape.gradient(loss, self.params.trainable)
        if self.clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, self.clip_norm)
        self.optimizer.apply_gradients(zip(grads, self.params.trainable))
        return self._outputs(out, losses, labels)

    def _evaluate(self, ids, count, labels):
        out = self.model(ids, count)
        return self._outputs(out, cross_entropy(labels, out.logits), labels)


def rate_penalty(low: float, high: float, strength: float, time_steps: int, sizes):
    """Squared hinges keeping each layer's mean spike rate within [low, high].

    ``sizes`` are the spiking layers' (a membrane readout, last, has no rate).
    """
    neurons = tf.constant([float(n) for n in sizes], tf.float32)

    def penalty(spikes, batch):
        rate = spikes[:len(sizes)] / (tf.cast(batch, tf.float32) * float(time_steps) * neurons)
        return strength * tf.reduce_sum(tf.square(tf.nn.relu(low - rate)) + tf.square(tf.nn.relu(rate - high)))

    return penalty


def capacity_penalty(strength: float, target: float, capacities):
    """Squared hinge on each hidden layer's spikes per step beyond ``target`` x its capacity K.

    The mean-rate hinge cannot stop bursts, and bursts are what overflow K:
    this one acts on every (sample, step) whose spikes fill more than
    ``target`` of the layer's slots. Dropped spikes count in its value (they
    did fire) but carry no gradient (they reach no slot), so in the sparse
    implementations the push goes to the transmitted ones; with K = n and no
    drops it is the same loss as in dense.
    """
    slots = tf.constant([float(k) for k in capacities], tf.float32)[:, None, None]

    def penalty(out):
        fill = (out.step_spikes + tf.stop_gradient(out.step_dropped)) / slots
        return strength * tf.reduce_sum(tf.reduce_mean(tf.square(tf.nn.relu(fill - target)), axis=[1, 2]))

    return penalty
