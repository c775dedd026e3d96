"""The on-disk cache of preprocessed splits: one HDF5 file per parameter set.

File name ``<dataset>-<key>.h5`` where key is a SHA-256 over every parameter
that changes the tensors (see ``pipeline.cache_params``), so a changed
parameter is a new entry and an entry is never reinterpreted.

Layout (format version ``FORMAT_VERSION``):

- root attributes: ``format_version``, ``key``, ``params`` (JSON), ``capacity``
  (K_in, or the busiest bin over all splits when K_in is 0), ``created``, and
  ``complete`` = 1, written last;
- one group per split (``train``, ``test``) with attributes ``channels``,
  ``classes``, ``time_steps``, ``notes`` (JSON list of [sample, text] of
  non-fatal findings, e.g. empty recordings) and datasets ``ids`` (the kept ids of all
  samples, ragged: bin after bin, sample after sample; gzip), ``count``
  ``[N, T]``, ``labels`` ``[N]``, ``source_index`` ``[N]`` (position of the
  sample in tonic's sorted split) and ``stats/<name>`` ``[N]`` per-sample
  counters (see ``STATS``).

Writes go through the atomic writer (a temporary file in the cache folder,
renamed over the entry when complete), so a reader sees either no entry or a
whole one. Builders of the same entry
serialise on an ``flock`` of ``<entry>.lock`` so a sweep that starts many tasks
at once bins the data once; where the file system refuses locks, they build in
parallel and the last rename wins (both files are identical). A file that
cannot be read back completely (truncated, foreign, older format) is reported
by ``read_entry`` as ``CacheEntryInvalid`` and rebuilt by the caller, and so is
one whose contents are out of range (ids outside [0, channels), labels outside
the classes, shapes that disagree).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from snn_runner.compat import h5_unlocked
from snn_runner.data.errors import CacheError
from snn_runner.files import atomic_h5, stale_temporaries

FORMAT_VERSION = 2  # 2: per-file source fingerprint, the "empty" counter, split notes
# Per-sample counters kept next to the tensors, for the report.
SPLIT_NAMES = ("train", "test")
STATS = ("events", "denoised", "outside", "duplicates", "capped", "peak", "empty")
MAX_NOTES = 50  # note lines kept per split (the counters hold the totals)
_FLUSH_IDS = 1 << 20  # ids buffered before a write to the resizable dataset
_ID_CHUNK = 1 << 16


class CacheEntryInvalid(Exception):
    """The entry file exists but cannot be used; the message says why."""


@dataclass
class RaggedSplit:
    ids: np.ndarray  # kept ids, ragged (uint16 or int32) [count.sum()]
    count: np.ndarray  # int32 [N, T]
    labels: np.ndarray  # int64 [N]
    source_index: np.ndarray  # int64 [N]
    stats: dict[str, np.ndarray]  # int64 [N] each, keys STATS
    channels: int
    classes: int
    notes: list = field(default_factory=list)  # [sample position, text] of non-fatal findings

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Entry:
    path: Path
    capacity: int
    params: dict
    splits: dict[str, RaggedSplit] = field(default_factory=dict)


def cache_key(params: dict) -> str:
    blob = json.dumps({"format_version": FORMAT_VERSION, **params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def entry_path(cache_dir: Path, dataset: str, key: str) -> Path:
    return Path(cache_dir) / f"{dataset}-{key[:24]}.h5"


def ensure_folder(cache_dir: Path) -> None:
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        probe = Path(cache_dir) / f".write-test-{os.getpid()}-{secrets.token_hex(4)}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise CacheError(f"cannot write the preprocessing cache folder {cache_dir}: {err.strerror or err}. "
                         f"Point data.cache_dir, --cache-dir or SNN_RUNNER_CACHE_DIR at a writable folder "
                         f"(the data folder may be bound read-only).") from err


class _SplitWriter:
    def __init__(self, group: h5py.Group, samples: int, time_steps: int, channels: int, classes: int):
        self.group = group
        group.attrs.update(channels=channels, classes=classes, time_steps=time_steps)
        id_dtype = np.uint16 if channels <= np.iinfo(np.uint16).max else np.int32
        self.ids = group.create_dataset("ids", (0,), dtype=id_dtype, maxshape=(None,), chunks=(_ID_CHUNK,),
                                        compression="gzip", compression_opts=4, shuffle=True)
        self.count = np.zeros((samples, time_steps), np.int32)
        self.labels = np.zeros(samples, np.int64)
        self.source_index = np.zeros(samples, np.int64)
        self.stats = {name: np.zeros(samples, np.int64) for name in STATS}
        self.n = 0
        self.notes: list = []
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    def add(self, ids: np.ndarray, count: np.ndarray, label: int, source_index: int, **stats: int) -> None:
        self.count[self.n] = count
        self.labels[self.n] = label
        self.source_index[self.n] = source_index
        for name in STATS:
            self.stats[name][self.n] = stats.get(name, 0)
        self.n += 1
        self._buffer.append(ids)
        self._buffered += len(ids)
        if self._buffered >= _FLUSH_IDS:
            self._flush()

    def note(self, text: str) -> None:
        """A non-fatal finding about the sample added next (kept up to ``MAX_NOTES`` per split)."""
        if len(self.notes) < MAX_NOTES:
            self.notes.append([self.n, text])

    def _flush(self) -> None:
        if not self._buffer:
            return
        block = np.concatenate(self._buffer)
        start = self.ids.shape[0]
        self.ids.resize((start + len(block),))
        self.ids[start:] = block
        self._buffer, self._buffered = [], 0

    def close(self) -> None:
        self._flush()
        if self.n != len(self.labels):
            raise RuntimeError(f"split {self.group.name}: {self.n} of {len(self.labels)} samples written")
        opts = dict(compression="gzip", compression_opts=4, shuffle=True)
        self.group.create_dataset("count", data=self.count.astype(np.uint16 if self.count.max(initial=0) <
                                                                  65536 else np.int32), **opts)
        self.group.create_dataset("labels", data=self.labels)
        self.group.create_dataset("source_index", data=self.source_index)
        for name, values in self.stats.items():
            self.group.create_dataset(f"stats/{name}", data=values)
        self.group.attrs["notes"] = json.dumps(self.notes)


class EntryWriter:
    """Context manager: an entry that appears under ``path`` only once ``finish`` was called.

    Goes through the atomic writer (the entry is built in memory, written
    whole, read back and renamed); an exception, or leaving without
    ``finish``, leaves nothing behind. A full disk raises
    ``snn_runner.files.DiskFullError`` (an ``OSError``) when the block ends.
    """

    def __init__(self, path: Path, key: str, params: dict):
        self.path = Path(path)
        self.key = key
        self.params = params
        self.file: h5py.File | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "EntryWriter":
        try:
            self.file = self._stack.enter_context(atomic_h5(self.path, verify=self._verify))
        except OSError as err:
            self._stack.close()
            raise CacheError(f"cannot create a cache entry in {self.path.parent}: {err}") from err
        self.file.attrs.update(format_version=FORMAT_VERSION, key=self.key,
                               params=json.dumps(self.params, sort_keys=True), created=time.time())
        return self

    def _verify(self, back: h5py.File) -> None:
        """Run on the written temporary before the rename: the marker and every split must read back."""
        if back.attrs.get("complete") != 1 or back.attrs.get("key") != self.key:
            raise CacheEntryInvalid("incomplete")
        for name, group in back.items():
            for dataset in ("ids", "count", "labels", "source_index"):
                if dataset not in group:
                    raise CacheEntryInvalid(f"split {name} lacks {dataset}")

    def split(self, name: str, samples: int, time_steps: int, channels: int, classes: int) -> _SplitWriter:
        return _SplitWriter(self.file.create_group(name), samples, time_steps, channels, classes)

    def finish(self, capacity: int) -> None:
        self.file.attrs["capacity"] = capacity
        self.file.attrs["complete"] = 1  # last: a file without it was interrupted

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and self.file.attrs.get("complete") != 1:
            exc_type = CacheError
            exc = CacheError(f"cache entry {self.path.name} was left unfinished")
        return self._stack.__exit__(exc_type, exc, tb)


def read_entry(path: Path, key: str) -> Entry:
    """The whole entry, checked; ``CacheEntryInvalid`` when anything is off."""
    try:
        with h5py.File(path, "r", **h5_unlocked()) as f:
            attrs = dict(f.attrs)
            if attrs.get("complete") != 1:
                raise CacheEntryInvalid("incomplete (the build that wrote it was interrupted)")
            if attrs.get("format_version") != FORMAT_VERSION or attrs.get("key") != key:
                raise CacheEntryInvalid(f"format {attrs.get('format_version')} / key mismatch")
            entry = Entry(Path(path), int(attrs["capacity"]), json.loads(attrs["params"]))
            for name, group in f.items():
                split = RaggedSplit(
                    ids=group["ids"][()],
                    count=group["count"][()].astype(np.int32),
                    labels=group["labels"][()],
                    source_index=group["source_index"][()],
                    stats={s: group[f"stats/{s}"][()] for s in STATS},
                    channels=int(group.attrs["channels"]),
                    classes=int(group.attrs["classes"]),
                    notes=json.loads(group.attrs.get("notes", "[]")),
                )
                _check_ranges(name, split, int(group.attrs["time_steps"]))
                if int(split.count.sum()) != len(split.ids) or len(split.count) != len(split.labels):
                    raise CacheEntryInvalid(f"split {name}: {len(split.ids)} ids for a count total of "
                                            f"{int(split.count.sum())}")
                if split.count.size and int(split.count.max()) > entry.capacity:
                    raise CacheEntryInvalid(f"split {name}: a bin exceeds the capacity {entry.capacity}")
                entry.splits[name] = split
            missing = [name for name in SPLIT_NAMES if name not in entry.splits]
            if missing:
                raise CacheEntryInvalid(f"no {', '.join(missing)} split")
    except CacheEntryInvalid:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as err:  # h5py reports truncation and damage as these
        raise CacheEntryInvalid(f"{type(err).__name__}: {err}") from err
    return entry


def _check_ranges(name: str, split: RaggedSplit, time_steps: int) -> None:
    """Contents within their ranges (vectorised): ids in [0, channels), labels in [0, classes), shapes agree."""
    n = len(split.labels)
    if split.channels < 1 or split.classes < 1:
        raise CacheEntryInvalid(f"split {name}: {split.channels} channels, {split.classes} classes")
    if split.count.shape != (n, time_steps) or split.ids.ndim != 1 or split.source_index.shape != (n,):
        raise CacheEntryInvalid(f"split {name}: shapes ids {split.ids.shape}, count {split.count.shape}, "
                                f"labels {split.labels.shape} disagree with {time_steps} time steps")
    for s, values in split.stats.items():
        if values.shape != (n,):
            raise CacheEntryInvalid(f"split {name}: stats/{s} has shape {values.shape}, expected ({n},)")
    if split.ids.size and (int(split.ids.min()) < 0 or int(split.ids.max()) >= split.channels):
        raise CacheEntryInvalid(f"split {name}: input ids span [{int(split.ids.min())}, {int(split.ids.max())}], "
                                f"outside [0, {split.channels})")
    if n and (int(split.labels.min()) < 0 or int(split.labels.max()) >= split.classes):
        raise CacheEntryInvalid(f"split {name}: labels span [{int(split.labels.min())}, "
                                f"{int(split.labels.max())}], outside [0, {split.classes})")
    if split.count.size and int(split.count.min()) < 0:
        raise CacheEntryInvalid(f"split {name}: negative bin counts")


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by crashed builds (call only while holding the lock)."""
    for tmp in stale_temporaries(path):
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def build_lock(path: Path, log):
    """Exclusive lock per entry; yields True when held, False where locks are unsupported."""
    import fcntl

    lock_path = Path(path).with_name(Path(path).name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise CacheError(f"cannot create the lock file {lock_path}: {err.strerror or err}") from err
    try:
        held = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"cache: another process is building {Path(path).name}; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            log(f"cache: {lock_path.parent} does not support file locks ({err.strerror}); building unlocked")
            held = False
        yield held
    finally:
        os.close(fd)  # releases the lock
