"""Real small file systems for fault tests: a tmpfs mounted per test, filled to a chosen level."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

PAGE = 4096


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def fill_to(folder: Path, free: int) -> int:
    """Leave about ``free`` bytes free on ``folder``'s file system (a file ``fill``); returns what is left."""
    fill = Path(folder) / "fill"
    if fill.exists():
        fill.unlink()
    take = free_bytes(folder) - free
    if take >= PAGE:
        take -= take % PAGE
        subprocess.run(["fallocate", "-l", str(take), str(fill)], check=True)
    return free_bytes(folder)


def unfill(folder: Path) -> None:
    fill = Path(folder) / "fill"
    if fill.exists():
        fill.unlink()


@pytest.fixture
def small_fs():
    """A real 3 MB tmpfs, unmounted afterwards; skips where mounting is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = Path(tempfile.mkdtemp(prefix="snn-small-fs-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        os.rmdir(folder)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))
