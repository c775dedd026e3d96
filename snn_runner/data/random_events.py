"""random: uniform random input events with random labels.

What the benchmarks time on: every sample has exactly ``input_capacity``
distinct input ids in every step, so the input side of each case does the
same work. Nothing can be learnt from it.
"""

from __future__ import annotations

import numpy as np

from snn_runner.config import DataConfig
from snn_runner.data.events import EventSet

_TEST_STREAM = 1  # sub-stream of cfg.seed for the test split


def random_events(cfg: DataConfig, samples: int, stream: int = 0) -> EventSet:
    rng = np.random.default_rng([cfg.seed, stream])
    t, k, n_in = cfg.time_steps, cfg.input_capacity, cfg.channels
    # argsort of random keys is a random permutation per (sample, step); its first k are k distinct ids
    ids = np.argsort(rng.random((samples, t, n_in)), axis=-1)[..., :k].astype(np.int32)
    count = np.full((samples, t), k, np.int32)
    labels = rng.integers(0, cfg.classes, size=samples).astype(np.int64)
    return EventSet(ids, count, labels, n_in, cfg.classes)


def load_random(cfg: DataConfig) -> tuple[EventSet, EventSet]:
    return (random_events(cfg, cfg.classes * cfg.train_samples_per_class),
            random_events(cfg, cfg.classes * cfg.test_samples_per_class, _TEST_STREAM))
