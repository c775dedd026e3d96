"""Time one (implementation, max_activity) case in the current process."""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from snn_runner.bench.presets import BenchNetwork
from snn_runner.config import ModelConfig


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

    def to_dict(self) -> dict:
        return asdict(self)


def random_input(net: BenchNetwork, seed: int):
    """`input_events` distinct random input ids per sample and step, plus labels."""
    rng = np.random.default_rng(seed)
    b, t, k, n_in = net.batch_size, net.time_steps, net.input_events, net.sizes[0]
    # argsort of random keys = a random permutation per row; keep the first k
    ids = np.argsort(rng.random((b, t, n_in)), axis=-1)[..., :k].astype(np.int32)
    count = np.full((b, t), k, np.int32)
    labels = rng.integers(0, net.sizes[-1], size=b).astype(np.int64)
    return ids, count, labels


def measure_case(name: str, net: BenchNetwork, implementation: str, max_activity: float, steps: int,
                 warmup: int, seed: int = 0) -> CaseResult:
    import keras

    from snn_runner.model import NetworkSpec, Parameters, build_model
    from snn_runner.runner.steps import Steps
    from snn_runner.runner.train import GRAPH_MODE

    model_cfg = ModelConfig(hidden=net.sizes[1:-1], max_activity=max_activity, weight_scale=net.weight_scale)
    model_cfg.validate()
    spec = NetworkSpec.from_config(model_cfg, net.sizes[0], net.sizes[-1], net.input_events)
    params = Parameters(spec, seed)
    model = build_model(implementation, spec, params)
    step = Steps(model, params, keras.optimizers.Adam(1e-3), net.time_steps, net.input_events)
    ids, count, labels = random_input(net, seed)

    t0 = time.perf_counter()
    step.train(ids, count, labels)[0].numpy()
    compile_s = time.perf_counter() - t0
    step.evaluate(ids, count, labels)[0].numpy()
    for _ in range(warmup):
        step.train(ids, count, labels)[0].numpy()
        step.evaluate(ids, count, labels)[0].numpy()

    step_ms, forward_ms = [], []
    spikes = np.zeros(spec.layers)
    dropped = np.zeros(spec.layers)
    for _ in range(steps):
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
    rate = spikes / (steps * net.batch_size * net.time_steps * neurons)
    return CaseResult(
        implementation=implementation,
        max_activity=max_activity,
        network=name,
        sizes=list(spec.sizes),
        capacities=list(spec.capacities),
        time_steps=net.time_steps,
        batch_size=net.batch_size,
        input_events=net.input_events,
        step_ms_median=statistics.median(step_ms),
        step_ms_all=step_ms,
        forward_ms_median=statistics.median(forward_ms),
        forward_ms_all=forward_ms,
        compile_s=compile_s,
        spike_rate_per_layer=[float(r) for r in rate],
        dropped_spikes=[float(x) for x in dropped / steps],
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        mode=GRAPH_MODE,
    )
