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
    best: dict = field(default_factory=dict)  # best validation epoch so far: epoch, accuracy, loss


def save(path: Path, state: TrainState, weights: list[np.ndarray], optimizer: list[np.ndarray],
         config_json: str) -> None:
    """Write the state whole; a failed write (full disk) raises and leaves the previous checkpoint."""
    weights = [np.asarray(w) for w in weights]
    optimizer = [np.asarray(v) for v in optimizer]
    state_json = json.dumps({
        "epoch": state.epoch, "batch": state.batch, "rng_state": state.rng_state,
        "tally": state.tally, "rows": state.rows, "compile_seconds": state.compile_seconds,
        "resumes": state.resumes, "best": state.best,
    })
    steps = np.asarray(state.step_seconds, np.float64)

    def verify(back: h5py.File) -> None:
        # Read everything back: a checkpoint that resumes wrongly is worse than none.
        if back.attrs["config_json"] != config_json or back.attrs["state_json"] != state_json:
            raise ValueError("attributes differ")
        if back.attrs.get("complete") != 1:
            raise ValueError("no 'complete' attribute")
        for group, arrays in (("weights", weights), ("optimizer", optimizer)):
            if len(back[group]) != len(arrays) or not all(
                    np.array_equal(back[group][str(i)][()], a) for i, a in enumerate(arrays)):
                raise ValueError(f"{group} differ")
        if not np.array_equal(back["step_seconds"][()], steps):
            raise ValueError("step_seconds differ")

    with atomic_h5(path, verify=verify) as f:
        f.attrs["config_json"] = config_json
        f.attrs["state_json"] = state_json
        f.create_dataset("step_seconds", data=steps)
        weights_group, optimizer_group = f.create_group("weights"), f.create_group("optimizer")
        for i, w in enumerate(weights):
            weights_group.create_dataset(str(i), data=w)
        for i, v in enumerate(optimizer):
            optimizer_group.create_dataset(str(i), data=v)
        f.attrs["complete"] = 1  # last


def _fail(path: Path, why: str) -> CheckpointCorrupt:
    return CheckpointCorrupt(f"checkpoint {path} is unusable ({why}); delete it to start afresh")


def _arrays(f: h5py.File, path: Path, name: str) -> list[np.ndarray]:
    group = f.get(name)
    if not isinstance(group, h5py.Group):
        raise _fail(path, f"no {name} group")
    out = []
    for i in range(len(group)):
        item = group.get(str(i))
        if not isinstance(item, h5py.Dataset):
            raise _fail(path, f"{name}/{i} missing")
        value = item[()]
        if np.asarray(value).dtype.kind not in "fiub":
            raise _fail(path, f"{name}/{i} is not a numeric array")
        out.append(value)
    return out


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"a {type(value).__name__}, not text")


def _int(raw: dict, key: str) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{key} is {value!r}, not a count")
    return value


def _numeric(value) -> bool:
    if isinstance(value, list):
        return all(_numeric(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load(path: Path, config_json: str) -> tuple[TrainState, list[np.ndarray], list[np.ndarray]] | None:
    """The saved state, or None when there is none; refuses a checkpoint of another config.

    Anything unexpected in the file (truncated, not HDF5, another kind of
    file, missing objects, wrong types) raises ``CheckpointCorrupt`` with a
    one-line message naming the file.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            if "config_json" not in f.attrs or "state_json" not in f.attrs:
                raise _fail(path, "not a checkpoint: no config_json/state_json attributes")
            try:
                saved_config = _text(f.attrs["config_json"])
            except TypeError as err:
                raise _fail(path, f"config_json is {err}") from None
            if saved_config != config_json:
                raise CheckpointMismatch(
                    f"checkpoint {path} belongs to a different configuration; delete it to start afresh")
            try:
                raw = json.loads(_text(f.attrs["state_json"]))
            except (TypeError, ValueError) as err:
                raise _fail(path, f"state_json is not JSON: {str(err).splitlines()[0]}") from None
            weights = _arrays(f, path, "weights")
            optimizer = _arrays(f, path, "optimizer")
            if not weights:
                raise _fail(path, "no weights")
            item = f.get("step_seconds")
            if not isinstance(item, h5py.Dataset):
                raise _fail(path, "step_seconds missing")
            steps = np.asarray(item[()], np.float64).reshape(-1).tolist()
    except (CheckpointCorrupt, CheckpointMismatch):
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _fail(path, f"unreadable: {first}") from None
    try:
        if not isinstance(raw, dict):
            raise TypeError("state_json is not an object")
        state = TrainState(_int(raw, "epoch"), _int(raw, "batch"), raw["rng_state"], raw["tally"],
                           raw["rows"], steps, float(raw["compile_seconds"]), _int(raw, "resumes"),
                           raw.get("best", {}))
        if not isinstance(state.best, dict):
            raise TypeError("best must be an object")
        if state.epoch < 1:
            raise TypeError(f"epoch is {state.epoch}")
        if not isinstance(state.rng_state, dict) or not isinstance(state.tally, dict):
            raise TypeError("rng_state and tally must be objects")
        if not isinstance(state.rows, list) or not all(isinstance(r, dict) for r in state.rows):
            raise TypeError("rows must be a list of objects")
        for where, values in [("tally", state.tally)] + [(f"rows[{i}]", r) for i, r in enumerate(state.rows)]:
            for key, value in values.items():
                if not _numeric(value):
                    raise TypeError(f"{where}.{key} is {value!r}, not a number")
        import numpy.random as npr  # the data-order RNG must be restorable

        rng = npr.default_rng()
        rng.bit_generator.state = state.rng_state
    except KeyError as err:
        raise _fail(path, f"state_json lacks {err}") from None
    except (TypeError, ValueError, AttributeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _fail(path, f"state_json: {first}") from None
    return state, weights, optimizer


class CheckpointMismatch(RuntimeError):
    pass


class CheckpointCorrupt(RuntimeError):
    pass
