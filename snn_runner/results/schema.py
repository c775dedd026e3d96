"""What a complete result file must contain, checked without trusting it."""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from snn_runner.results.store import LAYER_COLUMNS, METRIC_COLUMNS, SCHEMA_VERSION

ROOT_ATTRS = ("schema_version", "package_version", "git_revision", "host", "created_utc", "config_json",
              "kind", "complete")
REQUIRED = {
    "train": {"metrics": METRIC_COLUMNS + LAYER_COLUMNS, "timing": ("step_seconds",), "spikes": ()},
    "bench": {"bench": ("step_ms_all", "forward_ms_all")},
}


def problems(path: str | os.PathLike) -> list[str]:
    """Everything wrong with a result file; empty when it is complete and valid."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            found = [f"missing root attribute '{a}'" for a in ROOT_ATTRS if a not in f.attrs]
            if found:
                return found
            if int(f.attrs["schema_version"]) != SCHEMA_VERSION:
                return [f"schema version {f.attrs['schema_version']} (this version reads {SCHEMA_VERSION})"]
            kind = f.attrs["kind"]
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind not in REQUIRED:
                return [f"unknown kind '{kind}'"]
            for group, keys in REQUIRED[kind].items():
                if group not in f:
                    found.append(f"missing group '/{group}'")
                    continue
                found += [f"missing dataset '/{group}/{k}'" for k in keys if k not in f[group]]
            if kind == "train" and not found:
                epochs = {len(f["metrics"][k]) for k in METRIC_COLUMNS + LAYER_COLUMNS}
                if len(epochs) != 1:
                    found.append(f"metrics have different lengths {sorted(epochs)}")
            return found
    except FileNotFoundError:
        return [f"no such file: {path}"]
    except OSError as err:
        return [f"not a readable HDF5 file ({err})"]


def is_complete(path: str | os.PathLike) -> bool:
    return Path(path).is_file() and not problems(path)
