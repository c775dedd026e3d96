"""Python entry point of the fused multi-layer sparse LIF op.

`sparse_lif_layer` runs a whole network of LIF layers over all time steps in
one custom op (``SnnSparseLifLayer``); its gradient with respect to the
weights is computed by ``SnnSparseLifLayerGrad`` through the gradient
registered below, or by ``SnnSparseLifLayerGradWithValues`` when the loss
also depends on the spike counts (activity regularisation).

How spike counts stay differentiable: as in ``sparse_ops``, a count is the
sum of the slot values (1 per transmitted spike, 0 per carrier; see
``SparseSpikes``), so d count / d u is the surrogate at every filled slot.
The op has no values output; ``spike_count`` returns the counts as float32
and sends their gradient, one entry per slot, to the op's ``surrogate``
output. The registered gradient reads what arrives there as d loss / d slot
value. (The surrogate is internal: ``FusedOutput`` does not expose it, so
nothing else differentiates through it.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from snn_runner.sparse import library

__all__ = ["FusedLayout", "FusedOutput", "check_inputs", "fused_output", "slot_values", "sparse_lif_layer",
           "spike_count"]


class FusedLayout(NamedTuple):
    """The flat input and output lists of the fused op, for a network of ``layers`` layers.

    Inputs: in_ids, in_count, then per layer (``layers`` of each) weights,
    alpha, threshold, threshold2. Outputs: logits, then per layer ids, count,
    dropped, surrogate. The CPU op (ops/) and the IPU op (ops/poplar) share
    it; this is the one place the Python side spells it out.
    """

    layers: int

    def inputs(self, in_ids, in_count, weights, alpha, threshold, threshold2) -> list:
        return [in_ids, in_count, *weights, *alpha, *threshold, *threshold2]

    @property
    def weight_inputs(self) -> range:
        """Positions of the weights among the inputs (the only differentiable ones)."""
        return range(2, 2 + self.layers)

    def split_inputs(self, inputs) -> dict:
        n = self.layers
        return {"in_ids": inputs[0], "in_count": inputs[1], "weights": list(inputs[2 : 2 + n]),
                "alpha": list(inputs[2 + n : 2 + 2 * n]), "threshold": list(inputs[2 + 2 * n : 2 + 3 * n]),
                "threshold2": list(inputs[2 + 3 * n : 2 + 4 * n])}

    def input_gradients(self, grad_weights) -> list:
        """Gradients of every input, given those of the weights (None elsewhere)."""
        return [None, None] + list(grad_weights) + [None] * (3 * self.layers)

    def output_types(self) -> list[tf.DType]:
        n = self.layers
        return [tf.float32] + [tf.int32] * (3 * n) + [tf.float32] * n

    def output_shapes(self, batch, steps, n_out: int, capacities) -> list[tf.TensorShape]:
        """Static shapes of the outputs: logits [B, n_L], ids [B, T, K_l], count/dropped [B, T], surrogate [B, T, K_l]."""
        shapes = [tf.TensorShape([batch, n_out])]
        shapes += [tf.TensorShape([batch, steps, k]) for k in capacities]
        shapes += [tf.TensorShape([batch, steps])] * (2 * self.layers)
        shapes += [tf.TensorShape([batch, steps, k]) for k in capacities]
        return shapes

    def split_outputs(self, outputs) -> tuple:
        """(logits, ids, count, dropped, surrogate), the last four as per-layer lists."""
        n = self.layers
        return (outputs[0], list(outputs[1 : 1 + n]), list(outputs[1 + n : 1 + 2 * n]),
                list(outputs[1 + 2 * n : 1 + 3 * n]), list(outputs[1 + 3 * n : 1 + 4 * n]))


class FusedOutput(NamedTuple):
    """Per-sample spike-count logits and, per layer, the selected slots.

    Slots hold the transmitted spikes (first ``count``) in ascending neuron
    order, then gradient carriers, then -1. The op's surrogate output is only
    used by the gradient and not returned. ``spike_count`` is ``count`` as
    float32 and ``values`` the slot values (1 per transmitted spike, 0 per
    carrier and padding), both differentiable (see ``spike_count`` and
    ``slot_values``): a loss on them (activity regularisation, a readout
    layer outside the op) trains the weights as in ``sparse_ops``.
    """

    logits: tf.Tensor  # [B, n_L] float32
    ids: list[tf.Tensor]  # per layer [B, T, K_l] int32, -1 = empty slot
    count: list[tf.Tensor]  # per layer [B, T] int32, transmitted spikes
    dropped: list[tf.Tensor]  # per layer [B, T] int32, spikes over capacity
    spike_count: list[tf.Tensor]  # per layer [B, T] float32, = count, differentiable
    values: list[tf.Tensor]  # per layer [B, T, K_l] float32, slot values, differentiable


def _through_surrogate(forward: tf.Tensor, surrogate, to_slots, unsupported: str | None) -> tf.Tensor:
    """``forward`` whose gradient g reaches the op's ``surrogate`` output as ``to_slots(g)``.

    What arrives at the surrogate output is read by the registered gradient
    as d loss / d slot value. A backend whose gradient cannot take it (the
    IPU op) passes ``unsupported``: asking for the gradient then raises
    NotImplementedError with that text, at trace time, instead of silently
    dropping it.
    """

    @tf.custom_gradient
    def routed(surrogate):
        def grad(g):
            if unsupported is not None:
                raise NotImplementedError(unsupported)
            return to_slots(g, surrogate)

        return forward, grad

    return routed(surrogate)


def spike_count(count, surrogate, unsupported: str | None = None) -> tf.Tensor:
    """``count`` [B, T] as float32, differentiable as the sum of the slot values.

    The gradient g[b, t] goes to every slot k of (b, t), as d loss / d value
    of slot k. The forward pass costs one cast.
    """
    return _through_surrogate(tf.cast(count, tf.float32), surrogate,
                              lambda g, s: tf.broadcast_to(tf.expand_dims(g, -1), tf.shape(s)), unsupported)


def slot_values(count, surrogate, unsupported: str | None = None) -> tf.Tensor:
    """The slot values [B, T, K]: 1.0 for the first ``count`` slots, 0.0 after; differentiable per slot."""
    values = tf.cast(tf.sequence_mask(count, maxlen=surrogate.shape[-1]), tf.float32)
    return _through_surrogate(values, surrogate, lambda g, s: g, unsupported)


def fused_output(logits, ids, count, dropped, surrogate, unsupported: str | None = None) -> FusedOutput:
    """The ``FusedOutput`` of the op's split outputs (``FusedLayout.split_outputs``)."""
    counts = [spike_count(c, s, unsupported) for c, s in zip(count, surrogate)]
    values = [slot_values(c, s, unsupported) for c, s in zip(count, surrogate)]
    return FusedOutput(logits, list(ids), list(count), list(dropped), counts, values)


