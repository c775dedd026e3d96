"""The one way a file is written: to a temporary name, then renamed whole.

Results, checkpoints, cache entries, bench JSON and collected tables all go
through ``atomic_write`` (or ``atomic_h5`` on top of it). The temporary file
sits in the destination folder (so the rename stays on one file system and
is atomic), is flushed to disk before the rename, and is removed on any
failure; the previous file under the final name is never touched until the
new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

TMP_SUFFIX = ".tmp"


def temporary_name(path: Path) -> Path:
    """``.NAME.PID-RANDOM.tmp`` beside ``path``: unique per writer, hidden, easy to sweep."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporaries of ``path`` left behind by writers that crashed."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``path`` only if the block succeeds.

    The block must have closed whatever it opened on the temporary path when
    it ends; the file is then synced and renamed over ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, **h5_options):
    """Yield an open ``h5py.File`` that appears under ``path`` only if the block succeeds."""
    import h5py

    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w", **h5_options) as f:
            yield f


def atomic_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` whole (bench JSON, CSV tables)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)
