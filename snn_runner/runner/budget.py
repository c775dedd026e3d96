"""Will a run fit in memory? An estimate of its peak, checked before anything is allocated.

``check_memory(cfg)`` is called before the dataset is generated or loaded: a
hidden layer of 3e9 neurons, ``channels: 1e8`` or ``time_steps: 100000`` with
the dense implementation is refused in milliseconds with the estimated size and
what the machine has, instead of driving the machine out of memory.

The estimate is deliberately rough and on the low side (it counts the big
arrays, not every temporary), and a run is refused only when it is clearly
over: estimate > ``LIMIT_FRACTION`` x available. Calibrated against peak RSS
(``resource.getrusage``) of small dense / sparse_ops / sparse_layer runs on the
2-core reference machine; see ``_BYTES`` for the factors.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass
from pathlib import Path

from snn_runner.config import ConfigError, DataConfig, RunConfig, value_gradient_key

LIMIT_FRACTION = 0.9
GB = 1024**3
FLOAT = 4  # float32 / int32
RUNTIME_BYTES = 550 * 1024**2  # Python + TensorFlow before any tensor of the run (590 MB measured)
# Sizes of the event datasets' splits (train + test), used when data.max_samples is 0.
EVENT_SAMPLES = {"nmnist": 70_000, "shd": 10_420, "dvsgesture": 1_341}
# Float32 tensors of shape [T, B, n] per layer that the implementation keeps or
# builds at its peak (forward values kept for BPTT plus the backward's own).
_DENSE_TBN = {"dense": 7.0, "sparse_ops": 5.5, "sparse_layer": 0.0}
# int32/float32 tensors of shape [T, B, K] per layer (spike records of the sparse formats).
_SPARSE_TBK = {"dense": 0.0, "sparse_ops": 6.0, "sparse_layer": 4.0}


# dense and sparse_ops unroll the time loop into the graph (train, evaluate and record
# functions): measured about 480 KB per step and layer (T=2000, 3 layers: 2.9 GB, 4 min
# to build); sparse_layer runs the loop inside its fused op.
_GRAPH_PER_STEP_LAYER = {"dense": 400 * 1024, "sparse_ops": 400 * 1024, "sparse_layer": 0}


class ResourceError(ConfigError):
    """The run would not fit in this machine's memory; the message gives both sizes and what to shrink."""


@dataclass(frozen=True)
class Estimate:
    weights: int  # parameters, gradients, Adam slots, checkpoint copy
    activations: int  # per-layer tensors kept for backpropagation through time
    dataset: int  # generating the input arrays of both splits (the transient peak before the model exists)
    held: int = 0  # the input arrays kept during training
    runtime: int = RUNTIME_BYTES

    @property
    def total(self) -> int:
        return self.runtime + max(self.dataset, self.held + self.weights + self.activations)


def input_size(data: DataConfig) -> tuple[int, int]:
    """(input channels, classes) of a dataset without generating or reading it."""
    if data.dataset in ("randman", "random"):
        return data.channels, data.classes
    from snn_runner.data.preprocess import Preprocessing, SamplePreprocessor
    from snn_runner.data.tonic_sources import SOURCES

    spec = SOURCES[data.dataset]
    prep = SamplePreprocessor(spec, Preprocessing(data.time_steps, data.dt_ms, data.denoise_ms, data.downsample))
    return prep.channels, spec.classes


def _implementation(cfg: RunConfig) -> str:
    impl = cfg.model.implementation
    if impl != "auto":
        return impl
    needs_values = value_gradient_key(cfg) is not None and cfg.train.backend == "ipu"
    return "sparse_ops" if needs_values else "sparse_layer"  # what resolve() picks here


