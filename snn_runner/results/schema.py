"""What a complete result file must contain, checked without trusting it.

``problems(path)`` opens the file read-only and checks every value that
``read_result``, ``collect`` and ``report`` use: attribute kinds, dataset
dtypes and shapes, finiteness, the epoch numbering and the config JSON. It
never raises for a bad file: everything wrong comes back as one short reason
per problem. ``describe(path)`` says what a file that is not a result file is
(a folder, an empty file, a CSV, a checkpoint, a collected table, a
temporary), so the commands can say so in one line.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

from snn_runner.results.network import NoNetworkError, read_network
from snn_runner.results.store import (
    LAYER_COLUMNS,
    METRIC_COLUMNS,
    OPTIONAL_LAYER_COLUMNS,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    VALIDATION_COLUMNS,
)

NETWORK_GROUPS = ("model", "model_best")  # schema version 2 train files
ROOT_ATTRS = ("schema_version", "package_version", "git_revision", "host", "created_utc", "config_json",
              "kind", "complete")
REQUIRED = {
    "train": {"metrics": METRIC_COLUMNS + LAYER_COLUMNS, "timing": ("step_seconds",), "spikes": ()},
    "bench": {"bench": ("step_ms_all", "forward_ms_all")},
}
STRING_ATTRS = ("package_version", "git_revision", "host", "created_utc", "slurm_job_id", "slurm_array_job_id",
                "slurm_array_task_id", "implementation", "backend", "job_name", "job_file", "task_id")
INT_ATTRS = ("task_index", "resumes", "best_epoch")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:-(?P<token>[0-9a-f]+))?(?:@(?P<host>[^/]*))?\.tmp$")
# the config keys that collect puts in the table, with the kinds they must have
CONFIG_KEYS = {("data", "dataset"): str, ("data", "time_steps"): int, ("train", "batch_size"): int,
               ("model", "max_activity"): float}


def _text(value) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return (_is_int(value) or isinstance(value, (float, np.floating))) and math.isfinite(float(value))


def _int_vector(value, name: str, min_len: int = 1) -> list[str]:
    arr = np.asarray(value) if isinstance(value, np.ndarray) else None
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in "iu" or len(arr) < min_len:
        return [f"attribute '{name}' must be a 1-D integer array of length >= {min_len}"]
    if (arr < 0).any():
        return [f"attribute '{name}' has negative entries"]
    return []


def _real_vector(value, name: str, length: int | None) -> list[str]:
    if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype.kind not in "iuf":
        return [f"'{name}' must be a 1-D numeric array"]
    if length is not None and len(value) != length:
        return [f"'{name}' has length {len(value)}, expected {length} (one per layer)"]
    if not np.isfinite(value).all() or (value < 0).any():
        return [f"'{name}' has non-finite or negative entries"]
    return []


def _check_config(raw) -> list[str]:
    text = _text(raw)
    if text is None:
        return ["attribute 'config_json' is not a string"]
    try:
        cfg = json.loads(text)
    except ValueError as err:
        return [f"attribute 'config_json' is not valid JSON ({err})"]
    if not isinstance(cfg, dict):
        return [f"attribute 'config_json' is a JSON {type(cfg).__name__}, expected an object"]
    found = [f"config_json has no '{s}' section (an object)" for s in ("model", "data", "train")
             if not isinstance(cfg.get(s), dict)]
    if found:
        return found
    for (section, key), kind in CONFIG_KEYS.items():
        value = cfg[section].get(key)
        ok = isinstance(value, str) if kind is str else (
            isinstance(value, int) and not isinstance(value, bool) if kind is int else
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
        if not ok:
            found.append(f"config_json {section}.{key} is {value!r}, expected {'a ' + kind.__name__}")
    return found


def _dataset(f, group: str, key: str, found: list[str]):
    import h5py

    obj = f[group].get(key)
    if not isinstance(obj, h5py.Dataset):
        found.append(f"'/{group}/{key}' is not a dataset")
        return None
    try:
        value = obj[()]
    except Exception as err:  # noqa: BLE001 - a corrupt chunk, an unreadable type
        found.append(f"'/{group}/{key}' cannot be read ({_first_line(err)})")
        return None
    if not isinstance(value, np.ndarray):
        found.append(f"'/{group}/{key}' is a scalar, expected an array")
        return None
    return value


def _check_train(f, attrs: dict, found: list[str]) -> None:
    sizes = attrs.get("sizes")
    if sizes is None:
        found.append("missing root attribute 'sizes'")
        layers = None
    else:
        bad = _int_vector(sizes, "sizes", 2)
        found += bad
        layers = None if bad else len(sizes) - 1
    if "capacities" in attrs:
        found += _int_vector(attrs["capacities"], "capacities", 1)
    if "data_report_json" in attrs:
        try:
            if not isinstance(json.loads(_text(attrs["data_report_json"]) or "x"), dict):
                raise ValueError
        except ValueError:
            found.append("attribute 'data_report_json' is not a JSON object")

    m = {k: _dataset(f, "metrics", k, found) for k in METRIC_COLUMNS + LAYER_COLUMNS}
    optional = [k for k in VALIDATION_COLUMNS if k in f["metrics"]]
    m.update({k: _dataset(f, "metrics", k, found) for k in optional})
    layer_optional = [k for k in OPTIONAL_LAYER_COLUMNS if k in f["metrics"]]
    m.update({k: _dataset(f, "metrics", k, found) for k in layer_optional})
    epoch = m["epoch"]
    n = None
    if epoch is not None:
        if epoch.ndim != 1 or epoch.dtype.kind not in "iu":
            found.append(f"'/metrics/epoch' must be 1-D integers (is {epoch.dtype} {list(epoch.shape)})")
        elif len(epoch) == 0:
            found.append("'/metrics/epoch' is empty: the run has no finished epoch")
        elif not np.array_equal(epoch, np.arange(1, len(epoch) + 1)):
            found.append(f"'/metrics/epoch' is not 1..{len(epoch)}")
        else:
            n = len(epoch)
    for key in (*METRIC_COLUMNS[1:], *optional):
        v = m[key]
        if v is None:
            continue
        if v.ndim != 1 or v.dtype.kind not in "iuf":
            found.append(f"'/metrics/{key}' must be 1-D numbers (is {v.dtype} {list(v.shape)})")
        elif n is not None and len(v) != n:
            found.append(f"'/metrics/{key}' has {len(v)} entries, '/metrics/epoch' has {n}")
        elif not np.isfinite(v).all():
            found.append(f"'/metrics/{key}' has NaN or infinite values")
        elif key.endswith("accuracy") and ((v < 0) | (v > 1)).any():
            found.append(f"'/metrics/{key}' has values outside [0, 1]")
        elif key == "epoch_seconds" and (v < 0).any():
            found.append("'/metrics/epoch_seconds' has negative values")
    for key in (*LAYER_COLUMNS, *layer_optional):
        v = m[key]
        if v is None:
            continue
        want = f"[{n if n is not None else 'E'}, {layers if layers is not None else 'L'}]"
        if v.ndim != 2 or v.dtype.kind not in "iuf" or v.shape[1] < 1:
            found.append(f"'/metrics/{key}' must be numbers of shape {want} (is {v.dtype} {list(v.shape)})")
        elif (n is not None and v.shape[0] != n) or (layers is not None and v.shape[1] != layers):
            found.append(f"'/metrics/{key}' has shape {list(v.shape)}, expected {want} (epochs, layers)")
        elif not np.isfinite(v).all() or (v < 0).any():
            found.append(f"'/metrics/{key}' has NaN, infinite or negative values")
    extra = sorted(set(f["metrics"]) - set(METRIC_COLUMNS + LAYER_COLUMNS + VALIDATION_COLUMNS
                                           + OPTIONAL_LAYER_COLUMNS))
    found += [f"unexpected entry '/metrics/{k}'" for k in extra]

    steps = _dataset(f, "timing", "step_seconds", found)
    if steps is not None and (steps.ndim != 1 or steps.dtype.kind not in "iuf"
                              or not np.isfinite(steps).all() or (steps < 0).any()):
        found.append("'/timing/step_seconds' must be 1-D finite non-negative seconds")
    t_attrs = dict(f["timing"].attrs)
    if not _is_real(t_attrs.get("compile_seconds")) or float(t_attrs["compile_seconds"]) < 0:
        found.append("'/timing' attribute 'compile_seconds' must be a finite number >= 0")
    if "mode" in t_attrs and _text(t_attrs["mode"]) is None:
        found.append("'/timing' attribute 'mode' must be a string")
    found += [f"unexpected entry '/timing/{k}'" for k in sorted(set(f["timing"]) - {"step_seconds"})]
    _check_spikes(f, layers, found)


def _check_spikes(f, layers: int | None, found: list[str]) -> None:
    keys = set(f["spikes"])
    if not keys:
        return  # no recorded samples
    names = ["input"] + sorted({k[:-4] for k in keys if re.fullmatch(r"layer\d+_ids", k)}
                               | {k[:-6] for k in keys if re.fullmatch(r"layer\d+_count", k)})
    expected = {"labels", "sample_index"} | {f"{x}_{s}" for x in names for s in ("ids", "count")}
    found += [f"missing dataset '/spikes/{k}'" for k in sorted(expected - keys)]
    found += [f"unexpected entry '/spikes/{k}'" for k in sorted(keys - expected)]
    if expected - keys or keys - expected:
        return
    if layers is not None and len(names) - 1 != layers:
        found.append(f"'/spikes' has {len(names) - 1} layers, the network has {layers}")
    v = {k: _dataset(f, "spikes", k, found) for k in sorted(expected)}
    if any(x is None for x in v.values()):
        return
    if any(x.dtype.kind not in "iu" for x in v.values()):
        found.append("'/spikes' datasets must be integers")
        return
    n = v["labels"].shape[0] if v["labels"].ndim == 1 else -1
    if n < 1 or v["sample_index"].shape != (n,):
        found.append("'/spikes/labels' and '/spikes/sample_index' must be 1-D of the same length N >= 1")
        return
    for x in names:
        ids, count = v[f"{x}_ids"], v[f"{x}_count"]
        if ids.ndim != 3 or count.ndim != 2 or ids.shape[:2] != count.shape or ids.shape[0] != n:
            found.append(f"'/spikes/{x}_ids' must be [N, T, K] and '/spikes/{x}_count' [N, T] with N = {n} "
                         f"(are {list(ids.shape)} and {list(count.shape)})")
        elif (count < 0).any() or (count > ids.shape[2]).any():
            found.append(f"'/spikes/{x}_count' has counts outside 0..{ids.shape[2]}")


def _check_bench(f, attrs: dict, found: list[str]) -> None:
    for key in ("step_ms_all", "forward_ms_all"):
        v = _dataset(f, "bench", key, found)
        if v is None:
            continue
        if v.ndim != 1 or v.dtype.kind not in "iuf" or len(v) == 0:
            found.append(f"'/bench/{key}' must be 1-D numbers, not empty (is {v.dtype} {list(v.shape)})")
        elif not np.isfinite(v).all() or (v < 0).any():
            found.append(f"'/bench/{key}' has NaN, infinite or negative values")
    found += [f"unexpected entry '/bench/{k}'" for k in sorted(set(f["bench"]) - {"step_ms_all", "forward_ms_all"})]
    b = {k: _plain(v) for k, v in f["bench"].attrs.items()}
    for key in ("implementation", "network"):
        if _text(b.get(key)) is None:
            found.append(f"'/bench' attribute '{key}' must be a string")
    for key in ("max_activity", "step_ms_median", "forward_ms_median", "compile_s", "peak_rss_mb"):
        if not _is_real(b.get(key)) or float(b[key]) < 0:
            found.append(f"'/bench' attribute '{key}' must be a finite number >= 0")
    for key in ("time_steps", "batch_size", "input_events"):
        if key in b and not _is_int(b[key]):
            found.append(f"'/bench' attribute '{key}' must be an integer")
    if "sizes" not in b:
        found.append("missing '/bench' attribute 'sizes'")
        return
    bad = _int_vector(b["sizes"], "/bench sizes", 2)
    found += bad
    layers = None if bad else len(b["sizes"]) - 1
    for key in ("spike_rate_per_layer", "dropped_spikes"):
        if key not in b:
            found.append(f"missing '/bench' attribute '{key}'")
        else:
            found += [f"'/bench' attribute {p}" for p in _real_vector(b[key], key, layers)]
    # SynOps came later: optional, but checked when present
    if "synops_per_sample" in b:
        found += [f"'/bench' attribute {p}" for p in _real_vector(b["synops_per_sample"], "synops_per_sample", layers)]
    if "synops_total" in b and (not _is_real(b["synops_total"]) or float(b["synops_total"]) < 0):
        found.append("'/bench' attribute 'synops_total' must be a finite number >= 0")


def _plain(value):
    if isinstance(value, np.generic) and not isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return value


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def describe(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a result file to open at all (folder, empty, not HDF5, …), or None."""
    path = Path(path)
    if TMP_RE.match(path.name):
        return ("is a temporary file of a write in progress or cut short (the writer renames it when done); "
                "not a result file")
    if path.is_dir():
        return "is a folder, not a result file (`snn-runner collect FOLDER -o TABLE.h5` reads a folder)"
    if not path.exists():
        return "no such file" + (" (a broken symbolic link)" if path.is_symlink() else "")
    if not path.is_file():
        return "is not a regular file"
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not head:
        return "is an empty file (0 bytes), not an HDF5 result file"
    if not head.startswith(HDF5_SIGNATURE):
        if path.suffix.lower() == ".csv":
            return "is a CSV file, not an HDF5 file"
        if b"\x00" not in head:
            return "is a text file, not an HDF5 file"
        return "is not a readable HDF5 file (no HDF5 signature at the start)"
    return None


