"""Leaky integrate-and-fire dynamics with a SuperSpike surrogate gradient.

Per neuron and time step:
    reset:      u <- u - stop_gradient(u * H(u - theta))
    integrate:  u <- alpha * u + (1 - alpha) * c * I
    fire:       s  = H(u - theta),   ds/du = 1 / (beta * |u - theta| + 1)^2
With a membrane readout the output layer is a leaky integrator instead: the
same integrate step with no reset and no firing, whose logits are its
membrane's maximum or mean over time (``leaky_readout``).
The network implementations differ only in how I is computed and how spikes
are represented; ``dense`` runs ``membrane_sequence`` and ``make_spike_fn``,
``sparse_ops`` the compiled per-layer op ``SnnLifSequence`` on the CPU (the
same arithmetic in the same order, then the two-threshold selection; on the
IPU ``membrane_sequence`` plus the Poplar selection), and the fused op
implements the same equations in C++.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class LIFParameters:
    """The LIF constants of a network (per-neuron vectors are built from these).

    ``threshold2`` is the absolute gradient-carrier threshold of the sparse
    implementations (may be -inf: every neuron carries gradients).
    """

    alpha: float = 0.95  # membrane decay per step
    threshold: float = 1.0  # theta
    threshold2: float = 0.9  # theta2
    input_scale: float = 10.0  # c
    beta: float = 10.0  # surrogate sharpness


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


def membrane_sequence(current: tf.Tensor, alpha, threshold, input_scale) -> tf.Tensor:
    """Membranes after integration at every step, for time-major current [T, B, n].

    Starts from u = 0. Only reset-and-integrate is inherently sequential;
    firing (and its surrogate) is applied by the caller to all steps at once.
    unstack/stack rather than slicing keeps the backward pass from summing T
    mostly-zero [T, B, n] gradients.
    """
    drive = tf.unstack((1.0 - alpha) * input_scale * current, axis=0)
    u = tf.zeros_like(drive[0])
    out = []
    for d in drive:
        u = alpha * reset(u, threshold) + d
        out.append(u)
    return tf.stack(out, axis=0)


def integrator_kernel(alpha, steps: int) -> tf.Tensor:
    """M [T, T, n] with M[t, s] = alpha^(t - s) for s <= t, else 0: the leaky integrator as a matrix.

    With no reset the recursion u_t = alpha*u_{t-1} + d_t unrolls to
    u_t = sum_s M[t, s] d_s, so all T membranes are one small contraction
    instead of T dependent steps (and the backward pass is one too).
    """
    alpha = tf.convert_to_tensor(alpha, tf.float32)
    t = tf.range(steps, dtype=tf.float32)
    lag = t[:, None] - t[None, :]  # [T, T]
    powers = tf.pow(alpha[None, None, :], tf.maximum(lag, 0.0)[:, :, None])
    return powers * tf.cast(lag >= 0.0, tf.float32)[:, :, None]


def leaky_readout(current: tf.Tensor, alpha, input_scale, readout: str) -> tf.Tensor:
    """Logits [B, n] of a non-spiking leaky-integrator layer, for time-major current [T, B, n].

    u_t = alpha*u_{t-1} + (1 - alpha)*c*I_t from u = 0 (the LIF integrate step
    without reset or firing); ``membrane_max`` takes each neuron's largest u
    over the T steps, ``membrane_mean`` its mean.
    """
    drive = (1.0 - alpha) * input_scale * current
    u = tf.einsum("tsn,sbn->tbn", integrator_kernel(alpha, current.shape[0]), drive)
    if readout == "membrane_max":
        return tf.reduce_max(u, axis=0)
    if readout == "membrane_mean":
        return tf.reduce_mean(u, axis=0)
    raise ValueError(f"leaky_readout: unknown readout {readout!r}; expected membrane_max or membrane_mean")
