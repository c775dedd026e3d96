"""Time one benchmark case (one resolved RunConfig) in the current process."""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from snn_runner.bench.roofline import calibrate, step_work
from snn_runner.config import BenchConfig, RunConfig


@dataclass
class CaseResult:
    implementation: str
    max_activity: float
    network: str
    sizes: list[int]
    capacities: list[int]
    time_steps: int
    batch_size: int
    input_events: int
    step_ms_median: float
    step_ms_all: list[float]
    forward_ms_median: float
    forward_ms_all: list[float]
    compile_s: float
    spike_rate_per_layer: list[float]
    dropped_spikes: list[float]  # per layer, per training step (mean over timed steps)
    peak_rss_mb: float
    mode: str
    # synaptic operations per sample and weight matrix, as Tally.synops counts them in training:
    # [0] input events x n_1, [l] spikes of hidden layer l x n_{l+1} (the readout's reach no synapse)
    synops_per_sample: list[float]
    synops_total: float
    threads: int = 0  # threads of the op pool the case ran with
    # the step's unavoidable work (snn_runner.bench.roofline; sparse cases only, else 0)
    row_ops: float = 0.0
    neuron_updates: float = 0.0
    achieved_gops: float = 0.0  # (row_ops + neuron_updates) / step time, 1e9/s
    peak_gops: float = 0.0  # the calibration op's gather-add rate in the same process, 1e9/s
    roofline_fraction: float = 0.0  # achieved_gops / peak_gops

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Case:
    """A benchmark case ready to run: its compiled steps and the data they take."""

    spec: object  # NetworkSpec
    params: object  # Parameters
    backend: object
    step: object  # Steps
    data: object  # the random events (ids, count, labels, time_steps, capacity)
    threads: int


def prepare_case(cfg: RunConfig, bench: BenchConfig) -> Case:
    """Build the model, optimizer and compiled steps of ``cfg`` as the bench times them (nothing run yet)."""
    from snn_runner import compat
    from snn_runner.backend import get_backend
    from snn_runner.data.random_events import random_events
    from snn_runner.model import NetworkSpec, Parameters, build_model
    from snn_runner.model.steps import Steps

    cfg.validate()
    threads = set_pool_threads(bench.threads)
    backend = get_backend(cfg.train.backend)
    data = random_events(cfg.data, cfg.train.batch_size)
    spec = NetworkSpec.from_config(cfg.model, data.channels, data.classes, data.capacity)
    with backend.scope():
        params = Parameters(spec, cfg.train.seed)
        model = build_model(cfg.model.implementation, spec, params, backend)
        # training's optimizer: on the CPU Adam with the fused update (snn_runner.model.optimizers)
        # where Keras is Keras 3; Keras's own Adam on the IPU and under tf.keras 2.6
        if cfg.train.backend == "cpu" and compat.fused_adam_supported():
            from snn_runner.model.optimizers import FusedAdam

            optimizer = FusedAdam(1e-3)
        else:
            optimizer = compat.keras().optimizers.Adam(1e-3)
    step = Steps(model, params, optimizer, data.time_steps, data.capacity, None, backend)
    return Case(spec, params, backend, step, data, threads)


