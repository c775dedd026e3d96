"""The resolved configuration of one run: plain, validated dataclasses.

Everything downstream (data, model, runner, results) reads its parameters from
these objects, never from literals, so a run is fully described by
``RunConfig.to_dict()`` (which is what the HDF5 file stores).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

IMPLEMENTATIONS = ("dense", "sparse_ops", "sparse_layer")
BACKENDS = ("cpu", "ipu")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine")
# spike_count: logits are the output layer's spikes summed over time; membrane_max / membrane_mean:
# the output layer is a non-spiking leaky integrator and the logits its membrane's maximum / mean over time
READOUTS = ("spike_count", "membrane_max", "membrane_mean")
COMMUNICATIONS = ("auto", "ring")  # a multi-worker run's collectives (resources.communication)
# random: uniform random input events with random labels, for timing only
DATASETS = ("randman", "nmnist", "shd", "dvsgesture", "random")
# Keys that change how a run is reported, never what it computes: they are
# recorded but left out of the identity that names tasks and matches checkpoints.
PRESENTATION_KEYS = {"train": ("progress_s",)}
# Keys added after runs were recorded: left out of the identity while at their
# default, so the task ids and checkpoints of earlier runs stay valid.
LATER_KEYS = {"model": ("threshold2_start", "threshold2_epochs", "readout"),
              "train": ("weight_decay", "clip_norm", "schedule", "warmup_epochs", "lr_min", "patience",
                        "capacity_strength", "capacity_target")}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = (128,)
    alpha: float = 0.95  # membrane decay per step
    threshold: float = 1.0
    # theta2 = threshold2_fraction * threshold: neurons above it carry surrogate
    # gradients in the sparse implementations; -inf makes every neuron a carrier.
    threshold2_fraction: float = 0.9
    input_scale: float = 10.0  # c in u <- alpha*u + (1-alpha)*c*I
    beta: float = 10.0  # SuperSpike surrogate sharpness
    weight_scale: float = 2.0  # w_mul: weights ~ U(+-w_mul*sqrt(6/fan_in))
    max_activity: float = 0.1  # hidden capacity K = ceil(max_activity * n)
    implementation: str = "auto"
    # theta2 annealing: the carrier fraction moves linearly per epoch from threshold2_start
    # (epoch 1) to threshold2_fraction (epoch threshold2_epochs + 1 on); 1.0: the same as
    # threshold2_fraction; -inf: every hidden neuron carries until the end of the annealing.
    threshold2_start: float = 1.0
    threshold2_epochs: int = 0  # 0: no annealing
    readout: str = "spike_count"  # how the output layer forms logits (READOUTS)

    def validate(self) -> None:
        if not self.hidden or any(int(n) < 1 for n in self.hidden):
            _fail("model.hidden", self.hidden, "a non-empty list of positive layer sizes")
        _check_range("model.alpha", self.alpha, 0.0, 1.0, "in [0, 1)", hi_open=True)
        _check_positive("model.threshold", self.threshold)
        if not self.threshold2_fraction < 1.0:  # also rejects NaN and +inf
            _fail("model.threshold2_fraction", self.threshold2_fraction, "below 1.0, or -inf")
        if not self.threshold2_start <= 1.0:  # also rejects NaN
            _fail("model.threshold2_start", self.threshold2_start,
                  "a fraction of the threshold below 1.0, -inf, or 1.0 (default: the same as threshold2_fraction)")
        _check_min("model.threshold2_epochs", self.threshold2_epochs, 0)
        _check_positive("model.input_scale", self.input_scale)
        _check_positive("model.beta", self.beta)
        _check_positive("model.weight_scale", self.weight_scale)
        _check_range("model.max_activity", self.max_activity, 0.0, 1.0, "in (0, 1]", lo_open=True)
        if self.readout not in READOUTS:
            _fail("model.readout", self.readout, "one of " + ", ".join(READOUTS))
        if self.implementation not in ("auto",) + IMPLEMENTATIONS:
            _fail("model.implementation", self.implementation,
                  "one of " + ", ".join(("auto",) + IMPLEMENTATIONS))


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "randman"
    time_steps: int = 50
    # event datasets (read through tonic from data_dir)
    data_dir: str = ""  # empty: $SNN_RUNNER_DATA_DIR
    cache_dir: str = ""  # empty: $SNN_RUNNER_CACHE_DIR, else <data_dir>/.snn-cache
    dt_ms: float = 1.0  # width of one time bin
    input_capacity: int = 0  # K_in ids per bin; 0: the busiest bin of the data
    denoise_ms: float = 0.0  # tonic Denoise filter time; 0: off
    downsample: float = 1.0  # spatial downsampling factor (tonic Downsample); 1: off
    validation_fraction: float = 0.0  # carved reproducibly from train when > 0
    max_samples: int = 0  # per split, for quick runs; 0: all
    # randman parameters (synthetic spike-timing task, Zenke & Vogels 2021);
    # channels, classes and the sample counts also size the random dataset
    channels: int = 100
    classes: int = 10
    manifold_dim: int = 1
    smoothness: float = 2.0
    train_samples_per_class: int = 160
    test_samples_per_class: int = 40
    spike_window: float = 0.8  # fraction of the time steps that carry input spikes
    seed: int = 0

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            _fail("data.dataset", self.dataset, "one of " + ", ".join(DATASETS))
        _check_min("data.time_steps", self.time_steps, 2)
        _check_positive("data.dt_ms", self.dt_ms)
        _check_min("data.input_capacity", self.input_capacity, 0)
        _check_min("data.max_samples", self.max_samples, 0)
        if self.denoise_ms < 0:
            _fail("data.denoise_ms", self.denoise_ms, "0 (off) or a positive filter time in ms")
        _check_range("data.downsample", self.downsample, 0.0, 1.0, "in (0, 1]", lo_open=True)
        _check_range("data.validation_fraction", self.validation_fraction, 0.0, 1.0, "in [0, 1)", hi_open=True)
        _check_min("data.channels", self.channels, 1)
        _check_min("data.classes", self.classes, 2)
        _check_min("data.manifold_dim", self.manifold_dim, 1)
        _check_positive("data.smoothness", self.smoothness)
        _check_min("data.train_samples_per_class", self.train_samples_per_class, 1)
        _check_min("data.test_samples_per_class", self.test_samples_per_class, 1)
        _check_range("data.spike_window", self.spike_window, 0.0, 1.0, "in (0, 1]", lo_open=True)
        _check_seed("data.seed", self.seed)
        if self.dataset == "random" and not 1 <= self.input_capacity <= self.channels:
            _fail("data.input_capacity", self.input_capacity,
                  f"the input events per step of the random dataset, 1 to data.channels={self.channels}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 2e-3
    seed: int = 0
    backend: str = "cpu"  # cpu (TensorFlow CPU/GPU) or ipu (tensorflow-ipu with the Poplar ops)
    optimizer: str = "adam"
    # Activity regularisation per layer: strength * (relu(low - r)^2 + relu(r - high)^2)
    # on each layer's mean spike rate r of the batch; strength 0 turns it off.
    rate_low: float = 0.0
    rate_high: float = 1.0
    rate_strength: float = 0.0
    # Capacity penalty per hidden layer: capacity_strength * mean over (sample, step) of
    # relu(spikes / K - capacity_target)^2, dropped spikes included: keeps bursts under the capacity K
    # (what the sparse implementations can transmit); 0 turns it off. Dense gets it too, with its own K.
    capacity_strength: float = 0.0
    capacity_target: float = 0.5
    progress_s: float = 30.0  # seconds between progress lines inside an epoch; 0: none
    init_from: str = ""  # a training result file whose /model weights start this run; empty: random weights
    # decoupled weight decay (w <- w - lr * weight_decay * w each step), for every optimizer; adamw needs it > 0
    weight_decay: float = 0.0
    clip_norm: float = 0.0  # global-norm gradient clipping; 0: off
    schedule: str = "constant"  # learning rate per step: constant or cosine (to lr_min at the last step)
    warmup_epochs: float = 0.0  # linear warm-up from lr/warmup_steps to learning_rate over these epochs' steps
    lr_min: float = 0.0  # cosine: the learning rate at the last step
    patience: int = 0  # with a validation split: stop after this many epochs without a better best epoch; 0: off

    def validate(self) -> None:
        if not self.progress_s >= 0 or math.isinf(self.progress_s):
            _fail("train.progress_s", self.progress_s, "0 (off) or a positive number of seconds")
        if self.backend not in BACKENDS:
            _fail("train.backend", self.backend, "one of " + ", ".join(BACKENDS))
        if self.optimizer not in OPTIMIZERS:
            _fail("train.optimizer", self.optimizer, "one of " + ", ".join(OPTIMIZERS))
        _check_range("train.rate_low", self.rate_low, 0.0, 1.0, "in [0, 1]")
        _check_range("train.rate_high", self.rate_high, self.rate_low, 1.0, f"in [rate_low={self.rate_low}, 1]")
        if not self.rate_strength >= 0 or math.isinf(self.rate_strength):
            _fail("train.rate_strength", self.rate_strength, "0 (off) or a positive finite number")
        if not self.capacity_strength >= 0 or math.isinf(self.capacity_strength):
            _fail("train.capacity_strength", self.capacity_strength, "0 (off) or a positive finite number")
        _check_range("train.capacity_target", self.capacity_target, 0.0, 1.0,
                     "a fraction of the capacity in (0, 1]", lo_open=True)
        _check_min("train.epochs", self.epochs, 1)
        _check_min("train.batch_size", self.batch_size, 1)
        _check_positive("train.learning_rate", self.learning_rate)
        _check_seed("train.seed", self.seed)
        if not self.weight_decay >= 0 or math.isinf(self.weight_decay):
            _fail("train.weight_decay", self.weight_decay, "0 (off) or a positive finite number")
        if self.optimizer == "adamw" and self.weight_decay == 0:
            _fail("train.weight_decay", self.weight_decay,
                  "a positive number with optimizer adamw (adamw with weight_decay 0 is adam)")
        if not self.clip_norm >= 0 or math.isinf(self.clip_norm):
            _fail("train.clip_norm", self.clip_norm, "0 (off) or a positive finite global gradient norm")
        if self.schedule not in SCHEDULES:
            _fail("train.schedule", self.schedule, "one of " + ", ".join(SCHEDULES))
        if not 0 <= self.warmup_epochs <= self.epochs:
            _fail("train.warmup_epochs", self.warmup_epochs, f"0 (off) to train.epochs={self.epochs}")
        if self.schedule == "cosine":
            if not 0 <= self.lr_min <= self.learning_rate:
                _fail("train.lr_min", self.lr_min, f"0 to train.learning_rate={self.learning_rate}")
            if self.warmup_epochs >= self.epochs:
                _fail("train.warmup_epochs", self.warmup_epochs,
                      f"below train.epochs={self.epochs} with schedule cosine (it needs steps left to decay)")
        elif self.lr_min != 0:
            _fail("train.lr_min", self.lr_min, "0 with schedule constant (lr_min is where cosine ends)")
        _check_min("train.patience", self.patience, 0)


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        self.model.validate()
        self.data.validate()
        self.train.validate()
        if self.train.patience > 0 and self.data.validation_fraction == 0:
            raise ConfigError(f"train.patience: invalid value {self.train.patience}; early stopping watches the "
                              "validation accuracy: set data.validation_fraction > 0, or patience to 0")
        if self.model.implementation == "sparse_layer" and self.train.backend == "ipu":
            key = value_gradient_key(self)
            if key is not None:
                raise ConfigError(f"{key}: a loss on spike counts or slot values with sparse_layer is not available on "
                                  "the IPU backend (its Poplar gradient covers spike-count logits only); use "
                                  "sparse_ops or dense there, or turn it off")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"]["hidden"] = list(self.model.hidden)
        return d

    def identity(self) -> dict[str, Any]:
        """``to_dict()`` without the presentation keys: equal exactly when two runs compute the same."""
        d = self.to_dict()
        for section, keys in PRESENTATION_KEYS.items():
            for key in keys:
                d[section].pop(key)
        for section, keys in LATER_KEYS.items():
            defaults = type(getattr(self, section))()
            for key in keys:
                if d[section][key] == getattr(defaults, key):
                    d[section].pop(key)
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config") -> "RunConfig":
        """Build from nested dicts; unknown keys are rejected with a did-you-mean."""
        reject_unknown(raw, {f.name for f in dataclasses.fields(cls)}, where)
        parts = {}
        for f in dataclasses.fields(cls):
            sub_cls = type(getattr(cls(), f.name))
            section = raw.get(f.name)
            parts[f.name] = section_from_dict(sub_cls, {} if section is None else section, f"{where}: {f.name}")
        return cls(**parts).validate()

    def replace(self, section: str, **changes: Any) -> "RunConfig":
        new_section = dataclasses.replace(getattr(self, section), **changes)
        return dataclasses.replace(self, **{section: new_section}).validate()


def value_gradient_key(cfg: RunConfig) -> str | None:
    """The first key whose loss needs the fused op's gradient of spike counts or slot values, or None.

    The regularisers and a membrane readout do; the IPU's fused op has no such gradient.
    """
    if cfg.train.rate_strength > 0:
        return "train.rate_strength"
    if cfg.train.capacity_strength > 0:
        return "train.capacity_strength"
    if cfg.model.readout != "spike_count":
        return "model.readout"
    return None


@dataclass(frozen=True)
class BenchNetwork:
    """A named benchmark network: its sizes and the random input it is timed on."""

    sizes: tuple[int, ...]
    time_steps: int
    batch_size: int
    input_events: int  # distinct input ids per sample and time step
    weight_scale: float  # w_mul; 2.5 gives about 2% natural hidden activity on this input
    note: str


BENCH_NETWORKS = {
    # The reference paper's N-MNIST network (Finkbeiner et al., AAAI 2024).
    "nmnist-base": BenchNetwork((1156, 1470, 1460, 10), 100, 48, 32, 2.5,
                                "N-MNIST sizes, T=100, batch 48, 32 random input events per step"),
    # A quick one for tests and smoke runs.
    "tiny": BenchNetwork((100, 200, 150, 10), 20, 8, 8, 6.0, "tiny network for smoke tests"),
}

# What a bench preset decides in the timed run's RunConfig; a bench job that
# sets one of these itself is refused rather than silently overridden.
BENCH_FILLED_KEYS = ("model.hidden", "model.weight_scale", "data.dataset", "data.channels", "data.classes",
                     "data.time_steps", "data.input_capacity", "train.batch_size")


@dataclass(frozen=True)
class BenchConfig:
    network: str = "nmnist-base"
    hidden: tuple = (0,)  # hidden sizes replacing the preset's; (0,) keeps the preset
    steps: int = 5
    warmup: int = 1
    time_steps: int = 0  # replaces the preset's T; 0 keeps it
    threads: int = 0  # threads of TensorFlow's op pool (the kernels' threads); 0: one per core

    def validate(self) -> "BenchConfig":
        if self.network not in BENCH_NETWORKS:
            _fail("bench.network", self.network, "one of " + ", ".join(sorted(BENCH_NETWORKS)))
        if self.hidden != (0,) and (not self.hidden or any(n < 1 for n in self.hidden)):
            _fail("bench.hidden", list(self.hidden), "positive layer sizes")
        _check_min("bench.steps", self.steps, 5)
        _check_min("bench.warmup", self.warmup, 0)
        _check_min("bench.time_steps", self.time_steps, 0)
        if self.time_steps == 1:
            _fail("bench.time_steps", self.time_steps, "0 (the preset's) or at least 2")
        _check_min("bench.threads", self.threads, 0)
        return self

    @property
    def sizes(self) -> tuple[int, ...]:
        net = BENCH_NETWORKS[self.network]
        hidden = net.sizes[1:-1] if self.hidden == (0,) else tuple(self.hidden)
        return (net.sizes[0], *hidden, net.sizes[-1])

    def apply(self, cfg: RunConfig) -> RunConfig:
        """``cfg`` with the preset's network, input and batch: the configuration that is timed."""
        net = BENCH_NETWORKS[self.network]
        sizes = self.sizes
        model = dataclasses.replace(cfg.model, hidden=sizes[1:-1], weight_scale=net.weight_scale)
        data = dataclasses.replace(cfg.data, dataset="random", channels=sizes[0], classes=sizes[-1],
                                   time_steps=self.time_steps or net.time_steps, input_capacity=net.input_events)
        train = dataclasses.replace(cfg.train, batch_size=net.batch_size)
        return RunConfig(model, data, train).validate()


