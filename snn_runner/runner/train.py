"""One training run: data -> model -> epochs -> the run's record.

The run saves a checkpoint after every epoch (and between two steps when
asked to stop by a signal); started again with the same configuration and
checkpoint path it resumes from there and ends with the same record as an
uninterrupted run. Writing the record is the caller's job (snn_runner.dispatch),
so the runner never reaches into the results layer.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from snn_runner import compat
from snn_runner.config import ConfigError, RunConfig
from snn_runner.data import load_splits
from snn_runner.data.events import EventSet
from snn_runner.runner import checkpoint
from snn_runner.runner.budget import check_memory
from snn_runner.runner.checkpoint import TrainState
from snn_runner.runner.recipe import annealing, make_optimizer, patience_exhausted, threshold2_fraction_at
from snn_runner.runner.signals import Interrupted, StopOnSignal
from snn_runner.runner.progress import EpochProgress

RECORDED_SAMPLES = 4  # test samples whose spikes are stored in the result file


@dataclass
class TrainRecord:
    """Everything the result file of a finished run holds, as plain values."""

    rows: list[dict]  # per-epoch metrics
    step_seconds: list[float]
    compile_seconds: float
    mode: str  # how the steps were compiled
    spikes: dict[str, np.ndarray]  # recorded test samples in the sparse format
    attrs: dict = field(default_factory=dict)  # implementation, sizes, capacities, data report, resumes
    network: dict = field(default_factory=dict)  # the trained network (fields of results.network.SavedNetwork)
    best_network: dict | None = None  # the same after the best validation epoch, when there is a validation split

    @property
    def test_accuracy(self) -> float:
        return self.rows[-1]["test_accuracy"]


class Tally:
    """Sums step outputs over an epoch."""

    def __init__(self, layers: int, saved: dict | None = None):
        saved = saved or {}
        self.loss = saved.get("loss", 0.0)
        self.correct = saved.get("correct", 0)
        self.samples = saved.get("samples", 0)
        self.spikes = np.asarray(saved.get("spikes", np.zeros(layers)), np.float64)
        self.dropped = np.asarray(saved.get("dropped", np.zeros(layers)), np.int64)
        self.input_events = saved.get("input_events", 0)  # input spikes of the batches (for SynOps)

    def add(self, outputs, batch: int, input_events: int = 0) -> None:
        loss, correct, spikes, dropped = outputs
        self.input_events += int(input_events)
        self.loss += float(loss)
        self.correct += int(correct)
        self.samples += batch
        self.spikes += spikes.numpy()
        self.dropped += dropped.numpy().astype(np.int64)

    def to_dict(self) -> dict:
        return {"loss": self.loss, "correct": self.correct, "samples": self.samples,
                "spikes": self.spikes.tolist(), "dropped": self.dropped.tolist(), "input_events": self.input_events}

    def synops(self, sizes) -> np.ndarray:
        """Synaptic operations per sample, per weight matrix: events of layer l (0: input) x n_{l+1}.

        [L]: column 0 the input events times n_1, column l the transmitted spikes
        of hidden layer l times n_{l+1}; the readout's spikes reach no synapse.
        """
        events = np.concatenate([[float(self.input_events)], self.spikes[:-1]])
        return events * np.asarray(sizes[1:], np.float64) / max(1, self.samples)


def evaluate_set(steps, data: EventSet, batch_size: int, layers: int, rank: int = 0, world_size: int = 1) -> Tally:
    """Sums of the evaluation step over ``data``; with several workers each evaluates its share of every batch."""
    tally = Tally(layers)
    for ids, count, labels in data.batches(batch_size):
        part = share(len(labels), rank, world_size) if world_size > 1 else slice(None)
        tally.add(steps.evaluate(ids[part], count[part], labels[part]), len(labels))
    return tally


def share(batch: int, rank: int, world_size: int) -> slice:
    """Worker ``rank``'s part of a global batch of ``batch`` samples: contiguous, in the global order.

    The first ``batch % world_size`` workers take one sample more; a worker may
    get none in a short last batch (its step then adds nothing to the sums).
    """
    base, extra = divmod(batch, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def _sparse_record(trains: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Dense 0/1 spikes [B, T, n] -> sparse (ids [B, T, K] padded with -1, count [B, T])."""
    count = trains.sum(axis=-1).astype(np.int32)
    k = max(1, int(count.max()))
    ids = np.full(count.shape + (k,), -1, np.int32)
    for b, t, i in zip(*np.nonzero(trains)):
        ids[b, t, np.count_nonzero(ids[b, t] >= 0)] = i
    return ids, count