def measure_case(cfg: RunConfig, bench: BenchConfig) -> CaseResult:
    """Time ``bench.steps`` training and forward steps of the configuration ``cfg``.

    ``cfg`` is the timed configuration itself (``bench.apply`` of the task's
    config, implementation resolved), so the result file's recorded config
    describes exactly what ran.
    """
    from snn_runner.model import build_model

    case = prepare_case(cfg, bench)
    spec, params, backend, step, data, threads = (case.spec, case.params, case.backend, case.step, case.data,
                                                  case.threads)
    ids, count, labels = data.ids, data.count, data.labels

    t0 = time.perf_counter()
    step.train(ids, count, labels)[0].numpy()
    compile_s = time.perf_counter() - t0
    step.evaluate(ids, count, labels)[0].numpy()
    for _ in range(bench.warmup):
        step.train(ids, count, labels)[0].numpy()
        step.evaluate(ids, count, labels)[0].numpy()

    step_ms, forward_ms = [], []
    spikes = np.zeros(spec.layers)
    dropped = np.zeros(spec.layers)
    for _ in range(bench.steps):
        t0 = time.perf_counter()
        _, _, s, d = step.train(ids, count, labels)
        s, d = s.numpy(), d.numpy()  # waits for the step to finish
        step_ms.append(1e3 * (time.perf_counter() - t0))
        spikes += s
        dropped += d
        t0 = time.perf_counter()
        step.evaluate(ids, count, labels)[0].numpy()
        forward_ms.append(1e3 * (time.perf_counter() - t0))
    neurons = np.asarray(spec.sizes[1:], np.float64)
    rate = spikes / (bench.steps * len(labels) * data.time_steps * neurons)
    work = {"row_ops": 0.0, "neuron_updates": 0.0, "total": 0.0}
    if cfg.model.implementation != "dense" and cfg.train.backend == "cpu":
        # the sparse implementations select the same slots, so the fused model counts them for both
        slots = build_model("sparse_layer", spec, params, backend).slot_fill(ids, count).numpy()
        events = np.concatenate([[float(np.sum(count))], spikes[:-1] / bench.steps])
        work = step_work(spec.sizes, data.time_steps, len(labels), events, slots)
    achieved = work["total"] / (statistics.median(step_ms) * 1e-3) / 1e9
    # the machine's rate, measured with the same pool right after the case's own steps
    peak = calibrate()["gops"] if work["total"] else 0.0
    synops = synops_from_spikes(np.sum(count) / len(labels), spikes / (bench.steps * len(labels)), spec.sizes)
    return CaseResult(
        implementation=cfg.model.implementation,
        max_activity=cfg.model.max_activity,
        network=bench.network,
        sizes=list(spec.sizes),
        capacities=list(spec.capacities),
        time_steps=data.time_steps,
        batch_size=len(labels),
        input_events=data.capacity,
        step_ms_median=statistics.median(step_ms),
        step_ms_all=step_ms,
        forward_ms_median=statistics.median(forward_ms),
        forward_ms_all=forward_ms,
        compile_s=compile_s,
        spike_rate_per_layer=[float(r) for r in rate],
        dropped_spikes=[float(x) for x in dropped / bench.steps],
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        mode=step.mode,
        synops_per_sample=[float(x) for x in synops],
        synops_total=float(np.sum(synops)),
        threads=threads,
        row_ops=work["row_ops"],
        neuron_updates=work["neuron_updates"],
        achieved_gops=achieved,
        peak_gops=peak,
        roofline_fraction=achieved / peak if peak else 0.0,
    )


def set_pool_threads(threads: int) -> int:
    """Give TensorFlow's op pool ``threads`` threads (0: leave it at one per core); the count in use.

    It must happen before TensorFlow runs its first op, which is why every
    bench case runs in a fresh process.
    """
    import os

    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:
            if tf.config.threading.get_intra_op_parallelism_threads() != threads:
                raise RuntimeError(f"bench.threads={threads}: TensorFlow has already started in this process "
                                   "with another pool size; run the case in a fresh process") from None
        return threads
    return tf.config.threading.get_intra_op_parallelism_threads() or len(os.sched_getaffinity(0))


def synops_from_spikes(input_events: float, spikes, sizes) -> np.ndarray:
    """[L] synaptic operations per sample: events entering weight matrix l times its fan-out n_{l+1}.

    ``input_events`` and ``spikes`` ([L], hidden layers then the readout) are per sample;
    the same count as ``Tally.synops`` of a training epoch, so bench and train figures compare.
    """
    events = np.concatenate([[float(input_events)], np.asarray(spikes, np.float64)[:-1]])
    return events * np.asarray(sizes[1:], np.float64)


def format_synops(total) -> str:
    """A SynOps count with an SI prefix (``4.7 M``): bench and paper-size networks differ by orders of magnitude."""
    for factor, prefix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(total) >= factor:
            return f"{total / factor:.3g}{prefix}"
    return f"{total:.3g}"
