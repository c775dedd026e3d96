"""The session fixture `slurm_cluster`: a real one-node Slurm with accounting.

Brought up by ``scripts/slurm-local`` (munge, MariaDB, slurmdbd, slurmctld,
slurmd). A test module uses it with::

    from tests.slurm_fixtures import slurm_cluster  # noqa: F401

The cluster is skipped, not failed, where it cannot run (not root, no
apt-get, start failed), with the reason; set SNN_REQUIRE_SLURM=1 to turn those
into failures (e.g. in a CI that must exercise Slurm).

Several pytest sessions on one machine share the cluster. Each holds a lease
(a file named after its pid) while it runs; a cluster that a session of this
fixture started is stopped when the last lease goes. A cluster that was
started by hand is left running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm-local"

# A fresh machine first installs the packages (about a minute with apt).
START_TIMEOUT_S = 900


@dataclass(frozen=True)
class SlurmCluster:
    conf: Path
    partition: str
    started_here: bool

    def run(self, *cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm command (sbatch, sacct, ...) against this cluster."""
        env = dict(os.environ, SLURM_CONF=str(self.conf))
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=check, env=env)

    def sacct_state(self, job_id: str) -> str:
        out = self.run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State", check=False).stdout.split()
        return out[0] if out else ""

    def wait_for_state(self, job_id: str, states: tuple[str, ...] = ("COMPLETED",), timeout: float = 60) -> str:
        """Poll sacct until the job reaches one of `states` (or time runs out)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.sacct_state(job_id)
            if state in states:
                break
            time.sleep(0.5)
        return state


def _unavailable(reason: str) -> None:
    if os.environ.get("SNN_REQUIRE_SLURM") == "1":
        pytest.fail(f"Slurm required (SNN_REQUIRE_SLURM=1) but {reason}")
    pytest.skip(reason)


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@contextlib.contextmanager
def _locked(path: Path):
    """Serialise lease bookkeeping (and the start/stop decisions) across sessions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_leases(leases: Path) -> list[Path]:
    """Leases of sessions still running; those of dead sessions are removed."""
    live = []
    for lease in leases.glob("[0-9]*"):
        if _pid_alive(int(lease.name)):
            live.append(lease)
        else:
            lease.unlink(missing_ok=True)
    return live


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0:
        _unavailable("scripts/slurm-local needs root (it installs packages and starts system daemons)")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        _unavailable("Slurm is not installed and there is no apt-get to install it (slurm-local targets Debian)")

    state_dir = Path(os.environ.get("SNN_SLURM_DIR", "/tmp/snn-slurm")).resolve()
    conf = state_dir / "etc" / "slurm.conf"
    leases = state_dir / "leases"
    lock = state_dir / ".fixture.lock"
    # Present while the running cluster was started by this fixture.
    owner_mark = leases / "started-by-fixture"
    my_lease = leases / str(os.getpid())

    with _locked(lock):
        leases.mkdir(exist_ok=True)
        live = _live_leases(leases)
        started_here = False
        if _script("status", timeout=60).returncode == 0:
            if not live:
                # Whoever started it is gone; it may since have been taken over
                # by hand, so it no longer counts as ours to stop.
                owner_mark.unlink(missing_ok=True)
        else:
            try:
                proc = _script("start", timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _script("stop", timeout=180)
                _unavailable(f"scripts/slurm-local start did not finish within {START_TIMEOUT_S} s")
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                _script("stop", timeout=180)
                _unavailable(f"scripts/slurm-local start failed (exit {proc.returncode}):\n{tail}")
            owner_mark.touch()
            started_here = True
        my_lease.touch()

    try:
        # Point every Slurm client of the session (submitit runs sbatch and
        # sacct, and so do the jobs it requeues) at this cluster, even when
        # /etc/slurm holds another cluster's config.
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", str(conf))
            yield SlurmCluster(conf=conf, partition="debug", started_here=started_here)
    finally:
        with _locked(lock):
            my_lease.unlink(missing_ok=True)
            if not _live_leases(leases) and owner_mark.exists():
                owner_mark.unlink()
                _script("stop", timeout=180)
