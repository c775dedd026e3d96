"""Training state on disk, so an interrupted run resumes where it stopped.

A checkpoint holds everything that decides the rest of the run: weights,
optimizer slots, the epoch and batch position, the data-order RNG state at
the start of the current epoch, the partial sums of the current epoch and the
metric rows of finished epochs. Resuming from it reproduces the uninterrupted
run. Saves go through the atomic writer, so a kill during a save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from snn_runner.files import atomic_h5

@dataclass
class TrainState:
    epoch: int = 1  # the epoch in progress (1-based)
    batch: int = 0  # batches of that epoch already done
    rng_state: dict = field(default_factory=dict)  # data-order RNG at the start of `epoch`
    tally: dict = field(default_factory=dict)  # partial sums of `epoch`
    rows: list = field(default_factory=list)  # metric rows of finished epochs
    step_seconds: list = field(default_factory=list)
    compile_seconds: float = 0.0
    resumes: int = 0


def save(path: Path, state: TrainState, weights: list[np.ndarray], optimizer: list[np.ndarray],
         config_json: str) -> None:
    with atomic_h5(path) as f:
        f.attrs["config_json"] = config_json
        f.attrs["state_json"] = json.dumps({
            "epoch": state.epoch, "batch": state.batch, "rng_state": state.rng_state,
            "tally": state.tally, "rows": state.rows, "compile_seconds": state.compile_seconds,
            "resumes": state.resumes,
        })
        f.create_dataset("step_seconds", data=np.asarray(state.step_seconds, np.float64))
        for i, w in enumerate(weights):
            f.create_dataset(f"weights/{i}", data=w)
        for i, v in enumerate(optimizer):
            f.create_dataset(f"optimizer/{i}", data=v)


def load(path: Path, config_json: str) -> tuple[TrainState, list[np.ndarray], list[np.ndarray]] | None:
    """The saved state, or None when there is none; refuses a checkpoint of another config."""
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            if f.attrs["config_json"] != config_json:
                raise CheckpointMismatch(
                    f"checkpoint {path} belongs to a different configuration; delete it to start afresh")
            raw = json.loads(f.attrs["state_json"])
            weights = [f["weights"][str(i)][()] for i in range(len(f["weights"]))]
            optimizer = [f["optimizer"][str(i)][()] for i in range(len(f["optimizer"]))]
            steps = list(f["step_seconds"][()])
    except (OSError, KeyError) as err:
        raise CheckpointCorrupt(f"checkpoint {path} is unreadable ({err}); delete it to start afresh") from None
    state = TrainState(raw["epoch"], raw["batch"], raw["rng_state"], raw["tally"], raw["rows"], steps,
                       raw["compile_seconds"], raw["resumes"])
    return state, weights, optimizer


class CheckpointMismatch(RuntimeError):
    pass


class CheckpointCorrupt(RuntimeError):
    pass
