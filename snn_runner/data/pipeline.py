"""Build or find the cache entry of an event dataset: ``prepare(cfg, log)``.

Folders: the data folder is ``cfg.data_dir`` or ``$SNN_RUNNER_DATA_DIR``; the
cache folder is ``cfg.cache_dir``, else ``$SNN_RUNNER_CACHE_DIR``, else
``<data folder>/.snn-cache``.

Reproducibility: with ``max_samples`` the subset of each split is a seeded
draw (sorted, so the order stays tonic's); when a bin overflows K_in the
random choice of what to keep uses a generator seeded by (seed, split, index of
the sample in its split), so a sample is capped the same way whatever subset
it is part of.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np

from snn_runner.config import DataConfig
from snn_runner.data import cache
from snn_runner.data.errors import CacheError, DataError, DatasetMissingError
from snn_runner.data.events import bin_sample
from snn_runner.data.preprocess import Preprocessing, SamplePreprocessor
from snn_runner.data.report import format_report, split_report
from snn_runner.data.tonic_sources import SOURCES, SPLITS, SourceSpec, check_files, fingerprint, open_split, \
    read_sample, sample_origin, close_split

_SPLIT_CODE = {"train": 0, "test": 1}
# Sub-streams of cfg.seed, so the subset draw and the cap draws never share numbers.
_SUBSET_STREAM, _CAP_STREAM = 1, 2

Log = Callable[[str], None]


@dataclass
class Prepared:
    entry: cache.Entry
    built: bool  # False: an existing entry was used
    samples_binned: int  # samples read and binned by this call (0 on a cache hit)
    reports: dict[str, dict]
    seconds: float

    @property
    def path(self) -> Path:
        return self.entry.path


def source_spec(cfg: DataConfig) -> SourceSpec:
    if cfg.dataset not in SOURCES:
        raise DataError(f"dataset {cfg.dataset!r} is not read from files; choose one of {', '.join(SOURCES)}")
    return SOURCES[cfg.dataset]


def data_folder(cfg: DataConfig) -> Path:
    folder = cfg.data_dir or os.environ.get("SNN_RUNNER_DATA_DIR", "")
    if not folder:
        raise DatasetMissingError(
            f"no data folder for {cfg.dataset}: set data.data_dir (--data-dir) or SNN_RUNNER_DATA_DIR to the "
            f"folder holding the dataset (see docs/datasets.md; in a container bind it, e.g. "
            f"-B /path/to/data:/data and SNN_RUNNER_DATA_DIR=/data)")
    return Path(folder).expanduser()


def cache_folder(cfg: DataConfig, data_dir: Path) -> Path:
    folder = cfg.cache_dir or os.environ.get("SNN_RUNNER_CACHE_DIR", "")
    return Path(folder).expanduser() if folder else data_dir / ".snn-cache"


def cache_params(cfg: DataConfig, spec: SourceSpec, paths: dict[str, Path]) -> dict:
    """Everything that shapes the cached tensors (validation_fraction does not: it splits at load time)."""
    return {
        "dataset": spec.name,
        "time_steps": cfg.time_steps,
        "dt_ms": float(cfg.dt_ms),
        "input_capacity": cfg.input_capacity,
        "denoise_ms": float(cfg.denoise_ms),
        "downsample": float(cfg.downsample),
        "max_samples": cfg.max_samples,
        "seed": cfg.seed,
        "tonic": version("tonic"),  # its readers define the raw events
        "source": fingerprint(spec, paths),
    }


def choose_samples(available: int, max_samples: int, seed: int, split: str) -> np.ndarray:
    if not max_samples or max_samples >= available:
        return np.arange(available)
    rng = np.random.default_rng([seed, _SUBSET_STREAM, _SPLIT_CODE[split]])
    return np.sort(rng.choice(available, max_samples, replace=False))


def prepare(cfg: DataConfig, log: Log = print, progress_every: int = 1000) -> Prepared:
    """The cache entry for ``cfg``, built when missing or unusable; logs progress and a report per split."""
    start = time.perf_counter()
    spec = source_spec(cfg)
    data_dir = data_folder(cfg)
    paths = check_files(spec, data_dir, log)
    # Built up front: an impossible combination (denoise on SHD) fails before any cache work.
    preprocessor = SamplePreprocessor(spec, Preprocessing(cfg.time_steps, cfg.dt_ms, cfg.denoise_ms, cfg.downsample))
    params = cache_params(cfg, spec, paths)
    key = cache.cache_key(params)
    cache_dir = cache_folder(cfg, data_dir)
    path = cache.entry_path(cache_dir, spec.name, key)
    entry = _read_if_usable(path, key, log)
    binned, built = 0, False
    if entry is None:
        cache.ensure_folder(cache_dir)
        with cache.build_lock(path, log) as locked:
            entry = _read_if_usable(path, key, log=None)  # built by the process we waited for?
            if entry is None:
                if locked:
                    cache.remove_stale_temporaries(path)
                log(f"cache: building {path}")
                try:
                    binned = _build(cfg, spec, preprocessor, data_dir, path, key, params, log, progress_every)
                except OSError as err:  # reading errors are DataErrors by now; this is the write side
                    raise CacheError(f"writing the cache entry {path} failed: {err}") from err
                built = True
                try:
                    entry = cache.read_entry(path, key)
                except cache.CacheEntryInvalid as err:
                    raise CacheError(f"the cache entry just written cannot be read back: {path}: {err}") from err
    if not built:
        log(f"cache: using {path}")
    reports = {name: split_report(spec.name, name, entry.splits[name].count, entry.capacity,
                                  entry.splits[name].channels, cfg.dt_ms, entry.splits[name].stats,
                                  notes=[text for _, text in entry.splits[name].notes])
               for name in SPLITS}
    for report in reports.values():
        report["cache_file"] = str(entry.path)
        log(format_report(report))
    return Prepared(entry, built, binned, reports, time.perf_counter() - start)


def _read_if_usable(path: Path, key: str, log: Log | None) -> cache.Entry | None:
    if not path.exists():
        return None
    try:
        return cache.read_entry(path, key)
    except cache.CacheEntryInvalid as err:
        if log is not None:
            log(f"cache: {path} is unusable ({err}); rebuilding it")
        return None


def _build(cfg: DataConfig, spec: SourceSpec, prep: SamplePreprocessor, data_dir: Path, path: Path, key: str,
           params: dict, log: Log, progress_every: int) -> int:
    done = 0
    peak = 0
    with cache.EntryWriter(path, key, params) as writer:
        for split in SPLITS:
            ds = open_split(spec, data_dir, split)
            try:
                indices = choose_samples(len(ds), cfg.max_samples, cfg.seed, split)
                out = writer.split(split, len(indices), cfg.time_steps, prep.channels, spec.classes)
                t0 = time.perf_counter()
                empty = 0
                for j, index in enumerate(indices):
                    events, label = read_sample(spec, ds, int(index))
                    if not len(events):
                        empty += 1
                        out.note(f"{sample_origin(spec, ds, int(index))} (dataset {spec.name}): empty recording "
                                 f"(0 events), kept as an empty sample")
                    bins, ids, removed = prep(events)
                    rng = np.random.default_rng([cfg.seed, _CAP_STREAM, _SPLIT_CODE[split], int(index)])
                    s = bin_sample(bins, ids, cfg.time_steps, prep.channels, cfg.input_capacity, rng)
                    out.add(s.ids, s.count, label, int(index), events=len(events), denoised=removed,
                            outside=s.outside, duplicates=s.duplicates, capped=s.capped, peak=s.peak,
                            empty=int(not len(events)))
                    peak = max(peak, s.peak)
                    if progress_every and (j + 1) % progress_every == 0 and j + 1 < len(indices):
                        rate = (j + 1) / max(time.perf_counter() - t0, 1e-9)
                        log(f"prepare {spec.name} {split}: {j + 1}/{len(indices)} samples ({rate:.0f} samples/s)")
            finally:
                close_split(ds)
            out.close()
            if empty:
                first = out.notes[0][1]
                log(f"note: {spec.name} {split}: {empty} empty recording(s), kept as empty samples "
                    f"(counted in the report as empty_recordings), e.g. {first}")
            done += len(indices)
        writer.finish(cfg.input_capacity or max(peak, 1))
    return done
