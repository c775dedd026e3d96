"""The trained network in the result file, run again by `snn-runner evaluate`."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from snn_runner.cli import cli
from snn_runner.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from snn_runner.dispatch import run_training
from snn_runner.results.network import read_network
from snn_runner.results.store import read_result
from snn_runner.sparse import library

# the small randman task of conftest's easy_config: learnt in a few seconds
TINY = RunConfig(
    model=ModelConfig(hidden=(64,), implementation="dense"),
    data=DataConfig(channels=40, classes=4, time_steps=30, train_samples_per_class=100, test_samples_per_class=50,
                    seed=3),
    train=TrainConfig(epochs=6, batch_size=25, learning_rate=5e-3, seed=1),
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("evaluate") / "run.h5"
    run_training(TINY, path, log=lambda _: None)
    return path


def invoke(*args):
    result = CliRunner().invoke(cli, list(map(str, args)))
    assert "Traceback" not in result.output
    return result


def test_result_keeps_the_network_it_trained(trained):
    net = read_network(trained)
    assert net.sizes == (40, 64, 4) and net.capacities == (7, 4) and net.readout == "spike_count"
    assert [w.shape for w in net.weights] == [(40, 64), (64, 4)] and net.epoch == 6
    assert net.encoding["dataset"] == "randman" and net.encoding["channels"] == 40
    with h5py.File(trained) as f:
        assert int(f.attrs["schema_version"]) == 2
        assert f["model/weights/layer1"].dtype == np.float32


def test_evaluate_reproduces_the_recorded_test_accuracy(trained, tmp_path):
    recorded = read_result(trained)["metrics"]
    res = invoke("evaluate", trained, "--json", tmp_path / "e.json")
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "e.json").read_text())
    assert record["accuracy"] == recorded["test_accuracy"][-1]
    assert record["loss"] == pytest.approx(recorded["test_loss"][-1], rel=1e-6)
    assert f"accuracy {recorded['test_accuracy'][-1]:.4f}" in res.output
    assert len(record["spike_rate"]) == len(record["dropped_spikes"]) == 2


@pytest.mark.skipif(not library.available(), reason="compiled ops not built (run scripts/build-ops)")
def test_one_network_measured_at_other_capacities(trained, tmp_path):
    wide = invoke("evaluate", trained, "--implementation", "sparse_layer", "--max-activity", "1.0",
                  "--json", tmp_path / "wide.json")
    narrow = invoke("evaluate", trained, "--implementation", "sparse_layer", "--max-activity", "0.05",
                    "--json", tmp_path / "narrow.json")
    assert wide.exit_code == 0 and narrow.exit_code == 0, wide.output + narrow.output
    wide, narrow = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("wide", "narrow"))
    # at full capacity the sparse implementation is the dense network
    assert wide["accuracy"] == read_result(trained)["metrics"]["test_accuracy"][-1]
    assert sum(wide["dropped_spikes"]) == 0 and sum(narrow["dropped_spikes"]) >= 0
    assert narrow["implementation"] == "sparse_layer" and narrow["max_activity"] == 0.05


def test_files_without_a_network_are_refused_in_one_line(trained, tmp_path):
    old = tmp_path / "v1.h5"
    old.write_bytes(trained.read_bytes())
    with h5py.File(old, "a") as f:
        del f["model"]
        f.attrs["schema_version"] = 1
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    for path, expected in ((old, "holds no trained network"), (junk, "not a result file"),
                           (tmp_path / "nope.h5", "no such file")):
        res = invoke("evaluate", path)
        assert res.exit_code == 1, res.output
        errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and expected in errors[0], res.output
    res = invoke("evaluate", trained, "--split", "validation")
    assert res.exit_code == 2 and "no 'validation' split" in res.output
    res = invoke("evaluate", trained, "--json", tmp_path / "missing" / "e.json")
    assert res.exit_code == 2 and not (tmp_path / "missing").exists()


def test_warm_start_continues_from_the_trained_network(trained, tmp_path):
    final = read_result(trained)["metrics"]["test_accuracy"][-1]
    assert final > 0.6, "the fixture network must have learnt something to carry over"
    one_more = TINY.replace("train", epochs=1, init_from=str(trained), learning_rate=1e-3)
    warm = run_training(one_more, tmp_path / "warm.h5", log=lambda _: None)
    cold = run_training(TINY.replace("train", epochs=1, learning_rate=1e-3), tmp_path / "cold.h5", log=lambda _: None)
    warm_rows, cold_rows = (read_result(r.path)["metrics"] for r in (warm, cold))
    chance = 1.0 / TINY.data.classes
    # the first epoch of the warm run trains at the file's level, the cold one near chance
    assert warm_rows["train_accuracy"][0] >= 0.8 * final
    assert warm_rows["train_accuracy"][0] > cold_rows["train_accuracy"][0] + 0.15
    assert cold_rows["train_accuracy"][0] < chance + 0.35
    assert read_result(warm.path)["config"]["train"]["init_from"] == str(trained)


def test_warm_start_from_a_network_of_other_sizes_stops_at_once(trained, tmp_path):
    res = invoke("train", "--implementation", "dense", "--hidden", "8", "--epochs", "1", "--init-from", trained,
                 "-o", tmp_path / "w.h5")
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "[40, 64, 4]" in errors[0] and "hidden [8]" in errors[0], res.output
    assert "epoch 1/" not in res.output and not (tmp_path / "w.h5").exists()
    res = invoke("train", "--implementation", "dense", "--epochs", "1", "--init-from", tmp_path / "nope.h5",
                 "-o", tmp_path / "w.h5")
    assert res.exit_code == 1 and "no such file" in res.output


def test_best_validation_epoch_is_kept_and_resume_keeps_it(tmp_path):
    cfg = TINY.replace("data", validation_fraction=0.2).replace("train", epochs=4)
    straight = run_training(cfg, tmp_path / "v.h5", log=lambda _: None)
    rec = read_result(straight.path)
    val = rec["metrics"]["validation_accuracy"]
    assert len(val) == 4 and len(rec["metrics"]["validation_loss"]) == 4
    best = read_network(straight.path, "model_best")
    assert best.epoch == int(np.argmax(val)) + 1  # the first epoch with the highest validation accuracy
    assert read_network(straight.path).epoch == 4
    res = invoke("evaluate", straight.path, "--best", "--split", "validation", "--json", tmp_path / "b.json")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "b.json").read_text())["accuracy"] == val[best.epoch - 1]
    assert invoke("inspect", straight.path).exit_code == 0
