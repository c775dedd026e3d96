"""Per-split summary of what preprocessing did to the data.

The dict (``EventSet.report``) is flat and JSON-friendly so the runner can
store it as it is. Keys:

- ``dataset``, ``split``, ``samples``, ``time_steps``, ``dt_ms``, ``channels``,
  ``capacity`` (K_in);
- ``events``: events read from the recordings (0 when unknown, e.g. randman);
- ``removed_by_denoise``, ``outside_window`` (events at or after T*dt),
  ``duplicates_merged`` (repeats of a (bin, id) pair);
- ``events_per_bin_mean`` / ``events_per_bin_max``: distinct ids per bin
  before the K_in cap (what the capacity has to hold);
- ``kept_per_bin_mean``: ids per bin actually delivered;
- ``dropped_by_cap`` and ``dropped_fraction`` (of the distinct per-bin ids);
- ``empty_recordings``: recordings without a single event, kept as empty
  samples (a non-fatal note; the source files are named in ``notes``);
- ``notes``: list of one-line non-fatal findings, each naming the file and the
  dataset (at most ``cache.MAX_NOTES`` per split; the counters hold the totals);
- ``cache_file`` when the split came from the cache.

Malformed files are not notes: they stop the run with a ``DatasetCorruptError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def split_report(dataset: str, split: str, count: np.ndarray, capacity: int, channels: int,
                 dt_ms: float | None = None, stats: dict[str, np.ndarray] | None = None,
                 dropped: int | None = None, notes: list[str] | None = None) -> dict[str, Any]:
    """Report of one split from its ``count[N, T]`` and optional per-sample counters.

    ``stats`` (per-sample arrays named as in ``cache.STATS``) supplies the
    pre-cap figures; without it they are derived from ``count`` and ``dropped``.
    """
    n, t = count.shape
    kept = int(count.sum())

    def total(name: str) -> int:
        return int(stats[name].sum()) if stats is not None else 0

    capped = total("capped") if stats is not None else int(dropped or 0)
    distinct = kept + capped
    if stats is not None and n:
        peak = int(stats["peak"].max())
    else:
        peak = int(count.max()) if count.size else 0
    bins = max(n * t, 1)
    return {
        "dataset": dataset,
        "split": split,
        "samples": int(n),
        "time_steps": int(t),
        "dt_ms": dt_ms,
        "channels": int(channels),
        "capacity": int(capacity),
        "events": total("events"),
        "removed_by_denoise": total("denoised"),
        "outside_window": total("outside"),
        "duplicates_merged": total("duplicates"),
        "events_per_bin_mean": distinct / bins,
        "events_per_bin_max": peak,
        "kept_per_bin_mean": kept / bins,
        "dropped_by_cap": capped,
        "dropped_fraction": capped / distinct if distinct else 0.0,
        "empty_recordings": total("empty") if stats is not None and "empty" in stats else 0,
        "notes": list(notes or []),
    }


def format_report(report: dict[str, Any]) -> str:
    """One log line."""
    line = (f"{report['dataset']} {report['split']}: {report['samples']} samples, "
            f"{report['events_per_bin_mean']:.2f} ids/bin mean (max {report['events_per_bin_max']}), "
            f"K_in {report['capacity']}, dropped by cap {report['dropped_by_cap']} "
            f"({100 * report['dropped_fraction']:.2f}%)")
    if report["events"]:
        line += (f", {report['events']} events read: {report['outside_window']} after T*dt, "
                 f"{report['duplicates_merged']} duplicates merged")
        if report["removed_by_denoise"]:
            line += f", {report['removed_by_denoise']} removed by denoise"
    if report.get("empty_recordings"):
        line += f", {report['empty_recordings']} empty recordings"
    return line
