"""The training recipe (issue 14): AdamW, clipping, warm-up + cosine schedule, theta2 annealing,
early stopping, SynOps; and that a mid-epoch resume stays exact with all of it."""

import json
import math

import h5py
import numpy as np
import pytest
import tensorflow as tf

from snn_runner.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from snn_runner.dispatch import run_training
from snn_runner.runner import recipe
from snn_runner.runner.signals import Interrupted
from snn_runner.results.schema import problems
from snn_runner.results.store import read_result
from snn_runner.sparse import library


def tiny(model=None, data=None, train=None) -> RunConfig:
    return RunConfig(
        model=ModelConfig(**{"hidden": (24,), "implementation": "dense", **(model or {})}),
        data=DataConfig(**{"channels": 20, "classes": 3, "time_steps": 12, "train_samples_per_class": 20,
                           "test_samples_per_class": 8, "seed": 2, **(data or {})}),
        train=TrainConfig(**{"epochs": 3, "batch_size": 12, "learning_rate": 5e-3, "seed": 4, "progress_s": 0.0,
                             **(train or {})}),
    ).validate()


class StopAfter:
    """A StopOnSignal stand-in: ``requested`` turns true after ``steps`` polls (one per training step)."""

    def __init__(self, steps: int):
        self.left = steps
        self.received = None

    @property
    def requested(self) -> bool:
        self.left -= 1
        if self.left <= 0:
            self.received = 15
        return self.left <= 0


