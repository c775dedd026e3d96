"""randman: spike-timing classification on random smooth manifolds.

After Zenke & Vogels (Neural Computation 2021): each class is a random smooth
map f_c from a low-dimensional manifold [0,1]^D into [0,1]^channels. A sample
of class c is a random point x on the manifold; channel i fires exactly once,
at a time proportional to f_c(x)_i. Classes differ only in spike timing.

The smooth maps are random Fourier series whose k-th harmonic has amplitude
~ 1/k^smoothness, so larger smoothness gives gentler manifolds (easier tasks).
"""

from __future__ import annotations

import numpy as np

from snn_runner.config import DataConfig
from snn_runner.data.events import EventSet, events_to_sparse

HARMONICS = 8  # Fourier terms per manifold dimension
_PROBES = 2048  # manifold points used to normalise each map to [0, 1]


def _random_maps(rng: np.random.Generator, classes: int, channels: int, dim: int, smoothness: float):
    k = np.arange(1, HARMONICS + 1, dtype=np.float64)
    amp = rng.uniform(0.0, 1.0, size=(classes, channels, dim, HARMONICS)) / k**smoothness
    phase = rng.uniform(0.0, 1.0, size=(classes, channels, dim, HARMONICS))
    freq = k * rng.uniform(0.5, 1.0, size=(classes, channels, dim, 1))
    return amp, phase, freq


def _evaluate(amp, phase, freq, c: int, x: np.ndarray) -> np.ndarray:
    """f_c at points x [N, D] -> [N, channels] (unnormalised)."""
    # arguments: [N, channels, D, HARMONICS]
    arg = 2 * np.pi * (freq[c][None] * x[:, None, :, None] + phase[c][None])
    return (amp[c][None] * np.sin(arg)).sum(axis=(2, 3))


def spike_times(cfg: DataConfig, samples_per_class: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Spike step per (sample, channel) and labels; deterministic in (cfg, stream).

    The manifolds depend only on cfg.seed, so train (stream 0) and test
    (stream 1) draw different points from the same classes.
    """
    maps_rng = np.random.default_rng([cfg.seed, 0])
    amp, phase, freq = _random_maps(maps_rng, cfg.classes, cfg.channels, cfg.manifold_dim, cfg.smoothness)
    probe = np.random.default_rng([cfg.seed, 1]).uniform(size=(_PROBES, cfg.manifold_dim))
    rng = np.random.default_rng([cfg.seed, 2 + stream])
    last_step = max(1, int(cfg.spike_window * cfg.time_steps) - 1)
    times, labels = [], []
    for c in range(cfg.classes):
        ref = _evaluate(amp, phase, freq, c, probe)
        lo, hi = ref.min(axis=0), ref.max(axis=0)
        x = rng.uniform(size=(samples_per_class, cfg.manifold_dim))
        y = np.clip((_evaluate(amp, phase, freq, c, x) - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
        times.append(np.rint(y * last_step).astype(np.int64))
        labels.append(np.full(samples_per_class, c, np.int64))
    times, labels = np.concatenate(times), np.concatenate(labels)
    order = rng.permutation(len(labels))
    return times[order], labels[order]


def load_randman(cfg: DataConfig) -> tuple[EventSet, EventSet]:
    """Train and test sets in the sparse input format, sharing one input capacity."""
    splits = [spike_times(cfg, n, stream) for stream, n in
              enumerate((cfg.train_samples_per_class, cfg.test_samples_per_class))]
    channel = np.arange(cfg.channels)
    events = [
        [(t_row, channel) for t_row in times]  # (bin of each event, input id of each event)
        for times, _ in splits
    ]
    # Capacity from the data: the busiest bin of either split, so nothing drops.
    capacity = max(int(np.bincount(t, minlength=cfg.time_steps).max()) for ev in events for t, _ in ev)
    return tuple(
        events_to_sparse(ev, labels, cfg.time_steps, cfg.channels, cfg.classes, capacity)
        for ev, (_, labels) in zip(events, splits)
    )