def _record_spikes(steps, data: EventSet) -> dict[str, np.ndarray]:
    n = min(RECORDED_SAMPLES, len(data))
    record = {"sample_index": np.arange(n), "labels": data.labels[:n],
              "input_ids": data.ids[:n], "input_count": data.count[:n]}
    for l, train in enumerate(steps.spike_trains(data.ids[:n], data.count[:n]), start=1):
        record[f"layer{l}_ids"], record[f"layer{l}_count"] = _sparse_record(train.numpy())
    return record


def network_record(spec, params, encoding: dict, epoch: int) -> dict:
    """The trained network as plain arrays: what the result file keeps under /model."""
    return {"sizes": tuple(spec.sizes), "capacities": tuple(spec.capacities), "input_capacity": spec.input_capacity,
            "input_scale": spec.lif.input_scale, "beta": spec.lif.beta, "readout": spec.readout,
            "weights": [w.numpy() for w in params.weights], "alpha": [np.asarray(a) for a in params.alpha],
            "threshold": [np.asarray(t) for t in params.threshold],
            "threshold2": [np.array(tf_value(t)) for t in params.threshold2], "encoding": encoding, "epoch": epoch}


def tf_value(t):
    """A tensor's or variable's value as a NumPy array (a copy for variables: theta2 may change later)."""
    return t.numpy() if hasattr(t, "numpy") else t


def _threshold2_arrays(spec, fraction: float) -> list[np.ndarray]:
    """Per layer theta2 for a hidden-layer carrier fraction (the readout's is always -inf)."""
    return [np.full(n, fraction * spec.lif.threshold, np.float32) for n in spec.sizes[1:-1]] + [
        np.full(spec.sizes[-1], -np.inf, np.float32)]


def train(cfg: RunConfig, ckpt_path: str | Path, log: Callable[[str], None] = print,
          stop: StopOnSignal | None = None, init=None, workers=None) -> TrainRecord:
    """Train per ``cfg``, checkpointing to ``ckpt_path``; returns the run's record.

    ``cfg.model.implementation`` must be resolved (not ``auto``). ``init``
    (a trained network with ``sizes`` and ``weights``, from
    ``train.init_from``) replaces the random initial weights. Raises
    ``Interrupted`` (after saving a checkpoint) when ``stop`` reports a
    signal; calling again with the same arguments resumes.

    ``workers`` (a ``snn_runner.distribute.Workers`` of more than one) makes
    this process one worker of a data-parallel run: it computes its share of
    every global batch, the gradients are all-reduced, and only rank 0 writes
    the checkpoint. Every worker returns the same record.
    """
    if workers is None or workers.world_size == 1:
        return _run(cfg, ckpt_path, log, stop, init, None)
    if cfg.train.backend != "cpu":
        # the IPU runs inside its own IPUStrategy, which does not combine with the multi-worker one
        raise ConfigError(f"train.backend: {cfg.train.backend} cannot run with several workers; use the cpu "
                          "backend, or one worker (resources.nodes and resources.tasks_per_node 1, no --workers)")
    from snn_runner.distribute.strategy import failures_named

    with failures_named(workers):
        return _run(cfg, ckpt_path, log, stop, init, workers)