@pytest.mark.parametrize("section, changes, key", [
    ("train", {"optimizer": "adamw"}, "train.weight_decay"),  # adamw with weight_decay 0 is adam
    ("train", {"weight_decay": -0.1}, "train.weight_decay"),
    ("train", {"clip_norm": -1.0}, "train.clip_norm"),
    ("train", {"clip_norm": math.inf}, "train.clip_norm"),
    ("train", {"schedule": "linear"}, "train.schedule"),
    ("train", {"warmup_epochs": 9.0}, "train.warmup_epochs"),
    ("train", {"warmup_epochs": 3.0, "schedule": "cosine"}, "train.warmup_epochs"),
    ("train", {"lr_min": 1.0, "schedule": "cosine"}, "train.lr_min"),
    ("train", {"lr_min": 1e-4}, "train.lr_min"),  # constant schedule: lr_min means nothing
    ("train", {"patience": -1}, "train.patience"),
    ("train", {"patience": 2}, "train.patience"),  # no validation split
    ("model", {"threshold2_start": 1.5}, "model.threshold2_start"),
    ("model", {"threshold2_epochs": -1}, "model.threshold2_epochs"),
    ("model", {"readout": "membrane"}, "model.readout"),
    ("train", {"capacity_strength": -1.0}, "train.capacity_strength"),
    ("train", {"capacity_strength": math.inf}, "train.capacity_strength"),
    ("train", {"capacity_target": 0.0}, "train.capacity_target"),
    ("train", {"capacity_target": 1.5}, "train.capacity_target"),
])
def test_new_keys_are_validated(section, changes, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny().replace(section, **changes)


def test_new_keys_load_from_job_text_and_leave_old_identities_alone():
    raw = {"model": {"threshold2_start": "-inf", "threshold2_epochs": 2},
           "train": {"optimizer": "adamw", "weight_decay": "1e-4", "schedule": "cosine", "lr_min": 1e-5,
                     "warmup_epochs": 1, "clip_norm": 1, "patience": 2},
           "data": {"validation_fraction": 0.2}}
    cfg = RunConfig.from_dict(raw)
    assert cfg.model.threshold2_start == -math.inf and cfg.train.warmup_epochs == 1.0
    assert cfg.identity()["train"]["schedule"] == "cosine"
    with pytest.raises(ConfigError, match=r"train: unknown key 'warmup'; did you mean 'warmup_epochs'"):
        RunConfig.from_dict({"train": {"warmup": 1}})
    plain = RunConfig().identity()  # keys at their defaults are not part of the identity (task ids unchanged)
    for section, keys in (("model", ("threshold2_start", "threshold2_epochs", "readout")),
                          ("train", ("weight_decay", "clip_norm", "schedule", "warmup_epochs", "lr_min", "patience",
                                     "capacity_strength", "capacity_target"))):
        assert not set(keys) & set(plain[section])
        assert set(keys) <= set(RunConfig().to_dict()[section])  # but recorded


def test_schedule_warms_up_then_decays_to_lr_min():
    cfg = TrainConfig(epochs=4, learning_rate=0.01, schedule="cosine", warmup_epochs=1.0, lr_min=0.001)
    steps_per_epoch = 5
    schedule = recipe.make_schedule(cfg, steps_per_epoch)
    got = [float(schedule(tf.constant(s, tf.int64))) for s in range(20)]
    want = [recipe.learning_rate_at(cfg, steps_per_epoch, s) for s in range(20)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert want[0] == pytest.approx(0.002) and want[4] == pytest.approx(0.01)  # warm-up: lr/5 .. lr
    assert want[5] == pytest.approx(0.01) and want[-1] == pytest.approx(0.001)  # cosine: lr .. lr_min
    assert all(a >= b for a, b in zip(want[5:], want[6:]))
    assert recipe.make_schedule(TrainConfig(learning_rate=0.01), 5) == 0.01  # constant: Keras's own variable
    flat = TrainConfig(epochs=4, learning_rate=0.01, warmup_epochs=0.4)  # constant after 2 warm-up steps
    assert [recipe.learning_rate_at(flat, 5, s) for s in range(4)] == pytest.approx([0.005, 0.01, 0.01, 0.01])


def test_threshold2_moves_linearly_per_epoch():
    cfg = ModelConfig(threshold2_fraction=0.9, threshold2_start=0.3, threshold2_epochs=3)
    assert [recipe.threshold2_fraction_at(cfg, e) for e in range(1, 7)] == pytest.approx(
        [0.3, 0.5, 0.7, 0.9, 0.9, 0.9])
    dense_first = ModelConfig(threshold2_fraction=0.9, threshold2_start=-math.inf, threshold2_epochs=2)
    assert [recipe.threshold2_fraction_at(dense_first, e) for e in (1, 2, 3, 4)] == [-math.inf, -math.inf, 0.9, 0.9]
    assert not recipe.annealing(ModelConfig(threshold2_epochs=5))  # start defaults to threshold2_fraction
    assert recipe.annealing(dense_first)


@pytest.mark.skipif(not library.available(), reason="compiled ops not built (run scripts/build-ops)")
def test_threshold2_variable_is_read_by_the_compiled_sparse_models():
    from tests.test_equivalence import assert_grads_close, build_model, setup, run
    from snn_runner.model import Parameters

    spec, _, ids, count, weight = setup(0, max_activity=1.0, threshold2_fraction=0.9)
    params = Parameters(spec, 0, threshold2_variable=True)
    dense = build_model("dense", spec, params)
    _, dense_grads = run(dense, params, ids, count, weight)
    for implementation in ("sparse_ops", "sparse_layer"):
        model = build_model(implementation, spec, params)
        compiled = tf.function(lambda i, c: model(i, c))
        wrapped = type("M", (), {"__call__": lambda self, i, c: compiled(i, c)})()
        params.set_threshold2(-math.inf)  # annealing from -inf: the first epoch's sparse gradients are dense
        _, grads = run(wrapped, params, ids, count, weight)
        assert_grads_close(grads, dense_grads)
        params.set_threshold2(0.9 * spec.lif.threshold)  # the same traced function now masks the surrogate
        _, masked = run(wrapped, params, ids, count, weight)
        assert any(not np.allclose(m, d, rtol=1e-3) for m, d in zip(masked, dense_grads)), implementation
    assert np.all(np.isneginf(params.threshold2[-1].numpy()))  # the readout never changes


def _rows(path):
    with h5py.File(path, "r") as f:
        return {k: f["metrics"][k][()] for k in f["metrics"] if k != "epoch_seconds"}


def test_mid_epoch_resume_with_cosine_adamw_and_clipping_equals_the_uninterrupted_run(tmp_path):
    cfg = tiny(train={"optimizer": "adamw", "weight_decay": 0.01, "clip_norm": 0.5, "schedule": "cosine",
                      "warmup_epochs": 1.0, "lr_min": 1e-4})
    whole = run_training(cfg, tmp_path / "whole.h5", log=lambda _: None)
    out = tmp_path / "split.h5"
    with pytest.raises(Interrupted, match="in epoch 2 after batch 2"):
        run_training(cfg, out, log=lambda _: None, stop=StopAfter(8))  # 5 steps + 1 end-of-epoch poll, then 2 steps
    lines = []
    run_training(cfg, out, log=lines.append)
    assert any(line.startswith("resume: ") for line in lines)
    a, b = _rows(whole.path), _rows(out)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, err_msg=key)
    # SynOps: per sample, column 0 the input events x n_1, column 1 layer 1's spikes x n_2
    assert a["synops"].shape == (3, 2) and np.all(a["synops"] > 0)
    rate = a["spike_rate"][:, 0]  # spikes per neuron per step of layer 1
    np.testing.assert_allclose(a["synops"][:, 1], rate * 24 * cfg.data.time_steps * 3, rtol=1e-9)
    assert any(" synops " in line for line in lines if line.startswith("epoch "))
    assert problems(out) == [] and read_result(out)["attrs"]["resumes"] == 1


@pytest.mark.skipif(not library.available(), reason="compiled ops not built (run scripts/build-ops)")
def test_patience_stops_early_records_the_best_epoch_and_anneals_theta2(tmp_path, monkeypatch):
    from snn_runner.model import Parameters

    seen = []
    original = Parameters.set_threshold2
    monkeypatch.setattr(Parameters, "set_threshold2", lambda self, v: (seen.append(v), original(self, v)))
    # learning rate ~0: the validation accuracy never improves, so epoch 1 stays the best
    cfg = tiny(model={"implementation": "sparse_ops", "max_activity": 0.5, "threshold2_fraction": 0.9,
                      "threshold2_start": 0.3, "threshold2_epochs": 2},
               data={"validation_fraction": 0.25},
               train={"epochs": 6, "optimizer": "sgd", "learning_rate": 1e-12, "patience": 2})
    lines = []
    run_training(cfg, tmp_path / "run.h5", log=lines.append)
    assert seen == pytest.approx([0.3, 0.6, 0.9])  # epochs 1..3, then the early stop
    assert any(line.startswith("early stop: ") for line in lines)
    rec = read_result(tmp_path / "run.h5")
    assert list(rec["metrics"]["epoch"]) == [1, 2, 3]
    assert rec["attrs"]["best_epoch"] == 1
    assert rec["attrs"]["best_test_accuracy"] == pytest.approx(rec["metrics"]["test_accuracy"][0])
    assert problems(tmp_path / "run.h5") == []
    with h5py.File(tmp_path / "run.h5", "r") as f:
        np.testing.assert_allclose(f["model/threshold2/layer1"][()], 0.9)  # the last epoch's
        np.testing.assert_allclose(f["model_best/threshold2/layer1"][()], 0.3)  # the best epoch's
        assert np.all(np.isneginf(f["model/threshold2/layer2"][()]))
    assert json.loads(rec["attrs"]["config_json"])["train"]["patience"] == 2


@pytest.mark.parametrize("key, value", [("train.rate_strength", 1.0), ("train.capacity_strength", 1.0),
                                        ("model.readout", "membrane_mean")])
def test_value_gradient_losses_with_sparse_layer_are_refused_on_the_ipu(key, value):
    section, name = key.split(".")
    cfg = tiny().replace("model", implementation="sparse_layer")
    cfg = cfg.replace(section, **{name: value})
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ".*not available on the IPU backend"):
        cfg.replace("train", backend="ipu")


