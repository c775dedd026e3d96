"""Leaky integrate-and-fire dynamics with a SuperSpike surrogate gradient.

One step, per neuron (ARCHITECTURE section 2):
    reset:      u <- u - stop_gradient(u * H(u - theta))
    integrate:  u <- alpha * u + (1 - alpha) * c * I
    fire:       s  = H(u - theta),   ds/du = 1 / (beta * |u - theta| + 1)^2
The network implementations differ only in how I is computed and how spikes
are represented; they all share these equations.
"""

from __future__ import annotations

import tensorflow as tf


def superspike_derivative(v: tf.Tensor, beta: float) -> tf.Tensor:
    """The surrogate ds/du at distance v = u - theta from threshold."""
    return 1.0 / tf.square(beta * tf.abs(v) + 1.0)


def heaviside(v: tf.Tensor) -> tf.Tensor:
    return tf.cast(v >= 0.0, v.dtype)


def make_spike_fn(beta: float):
    """Heaviside forward, SuperSpike surrogate backward, for a fixed beta."""

    @tf.custom_gradient
    def spike(v):
        def grad(dy):
            return dy * superspike_derivative(v, beta)

        return heaviside(v), grad

    return spike


def reset(u: tf.Tensor, threshold) -> tf.Tensor:
    """Neurons at or above threshold restart from zero; no gradient through the reset."""
    return u - tf.stop_gradient(u * heaviside(u - threshold))


def lif_step(u, current, alpha, threshold, input_scale, spike_fn):
    """Advance membranes u by one step given input current; returns (u, s)."""
    u = alpha * reset(u, threshold) + (1.0 - alpha) * input_scale * current
    return u, spike_fn(u - threshold)


def membrane_sequence(current: tf.Tensor, alpha, threshold, input_scale) -> tf.Tensor:
    """Membranes after integration at every step, for time-major current [T, B, n].

    Only reset-and-integrate is inherently sequential; firing (and its
    surrogate) is applied by the caller to all steps at once. unstack/stack
    rather than slicing keeps the backward pass from summing T mostly-zero
    [T, B, n] gradients.
    """
    drive = tf.unstack((1.0 - alpha) * input_scale * current, axis=0)
    u = tf.zeros_like(drive[0])
    out = []
    for d in drive:
        u = alpha * reset(u, threshold) + d
        out.append(u)
    return tf.stack(out, axis=0)
