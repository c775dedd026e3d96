import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from snn_runner.cli import cli


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "snn_runner.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_help_describes_every_train_option():
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert result.exit_code == 0
    for option in ("--dataset", "--implementation", "--epochs", "--batch-size", "--lr", "--hidden",
                   "--time-steps", "--max-activity", "--seed", "--output"):
        assert option in result.output
    top = CliRunner().invoke(cli, ["--help"])
    assert top.exit_code == 0 and "train" in top.output


@pytest.mark.parametrize(
    "args, option, allowed",
    [
        (["--epochs", "-1"], "--epochs", "x>=1"),
        (["--dataset", "mnistt"], "--dataset", "randman"),
        (["--implementation", "fast"], "--implementation", "sparse_layer"),
        (["--hidden", "12,x"], "--hidden", "positive integers"),
        (["--max-activity", "0"], "--max-activity", "0<x<=1"),
    ],
)
def test_bad_option_values_exit_nonzero_and_write_nothing(tmp_path, args, option, allowed):
    result = run_cli("train", *args, cwd=tmp_path)
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and option in error[0] and allowed in error[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_train_from_cli_prints_accuracy_and_path(tmp_path):
    result = run_cli("train", "--implementation", "dense", "--epochs", "1", "--hidden", "32",
                     "--time-steps", "20", "-o", "r.h5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" in result.stdout
    assert "result: r.h5" in result.stdout and "final test accuracy:" in result.stdout
    assert (tmp_path / "r.h5").is_file()


def test_job_file_with_misspelt_key_exits_nonzero_naming_it(tmp_path):
    from pathlib import Path

    smoke = (Path(__file__).resolve().parents[1] / "jobs" / "smoke.yaml").read_text()
    (tmp_path / "bad.yaml").write_text(smoke.replace("batch_size:", "bacth_size:"))
    result = run_cli("train", "bad.yaml", "--task", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown key 'bacth_size'; did you mean 'batch_size'?" in result.stderr
    assert "bad.yaml" in result.stderr
    assert not (tmp_path / "results").exists()


def test_job_file_cannot_be_mixed_with_options_and_tasks_must_exist(tmp_path):
    from pathlib import Path

    job = Path(__file__).resolve().parents[1] / "jobs" / "smoke.yaml"
    mixed = CliRunner().invoke(cli, ["train", str(job), "--epochs", "3"])
    assert mixed.exit_code == 2 and "--epochs cannot be combined with a job file" in mixed.output
    missing = CliRunner().invoke(cli, ["train", str(job), "--task", "99"])
    assert missing.exit_code == 2 and "task 99 does not exist" in missing.output
    listed = CliRunner().invoke(cli, ["sweep", str(job), "--list", "--output-dir", str(tmp_path)])
    assert listed.exit_code == 0 and listed.output.count(" todo ") == 4


@pytest.mark.slow
def test_progress_lines_with_an_eta_come_before_each_epoch_line(tmp_path):
    # dense at T=100 with 256 hidden neurons: epochs of a second or more here
    result = run_cli("train", "--implementation", "dense", "--epochs", "2", "--hidden", "256",
                     "--time-steps", "100", "--progress-s", "0.25", "-o", "p.h5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    epoch_rows = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    assert len(epoch_rows) == 2
    starts = [0] + [i + 1 for i in epoch_rows[:-1]]
    for epoch, (lo, hi) in enumerate(zip(starts, epoch_rows), start=1):
        progress = [line for line in lines[lo:hi] if line.startswith(f"  epoch {epoch}/2  step ")]
        assert progress, f"no progress line before epoch {epoch}:\n{result.stdout}"
        assert all(re.search(r"samples/s  loss \d+\.\d{4}  eta \d+m\d{2}s$", line) for line in progress), progress
    assert "\r" not in result.stdout
    quiet = run_cli("train", "--implementation", "dense", "--epochs", "1", "--hidden", "16", "--time-steps", "20",
                    "--progress-s", "0", "-o", "q.h5", cwd=tmp_path)
    assert quiet.returncode == 0 and " step " not in quiet.stdout


def test_set_and_readout_options_reach_the_recorded_config(tmp_path):
    import json

    import h5py

    result = run_cli("train", "--implementation", "dense", "--epochs", "1", "--hidden", "16", "--time-steps", "20",
                     "--readout", "membrane_mean", "--set", "train.optimizer=adamw", "--set", "train.weight_decay=1e-4",
                     "--set", "model.threshold2_start=-.inf", "--set", "data.train_samples_per_class=20",
                     "-o", "r.h5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "r.h5", "r") as f:
        cfg = json.loads(f.attrs["config_json"])
    assert cfg["model"]["readout"] == "membrane_mean" and cfg["train"]["optimizer"] == "adamw"
    assert cfg["train"]["weight_decay"] == 1e-4 and cfg["model"]["threshold2_start"] == float("-inf")
    assert cfg["data"]["train_samples_per_class"] == 20


@pytest.mark.parametrize("setting, named", [
    ("train.optimzer=adamw", "did you mean 'optimizer'"),
    ("train.clip_norm", "SECTION.KEY=VALUE"),
    ("modle.readout=membrane_max", "SECTION.KEY=VALUE"),
    ("model.readout=membrane", "model.readout"),
    ("train.weight_decay=abc", "train.weight_decay"),
])
def test_bad_set_values_exit_2_with_one_error_line(tmp_path, setting, named):
    result = run_cli("train", "--set", setting, cwd=tmp_path)
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and named in error[0], result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []
