"""The sparse input format of a whole dataset, and the conversion into it.

A sample is ``ids[T, K]`` (input ids active in each time bin, PAD beyond
``count[T]``). Every input path (randman, the tonic datasets, the cache) goes
through ``bin_sample`` so de-duplication and the capacity cap behave the same
everywhere. The cache keeps samples *ragged* (only the ``count.sum()`` real ids,
bin by bin) and ``expand`` turns that into the padded ``[N, T, K]`` array.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

PAD = -1  # id of an unused slot


@dataclass
class EventSet:
    """Samples as ``ids[N, T, K]`` (PAD beyond ``count[N, T]``) with labels.

    ``report`` holds the per-split figures the runner stores (see
    ``snn_runner.data`` for its keys); empty when nobody filled it in.
    """

    ids: np.ndarray  # int32 [N, T, K]
    count: np.ndarray  # int32 [N, T]
    labels: np.ndarray  # int64 [N]
    channels: int  # input ids range over [0, channels)
    classes: int
    dropped_events: int = 0  # events removed by the capacity cap
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def time_steps(self) -> int:
        return self.ids.shape[1]

    @property
    def capacity(self) -> int:
        return self.ids.shape[2]

    def batches(self, batch_size: int, order: np.ndarray | None = None):
        """Yield (ids, count, labels) batches in the given sample order."""
        order = np.arange(len(self)) if order is None else order
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield self.ids[idx], self.count[idx], self.labels[idx]

    def subset(self, indices: np.ndarray) -> "EventSet":
        """The given samples as a new set (copies; the report is not carried over).

        Only sets without dropped events can be split this way: the drop total
        is not known per sample, and a guessed share would be a silent lie.
        """
        if self.dropped_events:
            raise ValueError("cannot split a set with dropped events: per-sample drop counts are unknown")
        indices = np.asarray(indices, np.int64)
        return EventSet(self.ids[indices], self.count[indices], self.labels[indices], self.channels, self.classes)


@dataclass
class BinnedSample:
    """One sample after binning: ragged ids (bin-major, ascending within a bin)."""

    ids: np.ndarray  # int32 [count.sum()]
    count: np.ndarray  # int32 [T]
    outside: int  # events whose bin lies outside [0, T)
    duplicates: int  # events merged into an earlier (bin, id) pair
    capped: int  # distinct (bin, id) pairs removed by the capacity cap
    peak: int  # distinct ids in the busiest bin, before the cap


def bin_sample(
    bins: np.ndarray,
    ids: np.ndarray,
    time_steps: int,
    channels: int,
    capacity: int = 0,
    rng: np.random.Generator | None = None,
) -> BinnedSample:
    """De-duplicate (bin, id) pairs of one sample and cap each bin at ``capacity``.

    ``capacity`` 0 keeps every distinct id. Over-full bins keep a uniformly
    random subset drawn from ``rng`` (needed only when a bin overflows).
    """
    bins = np.asarray(bins, np.int64)
    ids = np.asarray(ids, np.int64)
    if bins.shape != ids.shape:
        raise ValueError(f"bins and ids differ in shape: {bins.shape} vs {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= channels):
        raise ValueError(f"input ids must lie in [0, {channels}); got [{ids.min()}, {ids.max()}]")
    inside = (bins >= 0) & (bins < time_steps)
    n_inside = int(inside.sum())
    # One key per (bin, id); the distinct keys in ascending order are the
    # de-duplicated events sorted bin-major.
    keys = _distinct_sorted(bins[inside] * channels + ids[inside], time_steps * channels)
    distinct = len(keys)
    key_bin = keys // channels
    count = np.bincount(key_bin, minlength=time_steps)
    peak = int(count.max()) if time_steps else 0
    capped = 0
    if capacity and peak > capacity:
        rng = rng if rng is not None else np.random.default_rng(0)
        # Within each over-full bin, rank the ids in a random order and keep
        # the first `capacity`: a uniform subset per bin without a Python loop.
        # Sorting bin + U[0, 1) orders by bin, randomly within a bin (3x faster than lexsort).
        over = count[key_bin] > capacity
        over_bin = key_bin[over]  # ascending, as keys are
        order = np.argsort(over_bin + rng.random(len(over_bin)))
        rank = np.empty(len(over_bin), np.int64)
        rank[order] = np.arange(len(over_bin)) - np.searchsorted(over_bin, over_bin, side="left")
        kept = np.ones(distinct, bool)
        kept[np.flatnonzero(over)[rank >= capacity]] = False
        capped = int(distinct - kept.sum())
        keys = keys[kept]  # still sorted, so ids stay ascending within a bin
        count = np.minimum(count, capacity)
    return BinnedSample(
        ids=(keys % channels).astype(np.int32),
        count=count.astype(np.int32),
        outside=int(len(bins) - n_inside),
        duplicates=n_inside - distinct,
        capped=capped,
        peak=peak,
    )


def _distinct_sorted(keys: np.ndarray, space: int) -> np.ndarray:
    # A flag array over the key space is 10-20x faster than np.unique for the
    # usual sizes (a few thousand events, T * channels up to a few million);
    # np.unique stays for huge spaces where the flags would cost more than sorting.
    if space <= max(1 << 20, 32 * len(keys)):
        seen = np.zeros(space, bool)
        seen[keys] = True
        return np.flatnonzero(seen)
    return np.unique(keys)


def expand(flat_ids: np.ndarray, count: np.ndarray, capacity: int) -> np.ndarray:
    """Ragged ids (concatenated bin by bin, sample by sample) -> padded ``[N, T, K]``."""
    count = np.asarray(count, np.int32)
    n, t = count.shape
    per_row = count.reshape(-1).astype(np.int64)
    if per_row.sum() != len(flat_ids):
        raise ValueError(f"{len(flat_ids)} ids do not match count total {per_row.sum()}")
    if per_row.size and per_row.max() > capacity:
        raise ValueError(f"a bin holds {per_row.max()} ids, more than the capacity {capacity}")
    out = np.full((n * t, capacity), PAD, np.int32)
    # A boolean mask fills in row-major order, which is the ragged order; it
    # costs a byte per slot where index arrays would cost 16 per id.
    out[np.arange(capacity) < per_row[:, None]] = flat_ids
    return out.reshape(n, t, capacity)


def events_to_sparse(
    samples: Iterable[tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray,
    time_steps: int,
    channels: int,
    classes: int,
    capacity: int,
    rng: np.random.Generator | None = None,
) -> EventSet:
    """Bin events (time bin, input id per event) into the sparse format.

    Events outside [0, time_steps) are ignored, repeated ids within one bin are
    merged (a binary spike), and bins with more than ``capacity`` distinct ids
    keep a random subset (seeded ``rng``) and count the rest as dropped.
    ``capacity`` 0 sizes the set to its busiest bin, so nothing is dropped.
    """
    rng = rng or np.random.default_rng(0)
    binned = [bin_sample(b, c, time_steps, channels, capacity, rng) for b, c in samples]
    capacity = capacity or max((s.peak for s in binned), default=0)
    count = np.zeros((len(binned), time_steps), np.int32)
    for n, s in enumerate(binned):
        count[n] = s.count
    flat = np.concatenate([s.ids for s in binned]) if binned else np.zeros(0, np.int32)
    ids = expand(flat, count, capacity)
    dropped = sum(s.capped for s in binned)
    return EventSet(ids, count, np.asarray(labels, np.int64), channels, classes, dropped)
