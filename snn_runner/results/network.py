"""The trained network inside a result file: ``/model`` (and ``/model_best``).

What a reader needs to run the network again or carry it elsewhere: the
weights as the model stores them (``[n_{l-1}, n_l]``), the per-neuron
constants, the shape and capacities, the LIF constants shared by all
neurons, the readout, and the input encoding (what input id ``k`` means).
Plain NumPy and h5py: reading a network does not start TensorFlow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from snn_runner.config import READOUTS


class NoNetworkError(ValueError):
    """The file holds no trained network (not a result file, or schema version 1)."""


@dataclass
class SavedNetwork:
    sizes: tuple[int, ...]  # (n_in, n_1, ..., n_L)
    capacities: tuple[int, ...]  # K per layer n_1..n_L
    input_capacity: int  # K_in the network was trained with
    input_scale: float  # c in u <- alpha*u + (1-alpha)*c*I
    beta: float  # SuperSpike surrogate sharpness (training only)
    readout: str  # how logits are formed (config.READOUTS): spike_count = output spikes summed over time;
    # membrane_max / membrane_mean = the non-spiking output layer's membrane, max / mean over time
    weights: list[np.ndarray]  # per layer float32 [n_{l-1}, n_l]
    alpha: list[np.ndarray]  # per layer float32 [n_l]
    threshold: list[np.ndarray]  # per layer float32 [n_l]
    threshold2: list[np.ndarray]  # per layer float32 [n_l]; -inf: every neuron carries gradients
    encoding: dict = field(default_factory=dict)  # dataset, sensor_size, id_formula, dt_ms, downsample, time_steps
    epoch: int = 0  # the epoch after which these weights were taken

    @property
    def layers(self) -> int:
        return len(self.sizes) - 1


def write_network(group: h5py.Group, net: SavedNetwork) -> None:
    """Fill ``group`` (``/model`` or ``/model_best``) with ``net``."""
    group.attrs["sizes"] = np.asarray(net.sizes, np.int64)
    group.attrs["capacities"] = np.asarray(net.capacities, np.int64)
    group.attrs["input_capacity"] = int(net.input_capacity)
    group.attrs["input_scale"] = float(net.input_scale)
    group.attrs["beta"] = float(net.beta)
    group.attrs["readout"] = net.readout
    group.attrs["encoding_json"] = json.dumps(net.encoding, sort_keys=True)
    group.attrs["epoch"] = int(net.epoch)
    for l in range(net.layers):
        group.create_dataset(f"weights/layer{l + 1}", data=np.asarray(net.weights[l], np.float32))
        for name in ("alpha", "threshold", "threshold2"):
            group.create_dataset(f"{name}/layer{l + 1}", data=np.asarray(getattr(net, name)[l], np.float32))


def read_network(path: str | Path, name: str = "model") -> SavedNetwork:
    """The network stored under ``/<name>`` of the result file ``path``; NoNetworkError when absent or malformed."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if name not in f:
                version = f.attrs.get("schema_version", "?")
                raise NoNetworkError(f"{path} holds no trained network (/{name} is missing; schema version "
                                     f"{version}): only results of training runs with schema version 2 or later do")
            g = f[name]
            sizes = tuple(int(n) for n in g.attrs["sizes"])
            layers = len(sizes) - 1
            arrays = {key: [np.asarray(g[f"{key}/layer{l + 1}"][()], np.float32) for l in range(layers)]
                      for key in ("weights", "alpha", "threshold", "threshold2")}
            readout = g.attrs["readout"]
            net = SavedNetwork(
                sizes=sizes,
                capacities=tuple(int(k) for k in g.attrs["capacities"]),
                input_capacity=int(g.attrs["input_capacity"]),
                input_scale=float(g.attrs["input_scale"]),
                beta=float(g.attrs["beta"]),
                readout=readout.decode() if isinstance(readout, bytes) else str(readout),
                encoding=json.loads(g.attrs["encoding_json"]),
                epoch=int(g.attrs["epoch"]),
                **arrays,
            )
    except NoNetworkError:
        raise
    except FileNotFoundError:
        raise NoNetworkError(f"{path}: no such file") from None
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise NoNetworkError(f"{path}: /{name} is not a readable network ({type(err).__name__}: {err})") from None
    _check(net, path, name)
    return net


def _check(net: SavedNetwork, path: Path, name: str) -> None:
    problems = []
    if len(net.sizes) < 2 or len(net.capacities) != net.layers:
        problems.append(f"sizes {list(net.sizes)} and capacities {list(net.capacities)} do not match")
    for l in range(min(net.layers, len(net.weights))):
        if net.weights[l].shape != (net.sizes[l], net.sizes[l + 1]):
            problems.append(f"weights/layer{l + 1} has shape {net.weights[l].shape}, expected "
                            f"{(net.sizes[l], net.sizes[l + 1])}")
        for key in ("alpha", "threshold", "threshold2"):
            if getattr(net, key)[l].shape != (net.sizes[l + 1],):
                problems.append(f"{key}/layer{l + 1} has shape {getattr(net, key)[l].shape}")
        if not np.all(np.isfinite(net.weights[l])):
            problems.append(f"weights/layer{l + 1} holds non-finite values")
    if net.readout not in READOUTS:
        problems.append(f"unknown readout {net.readout!r}")
    if problems:
        raise NoNetworkError(f"{path}: /{name} is not a usable network: " + "; ".join(problems))
