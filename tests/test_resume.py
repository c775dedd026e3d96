"""Kill a real training process with a real signal, resume it, compare with an uninterrupted run."""

import signal
import subprocess
import sys

import numpy as np
import pytest

from snn_runner.results.store import read_result
from snn_runner.runner.signals import INTERRUPTED_EXIT_CODE

JOB = """
name: resume
kind: train
model: {hidden: [128, 64], implementation: dense, weight_scale: 3.0}
data: {dataset: randman, channels: 60, classes: 3, time_steps: 60, train_samples_per_class: 150,
       test_samples_per_class: 20}
train: {epochs: 3, batch_size: 5, learning_rate: 0.002}
"""


def cli(*args, cwd):
    return [sys.executable, "-m", "snn_runner.cli", *args]


def run_to_end(args, cwd):
    done = subprocess.run(cli(*args, cwd=cwd), cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    (folder / "job.yaml").write_text(JOB)
    run_to_end(["train", "job.yaml", "--output-dir", "straight"], folder)
    return read_result(next((folder / "straight").glob("*.h5")))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP])
def test_signal_saves_checkpoint_and_resume_reproduces_the_run(tmp_path, signum, uninterrupted):
    (tmp_path / "job.yaml").write_text(JOB)
    proc = subprocess.Popen(cli("train", "job.yaml", "--output-dir", "killed", cwd=tmp_path), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:  # wait until epoch 1 is done, so the signal lands inside epoch 2
        seen.append(line)
        if line.startswith("epoch 1/3"):
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == INTERRUPTED_EXIT_CODE, err
    assert "run the same command again to resume" in err
    killed = tmp_path / "killed"
    assert not list(killed.glob("*.h5")), "no result file for an unfinished run"
    assert len(list(killed.glob(".*.ckpt"))) == 1

    resumed = run_to_end(["train", "job.yaml", "--output-dir", "killed"], tmp_path)
    assert "resume: from" in resumed and "epoch 2, batch" in resumed
    assert "epoch 1/3" not in resumed  # finished epochs are not redone

    a = read_result(next(killed.glob("*.h5")))
    b = uninterrupted
    assert a["attrs"]["resumes"] == 1 and b["attrs"]["resumes"] == 0
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "spike_rate", "dropped_spikes"):
        np.testing.assert_allclose(a["metrics"][key], b["metrics"][key], rtol=1e-6, err_msg=key)
    np.testing.assert_array_equal(a["spikes"]["layer1_ids"], b["spikes"]["layer1_ids"])
    assert not list(killed.glob(".*.ckpt")), "checkpoint removed once the result is written"
    # a finished task is skipped, not redone
    assert "already done" in run_to_end(["train", "job.yaml", "--output-dir", "killed"], tmp_path)
