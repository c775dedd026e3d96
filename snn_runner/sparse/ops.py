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

__all__ = ["SparseSpikes", "select_spikes", "sparse_binary_matmul"]


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
    if isinstance(capacity, bool):
        raise TypeError("capacity must be an int, got bool")
    try:
        capacity = operator.index(capacity)
    except TypeError:
        raise TypeError(f"capacity must be an int, got {type(capacity).__name__}") from None
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    try:
        beta = float(beta)
    except (TypeError, ValueError):
        raise TypeError(f"beta must be a float, got {type(beta).__name__}") from None
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be finite and >= 0, got {beta}")

    u = _tensor(u, "u", tf.float32, 2)
    threshold = _tensor(threshold, "threshold", tf.float32, 1)
    threshold2 = _tensor(threshold2, "threshold2", tf.float32, 1)
    n = u.shape[1] if u.shape.rank is not None else None
    if threshold.shape.rank is not None:
        _same_dim(threshold.shape[0], n, "threshold length and n = u.shape[1]")
        n = n if n is not None else threshold.shape[0]
    if threshold2.shape.rank is not None:
        _same_dim(threshold2.shape[0], n, "threshold2 length and n = u.shape[1]")
        n = n if n is not None else threshold2.shape[0]
    if n is not None and capacity > n:
        raise ValueError(f"capacity K={capacity} exceeds the number of neurons n={n}")

    ids, count, dropped, values = library.load().snn_select_spikes(
        u, threshold, threshold2, capacity=capacity, beta=beta, name=name
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
