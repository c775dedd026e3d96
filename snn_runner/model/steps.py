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

    With a ``strategy`` (a multi-worker run) ``train`` takes each worker's
    share of a global batch, the global batch size and a stop request, and
    performs the single-process step of that global batch: the loss terms
    are sums over the global batch divided by its size, the activity
    penalties see the spike counts of the whole batch (all-reduced in the
    forward pass), and the gradients are summed over the workers before
    clipping and the update. Its outputs are sums over the whole batch, equal
    on every worker, plus the number of workers that asked to stop.
    ``evaluate`` likewise takes a share and returns the whole batch's sums.
    """

    def __init__(self, model, params, optimizer, time_steps: int, capacity: int, rate_penalty, backend,
                 clip_norm: float = 0.0, capacity_penalty=None, strategy=None):
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
        self.strategy = strategy
        if strategy is None:
            self.train = backend.compile(self._train, signature)
            self.evaluate = backend.compile(self._evaluate, signature)
        else:
            # + the global batch's size (every worker's loss is a share of the same mean) and this worker's
            # stop request, summed with the outputs so that all workers learn of any in the same step
            scalar = tf.TensorSpec([], tf.float32)
            self.train = backend.compile(self._train_replicated, signature + (scalar, scalar))
            self.evaluate = backend.compile(self._evaluate_replicated, signature)
        self.spike_trains = backend.compile(model.spike_trains, signature[:2])

    def _outputs(self, out, losses, labels):
        correct = tf.reduce_sum(tf.cast(tf.argmax(out.logits, axis=1) == labels, tf.int32))
        return tf.reduce_sum(losses), correct, out.spikes, out.dropped

    def _loss(self, out, labels, batch, spikes):
        """The training loss of ``out`` as a share of a batch of ``batch`` samples whose spike counts are ``spikes``."""
        losses = cross_entropy(labels, out.logits)
        loss = tf.reduce_sum(losses) / tf.cast(batch, tf.float32)
        if self.rate_penalty is not None:
            loss = loss + self.rate_penalty(spikes, batch)
        if self.capacity_penalty is not None:
            loss = loss + self.capacity_penalty(out, batch)
        return loss, losses

    def _apply(self, grads):
        if self.clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, self.clip_norm)
        self.optimizer.apply_gradients(zip(grads, self.params.trainable))

    def _train(self, ids, count, labels):
        with tf.GradientTape() as tape:
            out = self.model(ids, count)
            loss, losses = self._loss(out, labels, tf.shape(labels)[0], out.spikes)
        self._apply(tape.gradient(loss, self.params.trainable))
        return self._outputs(out, losses, labels)

    def _replica_gradients(self, ids, count, labels, global_batch, stop):
        ctx = tf.distribute.get_replica_context()
        sum_ = tf.distribute.ReduceOp.SUM
        with tf.GradientTape() as tape:
            out = self.model(ids, count)
            spikes = out.spikes
            if self.rate_penalty is not None:
                # the value is the whole batch's count, the gradient flows to this worker's own spikes:
                # summed over the workers that is the gradient of the penalty of the whole batch
                total = ctx.all_reduce(sum_, tf.stop_gradient(spikes))
                spikes = total + spikes - tf.stop_gradient(spikes)
            loss, losses = self._loss(out, labels, global_batch, spikes)
        grads = ctx.all_reduce(sum_, tape.gradient(loss, self.params.trainable))
        return grads, self._summed_outputs(out, losses, labels, stop)

    def _summed_outputs(self, out, losses, labels, *extra):
        """``_outputs`` summed over the workers (as floats: exact for counts below 2^24), then ``extra``."""
        loss_sum, correct, spikes, dropped = self._outputs(out, losses, labels)
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, [
            loss_sum, tf.cast(correct, tf.float32), spikes, tf.cast(dropped, tf.float32),
            *[tf.identity(x) for x in extra]])

    @staticmethod
    def _as_counts(summed):
        loss_sum, correct, spikes, dropped, *extra = summed
        return (loss_sum, tf.cast(tf.round(correct), tf.int32), spikes, tf.cast(tf.round(dropped), tf.int32),
                *extra)

    def _train_replicated(self, ids, count, labels, global_batch, stop):
        grads, summed = self.strategy.run(self._replica_gradients, args=(ids, count, labels, global_batch, stop))
        # in the cross-replica context (one replica per worker) the optimizer does not sum again
        self._apply(grads)
        return self._as_counts(summed)

    def _evaluate_replicated(self, ids, count, labels):
        def replica(ids, count, labels):
            out = self.model(ids, count)
            return self._summed_outputs(out, cross_entropy(labels, out.logits), labels)

        return self._as_counts(self.strategy.run(replica, args=(ids, count, labels)))

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

    def penalty(out, batch):
        fill = (out.step_spikes + tf.stop_gradient(out.step_dropped)) / slots
        # a mean over the (batch, step) pairs of the whole batch: a sum over this one's, over their number
        pairs = tf.cast(batch, tf.float32) * tf.cast(tf.shape(fill)[2], tf.float32)
        return strength * tf.reduce_sum(tf.square(tf.nn.relu(fill - target))) / pairs

    return penalty