def kind_of(path: str | os.PathLike) -> str:
    """'train', 'bench', 'table', 'checkpoint', or '' when it is none of these (or unreadable)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            kind = _text(f.attrs.get("kind"))
            if kind in ("train", "bench", "table"):
                return kind
            if "state_json" in f.attrs:
                return "checkpoint"
            if "table" in f and "runs" in f:
                return "table"
    except Exception:  # noqa: BLE001 - unreadable: not any known kind
        pass
    return ""


def problems(path: str | os.PathLike) -> list[str]:
    """Everything wrong with a result file; empty when it is complete and valid. Never raises."""
    import h5py

    path = Path(path)
    what = describe(path)
    if what is not None:
        return [what]
    if path.name.startswith(".") and path.name.endswith(".ckpt"):
        return ["is a checkpoint of an unfinished run (removed when the run completes), not a result file"]
    try:
        f = h5py.File(path, "r")
    except Exception as err:  # noqa: BLE001 - h5py raises OSError, but a damaged file may raise anything
        return [f"is not a readable HDF5 file: truncated or corrupt ({_first_line(err)})"]
    try:
        with f:
            return _check_file(f)
    except Exception as err:  # noqa: BLE001 - damaged internals surface as any exception
        return [f"HDF5 file is damaged: {_first_line(err)}"]


def _check_file(f) -> list[str]:
    import h5py

    attrs = {}
    for key in f.attrs:
        try:
            attrs[key] = f.attrs[key]
        except Exception as err:  # noqa: BLE001
            return [f"root attribute '{key}' cannot be read ({_first_line(err)})"]
    kind = _text(attrs.get("kind"))
    if kind == "table" or (kind is None and "table" in f and "runs" in f):
        return ["is a table written by `snn-runner collect` (read it with `snn-runner report`), not a result file"]
    if "state_json" in attrs and kind is None:
        return ["is a checkpoint of an unfinished run (removed when the run completes), not a result file"]
    found = [f"missing root attribute '{a}'" for a in ROOT_ATTRS if a not in attrs]
    if found:
        return found
    version = attrs["schema_version"]
    if not _is_int(version):
        return [f"schema_version is {version!r} ({type(version).__name__}), expected the integer {SCHEMA_VERSION}"]
    if int(version) not in READABLE_VERSIONS:
        return [f"schema version {int(version)} is not supported (this version reads "
                f"{', '.join(map(str, READABLE_VERSIONS))})"]
    networks = NETWORK_GROUPS if kind == "train" and int(version) >= 2 else ()
    if kind not in REQUIRED:
        return [f"unknown kind {attrs['kind']!r} (expected 'train' or 'bench')"]
    complete = attrs["complete"]
    if not isinstance(complete, (bool, np.bool_)):
        found.append(f"attribute 'complete' is {complete!r}, expected True")
    elif not complete:
        found.append("complete is False: the file was cut short or is still being written")
    found += _check_config(attrs["config_json"])
    for key in STRING_ATTRS:
        if key in attrs and _text(attrs[key]) is None:
            found.append(f"root attribute '{key}' must be a string")
    for key in INT_ATTRS:
        if key in attrs and not _is_int(attrs[key]):
            found.append(f"root attribute '{key}' must be an integer")
    if "best_test_accuracy" in attrs and not (_is_real(attrs["best_test_accuracy"])
                                              and 0 <= float(attrs["best_test_accuracy"]) <= 1):
        found.append("root attribute 'best_test_accuracy' must be a number in [0, 1]")
    for name, obj in f.items():
        if name in networks:
            found += _check_network(f.filename, name)
        elif name not in REQUIRED[kind]:
            found.append(f"unexpected entry '/{name}' in a {kind} file")
        elif not isinstance(obj, h5py.Group):
            found.append(f"'/{name}' is not a group")
        else:
            found += [f"'/{name}/{k}' is a group, expected a dataset" for k, v in obj.items()
                      if not isinstance(v, h5py.Dataset)]
    if networks and "model" not in f:
        found.append("missing group '/model' (the trained network)")
    for group, keys in REQUIRED[kind].items():
        if group not in f:
            found.append(f"missing group '/{group}'")
            continue
        found += [f"missing dataset '/{group}/{k}'" for k in keys if k not in f[group]]
    if found:
        return found
    if kind == "train":
        _check_train(f, attrs, found)
    else:
        _check_bench(f, attrs, found)
    return found


def _check_network(path: str, name: str) -> list[str]:
    try:
        read_network(path, name)
    except NoNetworkError as err:
        return [str(err).replace(f"{path}: ", "", 1)]
    return []


def is_complete(path: str | os.PathLike) -> bool:
    return Path(path).is_file() and not problems(path)
