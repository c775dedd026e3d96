"""The fixed-capacity sparse spike format shared by the custom ops."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class SparseSpikes(NamedTuple):
    """Spikes of a batch, stored as at most K neuron ids per row.

    For a batch of B rows with capacity K:

    ``ids``     int32 ``[B, K]``. ``ids[b, :count[b]]`` are the neurons that
                spiked, in ascending order. The following slots hold
                *gradient carriers* (neurons that did not spike but whose
                membrane potential exceeds ``threshold2``, i.e. that are close
                enough to threshold for the surrogate gradient to matter),
                also ascending, and then padding with id ``-1``.
    ``count``   int32 ``[B]``, number of real spikes, ``0 <= count <= K``.
    ``values``  float32 ``[B, K]``, 1.0 for slots ``< count`` and 0.0 for
                carriers and padding. The forward pass only uses the spike
                slots; the tensor exists so that autodiff has a float path
                through which d(loss)/d(slot) reaches the op that selected
                the spikes (carriers included).

    Leading dimensions other than a single batch axis (e.g. ``[B, T, K]`` for
    a recorded sequence) follow the same convention along the last axis.
    """

    ids: tf.Tensor
    count: tf.Tensor
    values: tf.Tensor

    @classmethod
    def from_ids(cls, ids, count) -> "SparseSpikes":
        """Build spikes from ``ids``/``count``, with values 1.0 for slots < count.

        Works for any leading shape: ``ids`` is ``[..., K]`` and ``count`` is
        ``[...]``.
        """
        ids = tf.convert_to_tensor(ids, dtype=tf.int32)
        count = tf.convert_to_tensor(count, dtype=tf.int32)
        # A static K keeps the static shape of values intact in tf.function.
        capacity = ids.shape[-1] if ids.shape.rank is not None else None
        if capacity is None:
            capacity = tf.shape(ids)[-1]
        values = tf.cast(tf.sequence_mask(count, maxlen=capacity), tf.float32)
        return cls(ids=ids, count=count, values=values)


def frames_from_sparse(ids: tf.Tensor, count: tf.Tensor, n_in: int) -> tf.Tensor:
    """Dense 0/1 frames [B, T, n_in] holding exactly the spikes of (ids, count)."""
    shape = tf.shape(ids)
    b, t, k = shape[0], shape[1], shape[2]
    valid = tf.sequence_mask(count, k) & (ids >= 0)
    rows = tf.reshape(tf.range(b * t), [b, t, 1]) * n_in
    flat = tf.where(valid, rows + ids, b * t * n_in)  # invalid slots -> a spare bin
    flat = tf.reshape(flat, [-1])
    dense = tf.math.unsorted_segment_sum(tf.ones_like(flat, tf.float32), flat, b * t * n_in + 1)
    return tf.reshape(dense[:-1], [b, t, n_in])