def _run(cfg: RunConfig, ckpt_path, log, stop, init, workers) -> TrainRecord:
    # TensorFlow is imported late (through these): its start-up is slow and not needed for --help
    from snn_runner.backend import get_backend
    from snn_runner.model import NetworkSpec, Parameters, build_model
    from snn_runner.model.steps import Steps, capacity_penalty, rate_penalty

    cfg.validate()
    # The backend comes first: a missing IPU stack fails here, before any data or model work.
    backend = get_backend(cfg.train.backend)
    check_memory(cfg)  # before the data is generated or loaded: a run that cannot fit is refused, not swapped
    ckpt_path = Path(ckpt_path)
    identity_json = json.dumps(cfg.identity(), sort_keys=True)
    implementation = cfg.model.implementation
    sets = load_splits(cfg.data, log)
    train_set, validation_set, test_set = sets["train"], sets.get("validation"), sets["test"]
    spec = NetworkSpec.from_config(cfg.model, train_set.channels, train_set.classes, train_set.capacity)
    batch_size = cfg.train.batch_size
    steps_per_epoch = -(-len(train_set) // batch_size)
    anneal = annealing(cfg.model)
    strategy = collectives = None
    rank, world_size = 0, 1
    if workers is not None and workers.world_size > 1:
        from snn_runner.distribute.strategy import Collectives, make_strategy

        rank, world_size = workers.rank, workers.world_size
        strategy = make_strategy(workers)
        collectives = Collectives(strategy)
        if stop is not None:
            stop.reclaim()
    with backend.scope(), (strategy.scope() if strategy is not None else contextlib.nullcontext()):
        params = Parameters(spec, cfg.train.seed, threshold2_variable=anneal)
        model = build_model(implementation, spec, params, backend)
        optimizer = make_optimizer(cfg.train, steps_per_epoch)
        compat.build_optimizer(optimizer, params.trainable)
    penalty = None
    if cfg.train.rate_strength > 0:
        penalty = rate_penalty(cfg.train.rate_low, cfg.train.rate_high, cfg.train.rate_strength,
                               train_set.time_steps, spec.sizes[1:1 + spec.spiking_layers])
    capacity = None
    if cfg.train.capacity_strength > 0:
        capacity = capacity_penalty(cfg.train.capacity_strength, cfg.train.capacity_target, spec.capacities[:-1])
    steps = Steps(model, params, optimizer, train_set.time_steps, train_set.capacity, penalty, backend,
                  cfg.train.clip_norm, capacity, strategy)
    neurons = np.asarray(spec.sizes[1:], np.float64)

    if init is not None:
        if tuple(init.sizes) != tuple(spec.sizes):
            raise ConfigError(f"train.init_from: {cfg.train.init_from} holds a network of sizes {list(init.sizes)}, "
                              f"but this run's network is {list(spec.sizes)}; use matching data and hidden sizes")
        for var, value in zip(params.weights, init.weights):
            var.assign(value)
        log(f"init: weights from {cfg.train.init_from} (epoch {init.epoch})")
    state = TrainState(rng_state=np.random.default_rng(cfg.train.seed).bit_generator.state)
    best_weights = None  # weights after the best validation epoch (the test set never selects a model)
    if collectives is not None:
        # rank 0 holds the run lock by now, so a previous instance has finished saving: all read the same file
        collectives.barrier()
    loaded = checkpoint.load(ckpt_path, identity_json)
    if loaded is not None:
        state, weights, slots = loaded
        # the best-validation weights, when there are some, follow the current ones
        weights, best_weights = weights[:len(params.trainable)], weights[len(params.trainable):] or None
        expected = [tuple(v.shape) for v in (*params.trainable, *(params.trainable if best_weights else ()),
                                             *compat.optimizer_variables(optimizer))]
        found = [tuple(np.shape(v)) for v in (*weights, *(best_weights or ()), *slots)]
        if found != expected:
            raise checkpoint.CheckpointCorrupt(f"checkpoint {ckpt_path} holds arrays of shapes {found}, this run needs "
                                               f"{expected}; delete it to start afresh")
        for var, value in zip(params.trainable, weights):
            var.assign(value)
        for var, value in zip(compat.optimizer_variables(optimizer), slots):
            var.assign(value)
        state.resumes += 1
        log(f"resume: from {ckpt_path} at epoch {state.epoch}, batch {state.batch}")

    def save_state() -> None:
        if rank != 0:
            return  # one writer: the other workers hold the same state
        checkpoint.save(ckpt_path, state, [w.numpy() for w in params.trainable] + (best_weights or []),
                        [v.numpy() for v in compat.optimizer_variables(optimizer)], identity_json)

    log(f"train: {implementation} on {backend.name}, network {list(spec.sizes)} capacities "
        f"{list(spec.capacities)} on {cfg.data.dataset} ({len(train_set)} train / {len(test_set)} test samples, "
        f"T={train_set.time_steps}), {cfg.train.epochs} epochs of {steps_per_epoch} steps of batch {batch_size}")
    def stop_requested() -> bool:
        asked = stop is not None and stop.requested
        return collectives.any(asked) if collectives is not None else asked

    def signal_name() -> str:
        return f"signal {stop.received}" if stop is not None and stop.received else "a signal to another worker"

    traced = False
    for epoch in range(state.epoch, cfg.train.epochs + 1):
        if patience_exhausted(state.rows, state.best, cfg.train.patience):
            break  # (checked here too, so a run stopped just after its last epoch's checkpoint ends alike)
        if anneal:
            params.set_threshold2(threshold2_fraction_at(cfg.model, epoch) * spec.lif.threshold)
        rng = np.random.default_rng()
        rng.bit_generator.state = state.rng_state
        order = rng.permutation(len(train_set))
        start = time.perf_counter()
        tally = Tally(spec.layers, state.tally)
        progress = EpochProgress(cfg.train.progress_s, epoch, cfg.train.epochs, steps_per_epoch, state.batch, log)
        for i, (ids, count, labels) in enumerate(train_set.batches(batch_size, order[state.batch * batch_size:]),
                                                 start=state.batch):
            t0 = time.perf_counter()
            # .numpy() inside waits for the step
            if strategy is None:
                outputs = steps.train(ids, count, labels)
                stopping = stop is not None and stop.requested
            else:
                part = share(len(labels), rank, world_size)
                *outputs, asked = steps.train(ids[part], count[part], labels[part], float(len(labels)),
                                              float(stop is not None and stop.requested))
                stopping = float(asked) > 0  # any worker's request: all stop after this same step
            tally.add(outputs, len(labels), int(np.sum(count)))
            elapsed = time.perf_counter() - t0
            if not traced:  # the first step of a process traces and builds the graph
                traced = True
                state.compile_seconds = state.compile_seconds or elapsed
            else:
                state.step_seconds.append(elapsed)
            state.batch = i + 1
            progress.step(i + 1, len(labels), tally.loss / tally.samples)
            if stopping:
                state.tally = tally.to_dict()
                save_state()
                raise Interrupted(f"stopped by {signal_name()} in epoch {epoch} after batch {i + 1}; "
                                  f"checkpoint saved to {ckpt_path}; run the same command again to resume")
        test = evaluate_set(steps, test_set, batch_size, spec.layers, rank, world_size)
        rate = tally.spikes / (tally.samples * train_set.time_steps * neurons)
        row = {
            "epoch": epoch,
            "train_loss": tally.loss / tally.samples,
            "train_accuracy": tally.correct / tally.samples,
            "test_loss": test.loss / test.samples,
            "test_accuracy": test.correct / test.samples,
            "epoch_seconds": time.perf_counter() - start,
            "spike_rate": rate.tolist(),
            "dropped_spikes": tally.dropped.tolist(),
            "synops": tally.synops(spec.sizes).tolist(),
        }
        if validation_set is not None:
            val = evaluate_set(steps, validation_set, batch_size, spec.layers, rank, world_size)
            row["validation_loss"] = val.loss / val.samples
            row["validation_accuracy"] = val.correct / val.samples
            # best: highest validation accuracy, then lowest validation loss, then the earliest epoch
            if not state.best or ((row["validation_accuracy"], -row["validation_loss"])
                                  > (state.best["accuracy"], -state.best["loss"])):
                state.best = {"epoch": epoch, "accuracy": row["validation_accuracy"], "loss": row["validation_loss"]}
                best_weights = [w.numpy() for w in params.trainable]
        state.rows.append(row)
        state.epoch, state.batch, state.tally = epoch + 1, 0, {}
        state.rng_state = rng.bit_generator.state
        save_state()
        val_text = f"val_acc {row['validation_accuracy']:.3f}  " if "validation_accuracy" in row else ""
        log(
            f"epoch {epoch}/{cfg.train.epochs}  loss {row['train_loss']:.4f}  "
            f"acc {row['train_accuracy']:.3f}  test_loss {row['test_loss']:.4f}  "
            f"test_acc {row['test_accuracy']:.3f}  {val_text}"
            f"rate {'/'.join(f'{r:.3f}' for r in rate)}  "
            f"dropped {int(tally.dropped.sum())}  synops {sum(row['synops']):.4g}  {row['epoch_seconds']:.1f}s"
        )
        if patience_exhausted(state.rows, state.best, cfg.train.patience) and epoch < cfg.train.epochs:
            log(f"early stop: no better validation accuracy for {cfg.train.patience} epochs since epoch "
                f"{state.best['epoch']}")
        if stop_requested():
            raise Interrupted(f"stopped by {signal_name()} after epoch {epoch}; checkpoint saved to "
                              f"{ckpt_path}; run the same command again to resume")

    data_report = {"train": getattr(train_set, "report", {}), "test": getattr(test_set, "report", {})}
    attrs = {"data_report_json": json.dumps(data_report, sort_keys=True, default=str),
             "implementation": implementation, "backend": backend.name, "resumes": state.resumes,
             "sizes": np.asarray(spec.sizes), "capacities": np.asarray(spec.capacities)}
    if state.best:  # the test accuracy of the epoch /model_best holds (the test set never selects it)
        attrs["best_epoch"] = int(state.best["epoch"])
        attrs["best_test_accuracy"] = float(state.rows[state.best["epoch"] - 1]["test_accuracy"])
    from snn_runner.data.encoding import input_encoding

    encoding = input_encoding(cfg.data, train_set.channels)
    network = network_record(spec, params, encoding, len(state.rows))
    best = None
    if best_weights is not None:
        best = {**network, "weights": best_weights, "epoch": state.best["epoch"]}
        if anneal:  # the theta2 the best epoch trained with
            best["threshold2"] = _threshold2_arrays(spec, threshold2_fraction_at(cfg.model, state.best["epoch"]))
    return TrainRecord(state.rows, state.step_seconds, state.compile_seconds, steps.mode,
                       _record_spikes(steps, test_set), attrs, network, best)
