"""Datasets, turned into the fixed-capacity sparse input format.

``load_dataset(cfg)`` returns ``(train, test)`` ``EventSet``s.
"""

from __future__ import annotations

from snn_runner.config import DataConfig
from snn_runner.data.events import EventSet


def load_dataset(cfg: DataConfig) -> tuple[EventSet, EventSet]:
    if cfg.dataset == "randman":
        from snn_runner.data.randman import load_randman

        return load_randman(cfg)
    raise ValueError(f"unknown dataset {cfg.dataset!r}")  # config validation rejects this first
