"""Stopping a run cleanly on a signal, so it can resume where it stopped."""

from __future__ import annotations

import signal

INTERRUPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again", the run can be resumed


class Interrupted(RuntimeError):
    """Training stopped on a signal after saving a checkpoint."""


class StopOnSignal:
    """Turns SIGTERM, SIGUSR2 (Slurm's timeout warning), SIGINT (Ctrl-C) and
    SIGHUP (a closed terminal) into a flag the training loop polls between steps.

    Stopping between steps (not inside one) is what makes the saved state
    consistent. A second Ctrl-C stops at once (``KeyboardInterrupt``): the
    checkpoint of the last finished epoch stays. Previous handlers are
    restored on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP)

    def __init__(self, signals=SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> "StopOnSignal":
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def reclaim(self) -> None:
        """Install the handlers again after a library replaced them at the C level.

        TensorFlow's coordination service (started by a multi-worker strategy)
        installs its own SIGTERM handler for preemption notices, which would
        swallow a requeue's SIGTERM.
        """
        for s in self.signals:
            signal.signal(s, self._handle)

    def previous_handler(self, signum):
        """The handler that was installed before this one (e.g. submitit's requeue)."""
        return self._previous.get(signum)

    @property
    def requested(self) -> bool:
        return self.received is not None
