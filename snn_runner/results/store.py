"""HDF5 result files: one per run, complete or absent.

The file goes through the atomic writer (snn_runner.files), so a crash, a
kill or an exception never leaves a half file under the final name.

The layout (schema version 1: root attributes, /metrics, /timing, /spikes for
training runs, /bench for benchmark cases) is documented in the README; what a
complete file must hold is checked by ``snn_runner.results.schema``.
"""

from __future__ import annotations

import contextlib
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
from snn_runner.files import atomic_h5
from snn_runner.results.network import SavedNetwork, write_network

SCHEMA_VERSION = 2  # 2: training results keep the trained network under /model (and /model_best)
READABLE_VERSIONS = (1, 2)

METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch_seconds")
LAYER_COLUMNS = ("spike_rate", "dropped_spikes")
VALIDATION_COLUMNS = ("validation_loss", "validation_accuracy")  # only with a validation split
# [E, L] columns that older files lack: synops = synaptic operations per sample and weight matrix
# (column 0: input events x n_1; column l: hidden layer l's transmitted spikes x n_{l+1})
OPTIONAL_LAYER_COLUMNS = ("synops",)


def git_revision() -> str:
    # Images carry no .git: their build passes the revision in the environment.
    if os.environ.get("SNN_RUNNER_GIT_REVISION"):
        return os.environ["SNN_RUNNER_GIT_REVISION"]
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


@contextlib.contextmanager
def result_file(path: str | os.PathLike, config: dict[str, Any], attrs: dict[str, Any] | None = None):
    """Yield an open HDF5 file that appears under ``path`` only if the block succeeds.

    Root attributes (provenance, the resolved config as JSON, extra attrs) are
    written first, ``complete`` last.
    """
    expected: list[str] = []

    def verify(back: h5py.File) -> None:
        if not back.attrs.get("complete", False):
            raise ValueError("no 'complete' attribute")
        json.loads(back.attrs["config_json"])
        missing = [name for name in expected if name not in back]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")

    with atomic_h5(path, verify=verify) as f:
        for key, value in {**provenance(), **(attrs or {})}.items():
            f.attrs[key] = value
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["config_json"] = json.dumps(config, sort_keys=True)
        yield f
        f.attrs["complete"] = True  # written last: a file without it was cut short
        f.visit(expected.append)  # every group and dataset must be there when read back


def write_train_result(path, config: dict[str, Any], attrs: dict[str, Any], rows: list[dict[str, Any]],
                       step_seconds: list[float], compile_seconds: float, mode: str,
                       spikes: dict[str, np.ndarray] | None = None, network: SavedNetwork | None = None,
                       best: SavedNetwork | None = None) -> None:
    """The record of a training run: per-epoch metrics, timings, recorded spikes and the trained network."""
    with result_file(path, config, {**attrs, "kind": "train"}) as f:
        if network is not None:
            write_network(f.create_group("model"), network)
        if best is not None:
            write_network(f.create_group("model_best"), best)
        metrics = f.create_group("metrics")
        optional = tuple(k for k in VALIDATION_COLUMNS + OPTIONAL_LAYER_COLUMNS if rows and k in rows[0])
        for key in METRIC_COLUMNS + LAYER_COLUMNS + optional:
            dtype = np.int64 if key in ("epoch", "dropped_spikes") else np.float64
            metrics.create_dataset(key, data=np.asarray([r[key] for r in rows], dtype))
        timing = f.create_group("timing")
        timing.create_dataset("step_seconds", data=np.asarray(step_seconds, np.float64))
        timing.attrs["compile_seconds"] = float(compile_seconds)
        timing.attrs["mode"] = mode
        group = f.create_group("spikes")
        for key, value in (spikes or {}).items():
            group.create_dataset(key, data=value, compression="gzip")


def write_bench_result(path, config: dict[str, Any], attrs: dict[str, Any], record: dict[str, Any]) -> None:
    """The record of one benchmark case (see snn_runner.bench.measure.CaseResult)."""
    with result_file(path, config, {**attrs, "kind": "bench"}) as f:
        group = f.create_group("bench")
        for key, value in record.items():
            if isinstance(value, list) and key.endswith("_all"):
                group.create_dataset(key, data=np.asarray(value, np.float64))
            elif isinstance(value, list):
                group.attrs[key] = np.asarray(value)
            elif value is not None:
                group.attrs[key] = value


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Load a result file into plain Python/NumPy values (groups -> dicts, attrs merged in)."""
    with h5py.File(path, "r") as f:
        out = {"attrs": {k: _plain(v) for k, v in f.attrs.items()}}
        out["config"] = json.loads(out["attrs"]["config_json"])
        for name, group in f.items():
            # nested groups (the networks under /model) are read by results.network.read_network
            out[name] = {k: group[k][()] for k in group if isinstance(group[k], h5py.Dataset)}
            out[name].update({k: _plain(v) for k, v in group.attrs.items()})
    return out


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