def section_from_dict(section_cls, raw: dict[str, Any], where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {_short(raw)} ({type(raw).__name__})")
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    reject_unknown(raw, set(fields), where)
    defaults = section_cls()
    values = {}
    for key, value in raw.items():
        values[key] = _coerce(value, getattr(defaults, key), f"{where}.{key}")
    return section_cls(**values)


# Integers beyond this are a typo (or an attack on memory), never a size or a count.
INT_LIMIT = 2**62
# numpy's and TensorFlow's seeds: 0 <= seed < 2**32
SEED_LIMIT = 2**32
# Float fields where an infinity has a meaning (threshold2_fraction: -inf makes every neuron a carrier).
INFINITE_OK = ("threshold2_fraction", "threshold2_start")


def _coerce(value: Any, default: Any, where: str) -> Any:
    # Types follow the defaults: YAML gives ints for floats like "1" and lists
    # for tuples; anything else is a user error worth naming.
    key = where.rsplit(".", 1)[-1]
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return _bounded_int(value, key, where)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return _bounded_int(int(value), key, where)  # 1e6 or 1.0e+3 written for an integer
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer like {default!r}, got the boolean {value!r}")
    elif isinstance(default, float):
        number = None
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number like {default!r}, got the boolean {value!r}")
        if isinstance(value, (int, float)):
            number = float(value) if abs(value) < 1e308 or isinstance(value, float) else math.inf
        elif isinstance(value, str):
            # YAML 1.1 reads 1e-3 (no dot) as a string; it is the number the user means.
            text = value.strip().lower()
            if text in ("-.inf", ".inf", "+.inf"):
                text = text.replace(".", "")
            try:
                number = float(text)
            except ValueError:
                raise ConfigError(f"{where}: expected a number like {default!r}, got the text {value!r}") from None
        if number is not None:
            if math.isnan(number):
                raise ConfigError(f"{where}: expected a number like {default!r}, got NaN")
            if math.isinf(number) and not (key in INFINITE_OK and number < 0):
                allowed = "; only -inf is allowed here" if key in INFINITE_OK else "; expected a finite number"
                raise ConfigError(f"{where}: invalid value {value!r}{allowed}")
            return number
    elif isinstance(default, str):
        if isinstance(value, str):
            if any(ord(c) < 32 and c not in "\t" for c in value):
                raise ConfigError(f"{where}: {value!r} contains control characters; expected plain text")
            return value
    elif isinstance(default, tuple):
        # element type from the default: ints for layer sizes, else strings
        kind = int if default and isinstance(default[0], int) else str
        if isinstance(value, (list, tuple)) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
            if kind is int:
                return tuple(_bounded_int(v, key, where) for v in value)
            return tuple(_coerce(v, "", where) for v in value)
        raise ConfigError(f"{where}: expected a list of {kind.__name__}s, got {_short(value)}")
    raise ConfigError(
        f"{where}: expected {type(default).__name__} like {default!r}, got {_short(value)} ({type(value).__name__})"
    )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _bounded_int(value: int, key: str, where: str) -> int:
    if key == "seed" and not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{where}: invalid value {value}; expected a seed from 0 to {SEED_LIMIT - 1}")
    if abs(value) >= INT_LIMIT:
        raise ConfigError(f"{where}: invalid value {_short(value, 30)}; expected an integer below 2**62")
    return value


def reject_unknown(raw: dict[str, Any], known: set[str], where: str) -> None:
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}: invalid value {value!r}; expected {allowed}")


def _check_min(key: str, value: int, lo: int) -> None:
    if value < lo:
        _fail(key, value, f"an integer >= {lo}")


def _check_seed(key: str, value: int) -> None:
    if not 0 <= value < SEED_LIMIT:
        _fail(key, value, f"a seed from 0 to {SEED_LIMIT - 1}")


def _check_positive(key: str, value: float) -> None:
    if not value > 0 or math.isinf(value):
        _fail(key, value, "a positive finite number")


def _check_range(key, value, lo, hi, text, lo_open=False, hi_open=False) -> None:
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        _fail(key, value, text)