def _tensor(value, dtype: tf.DType, name: str, rank: int) -> tf.Tensor:
    # Tensors and variables must already have the op's dtype: a silent cast
    # would hide caller mistakes and cost a copy per step. NumPy arrays and
    # lists are converted, but only from the same kind (integer ids, numbers
    # for float inputs).
    if isinstance(value, np.ndarray) or not hasattr(value, "dtype"):
        array_dtype = np.asarray(value).dtype
        wanted = "iu" if dtype.is_integer else "fiu"
        if array_dtype.kind not in wanted:
            raise TypeError(f"{name} must be {dtype.name}, got an array of {array_dtype}")
    else:
        try:
            value_dtype = tf.as_dtype(value.dtype)
        except TypeError:
            value_dtype = None
        if value_dtype is not None and value_dtype != dtype:
            raise TypeError(f"{name} must be {dtype.name}, got {value_dtype.name}")
    try:
        tensor = tf.convert_to_tensor(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be convertible to {dtype.name}: {err}") from err
    if tensor.shape.rank is not None and tensor.shape.rank != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {tensor.shape}")
    return tensor


def _layer_list(values, name: str, n_layers: int) -> list:
    if isinstance(values, (tf.Tensor, tf.Variable)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list with one entry per layer")
    if len(values) != n_layers:
        raise ValueError(f"{name} has {len(values)} entries but there are {n_layers} layers")
    return list(values)


def _dim(tensor: tf.Tensor, axis: int):
    return tf.compat.dimension_value(tensor.shape[axis])


@tf.autograph.experimental.do_not_convert
def check_inputs(in_ids, in_count, weights, alpha, threshold, threshold2, capacities) -> tuple[dict, list[int]]:
    """Validate the fused op's arguments (see ``sparse_lif_layer``) from their static shapes and dtypes.

    Returns the inputs as tensors, keyed like ``FusedLayout.split_inputs``,
    and the capacities as ints. Both the CPU op and the IPU op use it.
    """
    if isinstance(weights, (tf.Tensor, tf.Variable)) or not isinstance(weights, Sequence):
        raise TypeError("weights must be a list of [n_in, n_out] matrices, one per layer")
    n_layers = len(weights)
    if n_layers < 1:
        raise ValueError("weights must hold at least one layer")
    in_ids = _tensor(in_ids, tf.int32, "in_ids", 3)
    in_count = _tensor(in_count, tf.int32, "in_count", 2)
    weights = [_tensor(w, tf.float32, f"weights[{i}]", 2) for i, w in enumerate(weights)]
    vectors = {}
    for name, values in (("alpha", alpha), ("threshold", threshold), ("threshold2", threshold2)):
        items = _layer_list(values, name, n_layers)
        vectors[name] = [_tensor(v, tf.float32, f"{name}[{i}]", 1) for i, v in enumerate(items)]
    capacities = _layer_list(capacities, "capacities", n_layers)
    caps = []
    for i, k in enumerate(capacities):
        if isinstance(k, bool) or not isinstance(k, int) and not hasattr(k, "__index__"):
            raise TypeError(f"capacities[{i}] must be an int, got {type(k).__name__}")
        caps.append(int(k))

    for axis in (0, 1):
        a, b = _dim(in_ids, axis), _dim(in_count, axis)
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"in_count shape {in_count.shape} does not match in_ids shape {in_ids.shape} "
                f"(expected [B, T])"
            )
    for i, w in enumerate(weights):
        n_out = _dim(w, 1)
        if i > 0:
            rows, prev = _dim(w, 0), _dim(weights[i - 1], 1)
            if rows is not None and prev is not None and rows != prev:
                raise ValueError(
                    f"weights[{i}] has {rows} rows but layer {i - 1} has {prev} neurons "
                    f"(weights[{i - 1}].shape[1])"
                )
        for name, items in vectors.items():
            size = _dim(items[i], 0)
            if n_out is not None and size is not None and size != n_out:
                raise ValueError(f"{name}[{i}] has length {size} but layer {i} has {n_out} neurons")
        if caps[i] < 1:
            raise ValueError(f"capacities[{i}] = {caps[i]} must be >= 1")
        if n_out is not None and caps[i] > n_out:
            raise ValueError(
                f"capacities[{i}] = {caps[i]} exceeds the size of layer {i} ({n_out} neurons)"
            )

    return {"in_ids": in_ids, "in_count": in_count, "weights": weights, **vectors}, caps


# The wrapper only does static Python checks; AutoGraph has nothing to convert.
@tf.autograph.experimental.do_not_convert
def sparse_lif_layer(
    in_ids,
    in_count,
    weights: Sequence,
    alpha: Sequence,
    threshold: Sequence,
    threshold2: Sequence,
    capacities: Sequence[int],
    input_scale: float = 10.0,
    beta: float = 10.0,
) -> FusedOutput:
    """Runs all LIF layers over all time steps.

    Args:
      in_ids: int32 [B, T, K0] input spike ids per step; only the first
        ``in_count[b, t]`` entries are read.
      in_count: int32 [B, T] number of valid input ids per step.
      weights: per layer float32 ``Wt_l`` of shape [n_{l-1}, n_l] (transposed:
        row j holds the outgoing weights of presynaptic neuron j).
      alpha, threshold, threshold2: per layer float32 [n_l] decay, firing
        threshold and gradient-carrier threshold (may be -inf).
      capacities: per layer slot count K_l, 1 <= K_l <= n_l.
      input_scale: factor c of the input current.
      beta: sharpness of the surrogate derivative.

    Returns:
      FusedOutput(logits, ids, count, dropped, spike_count, values).
      Gradients (of the logits, spike_count and values) flow to ``weights`` only.
    """
    inputs, caps = check_inputs(in_ids, in_count, weights, alpha, threshold, threshold2, capacities)
    logits, ids, count, dropped, surrogate = library.load().snn_sparse_lif_layer(
        **inputs, capacities=caps, input_scale=float(input_scale), beta=float(beta)
    )
    return fused_output(logits, ids, count, dropped, surrogate)


def _value_gradient(grad) -> tf.Tensor | None:
    """The gradient arriving at a surrogate output, or None if there is none (or it is a constant 0)."""
    if grad is None:
        return None
    grad = tf.convert_to_tensor(grad, dtype=tf.float32)
    static = tf.get_static_value(grad)
    if static is not None and not np.any(static):
        return None
    return grad


def _fused_grad(op, *grads):
    layout = FusedLayout(op.get_attr("N"))
    inputs = layout.split_inputs(op.inputs)
    logits, ids, count, _dropped, surrogate = layout.split_outputs(op.outputs)
    grad_logits = grads[0]
    if grad_logits is None:
        grad_logits = tf.zeros_like(logits)
    args = dict(
        grad_logits=tf.convert_to_tensor(grad_logits, dtype=tf.float32),
        in_ids=inputs["in_ids"],
        in_count=inputs["in_count"],
        weights=inputs["weights"],
        alpha=inputs["alpha"],
        ids=ids,
        count=count,
        surrogate=surrogate,
        capacities=op.get_attr("capacities"),
        input_scale=op.get_attr("input_scale"),
    )
    # What arrives at the surrogate outputs is d loss / d slot value (see
    # spike_count). Without any (no activity regulariser: the common case)
    # the plain gradient op runs and nothing extra is passed.
    grad_values = [_value_gradient(g) for g in layout.split_outputs(grads)[4]]
    ops = library.load()
    if all(g is None for g in grad_values):
        grad_weights = ops.snn_sparse_lif_layer_grad(**args)
    else:
        grad_values = [tf.zeros_like(s) if g is None else g for g, s in zip(grad_values, surrogate)]
        grad_weights = ops.snn_sparse_lif_layer_grad_with_values(**args, grad_values=grad_values)
    return layout.input_gradients(grad_weights)


try:
    tf.RegisterGradient("SnnSparseLifLayer")(_fused_grad)
    # The BPTT ops themselves are not differentiated (no second-order training).
    tf.no_gradient("SnnSparseLifLayerGrad")
    tf.no_gradient("SnnSparseLifLayerGradWithValues")
except KeyError:
    # Registered already (module re-imported, e.g. by importlib.reload).
    pass
