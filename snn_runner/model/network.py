"""What every implementation shares: the network's shape and its parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from snn_runner.config import ModelConfig
from snn_runner.neuron.lif import LIFParameters


@dataclass(frozen=True)
class NetworkSpec:
    """Resolved network shape and neuron constants (all layers after the input)."""

    sizes: tuple[int, ...]  # (n_in, n_1, ..., n_L)
    capacities: tuple[int, ...]  # K per layer n_1..n_L (sparse implementations)
    input_capacity: int  # K_in: input ids per time step
    lif: LIFParameters
    weight_scale: float
    readout: str = "spike_count"  # config.READOUTS

    @classmethod
    def from_config(cls, cfg: ModelConfig, n_in: int, n_out: int, input_capacity: int) -> "NetworkSpec":
        sizes = (n_in, *cfg.hidden, n_out)
        # The readout layer is small and every spike of it is a logit, so it
        # always gets full capacity; hidden layers get ceil(max_activity * n).
        caps = tuple(max(1, math.ceil(cfg.max_activity * n)) for n in cfg.hidden) + (n_out,)
        lif = LIFParameters(
            alpha=cfg.alpha,
            threshold=cfg.threshold,
            threshold2=cfg.threshold2_fraction * cfg.threshold,
            input_scale=cfg.input_scale,
            beta=cfg.beta,
        )
        return cls(sizes=sizes, capacities=caps, input_capacity=int(input_capacity), lif=lif,
                   weight_scale=cfg.weight_scale, readout=cfg.readout)

    @property
    def layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def membrane_readout(self) -> bool:
        """The output layer is a non-spiking leaky integrator (it emits no spikes)."""
        return self.readout != "spike_count"

    @property
    def spiking_layers(self) -> int:
        return self.layers - 1 if self.membrane_readout else self.layers


class Parameters:
    """Trainable weights (stored transposed, [n_{l-1}, n_l]) and per-neuron constants.

    The transposed layout lets the sparse kernels gather one contiguous row
    per presynaptic spike; the dense implementation multiplies by it directly.
    ``alpha``, ``threshold`` and ``threshold2`` hold one float32 [n_l] vector
    per layer, built from ``spec.lif``; with ``threshold2_variable`` the hidden
    layers' ``threshold2`` are non-trainable ``tf.Variable`` s, read by the
    compiled steps at every call, so ``set_threshold2`` changes them between epochs.
    """

    def __init__(self, spec: NetworkSpec, seed: int, threshold2_variable: bool = False):
        rng = np.random.default_rng(seed)
        lif = spec.lif
        self.weights = []
        for l, (n_pre, n_post) in enumerate(zip(spec.sizes[:-1], spec.sizes[1:])):
            bound = spec.weight_scale * math.sqrt(6.0 / n_pre)
            w = rng.uniform(-bound, bound, size=(n_pre, n_post)).astype(np.float32)
            self.weights.append(tf.Variable(w, name=f"w{l + 1}"))
        self.alpha = [tf.constant(np.full(n, lif.alpha, np.float32)) for n in spec.sizes[1:]]
        self.threshold = [tf.constant(np.full(n, lif.threshold, np.float32)) for n in spec.sizes[1:]]
        # The readout layer has full capacity anyway; letting every readout
        # neuron carry gradients (theta2 = -inf) keeps silent output neurons
        # trainable, as in the dense model.
        theta2 = [lif.threshold2] * (spec.layers - 1) + [-np.inf]
        self.threshold2 = [tf.constant(np.full(n, t2, np.float32)) for n, t2 in zip(spec.sizes[1:], theta2)]
        if threshold2_variable:  # theta2 annealing: the hidden layers' theta2 changes per epoch (set_threshold2)
            self.threshold2[:-1] = [tf.Variable(t, trainable=False, name=f"threshold2_{l + 1}")
                                    for l, t in enumerate(self.threshold2[:-1])]

    def set_threshold2(self, value: float) -> None:
        """Set every hidden layer's theta2 to ``value`` (absolute); needs ``threshold2_variable``."""
        for t in self.threshold2[:-1]:
            t.assign(tf.fill(tf.shape(t), tf.constant(value, tf.float32)))

    @property
    def trainable(self) -> list[tf.Variable]:
        return list(self.weights)


class ModelOutput(NamedTuple):
    logits: tf.Tensor  # [B, n_L] output spike counts over time, or the readout membrane's max / mean
    spikes: tf.Tensor  # [L] float: spikes emitted per layer, summed over batch and time
    dropped: tf.Tensor  # [L] int32: spikes dropped for lack of capacity
    # per hidden layer [L_hidden, B, T] float: spikes per step (differentiable as in ``spikes``) and dropped
    # ones, for the capacity penalty (hidden layers are the ones with a capacity below their size)
    step_spikes: tf.Tensor
    step_dropped: tf.Tensor
