import json

import h5py
import numpy as np
import pytest

from snn_runner.results.store import SCHEMA_VERSION, read_result
from snn_runner.dispatch import run_training as train


def test_easy_randman_is_learned_and_recorded(tmp_path, easy_config):
    out = tmp_path / "run.h5"
    lines = []
    summary = train(easy_config, out, log=lines.append)
    # 4 classes: chance is 0.25
    assert summary.test_accuracy >= 0.85
    assert sum(line.startswith("epoch ") for line in lines) == easy_config.train.epochs

    with h5py.File(out, "r") as f:  # readable with plain h5py
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        for key in ("package_version", "git_revision", "host", "config_json", "implementation"):
            assert key in f.attrs
    rec = read_result(out)
    assert rec["config"] == json.loads(json.dumps(easy_config.to_dict()))
    m = rec["metrics"]
    epochs = easy_config.train.epochs
    assert list(m["epoch"]) == list(range(1, epochs + 1))
    assert m["spike_rate"].shape == (epochs, 2) and m["dropped_spikes"].shape == (epochs, 2)
    assert np.all(m["spike_rate"][-1] > 0)
    assert m["test_accuracy"][-1] == pytest.approx(summary.test_accuracy)
    assert m["train_loss"][-1] < m["train_loss"][0]
    steps_per_epoch = -(-400 // easy_config.train.batch_size)
    assert len(rec["timing"]["step_seconds"]) == epochs * steps_per_epoch - 1
    assert rec["timing"]["compile_seconds"] > 0
    assert not list(tmp_path.glob(".*tmp")) and not list(tmp_path.glob(".*ckpt"))  # checkpoint removed when done
    assert rec["spikes"]["layer1_ids"].shape[:2] == (4, easy_config.data.time_steps)
    assert rec["spikes"]["layer2_count"].sum() > 0


def test_exception_mid_run_leaves_no_file(tmp_path, easy_config):
    out = tmp_path / "run.h5"

    def explode(line):
        if line.startswith("epoch 2/"):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train(easy_config, out, log=explode)
    assert not out.exists() and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.h5"))


def test_rate_regularisation_lowers_activity_and_optimizers_are_selectable(tmp_path, easy_config):
    plain = train(easy_config, tmp_path / "plain.h5", log=lambda _: None)
    capped_cfg = easy_config.replace("train", rate_high=0.005, rate_strength=100.0, optimizer="rmsprop")
    capped = train(capped_cfg, tmp_path / "capped.h5", log=lambda _: None)
    rate_plain = read_result(plain.path)["metrics"]["spike_rate"][-1]
    rate_capped = read_result(capped.path)["metrics"]["spike_rate"][-1]
    assert np.all(rate_capped < 0.8 * rate_plain), (rate_plain, rate_capped)
    assert rate_capped[-1] < 0.6 * rate_plain[-1], (rate_plain, rate_capped)
    assert read_result(capped.path)["config"]["train"]["optimizer"] == "rmsprop"


def test_rate_regularisation_with_sparse_layer_is_refused_only_on_the_ipu(easy_config):
    from snn_runner.config import ConfigError

    fused = easy_config.replace("model", implementation="sparse_layer").replace("train", rate_strength=1.0)
    assert fused.train.rate_strength == 1.0  # the fused gradient takes the rate term on the CPU
    with pytest.raises(ConfigError, match="not available on the IPU backend"):
        fused.replace("train", backend="ipu")


def test_auto_is_resolved_once_to_the_fastest_implementation(easy_config):
    from snn_runner.dispatch import resolve
    from snn_runner.sparse import library

    cfg = resolve(easy_config.replace("model", implementation="auto").replace("train", rate_strength=1.0))
    assert cfg.model.implementation == ("sparse_layer" if library.available() else "dense")
    assert resolve(cfg) == cfg  # resolved once, then left alone
    ipu = easy_config.replace("model", implementation="auto").replace("train", rate_strength=1.0, backend="ipu")
    if library.available():
        assert resolve(ipu).model.implementation == "sparse_ops"


def test_rate_regularisation_works_with_sparse_layer(tmp_path, easy_config):
    from snn_runner.sparse import library

    if not library.available():
        pytest.skip("compiled ops not built (run scripts/build-ops)")
    base = easy_config.replace("model", implementation="sparse_layer", max_activity=1.0)
    plain = train(base, tmp_path / "plain.h5", log=lambda _: None)
    capped = train(base.replace("train", rate_high=0.005, rate_strength=3000.0), tmp_path / "capped.h5",
                   log=lambda _: None)
    rate_plain = read_result(plain.path)["metrics"]["spike_rate"][-1]
    rate_capped = read_result(capped.path)["metrics"]["spike_rate"][-1]
    assert np.all(rate_capped < 0.8 * rate_plain), (rate_plain, rate_capped)
