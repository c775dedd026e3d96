"""How fast the data path is: preparing from the raw files vs loading from the cache."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from snn_runner.config import DataConfig
from snn_runner.data import cache
from snn_runner.data.pipeline import cache_folder, data_folder, prepare
from snn_runner.data.splits import load_splits


def bench_loader(cfg: DataConfig, log: Callable[[str], None] = print, repeats: int = 3) -> dict:
    """Time one cold prepare and ``repeats`` cache loads; returns and logs samples/s for both.

    The prepare runs into a fresh folder inside the configured cache folder,
    so it really bins everything and is measured on the same file system the
    tasks will read from; the folder is removed afterwards. A load is what a
    training task pays: file checks, reading the entry, padding to EventSets.
    """
    import tonic.datasets  # noqa: F401 -- a one-off import (~0.6 s) is not a per-sample cost
    import tonic.transforms  # noqa: F401

    base = cache_folder(cfg, data_folder(cfg))
    cache.ensure_folder(base)
    scratch = Path(tempfile.mkdtemp(prefix=".bench-", dir=base))
    quiet = lambda _line: None  # noqa: E731 -- the per-split reports would bury the figures
    try:
        cold = dataclasses.replace(cfg, cache_dir=str(scratch))
        t0 = time.perf_counter()
        prepared = prepare(cold, quiet, progress_every=0)
        prepare_s = time.perf_counter() - t0
        samples = sum(len(s) for s in prepared.entry.splits.values())
        reads = []
        for _ in range(max(repeats, 1)):
            t0 = time.perf_counter()
            load_splits(cold, quiet)
            reads.append(time.perf_counter() - t0)
        size = prepared.path.stat().st_size
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    read_s = min(reads)
    result = {
        "dataset": cfg.dataset,
        "samples": samples,
        "prepare_seconds": prepare_s,
        "prepare_samples_per_s": samples / prepare_s,
        "read_seconds": read_s,
        "read_samples_per_s": samples / read_s,
        "cache_bytes": size,
    }
    log(f"bench-loader {cfg.dataset}: {samples} samples (train + test), cache entry {size / 1e6:.2f} MB")
    log(f"  prepare (read files, preprocess, bin, write cache): {prepare_s:.3f} s, "
        f"{result['prepare_samples_per_s']:.0f} samples/s")
    log(f"  load from cache (best of {len(reads)}): {read_s:.3f} s, {result['read_samples_per_s']:.0f} samples/s")
    return result
