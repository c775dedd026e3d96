"""Merge many result files into one table (HDF5 or CSV).

Every file is read on its own: partial files (temporary names), corrupt files,
files that fail the schema and duplicates are listed in ``skipped`` with the
reason and left out; no single file stops the collection.

Duplicates: the same file reached twice (a symbolic or hard link) or a byte
copy is tabled once, the first in sorted path order; files of the same
``task_id`` (the hash of the resolved configuration) are tabled once, the
newest by ``created_utc`` (ties: the first in sorted path order).

Temporaries (``.NAME.PID-RANDOM@HOST.tmp``) whose writer is gone are deleted
with ``remove_dead_temporaries``; the others are listed as partial.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from snn_runner.files import TMP_SUFFIX, atomic_text
from snn_runner.results.schema import TMP_RE, describe, problems
from snn_runner.results.store import read_result, result_file

TABLE_SUFFIXES = (".h5", ".hdf5", ".csv")
RESULT_SUFFIXES = (".h5", ".hdf5")

COLUMNS = (
    "file", "kind", "job_name", "task_index", "task_id", "implementation", "dataset", "network", "sizes",
    "time_steps", "batch_size", "max_activity", "seed", "readout", "epochs", "final_test_accuracy", "final_test_loss",
    "final_train_loss", "best_test_accuracy", "best_epoch", "spike_rate", "dropped_spikes", "dropped_per_step",
    "synops", "step_ms_median", "forward_ms_median", "compile_s", "peak_rss_mb", "threads", "achieved_gops",
    "roofline_fraction", "host",
    "slurm_job_id", "slurm_array_task_id", "git_revision",
)
# Columns added after tables were collected: a table without them reads back with "" there.
LATER_COLUMNS = ("seed", "readout", "best_test_accuracy", "best_epoch", "dropped_per_step", "synops", "threads",
                 "achieved_gops", "roofline_fraction")
DEFAULT_READOUT = "spike_count"  # what every run recorded before model.readout existed


@dataclass
class Collection:
    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)  # per-epoch curves and spikes of train rows
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason), duplicates included
    removed: list[str] = field(default_factory=list)  # temporaries of dead writers that were deleted


def _row(path: Path, rec: dict[str, Any]) -> dict[str, Any]:
    a, cfg = rec["attrs"], rec["config"]
    row = {c: "" for c in COLUMNS}
    seed = cfg["train"].get("seed", "")
    row.update(file=str(path), kind=a["kind"], job_name=a.get("job_name", ""), task_index=a.get("task_index", -1),
               task_id=a.get("task_id", ""), implementation=a.get("implementation", ""),
               dataset=cfg["data"]["dataset"], time_steps=cfg["data"]["time_steps"],
               batch_size=cfg["train"]["batch_size"], max_activity=cfg["model"]["max_activity"],
               seed=int(seed) if _is_int(seed) else "", readout=str(cfg["model"].get("readout", DEFAULT_READOUT)),
               host=a.get("host", ""), slurm_job_id=a.get("slurm_job_id", ""),
               slurm_array_task_id=a.get("slurm_array_task_id", ""), git_revision=a.get("git_revision", ""))
    if a["kind"] == "train":
        row.update(_train_columns(rec))
    else:
        row.update(_bench_columns(rec, row))
    return row


def _train_columns(rec: dict[str, Any]) -> dict[str, Any]:
    a, m, t = rec["attrs"], rec["metrics"], rec["timing"]
    dropped = int(np.sum(m["dropped_spikes"][-1]))
    # dropped_spikes sums the epoch's training steps over batch and time; the epoch covered every
    # training sample once, which the data report counts (validation samples already taken out)
    samples, time_steps = _train_split_size(a)
    time_steps = time_steps or rec["config"]["data"]["time_steps"]
    return dict(epochs=len(m["epoch"]), final_test_accuracy=float(m["test_accuracy"][-1]),
                final_test_loss=float(m["test_loss"][-1]), final_train_loss=float(m["train_loss"][-1]),
                best_test_accuracy=float(a["best_test_accuracy"]) if "best_test_accuracy" in a else "",
                best_epoch=int(a["best_epoch"]) if "best_epoch" in a else "",
                spike_rate=json.dumps([round(float(x), 6) for x in m["spike_rate"][-1]]),
                dropped_spikes=dropped,
                dropped_per_step=dropped / (samples * time_steps) if samples else "",
                synops=float(np.sum(m["synops"][-1])) if "synops" in m else "",  # older files lack it
                step_ms_median=float(np.median(t["step_seconds"]) * 1e3) if len(t["step_seconds"]) else "",
                compile_s=float(t["compile_seconds"]),
                sizes=json.dumps([int(x) for x in a.get("sizes", [])]))


def _bench_columns(rec: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    b = rec["bench"]
    dropped = float(np.sum(b["dropped_spikes"]))  # per training step: summed over its batch and time steps
    batch, time_steps = b.get("batch_size", row["batch_size"]), b.get("time_steps", row["time_steps"])
    return dict(implementation=b["implementation"], network=b["network"],
                sizes=json.dumps([int(x) for x in b["sizes"]]),
                max_activity=float(b["max_activity"]), step_ms_median=float(b["step_ms_median"]),
                forward_ms_median=float(b["forward_ms_median"]), compile_s=float(b["compile_s"]),
                peak_rss_mb=float(b["peak_rss_mb"]),
                spike_rate=json.dumps([round(float(x), 6) for x in b["spike_rate_per_layer"]]),
                dropped_spikes=dropped,
                dropped_per_step=dropped / (batch * time_steps) if _is_count(batch) and _is_count(time_steps) else "",
                synops=_bench_synops(b), **{k: _optional_number(b, k) for k in ("threads", "achieved_gops",
                                                                                   "roofline_fraction")})


def _optional_number(b: dict[str, Any], key: str) -> float | str:
    """A bench figure added later (threads, roofline): "" when absent, zero (not measured) or unusable."""
    try:
        value = float(b[key])
    except (KeyError, TypeError, ValueError):
        return ""
    return value if np.isfinite(value) and value > 0 else ""


def _bench_synops(b: dict[str, Any]) -> float | str:
    """Total SynOps per sample of a bench record; "" for records made before bench counted them.

    The schema does not check these newer keys, so an unusable value empties the cell
    instead of losing the whole record.
    """
    try:
        total = float(b["synops_total"]) if "synops_total" in b else float(np.sum(b["synops_per_sample"]))
    except (KeyError, TypeError, ValueError):
        return ""
    return total if np.isfinite(total) and total >= 0 else ""


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_count(value) -> bool:
    return _is_int(value) and value > 0


def _train_split_size(attrs: dict[str, Any]) -> tuple[int | None, int | None]:
    """Samples and time steps of the training split from the run's data report; None where not recorded."""
    try:
        report = json.loads(attrs.get("data_report_json", "{}")).get("train", {})
        samples, steps = report.get("samples"), report.get("time_steps")
    except (ValueError, TypeError, AttributeError):  # a report of another shape: leave the column empty
        return None, None
    return (samples if _is_count(samples) else None), (steps if _is_count(steps) else None)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def temporary_reason(path: Path) -> str:
    """What a temporary file (``.NAME.PID-RANDOM[@HOST].tmp``) left in a results folder is."""
    match = TMP_RE.match(path.name)
    if match is None:
        return "partial (temporary file; its writer is unknown)"
    pid, host = int(match["pid"]), match["host"]
    if host is not None and host != _host():
        return f"partial (temporary file of process {pid} on host {host}; it may still be writing)"
    if pid > 0 and _pid_running(pid):
        return f"partial (still being written by process {pid})"
    return f"partial file left by a writer that is gone (process {pid}); safe to delete"