def _dataset_bytes(data: DataConfig, n_in: int, n_out: int) -> tuple[int, int]:
    """(peak while generating or loading, bytes held afterwards) of both splits' input arrays."""
    t = data.time_steps
    if data.dataset in ("randman", "random"):
        per_class = data.train_samples_per_class + data.test_samples_per_class
        n = n_out * per_class
        if data.dataset == "random":
            # random keys [N, T, n_in] (float64) and their argsort (int64), one split at a time
            biggest_split = n_out * max(data.train_samples_per_class, data.test_samples_per_class)
            held = FLOAT * n * t * (data.input_capacity + 1)
            return 16 * biggest_split * t * n_in + held, held
        harmonics = 8
        # maps [classes, channels, D, H] x3 (float64), the largest evaluation
        # [max(probes, samples per class), channels, D, H] x3, spike times [N, channels] (int64)
        maps = 3 * 8 * n_out * n_in * data.manifold_dim * harmonics
        evaluate = 3 * 8 * max(2048, data.train_samples_per_class) * n_in * data.manifold_dim * harmonics
        times = 2 * 8 * n * n_in
        # each channel fires once inside the spike window: the busiest bin holds at least the mean
        k_in = min(n_in, max(1, math.ceil(n_in / max(1, int(data.spike_window * t)))))
        held = FLOAT * n * t * (k_in + 1)
        return maps + evaluate + times + held, held
    n = data.max_samples * 2 if data.max_samples else EVENT_SAMPLES.get(data.dataset, 0)
    k_in = data.input_capacity or 1  # 0: the busiest bin, known only once binned
    held = FLOAT * n * t * (k_in + 1)
    return held, held


def estimate(cfg: RunConfig, n_in: int | None = None, n_out: int | None = None) -> Estimate:
    """Rough peak bytes of a training run of ``cfg`` (see the module docstring)."""
    if n_in is None or n_out is None:
        d_in, d_out = input_size(cfg.data)
        n_in, n_out = n_in or d_in, n_out or d_out
    impl = _implementation(cfg)
    sizes = [n_in, *cfg.model.hidden, n_out]
    t, b = cfg.data.time_steps, cfg.train.batch_size
    params = sum(a * c for a, c in zip(sizes[:-1], sizes[1:]))
    weights = 5 * FLOAT * params  # weights, gradients, Adam m and v, checkpoint copy
    layers = sizes[1:]
    caps = [math.ceil(cfg.model.max_activity * n) for n in cfg.model.hidden] + [n_out]
    activations = FLOAT * t * b * (_DENSE_TBN[impl] * sum(layers) + _SPARSE_TBK[impl] * sum(caps))
    if impl == "dense":
        activations += 2 * FLOAT * t * b * n_in  # the input as dense frames and its transpose
    activations += _GRAPH_PER_STEP_LAYER[impl] * t * len(layers)
    peak, held = _dataset_bytes(cfg.data, n_in, n_out)
    return Estimate(int(weights), int(activations), int(peak), int(held))


def available_memory() -> tuple[int, str]:
    """(bytes this process can still use, where that figure comes from)."""
    limits = []
    try:
        phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        limits.append((phys, "physical memory"))
    except (ValueError, OSError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except (OSError, ValueError, IndexError):
        pass
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append((soft, "the address-space limit (ulimit -v)"))
    except (ValueError, OSError):
        pass
    cgroup = Path("/sys/fs/cgroup")
    try:
        text = (cgroup / "memory.max").read_text().strip()
        if text != "max":
            used = int((cgroup / "memory.current").read_text())
            limits.append((max(0, int(text) - used), "the cgroup memory limit (Slurm --mem?)"))
    except (OSError, ValueError):
        pass
    if not limits:
        return 0, "unknown"
    return min(limits)


def _largest_part(cfg: RunConfig, est: Estimate) -> str:
    parts = {est.weights + 1: "make model.hidden smaller (weights and Adam state)",
             est.activations: "make data.time_steps, train.batch_size or model.hidden smaller (activations kept "
                              "for BPTT, unrolled graph)" + ("" if _implementation(cfg) == "sparse_layer"
                                                            else " or use model.implementation: sparse_layer"),
             est.dataset: "make data.channels, data.time_steps or the sample counts smaller (input arrays)"}
    return parts[max(parts)]


def check_memory(cfg: RunConfig, n_in: int | None = None, n_out: int | None = None,
                 available: int | None = None) -> Estimate:
    """Refuse (ResourceError) a run whose estimated peak is clearly more than the machine has."""
    est = estimate(cfg, n_in, n_out)
    source = "given"
    if available is None:
        available, source = available_memory()
    if available > 0 and est.total > LIMIT_FRACTION * available:
        raise ResourceError(
            f"config: this run needs about {est.total / GB:.1f} GB of memory (weights and Adam "
            f"{est.weights / GB:.1f} GB, {_implementation(cfg)} activations and graph {est.activations / GB:.1f} GB, "
            f"dataset arrays {est.dataset / GB:.1f} GB), this machine has {available / GB:.1f} GB available "
            f"({source}); {_largest_part(cfg, est)}")
    return est
