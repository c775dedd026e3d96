"""`snn-runner train --workers N`: N local worker processes of one data-parallel run.

The launcher builds the cluster (free local ports), starts the same command N
times with each child's place in the environment (``cluster.ENV``), and
supervises them. Rank 0 writes to this terminal; the others to log files that
are shown when they fail. Signals to the launcher go to every worker, which
agree on the step to stop after. When a worker ends with an error, the others
are given ``GRACE_S`` to notice (they name the lost worker) and are then
killed, so a failure never hangs the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from snn_runner.distribute.cluster import ENV, local_workers

GRACE_S = 60.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)


def _describe(code: int) -> str:
    if code < 0:
        return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(f"    {line}" for line in text[-lines:])


def run_local(count: int, argv: list[str], communication: str = "auto", log=print) -> int:
    """Run ``snn-runner <argv>`` as ``count`` workers here; the exit code of the run (0, 1, 2 or 75)."""
    workers = local_workers(count, communication)
    threads = str(max(1, (os.cpu_count() or 1) // count))
    logs = Path(tempfile.mkdtemp(prefix="snn-runner-workers-"))
    log(f"workers: {count} local processes on ports {', '.join(h.rsplit(':', 1)[1] for h in workers[0].hosts)}; "
        f"{threads} op thread(s) each; logs of ranks 1-{count - 1} in {logs}")
    procs = []
    for w in workers:
        env = {**os.environ, ENV: w.to_env()}
        env.setdefault("TF_NUM_INTRAOP_THREADS", threads)  # the cores are shared out, not oversubscribed
        out = None if w.rank == 0 else open(logs / f"rank{w.rank}.log", "w")
        # own sessions: a Ctrl-C reaches the workers once, through the launcher, not twice
        procs.append(subprocess.Popen([sys.executable, "-m", "snn_runner.cli", *argv], env=env, stdout=out,
                                      stderr=None if out is None else subprocess.STDOUT, start_new_session=True))
        if out is not None:
            out.close()

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        codes = _supervise(procs)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for rank, code in enumerate(codes):
        if code not in (0, 75) and rank > 0:
            log(f"worker rank {rank} (pid {procs[rank].pid}) {_describe(code)}; last lines of "
                f"{logs / f'rank{rank}.log'}:\n{_tail(logs / f'rank{rank}.log')}")
    if all(c == 0 for c in codes):
        return 0
    if all(c in (0, 75) for c in codes):
        return 75
    failed = [c for c in codes if c not in (0, 75)]
    return codes[0] if codes[0] > 0 else (failed[0] if failed[0] > 0 else 1)


def _supervise(procs) -> list[int]:
    failed_at = None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return codes
        if failed_at is None and any(c not in (None, 0, 75) for c in codes):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.2)