def _walk(folder: Path) -> list[Path]:
    """Every file under ``folder``, following linked folders once (no loops), sorted."""
    out, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort(key=lambda n: (os.path.islink(os.path.join(root, n)), n))  # real folders first
        out += [Path(root) / name for name in files]
    return sorted(out)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _remove_dead_temporaries(folders: set[Path]) -> list[str]:
    try:
        from snn_runner.files.atomic import remove_dead_temporaries
    except ImportError:
        return []
    removed = []
    for folder in sorted(folders):
        try:
            removed += [str(p) for p in remove_dead_temporaries(folder)]
        except Exception:  # noqa: BLE001 - cleaning up is optional; never stop the collection
            pass
    return removed


def collect(folder: str | os.PathLike, exclude: tuple[str | os.PathLike, ...] = ()) -> Collection:
    """Table every valid result file under ``folder``; list each other one with the reason.

    ``exclude``: paths to leave out silently (the table being written).
    Raises ``FileNotFoundError``/``NotADirectoryError`` only for ``folder`` itself.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: is a file, not a folder; collect reads the result files under a "
                                 f"folder (check one file with `snn-runner inspect {folder}`)")
    excluded = {os.path.realpath(p) for p in exclude}
    out = Collection()
    files = _walk(folder)
    temp_dirs = {p.parent for p in files if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)}
    out.removed = _remove_dead_temporaries(temp_dirs)
    gone = set(out.removed)
    good: list[tuple[Path, dict[str, Any], dict[str, Any]]] = []
    by_real: dict[str, Path] = {}
    by_digest: dict[str, Path] = {}
    for path in files:
        if str(path) in gone:
            continue
        if path.name.startswith(".") and path.name.endswith(TMP_SUFFIX):
            if path.exists():
                out.skipped.append((str(path), temporary_reason(path)))
            continue
        if path.suffix not in RESULT_SUFFIXES or path.name.startswith("."):
            continue  # checkpoints (.NAME.ckpt), logs, CSV tables, hidden files
        try:
            real = os.path.realpath(path)
            if real in excluded:
                continue
            what = describe(path)
            if what is not None:
                out.skipped.append((str(path), what))
                continue
            if real in by_real:
                out.skipped.append((str(path), f"duplicate: the same file as {by_real[real]} (a link); tabled once"))
                continue
            by_real[real] = path
            digest = _digest(path)
            if digest in by_digest:
                out.skipped.append((str(path), f"duplicate: the same content as {by_digest[digest]}; tabled once"))
                continue
            by_digest[digest] = path
            found = problems(path)
            if found:
                out.skipped.append((str(path), "; ".join(found)))
                continue
            rec = read_result(path)
            good.append((path, rec, _row(path, rec)))
        except Exception as err:  # noqa: BLE001 - one bad file never stops the collection
            out.skipped.append((str(path), f"cannot be read ({type(err).__name__}: {_first_line(err)})"))
    for path, rec, row in _one_per_task(good, out.skipped):
        out.rows.append(row)
        if rec["attrs"]["kind"] == "train":
            out.runs.append({"metrics": rec["metrics"], "spikes": rec.get("spikes", {})})
        else:
            out.runs.append({})
    return out


def _one_per_task(good, skipped):
    """Keep the newest file of each task_id (latest created_utc, then first path); list the others."""
    tasks: dict[str, list] = {}
    for item in good:
        task = str(item[2]["task_id"])
        if task:
            tasks.setdefault(task, []).append(item)
    dropped = set()
    for task, items in tasks.items():
        if len(items) < 2:
            continue
        order = {id(it): i for i, it in enumerate(items)}
        keep = max(items, key=lambda it: (str(it[1]["attrs"].get("created_utc", "")), -order[id(it)]))
        for item in items:
            if item is not keep:
                dropped.add(id(item))
                skipped.append((str(item[0]), f"duplicate: task_id {task} is also in {keep[0]} (created "
                                               f"{keep[1]['attrs'].get('created_utc', '?')}); the newest (or, "
                                               f"if equally new, the first) is tabled"))
    return [item for item in good if id(item) not in dropped]


def check_target(target: str | os.PathLike) -> Path:
    """Refuse a table path that cannot be written, before anything is collected."""
    target = Path(target)
    if target.is_dir():
        raise ValueError(f"{target}: is a folder; give the table file to write, e.g. {target / 'table.h5'}")
    if target.suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{target}: the table must end in .h5 (for `snn-runner report`) or .csv")
    parent = target.parent
    if not parent.is_dir():
        raise ValueError(f"{target}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{target}: the folder {parent} is not writable")
    return target


def write_table(coll: Collection, target: str | os.PathLike) -> Path:
    target = check_target(target)
    if target.suffix == ".csv":
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(coll.rows)
        atomic_text(target, buf.getvalue())
        return target
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


TABLE_HINT = "`snn-runner report` reads the .h5 table written by `snn-runner collect FOLDER -o TABLE.h5`"


def read_table(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows and per-run curves of a table written by ``write_table`` (HDF5 only).

    Raises ``ValueError`` with a one-line reason for anything that is not such a table.
    """
    path = Path(path)
    what = describe(path)
    if what is not None:
        raise ValueError(f"{path}: {what}; {TABLE_HINT}")
    try:
        f = h5py.File(path, "r")
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{path}: is not a readable HDF5 file: truncated or corrupt ({_first_line(err)}); {TABLE_HINT}") from None
    try:
        with f:
            return _read_table(path, f)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged table surfaces as anything
        raise ValueError(f"{path}: the table is damaged ({type(err).__name__}: {_first_line(err)}); "
                         f"collect it again") from None


