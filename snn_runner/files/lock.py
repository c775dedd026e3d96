"""One writer per result: a run holds a lock beside its result file while it trains.

Two processes given the same result (the same task started twice, two
`train -o` runs on one file) would both train and one result would be lost;
with the lock the second one is refused, or waits for the first, with a
message naming the holder. The lock is an ``flock`` on ``.NAME.lock``, so it
dies with its process and a killed run never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from pathlib import Path


class RunLocked(RuntimeError):
    """Another live process holds the result's lock."""


class OutputNotWritable(RuntimeError):
    """The folder a run must write to cannot be written."""


def lock_for(result: str | Path) -> Path:
    result = Path(result)
    return result.with_name(f".{result.name}.lock")


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be made in it, before any work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}-{time.monotonic_ns()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        probe.unlink()
    except OSError as err:
        raise OutputNotWritable(f"cannot write to the output folder {folder}: {err.strerror or err}; "
                                "choose another output folder") from None


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return f" ({text})" if text else ""


@contextlib.contextmanager
def run_lock(result: str | Path, wait_s: float = 0.0, log=print):
    """Hold the lock of ``result``; waits up to ``wait_s`` seconds for another holder, then raises RunLocked."""
    path = lock_for(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise RunLocked(f"{result} is being written by another run{_holder(path)}; wait for it to finish "
                                "or choose another output") from None
            if not said:
                log(f"waiting for another run of {result}{_holder(path)}")
                said = True
            time.sleep(1.0)
            continue
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            # a file system without locks: run unguarded rather than not at all
            os.close(fd)
            yield
            return
        # the previous holder may have removed the file after we opened it: lock the file that is there
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        break
    try:
        with contextlib.suppress(OSError):  # who holds it is only for messages: a full disk must not stop the run
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
