"""Python entry points for the sparse spike ops and their gradients.

The compiled kernels validate everything again at run time; the checks here
exist so that mistakes visible from static shapes and dtypes fail early, at
the call site, with a message that names the argument.
"""

from __future__ import annotations

import math
import operator

import tensorflow as tf

from snn_runner.sparse import library
from snn_runner.sparse.spikes import SparseSpikes

__all__ = ["SparseSpikes", "lif_sequence", "select_spikes", "sparse_binary_matmul"]


def _tensor(x, name: str, dtype: tf.DType, rank: int) -> tf.Tensor:
    # No dtype is passed to convert_to_tensor on purpose: a float64 NumPy
    # array must be reported, not silently cast.
    try:
        t = tf.convert_to_tensor(x, name=name)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be convertible to a {dtype.name} tensor: {exc}") from exc
    if t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype.name}, got {t.dtype.name}")
    if t.shape.rank is not None and t.shape.rank != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {t.shape}")
    return t


def _same_dim(a, b, what: str) -> None:
    if a is not None and b is not None and a != b:
        raise ValueError(f"shape mismatch: {what} ({a} vs {b})")


def _capacity(capacity) -> int:
    if isinstance(capacity, bool):
        raise TypeError("capacity must be an int, got bool")
    try:
        capacity = operator.index(capacity)
    except TypeError:
        raise TypeError(f"capacity must be an int, got {type(capacity).__name__}") from None
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    return capacity


def _finite(x, name: str, minimum: float | None = None) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a float, got {type(x).__name__}") from None
    if not math.isfinite(x) or (minimum is not None and x < minimum):
        raise ValueError(f"{name} must be finite{'' if minimum is None else f' and >= {minimum:g}'}, got {x}")
    return x


def _beta(beta) -> float:
    return _finite(beta, "beta", 0.0)


def _neurons(n, source: str, **vectors: tf.Tensor):
    """n as given by ``source`` (may be None), checked against each vector's static length."""
    for name, v in vectors.items():
        if v.shape.rank is not None:
            _same_dim(v.shape[0], n, f"{name} length and n = {source}")
            n = n if n is not None else v.shape[0]
    return n


def sparse_binary_matmul(weights, spikes: SparseSpikes, name: str | None = None) -> tf.Tensor:
    """``y[b] = sum_{k < count[b]} values[b, k] * weights[ids[b, k]]``.

    Args:
      weights: float32 ``[n_in, n_out]`` (transposed: row j belongs to
        presynaptic neuron j).
      spikes: ``SparseSpikes`` with ids/values ``[B, K]`` and count ``[B]``.

    Returns:
      float32 ``[B, n_out]``. Differentiable w.r.t. ``weights`` and
      ``spikes.values``; the values gradient is also produced for carrier
      slots, which is how carriers pass the surrogate gradient upstream.
    """
    if not isinstance(spikes, tuple) or len(spikes) != 3:
        raise TypeError(
            f"spikes must be a SparseSpikes(ids, count, values), got {type(spikes).__name__}"
        )
    w = _tensor(weights, "weights", tf.float32, 2)
    ids = _tensor(spikes[0], "spikes.ids", tf.int32, 2)
    count = _tensor(spikes[1], "spikes.count", tf.int32, 1)
    values = _tensor(spikes[2], "spikes.values", tf.float32, 2)
    if ids.shape.rank is not None and values.shape.rank is not None:
        _same_dim(ids.shape[0], values.shape[0], "spikes.ids and spikes.values batch size")
        _same_dim(ids.shape[1], values.shape[1], "spikes.ids and spikes.values capacity K")
    if ids.shape.rank is not None and count.shape.rank is not None:
        _same_dim(ids.shape[0], count.shape[0], "spikes.ids and spikes.count batch size")
    return library.load().snn_sparse_binary_matmul(w, ids, count, values, name=name)


def select_spikes(
    u,
    threshold,
    threshold2,
    capacity: int,
    beta: float = 10.0,
    name: str | None = None,
) -> tuple[SparseSpikes, tf.Tensor]:
    """Select spikes (``u >= threshold``) and gradient carriers into K slots.

    Spikes fill the slots first in ascending neuron index (if more than K
    spike, the K lowest indices are kept and the rest counted in
    ``dropped``); then carriers ``threshold2 < u < threshold`` in ascending
    index; then padding (-1).

    Args:
      u: float32 ``[B, n]`` membrane potential.
      threshold: float32 ``[n]``.
      threshold2: float32 ``[n]`` carrier threshold (may be -inf).
      capacity: K, ``1 <= K <= n``.
      beta: sharpness of the SuperSpike surrogate used by the gradient,
        ``d spike / d u = 1 / (beta * |u - threshold| + 1)^2``.

    Returns:
      ``(SparseSpikes(ids, count, values), dropped)`` with ``dropped`` int32
      ``[B]``. Differentiable w.r.t. ``u`` through ``values`` (no gradient
      flows to the thresholds).
    """
    capacity, beta = _capacity(capacity), _beta(beta)
    u = _tensor(u, "u", tf.float32, 2)
    threshold = _tensor(threshold, "threshold", tf.float32, 1)
    threshold2 = _tensor(threshold2, "threshold2", tf.float32, 1)
    n = u.shape[1] if u.shape.rank is not None else None
    n = _neurons(n, "u.shape[1]", threshold=threshold, threshold2=threshold2)
    if n is not None and capacity > n:
        raise ValueError(f"capacity K={capacity} exceeds the number of neurons n={n}")

    ids, count, dropped, values = library.load().snn_select_spikes(
        u, threshold, threshold2, capacity=capacity, beta=beta, name=name
    )
    return SparseSpikes(ids=ids, count=count, values=values), dropped


