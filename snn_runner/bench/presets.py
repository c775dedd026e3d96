"""Named benchmark networks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchNetwork:
    sizes: tuple[int, ...]
    time_steps: int
    batch_size: int
    input_events: int  # distinct input ids per sample and time step
    weight_scale: float  # w_mul; 2.5 gives about 2% natural hidden activity on this input
    note: str


PRESETS = {
    # The reference paper's N-MNIST network (Finkbeiner et al., AAAI 2024).
    "nmnist-base": BenchNetwork((1156, 1470, 1460, 10), 100, 48, 32, 2.5,
                                "N-MNIST sizes, T=100, batch 48, 32 random input events per step"),
    # A quick one for tests and smoke runs.
    "tiny": BenchNetwork((100, 200, 150, 10), 20, 8, 8, 6.0, "tiny network for smoke tests"),
}
