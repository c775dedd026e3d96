import json

import h5py
import numpy as np
import pytest

from snn_runner.results.store import SCHEMA_VERSION, read_result
from snn_runner.runner.train import train


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
