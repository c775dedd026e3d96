"""Progress lines inside an epoch, for terminals and batch logs alike.

A full epoch of a large dataset can take many minutes; a line every
``every_s`` seconds says the run is alive and when the epoch will end. Plain
lines only (no carriage returns), so Slurm logs stay readable.
"""

from __future__ import annotations

import time
from typing import Callable


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class EpochProgress:
    """Call ``step`` after every training step; it logs when ``every_s`` has passed (0: never)."""

    def __init__(self, every_s: float, epoch: int, epochs: int, steps: int, first_step: int,
                 log: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.first_step = first_step  # steps already done before this process (a resume)
        self.log = log
        self.clock = clock
        self.start = self.last = clock()
        self.samples = 0
        self.warm = False

    def step(self, done: int, batch: int, running_loss: float) -> None:
        now = self.clock()
        if not self.warm:
            # a process's first step also builds the graph: rates and ETAs count from its end
            self.warm = True
            self.start = self.last = now
            self.first_step = done
            return
        self.samples += batch
        if self.every_s <= 0 or now - self.last < self.every_s or done >= self.steps:
            return
        self.last = now
        elapsed = now - self.start
        per_step = elapsed / max(1, done - self.first_step)
        self.log(f"  epoch {self.epoch}/{self.epochs}  step {done}/{self.steps}  "
                 f"{self.samples / elapsed:.1f} samples/s  loss {running_loss:.4f}  "
                 f"eta {format_duration(per_step * (self.steps - done))}")
