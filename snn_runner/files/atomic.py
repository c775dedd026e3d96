"""The one way a file is written: to a temporary name, then renamed whole.

Results, checkpoints, cache entries, bench JSON and collected tables all go
through ``atomic_write`` (or ``atomic_h5`` / ``atomic_text`` on top of it).
The temporary file sits in the destination folder (so the rename stays on one
file system and is atomic). Before the rename the temporary is written,
fsynced and closed with every error checked, then re-opened and verified
(its size; for HDF5 that it opens and that what the caller expects is
readable). On any failure the previous file under the final name is left
untouched, the temporary is removed, and a ``WriteError`` (``DiskFullError``
when the file system is full) is raised whose message is the one line the CLI
prints.

HDF5 files are built in memory (h5py's ``core`` driver without a backing
store) and their bytes written with plain ``os.write``: HDF5 itself never
touches the disk, so a full disk is an ordinary ``OSError`` here instead of an
error that h5py may swallow at close, or a crash in a destructor.

Temporaries are named ``.NAME.PID-RANDOM@HOST.tmp``; ``remove_dead_temporaries``
deletes those whose writer is gone (same host, process no longer running).
Every write sweeps the dead temporaries of its own target first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

from snn_runner.compat import h5_unlocked

TMP_SUFFIX = ".tmp"
# Temporaries without a host in their name (older versions) are removed only
# when their process is not running here and they have not changed for this long.
LEGACY_TMP_AGE_S = 3600.0

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:-(?P<token>[0-9a-f]+))?(?:@(?P<host>[^/]*))?"
                     + re.escape(TMP_SUFFIX) + r"$")


class WriteError(OSError):
    """A file could not be written; the previous file under its name is untouched."""

    def __init__(self, message: str, err_no: int | None = None, filename: str | None = None):
        super().__init__(err_no, message, filename)
        self.message = message

    def __str__(self) -> str:
        return self.message


class DiskFullError(WriteError):
    """The file system (or quota) ran out of space while writing."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


