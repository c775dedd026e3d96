"""The sparse input format of a whole dataset, and the conversion into it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

PAD = -1  # id of an unused slot


@dataclass
class EventSet:
    """Samples as ``ids[N, T, K]`` (PAD beyond ``count[N, T]``) with labels."""

    ids: np.ndarray  # int32 [N, T, K]
    count: np.ndarray  # int32 [N, T]
    labels: np.ndarray  # int64 [N]
    channels: int  # input ids range over [0, channels)
    classes: int
    dropped_events: int = 0  # events removed by the capacity cap

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
    """
    rng = rng or np.random.default_rng(0)
    samples = list(samples)
    ids = np.full((len(samples), time_steps, capacity), PAD, np.int32)
    count = np.zeros((len(samples), time_steps), np.int32)
    dropped = 0
    for n, (bins, chan) in enumerate(samples):
        bins = np.asarray(bins, np.int64)
        chan = np.asarray(chan, np.int64)
        keep = (bins >= 0) & (bins < time_steps)
        # One key per (bin, id) pair; unique() both de-duplicates and sorts by bin.
        keys = np.unique(bins[keep] * channels + chan[keep])
        b, c = keys // channels, keys % channels
        starts = np.searchsorted(b, np.arange(time_steps + 1))
        for t in range(time_steps):
            row = c[starts[t]:starts[t + 1]]
            if len(row) > capacity:
                dropped += len(row) - capacity
                row = np.sort(rng.choice(row, capacity, replace=False))
            ids[n, t, :len(row)] = row
            count[n, t] = len(row)
    return EventSet(ids, count, np.asarray(labels, np.int64), channels, classes, dropped)
