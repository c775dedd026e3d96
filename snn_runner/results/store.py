"""HDF5 result files: one per run, complete or absent.

The file is written under a temporary name in the destination folder and
renamed to its final name only after everything was written and closed, so a
crash, a kill or an exception never leaves a half file under the final name.

Layout (schema version 1):
    /                 attrs: schema_version, package_version, git_revision,
                             host, created_utc, slurm_job_id, slurm_array_job_id,
                             slurm_array_task_id, implementation, config_json
    /metrics/         one row per epoch:
        epoch [E] int, train_loss [E], train_accuracy [E], test_loss [E],
        test_accuracy [E], epoch_seconds [E],
        spike_rate [E, L]  (spikes per neuron per time step, per layer, train),
        dropped_spikes [E, L] int (spikes dropped for lack of capacity, train)
    /timing/          step_seconds [S] (every training step after the first),
                      attrs: compile_seconds (the first step: tracing + graph build),
                             mode (how the graph was compiled)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import snn_runner

SCHEMA_VERSION = 1
TMP_SUFFIX = ".tmp"

METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch_seconds")
LAYER_COLUMNS = ("spike_rate", "dropped_spikes")


def git_revision() -> str:
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def provenance() -> dict[str, str]:
    env = os.environ
    return {
        "schema_version": str(SCHEMA_VERSION),
        "package_version": snn_runner.__version__,
        "git_revision": git_revision(),
        "host": socket.gethostname(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "slurm_job_id": env.get("SLURM_JOB_ID", ""),
        "slurm_array_job_id": env.get("SLURM_ARRAY_JOB_ID", ""),
        "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID", ""),
    }


class ResultWriter:
    """Context manager writing one result file atomically.

    Use ``add_epoch`` once per epoch and ``set_timing`` once; leaving the
    ``with`` block normally publishes the file, an exception deletes it.
    """

    def __init__(self, path: str | os.PathLike, config: dict[str, Any], attrs: dict[str, str] | None = None):
        self.path = Path(path)
        self.tmp_path = self.path.with_name(f".{self.path.name}.{os.getpid()}{TMP_SUFFIX}")
        self._config = config
        self._attrs = attrs or {}
        self._file: h5py.File | None = None

    def __enter__(self) -> "ResultWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.tmp_path, "w")
        root = self._file.attrs
        root["schema_version"] = SCHEMA_VERSION
        for key, value in {**provenance(), **self._attrs}.items():
            if key != "schema_version":
                root[key] = value
        root["config_json"] = json.dumps(self._config, sort_keys=True)
        self._file.create_group("metrics")
        self._file.create_group("timing")
        return self

    def add_epoch(self, row: dict[str, Any]) -> None:
        group = self._file["metrics"]
        for key in METRIC_COLUMNS + LAYER_COLUMNS:
            value = np.asarray(row[key])
            if key not in group:
                dtype = np.int64 if key in ("epoch", "dropped_spikes") else np.float64
                group.create_dataset(key, shape=(0,) + value.shape, maxshape=(None,) + value.shape, dtype=dtype)
            ds = group[key]
            ds.resize(ds.shape[0] + 1, axis=0)
            ds[-1] = value

    def set_timing(self, step_seconds: list[float], compile_seconds: float, mode: str) -> None:
        group = self._file["timing"]
        group.create_dataset("step_seconds", data=np.asarray(step_seconds, np.float64))
        group.attrs["compile_seconds"] = float(compile_seconds)
        group.attrs["mode"] = mode

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is None:
            os.replace(self.tmp_path, self.path)
        else:
            self.tmp_path.unlink(missing_ok=True)


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Load a result file into plain Python/NumPy values."""
    with h5py.File(path, "r") as f:
        out = {"attrs": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}}
        out["config"] = json.loads(out["attrs"]["config_json"])
        out["metrics"] = {k: f["metrics"][k][()] for k in f["metrics"]}
        out["timing"] = {k: f["timing"][k][()] for k in f["timing"]}
        out["timing"].update(dict(f["timing"].attrs))
    return out