def temporary_name(path: Path) -> Path:
    """``.NAME.PID-RANDOM@HOST.tmp`` beside ``path``: unique per writer, hidden, easy to sweep."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}@{_host()}{TMP_SUFFIX}")


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporaries of ``path`` (left behind by writers that crashed, or still being written)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob_escape(path.name)}.*{TMP_SUFFIX}"))


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _pid_running(pid: int) -> bool:
    if pid <= 0:
        return True  # not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True
    return True


def _is_dead_temporary(tmp: Path, now: float) -> bool:
    match = _TMP_RE.match(tmp.name)
    if match is None:
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return False
    host = match["host"]
    if host is not None:
        return host == _host() and not _pid_running(pid)
    # Legacy name: the writer may be on another host sharing this folder; only old ones go.
    try:
        age = now - tmp.stat().st_mtime
    except OSError:
        return False
    return age > LEGACY_TMP_AGE_S and not _pid_running(pid)


def remove_dead_temporaries(folder_or_path: str | os.PathLike) -> list[Path]:
    """Delete temporaries whose writer is gone; returns the ones removed.

    Given a folder, sweeps every ``.*.tmp`` in it; given a file path, only
    that file's temporaries. A temporary is dead when its name carries this
    host and its PID is not running (or, for names without a host, when the
    PID is not running here and the file is older than ``LEGACY_TMP_AGE_S``).
    Never raises: a temporary that cannot be removed stays.
    """
    target = Path(folder_or_path)
    try:
        if target.is_dir():
            candidates = sorted(target.glob(f".*{TMP_SUFFIX}"))
        else:
            candidates = stale_temporaries(target)
    except OSError:
        return []
    now = time.time()
    removed = []
    for tmp in candidates:
        if _is_dead_temporary(tmp, now):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _describe(err: BaseException, path: Path) -> WriteError:
    """The one-line error for a failed write of ``path``."""
    if isinstance(err, WriteError):
        return err
    no = getattr(err, "errno", None)
    if no in _FULL_ERRNOS or (isinstance(err, OSError) and "No space left" in str(err)):
        return DiskFullError(f"no space left on {_device(path.parent)} while writing {path}; nothing was replaced",
                             errno.ENOSPC, str(path))
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    reason = getattr(err, "strerror", None) or text
    return WriteError(f"cannot write {path}: {reason}; nothing was replaced", no, str(path))


def _device(folder: Path) -> str:
    """``FOLDER`` or ``FOLDER (file system at MOUNT)``."""
    folder = folder.resolve() if folder.exists() else folder
    mount = folder
    with contextlib.suppress(OSError):
        while not os.path.ismount(mount) and mount != mount.parent:
            mount = mount.parent
        if mount != folder:
            return f"{folder} (file system {mount})"
    return str(folder)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system syncs directories
        _fsync(folder)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, verify: Callable[[Path], None] | None = None,
                 size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``path`` only if the block succeeds.

    The block must have closed whatever it opened on the temporary path when
    it ends; the file is then synced, checked (``size`` bytes if given, then
    ``verify(tmp)``, which raises on anything incomplete) and renamed over
    ``path``. Any ``OSError`` (in the block or after it) becomes a
    ``WriteError``/``DiskFullError``; other exceptions of the block pass
    through. In every failure the temporary is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _describe(err, path) from None
    remove_dead_temporaries(path)
    tmp = temporary_name(path)
    try:
        try:
            yield tmp
        except OSError as err:
            raise _describe(err, path) from None
        _commit(tmp, path, verify, size)
    finally:
        _unlink(tmp)


def _commit(tmp: Path, path: Path, verify: Callable[[Path], None] | None, size: int | None) -> None:
    try:
        if not tmp.is_file():
            raise WriteError(f"cannot write {path}: nothing was written; nothing was replaced")
        _fsync(tmp)
        if size is not None and os.stat(tmp).st_size != size:
            raise WriteError(f"cannot write {path}: {os.stat(tmp).st_size} of {size} bytes reached the disk; "
                             f"nothing was replaced")
        if verify is not None:
            try:
                verify(tmp)
            except WriteError:
                raise
            except Exception as err:  # noqa: BLE001 - any failure to read it back means incomplete
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise WriteError(f"cannot write {path}: the written file does not read back ({first}); "
                                 f"nothing was replaced") from None
        os.replace(tmp, path)
    except OSError as err:
        raise _describe(err, path) from None
    _fsync_folder(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview,
                verify: Callable[[Path], None] | None = None) -> Path:
    """Write ``data`` to ``path`` whole: plain ``os.write``, fsync, checked close, size check, rename."""
    path = Path(path)
    view = memoryview(data).cast("B")
    with atomic_write(path, verify=verify, size=len(view)) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            while view:
                n = os.write(fd, view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                view = view[n:]
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        os.close(fd)  # errors here (NFS, quotas) raise: checked
    return path


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, verify: Callable | None = None, **h5_options):
    """Yield an open ``h5py.File`` that appears under ``path`` only if the block succeeds.

    The file is built in memory, then written with ``write_bytes``. Before
    the rename, the written file is opened read-only and ``verify(file)`` is
    called with it (the caller checks its marker attribute and the objects it
    expects, raising on anything missing); without ``verify`` only the opening
    and reading the root attributes are checked. When the block raises, the
    in-memory file (and every object opened from it) is closed before the
    exception leaves, so no HDF5 object outlives it.
    """
    import h5py

    path = Path(path)
    for key in ("driver", "backing_store", "locking"):  # nothing of this file is on disk until written whole
        h5_options.pop(key, None)
    name = f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.in-memory"
    f = h5py.File(name, "w", driver="core", backing_store=False, **h5_options)
    try:
        yield f
        f.flush()
        image = f.id.get_file_image()
    finally:
        f.close()
    del f

    def check(tmp: Path) -> None:
        with h5py.File(tmp, "r", **h5_unlocked()) as back:  # private until renamed: no lock needed
            dict(back.attrs)
            if verify is not None:
                verify(back)

    write_bytes(path, image, verify=check)


def atomic_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` whole (bench JSON, CSV tables)."""
    data = text.encode()

    def check(tmp: Path) -> None:
        if tmp.read_bytes() != data:
            raise WriteError(f"cannot write {path}: the written text does not read back; nothing was replaced")

    return write_bytes(path, data, verify=check)
