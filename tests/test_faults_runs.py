"""Runs that collide or cannot write: refused clearly, nothing lost.

Real processes on real files: two runs on one result file, two runs started
together with default names, a result already there, a task whose lock is
held by another live process, an output folder on a read-only mount.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snn_runner.results.schema import is_complete

pytestmark = pytest.mark.slow  # several real training processes, some of them side by side

TINY = ["--implementation", "dense", "--epochs", "1", "--hidden", "16", "--time-steps", "20"]
# long enough (several seconds of training) that two runs started together overlap
SLOWER = ["--implementation", "dense", "--epochs", "2", "--hidden", "128", "--time-steps", "100"]


def cli(*args):
    return [sys.executable, "-m", "snn_runner.cli", *args]


def run(*args, cwd, timeout=300):
    return subprocess.run(cli(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_runs_on_one_result_file_train_it_once(tmp_path):
    procs = [subprocess.Popen(cli("train", *SLOWER, "-o", "r.h5"), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 1], outcomes
    loser = next(err for code, _, err in outcomes if code == 1)
    line = one_error_line(loser)
    assert "being written by another run" in line or "already exists" in line, line
    assert is_complete(tmp_path / "r.h5")
    assert not list(tmp_path.glob(".r.h5.*")), "no lock, checkpoint or temporary file left"


def test_runs_started_together_get_their_own_default_result_files(tmp_path):
    procs = [subprocess.Popen(cli("train", *TINY), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    files = sorted((tmp_path / "results").glob("*.h5"))
    assert len(files) == 2 and all(is_complete(f) for f in files), files


def test_an_existing_result_is_never_overwritten(tmp_path):
    first = run("train", *TINY, "-o", "r.h5", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = digest(tmp_path / "r.h5")
    again = run("train", *TINY, "--seed", "4", "-o", "r.h5", cwd=tmp_path)
    assert again.returncode == 1
    assert "r.h5 already exists" in one_error_line(again.stderr)
    assert "epoch 1/" not in again.stdout, "refused before training"
    assert digest(tmp_path / "r.h5") == before


JOB = """
name: locked
model: {hidden: [16], implementation: dense}
data: {dataset: randman, channels: 10, classes: 2, time_steps: 10}
train: {epochs: 1, batch_size: 8}
"""

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"pid %d on testhost" % os.getpid())
print("held", flush=True)
time.sleep(120)
"""


def test_a_task_running_elsewhere_is_refused_naming_the_holder(tmp_path):
    from snn_runner.files.lock import lock_for
    from snn_runner.jobs import load_job

    (tmp_path / "job.yaml").write_text(JOB)
    job = load_job(tmp_path / "job.yaml")
    result = job.result(job.task(0), tmp_path / "out")
    result.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_for(result))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = run("train", "job.yaml", "--output-dir", "out", cwd=tmp_path)
        assert res.returncode == 1
        line = one_error_line(res.stderr)
        assert "being written by another run" in line and f"pid {holder.pid} on testhost" in line, line
        assert not result.exists()
    finally:
        holder.kill()
        holder.wait()
    # once the holder is gone (its lock died with it) the task runs
    res = run("train", "job.yaml", "--output-dir", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert is_complete(result)


@pytest.fixture
def read_only_folder(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    folder = tmp_path / "ro"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1M", "tmpfs", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_an_unwritable_output_folder_is_refused_before_any_work(read_only_folder, tmp_path):
    start = time.monotonic()
    res = run("train", *SLOWER, "-o", str(read_only_folder / "r.h5"), cwd=tmp_path)
    assert res.returncode == 1
    line = one_error_line(res.stderr)
    assert "cannot write to the output folder" in line and str(read_only_folder) in line, line
    assert "epoch 1/" not in res.stdout and "train:" not in res.stdout, "refused before data and model work"
    assert time.monotonic() - start < 60
    (tmp_path / "job.yaml").write_text(JOB)
    res = run("train", "job.yaml", "--output-dir", str(read_only_folder / "sub"), cwd=tmp_path)
    assert res.returncode == 1 and "cannot write to the output folder" in one_error_line(res.stderr)