def _read_table(path: Path, f) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not isinstance(f.get("table"), h5py.Group):
        kind = f.attrs.get("kind")
        kind = kind.decode() if isinstance(kind, bytes) else kind
        what = (f"a {kind} result file" if kind in ("train", "bench")
                else "a checkpoint" if "state_json" in f.attrs else "an HDF5 file")
        raise ValueError(f"{path}: not a table written by `snn-runner collect` (no /table group; it is {what}); "
                         f"{TABLE_HINT}")
    n = f.attrs.get("rows")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{path}: the table has no valid 'rows' attribute; collect it again")
    n = int(n)
    missing = [c for c in COLUMNS if c not in f["table"] and c not in LATER_COLUMNS]
    if missing:
        raise ValueError(f"{path}: the table lacks column(s) {', '.join(missing)}; collect it again")
    cols = {k: f["table"][k][()] for k in f["table"]}
    short = [k for k, v in cols.items() if getattr(v, "ndim", 0) != 1 or len(v) != n]
    if short:
        raise ValueError(f"{path}: column(s) {', '.join(short)} do not have {n} rows; collect it again")
    rows = []
    for i in range(n):
        row = {c: "" for c in LATER_COLUMNS}  # absent from tables collected before they existed
        for k, v in cols.items():
            x = v[i]
            row[k] = x.decode() if isinstance(x, bytes) else (float(x) if isinstance(x, np.floating) else x)
        rows.append(row)
    runs = []
    for i in range(n):
        g = f["runs"][str(i)]
        runs.append({s: {k: g[s][k][()] for k in g[s]} if s in g else {} for s in ("metrics", "spikes")})
    return rows, runs
