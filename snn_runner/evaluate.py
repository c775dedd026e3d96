"""Run a trained network again: the network of a result file on a split of a dataset.

By default everything comes from the result file itself (its recorded
configuration and ``/model``), so evaluating a run on its own test split
reproduces its final test accuracy. The dataset, the split, the
implementation and the hidden capacity can be changed, to carry one trained
network to other data or to measure it at other capacities.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from snn_runner.config import ConfigError, RunConfig
from snn_runner.results.network import NoNetworkError, SavedNetwork, read_network


@dataclass
class Evaluation:
    result: str
    network: str  # /model or /model_best
    dataset: str
    split: str
    implementation: str
    max_activity: float
    samples: int
    accuracy: float
    loss: float
    spike_rate: list[float] = field(default_factory=list)  # per layer, spikes per neuron per step
    dropped_spikes: list[int] = field(default_factory=list)  # per layer, summed over the split

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def recorded_config(path: Path) -> RunConfig:
    """The configuration a result file records (``config_json``)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = json.loads(f.attrs["config_json"])
    except FileNotFoundError:
        raise NoNetworkError(f"{path}: no such file") from None
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise NoNetworkError(f"{path} is not a result file of snn-runner ({type(err).__name__}: {err})") from None
    try:
        return RunConfig.from_dict(raw, f"{path}: config_json")
    except ConfigError as err:
        raise NoNetworkError(f"{path}: its recorded configuration is not usable: {err}") from None


def load_into(net: SavedNetwork, spec, params) -> None:
    """Put a saved network's weights and per-neuron constants into freshly built ``params``."""
    import tensorflow as tf

    for var, w in zip(params.weights, net.weights):
        var.assign(w)
    params.alpha = [tf.constant(a) for a in net.alpha]
    params.threshold = [tf.constant(t) for t in net.threshold]
    params.threshold2 = [tf.constant(t) for t in net.threshold2]


def check_sizes(net: SavedNetwork, sizes: tuple[int, ...], what: str) -> None:
    if tuple(net.sizes) != tuple(sizes):
        raise ConfigError(f"the trained network has sizes {list(net.sizes)} but {what} needs {list(sizes)}; "
                          "use data and hidden sizes that match the trained network")


def evaluate(path: str | Path, dataset: str | None = None, data_dir: str | None = None, split: str = "test",
             implementation: str | None = None, max_activity: float | None = None, best: bool = False,
             log: Callable[[str], None] = print) -> Evaluation:
    from snn_runner.backend import get_backend
    from snn_runner.data import load_splits
    from snn_runner.model import NetworkSpec, Parameters, build_model, resolve
    from snn_runner.model.steps import Steps
    from snn_runner.runner.train import evaluate_set

    path = Path(path)
    name = "model_best" if best else "model"
    cfg = recorded_config(path)
    net = read_network(path, name)
    data_changes = {k: v for k, v in (("dataset", dataset), ("data_dir", data_dir and str(data_dir))) if v}
    model_changes = {k: v for k, v in (("implementation", implementation), ("max_activity", max_activity))
                     if v is not None}
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data_changes),
                              model=dataclasses.replace(cfg.model, **model_changes))
    cfg = resolve(cfg.validate())
    backend = get_backend(cfg.train.backend)
    sets = load_splits(cfg.data, log)
    if split not in sets:
        raise ConfigError(f"--split: {cfg.data.dataset} has no {split!r} split here (it has {', '.join(sets)}); "
                          "a validation split exists only with data.validation_fraction > 0")
    chosen = sets[split]
    spec = NetworkSpec.from_config(cfg.model, chosen.channels, chosen.classes, chosen.capacity)
    check_sizes(net, spec.sizes, f"{cfg.data.dataset} with hidden {list(cfg.model.hidden)}")
    with backend.scope():
        params = Parameters(spec, cfg.train.seed)
        load_into(net, spec, params)
        built = build_model(cfg.model.implementation, spec, params, backend)
    steps = Steps(built, params, None, chosen.time_steps, chosen.capacity, None, backend)
    tally = evaluate_set(steps, chosen, cfg.train.batch_size, spec.layers)
    neurons = np.asarray(spec.sizes[1:], np.float64)
    rate = tally.spikes / (tally.samples * chosen.time_steps * neurons)
    return Evaluation(str(path), f"/{name}", cfg.data.dataset, split, cfg.model.implementation,
                      cfg.model.max_activity, tally.samples, tally.correct / tally.samples, tally.loss / tally.samples,
                      [float(r) for r in rate], [int(d) for d in tally.dropped])