def lif_sequence(
    current,
    alpha,
    threshold,
    threshold2,
    capacity: int,
    input_scale: float = 10.0,
    beta: float = 10.0,
    name: str | None = None,
) -> tuple[SparseSpikes, tf.Tensor]:
    """The LIF dynamics of one layer over all T steps, with spike selection, as one op.

    From ``u = 0``, at every step ``t`` the neurons with ``u >= threshold``
    are reset to 0, then ``u <- alpha * u + (1 - alpha) * input_scale *
    current[t]``; each step's membranes are then selected into K slots
    exactly as ``select_spikes`` does. Equal (bit for bit in the forward) to
    ``select_spikes(membrane_sequence(current, alpha, threshold,
    input_scale))`` on the ``[T*B, n]`` rows.

    Args:
      current: float32 ``[T, B, n]`` input current, time-major.
      alpha, threshold: float32 ``[n]``.
      threshold2: float32 ``[n]`` carrier threshold (may be -inf).
      capacity: K, ``1 <= K <= n``.
      input_scale: c.
      beta: sharpness of the SuperSpike surrogate used by the gradient.

    Returns:
      ``(SparseSpikes(ids, count, values), dropped)``: ids and values
      ``[T, B, K]``, count and dropped int32 ``[T, B]``. Differentiable w.r.t.
      ``current`` through ``values`` (the reset carries no gradient, and none
      flows to alpha or the thresholds).
    """
    capacity, beta = _capacity(capacity), _beta(beta)
    input_scale = _finite(input_scale, "input_scale")
    current = _tensor(current, "current", tf.float32, 3)
    alpha = _tensor(alpha, "alpha", tf.float32, 1)
    threshold = _tensor(threshold, "threshold", tf.float32, 1)
    threshold2 = _tensor(threshold2, "threshold2", tf.float32, 1)
    n = current.shape[2] if current.shape.rank is not None else None
    n = _neurons(n, "current.shape[2]", alpha=alpha, threshold=threshold, threshold2=threshold2)
    if n is not None and capacity > n:
        raise ValueError(f"capacity K={capacity} exceeds the number of neurons n={n}")

    ids, count, dropped, values, _ = library.load().snn_lif_sequence(
        current, alpha, threshold, threshold2, capacity=capacity, input_scale=input_scale, beta=beta, name=name
    )
    return SparseSpikes(ids=ids, count=count, values=values), dropped


@tf.RegisterGradient("SnnSparseBinaryMatmul")
def _sparse_binary_matmul_grad(op, grad_y):
    weights, ids, count, values = op.inputs
    grad_weights, grad_values = library.load().snn_sparse_binary_matmul_grad(
        weights, ids, count, values, grad_y
    )
    return [grad_weights, None, None, grad_values]


@tf.RegisterGradient("SnnSelectSpikes")
def _select_spikes_grad(op, grad_ids, grad_count, grad_dropped, grad_values):
    # Only the float output carries a gradient; ids/count/dropped are integers.
    del grad_ids, grad_count, grad_dropped
    if grad_values is None:
        return [None, None, None]
    u, threshold, _ = op.inputs
    grad_u = library.load().snn_select_spikes_grad(
        u, threshold, op.outputs[0], grad_values, beta=op.get_attr("beta")
    )
    return [grad_u, None, None]


@tf.RegisterGradient("SnnLifSequence")
def _lif_sequence_grad(op, grad_ids, grad_count, grad_dropped, grad_values, grad_surrogate):
    # values carries the gradient; the surrogate is a record for this function, not a result
    del grad_ids, grad_count, grad_dropped, grad_surrogate
    if grad_values is None:
        return [None, None, None, None]
    alpha = op.inputs[1]
    grad_current = library.load().snn_lif_sequence_grad(
        alpha, op.outputs[0], op.outputs[4], grad_values, input_scale=op.get_attr("input_scale")
    )
    return [grad_current, None, None, None]
