"""Merge many result files into one table (HDF5 or CSV).

Partial files (temporary names), corrupt files and files that fail the schema
are reported and left out; they never stop the collection.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from snn_runner.results.schema import problems
from snn_runner.files import TMP_SUFFIX, atomic_write
from snn_runner.results.store import read_result, result_file

COLUMNS = (
    "file", "kind", "job_name", "task_index", "task_id", "implementation", "dataset", "network", "sizes",
    "time_steps", "batch_size", "max_activity", "epochs", "final_test_accuracy", "final_test_loss", "final_train_loss", "spike_rate",
    "dropped_spikes", "step_ms_median", "forward_ms_median", "compile_s", "peak_rss_mb", "host",
    "slurm_job_id", "slurm_array_task_id", "git_revision",
)


@dataclass
class Collection:
    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)  # per-epoch curves and spikes of train rows
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def _row(path: Path, rec: dict[str, Any]) -> dict[str, Any]:
    a, cfg = rec["attrs"], rec["config"]
    row = {c: "" for c in COLUMNS}
    row.update(file=str(path), kind=a["kind"], job_name=a.get("job_name", ""), task_index=a.get("task_index", -1),
               task_id=a.get("task_id", ""), implementation=a.get("implementation", ""),
               dataset=cfg["data"]["dataset"], time_steps=cfg["data"]["time_steps"],
               batch_size=cfg["train"]["batch_size"], max_activity=cfg["model"]["max_activity"], host=a.get("host", ""),
               slurm_job_id=a.get("slurm_job_id", ""), slurm_array_task_id=a.get("slurm_array_task_id", ""),
               git_revision=a.get("git_revision", ""))
    if a["kind"] == "train":
        m, t = rec["metrics"], rec["timing"]
        row.update(epochs=len(m["epoch"]), final_test_accuracy=float(m["test_accuracy"][-1]),
                   final_test_loss=float(m["test_loss"][-1]), final_train_loss=float(m["train_loss"][-1]),
                   spike_rate=json.dumps([round(float(x), 6) for x in m["spike_rate"][-1]]),
                   dropped_spikes=int(np.sum(m["dropped_spikes"][-1])),
                   step_ms_median=float(np.median(t["step_seconds"]) * 1e3) if len(t["step_seconds"]) else "",
                   compile_s=float(t["compile_seconds"]),
                   sizes=json.dumps([int(x) for x in a.get("sizes", [])]))
    else:
        b = rec["bench"]
        row.update(implementation=b["implementation"], network=b["network"],
                   sizes=json.dumps([int(x) for x in b["sizes"]]),
                   max_activity=float(b["max_activity"]), step_ms_median=float(b["step_ms_median"]),
                   forward_ms_median=float(b["forward_ms_median"]), compile_s=float(b["compile_s"]),
                   peak_rss_mb=float(b["peak_rss_mb"]),
                   spike_rate=json.dumps([round(float(x), 6) for x in b["spike_rate_per_layer"]]),
                   dropped_spikes=float(np.sum(b["dropped_spikes"])))
    return row


def collect(folder: str | os.PathLike) -> Collection:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    out = Collection()
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        if path.name.endswith(TMP_SUFFIX):
            out.skipped.append((str(path), "partial (temporary file of a run that did not finish)"))
            continue
        if path.suffix != ".h5" or path.name.startswith("."):
            continue
        found = problems(path)
        if found:
            out.skipped.append((str(path), "; ".join(found)))
            continue
        rec = read_result(path)
        out.rows.append(_row(path, rec))
        if rec["attrs"]["kind"] == "train":
            out.runs.append({"metrics": rec["metrics"], "spikes": rec.get("spikes", {})})
        else:
            out.runs.append({})
    return out


def write_table(coll: Collection, target: str | os.PathLike) -> Path:
    target = Path(target)
    if target.suffix == ".csv":
        with atomic_write(target) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(coll.rows)
        return target
    if target.suffix not in (".h5", ".hdf5"):
        raise ValueError(f"{target}: the table must end in .h5 or .csv")
    with result_file(target, {}, {"kind": "table", "rows": len(coll.rows)}) as f:
        table = f.create_group("table")
        for col in COLUMNS:
            values = [r[col] for r in coll.rows]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and values:
                table.create_dataset(col, data=np.asarray(values, np.float64))
            else:
                table.create_dataset(col, data=np.asarray([str(v) for v in values], dtype=object),
                                     dtype=h5py.string_dtype())
        runs = f.create_group("runs")
        for i, run in enumerate(coll.runs):
            g = runs.create_group(str(i))
            for section in ("metrics", "spikes"):
                for key, value in run.get(section, {}).items():
                    g.create_dataset(f"{section}/{key}", data=value)
        f.create_dataset("skipped", data=np.asarray([f"{p}: {r}" for p, r in coll.skipped], dtype=object),
                         dtype=h5py.string_dtype())
    return target


def read_table(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows and per-run curves of a table written by ``write_table`` (HDF5 only)."""
    with h5py.File(path, "r") as f:
        if "table" not in f:
            raise ValueError(f"{path}: not a table written by `snn-runner collect` (no /table group)")
        cols = {k: f["table"][k][()] for k in f["table"]}
        n = int(f.attrs["rows"])
        rows = []
        for i in range(n):
            row = {}
            for k, v in cols.items():
                x = v[i]
                row[k] = x.decode() if isinstance(x, bytes) else (float(x) if isinstance(x, np.floating) else x)
            rows.append(row)
        runs = []
        for i in range(n):
            g = f["runs"][str(i)]
            runs.append({s: {k: g[s][k][()] for k in g[s]} if s in g else {} for s in ("metrics", "spikes")})
    return rows, runs
