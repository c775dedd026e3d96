"""One training run: data -> model -> epochs -> one HDF5 result file."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from snn_runner.config import RunConfig
from snn_runner.data import load_dataset
from snn_runner.data.events import EventSet
from snn_runner.model import NetworkSpec, Parameters, build_model, resolve_implementation
from snn_runner.results.store import ResultWriter

GRAPH_MODE = "tf.function graph (no XLA)"


@dataclass
class RunSummary:
    path: Path
    implementation: str
    test_accuracy: float
    test_loss: float
    epochs: int


class _Tally:
    """Sums step outputs over an epoch."""

    def __init__(self, layers: int):
        self.loss = 0.0
        self.correct = 0
        self.samples = 0
        self.spikes = np.zeros(layers)
        self.dropped = np.zeros(layers, np.int64)

    def add(self, outputs, batch: int) -> None:
        loss, correct, spikes, dropped = outputs
        self.loss += float(loss)
        self.correct += int(correct)
        self.samples += batch
        self.spikes += spikes.numpy()
        self.dropped += dropped.numpy().astype(np.int64)


def _evaluate(steps, data: EventSet, batch_size: int, layers: int) -> _Tally:
    tally = _Tally(layers)
    for ids, count, labels in data.batches(batch_size):
        tally.add(steps.evaluate(ids, count, labels), len(labels))
    return tally


def train(cfg: RunConfig, output: str | Path, log: Callable[[str], None] = print) -> RunSummary:
    """Train per ``cfg`` and write the result file ``output``; returns a summary."""
    import keras  # imported late: TensorFlow start-up is slow and not needed for --help

    from snn_runner.runner.steps import Steps

    cfg.validate()
    implementation = resolve_implementation(cfg.model.implementation)
    train_set, test_set = load_dataset(cfg.data)
    spec = NetworkSpec.from_config(cfg.model, train_set.channels, train_set.classes, train_set.capacity)
    params = Parameters(spec, cfg.train.seed)
    model = build_model(implementation, spec, params)
    optimizer = keras.optimizers.Adam(cfg.train.learning_rate)
    steps = Steps(model, params, optimizer, train_set.time_steps, train_set.capacity)
    rng = np.random.default_rng(cfg.train.seed)
    neurons = np.asarray(spec.sizes[1:], np.float64)
    log(
        f"train: {implementation} network {list(spec.sizes)} on {cfg.data.dataset} "
        f"({len(train_set)} train / {len(test_set)} test samples, T={train_set.time_steps}), "
        f"{cfg.train.epochs} epochs of batch {cfg.train.batch_size}"
    )
    step_seconds: list[float] = []
    compile_seconds = 0.0
    attrs = {"implementation": implementation}
    with ResultWriter(output, cfg.to_dict(), attrs) as writer:
        for epoch in range(1, cfg.train.epochs + 1):
            start = time.perf_counter()
            tally = _Tally(spec.layers)
            for ids, count, labels in train_set.batches(cfg.train.batch_size, rng.permutation(len(train_set))):
                t0 = time.perf_counter()
                outputs = steps.train(ids, count, labels)
                tally.add(outputs, len(labels))  # .numpy() inside waits for the step
                elapsed = time.perf_counter() - t0
                if epoch == 1 and compile_seconds == 0.0:
                    compile_seconds = elapsed
                else:
                    step_seconds.append(elapsed)
            test = _evaluate(steps, test_set, cfg.train.batch_size, spec.layers)
            seconds = time.perf_counter() - start
            rate = tally.spikes / (tally.samples * train_set.time_steps * neurons)
            row = {
                "epoch": epoch,
                "train_loss": tally.loss / tally.samples,
                "train_accuracy": tally.correct / tally.samples,
                "test_loss": test.loss / test.samples,
                "test_accuracy": test.correct / test.samples,
                "epoch_seconds": seconds,
                "spike_rate": rate,
                "dropped_spikes": tally.dropped,
            }
            writer.add_epoch(row)
            log(
                f"epoch {epoch}/{cfg.train.epochs}  loss {row['train_loss']:.4f}  "
                f"acc {row['train_accuracy']:.3f}  test_loss {row['test_loss']:.4f}  "
                f"test_acc {row['test_accuracy']:.3f}  "
                f"rate {'/'.join(f'{r:.3f}' for r in rate)}  "
                f"dropped {int(tally.dropped.sum())}  {seconds:.1f}s"
            )
        writer.set_timing(step_seconds, compile_seconds, GRAPH_MODE)
    return RunSummary(Path(output), implementation, row["test_accuracy"], row["test_loss"], cfg.train.epochs)
