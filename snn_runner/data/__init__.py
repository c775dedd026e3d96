"""Datasets, turned into the fixed-capacity sparse input format.

- ``load_dataset(cfg) -> (train, test)``: the two ``EventSet``s the runner
  trains and tests on. With ``validation_fraction`` > 0, train is what is left
  after the validation samples are held out.
- ``load_splits(cfg) -> {"train", ["validation",] "test"}``: the same sets
  plus the validation set when asked for.
- ``prepare(cfg, log)``: build (or find) the on-disk cache entry of an event
  dataset without loading it into EventSets; what ``snn-runner data prepare``
  runs.

Every returned set carries ``EventSet.report``, a flat JSON-friendly dict
(samples, K_in, mean/max distinct ids per bin before the cap, events dropped by
the cap and their fraction, events after T*dt, duplicates merged, the cache
file); ``snn_runner.data.report`` lists the keys.

Sources: ``randman`` is generated (``randman.py``); ``nmnist``, ``shd`` and
``dvsgesture`` are read through tonic from the data folder, never downloaded
(``tonic_sources.py``), preprocessed per sample (``preprocess.py``, id
formulas there), binned and capped (``events.py``) and cached (``cache.py``).
"""

from __future__ import annotations

from typing import Callable

from snn_runner.config import DataConfig
from snn_runner.data.errors import CacheError, DataError, DatasetCorruptError, DatasetMissingError
from snn_runner.data.events import EventSet
from snn_runner.data.splits import load_splits

__all__ = ["load_dataset", "load_splits", "prepare", "EventSet", "DataError", "DatasetMissingError",
           "DatasetCorruptError", "CacheError"]


def load_dataset(cfg: DataConfig, log: Callable[[str], None] = print) -> tuple[EventSet, EventSet]:
    sets = load_splits(cfg, log)
    return sets["train"], sets["test"]


def prepare(cfg: DataConfig, log: Callable[[str], None] = print, progress_every: int = 1000):
    from snn_runner.data.pipeline import prepare as _prepare

    return _prepare(cfg, log, progress_every)