@pytest.mark.parametrize("changes, key", [({"time_steps": 1}, "bench.time_steps"), ({"threads": -1}, "bench.threads"),
                                          ({"time_steps": -5}, "bench.time_steps")])
def test_bench_keys_are_validated(changes, key):
    from snn_runner.config import BenchConfig

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        BenchConfig(**changes).validate()


@pytest.mark.parametrize("name, kwargs", [("Adam", {}), ("AdamW", {"weight_decay": 0.01})])
def test_fused_adam_equals_keras_adam(name, kwargs):
    import keras
    import numpy as np
    import tensorflow as tf

    from snn_runner.model.optimizers import FusedAdam, FusedAdamW

    def train(cls):
        rng = np.random.default_rng(0)
        w = [tf.Variable(rng.standard_normal((37, 21)).astype(np.float32))]
        opt = cls(1e-2, **kwargs)
        opt.build(w)
        grads = [tf.constant(rng.standard_normal((37, 21)).astype(np.float32)) for _ in range(6)]
        step = tf.function(lambda g: opt.apply_gradients(zip([g], w)))
        for g in grads:
            step(g)
        return w[0].numpy(), [v.numpy() for v in opt.variables]

    fused = {"Adam": FusedAdam, "AdamW": FusedAdamW}[name]
    w_ref, slots_ref = train(getattr(keras.optimizers, name))
    w_fused, slots_fused = train(fused)
    assert np.abs(w_ref - train(getattr(keras.optimizers, name))[0]).max() == 0
    np.testing.assert_allclose(w_fused, w_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(slots_fused, slots_ref):  # same step counter and m / v slots: checkpoints are unchanged
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
