"""Splits as ``EventSet``s: train, optional validation carved from train, test."""

from __future__ import annotations

from typing import Callable

import numpy as np

from snn_runner.config import DataConfig
from snn_runner.data.cache import RaggedSplit
from snn_runner.data.errors import DataError
from snn_runner.data.events import PAD, EventSet, expand
from snn_runner.data.report import split_report

_VALIDATION_STREAM = 3  # sub-stream of cfg.seed, apart from those of prepare


def validation_indices(samples: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(train, validation) sample indices, both sorted; validation None when fraction is 0.

    The draw depends only on (samples, fraction, seed), so every task of a
    sweep holds out the same samples.
    """
    if fraction <= 0:
        return np.arange(samples), None
    if samples < 2:
        raise DataError(f"validation_fraction {fraction} needs at least 2 training samples, there are {samples}")
    held_out = min(max(int(round(fraction * samples)), 1), samples - 1)
    order = np.random.default_rng([seed, _VALIDATION_STREAM]).permutation(samples)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def ragged_to_eventset(split: RaggedSplit, capacity: int, indices: np.ndarray | None = None) -> EventSet:
    """Padded ``EventSet`` of the given samples (sorted indices; None: all)."""
    if indices is None:
        flat, count, labels, capped = split.ids, split.count, split.labels, split.stats["capped"]
    else:
        chosen = np.zeros(len(split), bool)
        chosen[indices] = True
        flat = split.ids[np.repeat(chosen, split.count.sum(axis=1))]
        count, labels, capped = split.count[indices], split.labels[indices], split.stats["capped"][indices]
    return EventSet(expand(flat, count, capacity), count, labels.astype(np.int64), split.channels, split.classes,
                    int(capped.sum()))


def load_splits(cfg: DataConfig, log: Callable[[str], None] = print) -> dict[str, EventSet]:
    """``{"train", ["validation",] "test"}`` EventSets sharing one capacity, each with a report."""
    if cfg.dataset in ("randman", "random"):
        return _generated_splits(cfg)
    from snn_runner.data.pipeline import prepare

    prepared = prepare(cfg, log)
    entry = prepared.entry
    train = entry.splits["train"]
    train_idx, val_idx = validation_indices(len(train), cfg.validation_fraction, cfg.seed)
    parts = [("train", train, train_idx if val_idx is not None else None)]
    if val_idx is not None:
        parts.append(("validation", train, val_idx))
    parts.append(("test", entry.splits["test"], None))
    sets = {}
    for name, split, idx in parts:
        ev = ragged_to_eventset(split, entry.capacity, idx)
        stats = split.stats if idx is None else {k: v[idx] for k, v in split.stats.items()}
        chosen = None if idx is None else set(int(i) for i in idx)
        notes = [text for pos, text in split.notes if chosen is None or pos in chosen]
        ev.report = split_report(cfg.dataset, name, ev.count, entry.capacity, ev.channels, cfg.dt_ms, stats,
                                 notes=notes)
        ev.report["cache_file"] = str(entry.path)
        check_eventset(ev, cfg.dataset, name, f"cache entry {entry.path}")
        sets[name] = ev
    return sets


def check_eventset(ev: EventSet, dataset: str, split: str, origin: str) -> None:
    """Refuse a set whose ids or labels are out of range, whatever produced it (vectorised, a few passes).

    Slots are PAD or an id in [0, channels); labels lie in [0, classes); counts in [0, K].
    """
    where = f"{dataset} {split} split ({origin})"
    fix = ("delete the cache entry to rebuild it" if origin.startswith("cache entry")
           else "this is a bug in the generator; please report it")
    if ev.ids.ndim != 3 or ev.count.shape != ev.ids.shape[:2] or ev.labels.shape != (ev.ids.shape[0],):
        raise DataError(f"{where}: shapes ids {ev.ids.shape}, count {ev.count.shape}, labels {ev.labels.shape} "
                        f"disagree; {fix}")
    if ev.ids.size:
        lo, hi = int(ev.ids.min()), int(ev.ids.max())
        if lo < PAD or hi >= ev.channels:
            raise DataError(f"{where}: input ids span [{lo}, {hi}], outside [0, {ev.channels}) (PAD {PAD}); {fix}")
    if ev.count.size and (int(ev.count.min()) < 0 or int(ev.count.max()) > ev.capacity):
        raise DataError(f"{where}: bin counts outside [0, {ev.capacity}]; {fix}")
    if len(ev.labels) and (int(ev.labels.min()) < 0 or int(ev.labels.max()) >= ev.classes):
        raise DataError(f"{where}: labels span [{int(ev.labels.min())}, {int(ev.labels.max())}], outside "
                        f"[0, {ev.classes}); {fix}")


def _generated_splits(cfg: DataConfig) -> dict[str, EventSet]:
    if cfg.dataset == "randman":
        from snn_runner.data.randman import load_randman as load
    else:
        from snn_runner.data.random_events import load_random as load

    train, test = load(cfg)
    train_idx, val_idx = validation_indices(len(train), cfg.validation_fraction, cfg.seed)
    sets = {"train": train}
    if val_idx is not None:
        sets = {"train": train.subset(train_idx), "validation": train.subset(val_idx)}
    sets["test"] = test
    for name, ev in sets.items():
        ev.report = split_report(cfg.dataset, name, ev.count, ev.capacity, ev.channels, None,
                                 dropped=ev.dropped_events)
        check_eventset(ev, cfg.dataset, name, f"generated by {cfg.dataset}")
    return sets
