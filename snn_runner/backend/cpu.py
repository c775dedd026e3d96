"""The CPU backend: the compiled TensorFlow ops of snn_runner.sparse in graph-mode tf.functions."""

from __future__ import annotations

import contextlib

import tensorflow as tf

from snn_runner.sparse import fused, ops

# XLA is not used on the CPU: on this model graph mode measured faster.
GRAPH_MODE = "tf.function graph (no XLA)"


class CpuBackend:
    name = "cpu"
    mode = GRAPH_MODE

    def sparse_binary_matmul(self, weights, spikes):
        return ops.sparse_binary_matmul(weights, spikes)

    def select_spikes(self, u, threshold, threshold2, capacity: int, beta: float):
        return ops.select_spikes(u, threshold, threshold2, capacity, beta)

    def lif_sequence(self, current, alpha, threshold, threshold2, capacity: int, input_scale: float, beta: float):
        return ops.lif_sequence(current, alpha, threshold, threshold2, capacity, input_scale, beta)

    def sparse_lif_layer(self, ids, count, weights, alpha, threshold, threshold2, capacities, input_scale, beta):
        return fused.sparse_lif_layer(ids, count, weights, alpha, threshold, threshold2, capacities,
                                      input_scale=input_scale, beta=beta)

    def compile(self, fn, input_signature):
        return tf.function(fn, input_signature=input_signature)

    def scope(self):
        return contextlib.nullcontext()
