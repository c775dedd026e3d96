"""Progress lines inside an epoch: when they come and what they say."""

from __future__ import annotations

import re

from snn_runner.runner.progress import EpochProgress, format_duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_lines_come_every_interval_with_rate_loss_and_eta():
    clock, lines = Clock(), []
    progress = EpochProgress(10.0, epoch=2, epochs=5, steps=100, first_step=0, log=lines.append, clock=clock)
    clock.now = 30.0
    progress.step(1, 16, running_loss=1.0)  # the first step of a process compiles: not counted
    for step in range(2, 100):
        clock.now = 30.0 + 2.0 * (step - 1)  # then 2 s per step of 16 samples
        progress.step(step, 16, running_loss=1.0 / step)
    assert len(lines) == 19  # every 10 s of 196 s, never for the epoch's last step
    first = lines[0]
    assert first.startswith("  epoch 2/5  step 6/100  8.0 samples/s  loss 0.1667")
    assert first.endswith("eta 3m08s")  # 94 steps left at 2 s each
    assert all("\r" not in line for line in lines)


def test_resumed_epoch_counts_only_its_own_steps_for_the_eta():
    clock, lines = Clock(), []
    progress = EpochProgress(1.0, 1, 1, steps=50, first_step=40, log=lines.append, clock=clock)
    clock.now = 20.0
    progress.step(41, 8, 0.5)
    clock.now = 23.0
    progress.step(42, 8, 0.5)
    assert re.search(r"step 42/50 .* eta 0m24s$", lines[0])  # 3 s per step, 8 steps left


def test_zero_interval_is_silent():
    clock, lines = Clock(), []
    progress = EpochProgress(0.0, 1, 1, 10, 0, lines.append, clock)
    for step in range(1, 10):
        clock.now = 100.0 * step
        progress.step(step, 4, 0.1)
    assert lines == []


def test_durations_read_as_hours_minutes_seconds():
    assert format_duration(59.6) == "1m00s"
    assert format_duration(3725) == "1h02m05s"
