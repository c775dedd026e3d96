"""`snn-runner submit` / `status` against a real single-node Slurm (started by the fixture)."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from snn_runner.results.collect import collect
from snn_runner.results.store import read_result
from snn_runner.files import OutputLayout
from snn_runner.slurm.submission import read_submissions
from tests.slurm_fixtures import slurm_cluster  # noqa: F401

TINY = """
name: {name}
kind: train
model: {{hidden: [24], implementation: dense, weight_scale: 3.0}}
data: {{dataset: randman, channels: 16, classes: 2, time_steps: 15, train_samples_per_class: 30,
        test_samples_per_class: 10}}
train: {{epochs: 2, batch_size: 10}}
resources: {{partition: debug, time_min: 5, cpus_per_task: 1, mem_gb: 1, array_parallelism: 4}}
"""

LONG = """
name: long
kind: train
model: {hidden: [128, 64], implementation: dense, weight_scale: 3.0}
data: {dataset: randman, channels: 60, classes: 3, time_steps: 60, train_samples_per_class: 150,
       test_samples_per_class: 20}
train: {epochs: 4, batch_size: 5, learning_rate: 0.002}
resources: {partition: debug, time_min: 10, cpus_per_task: 2, mem_gb: 2}
"""


def cli(*args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "snn_runner.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def wait_all_done(folder: Path, cwd: Path, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        st = cli("status", str(folder), cwd=cwd)
        out = st.stdout + st.stderr
        if st.returncode == 0:
            return out
        if " failed " in out:
            pytest.fail(f"a task failed:\n{out}\n" + "\n".join(
                p.read_text()[-3000:] for p in folder.rglob("*_log.err")))
        time.sleep(2)
    pytest.fail(f"tasks not done within {timeout} s:\n{out}")


def test_sweep_runs_as_one_array_and_resubmission_only_sends_missing_tasks(slurm_cluster, tmp_path):
    job = tmp_path / "sweep.yaml"
    job.write_text(TINY.format(name="sweep") + "sweep: {grid: {train.seed: [0, 1, 2, 3]}}\n")
    out = tmp_path / "out"
    sent = cli("submit", str(job), "--output", str(out), cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    assert "4 to submit" in sent.stdout and "submitted array" in sent.stdout
    wait_all_done(out, tmp_path)

    coll = collect(out)
    assert len(coll.rows) == 4 and not coll.skipped
    array_ids = {r["attrs"]["slurm_array_job_id"] for r in map(read_result, sorted(out.glob("*.h5")))}
    assert len(array_ids) == 1 and array_ids != {""}, "all four tasks ran in one job array"
    indices = sorted(read_result(p)["attrs"]["slurm_array_task_id"] for p in out.glob("*.h5"))
    assert indices == ["0", "1", "2", "3"]

    again = cli("submit", str(job), "--output", str(out), cwd=tmp_path)
    assert again.returncode == 0 and "4 done" in again.stdout and "0 to submit" in again.stdout
    assert "submitted array" not in again.stdout

    victim = sorted(out.glob("sweep-002-*.h5"))[0]
    victim.unlink()
    resent = cli("submit", str(job), "--output", str(out), cwd=tmp_path)
    assert "1 to submit" in resent.stdout and "[2]" in resent.stdout, resent.stdout
    wait_all_done(out, tmp_path)
    assert victim.is_file()


def test_bad_job_file_is_rejected_before_submitting(slurm_cluster, tmp_path):
    job = tmp_path / "bad.yaml"
    job.write_text(TINY.format(name="bad").replace("epochs: 2", "epohcs: 2"))
    res = cli("submit", str(job), "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 2 and "unknown key 'epohcs'; did you mean 'epochs'?" in res.stderr
    assert not (tmp_path / "out").exists()
    # nothing of this job reached Slurm (other tests' jobs may come and go meanwhile)
    assert slurm_cluster.run("squeue", "-h", "-n", "snn-bad", "-o", "%i").stdout == ""


def test_failing_task_is_reported_and_others_finish(slurm_cluster, tmp_path):
    job = tmp_path / "mixed.yaml"
    job.write_text(TINY.format(name="mixed") + "sweep:\n  list: [{}, {data.dataset: shd, data.data_dir: /nonexistent}]\n")
    out = tmp_path / "out"
    assert cli("submit", str(job), "--output", str(out), cwd=tmp_path).returncode == 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        st = cli("status", str(out), cwd=tmp_path)
        if "1 done" in st.stdout and "1 failed" in st.stdout:
            break
        time.sleep(2)
    assert st.returncode == 3
    failed = [line for line in st.stdout.splitlines() if " failed " in line]
    assert len(failed) == 1 and failed[0].split()[0] == "1"
    assert "DatasetMissingError" in failed[0] and "/nonexistent" in failed[0], st.stdout


def test_task_of_a_job_file_edited_after_submission_is_refused(slurm_cluster, tmp_path):
    job = tmp_path / "edited.yaml"
    # the task waits in its setup line, so the edit lands before it reads the job file
    job.write_text(TINY.format(name="edited").replace("mem_gb: 1,", "mem_gb: 1, setup: ['sleep 6'],"))
    out = tmp_path / "out"
    sent = cli("submit", str(job), "--output", str(out), cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    submitted = read_submissions(OutputLayout(out).submissions)[-1]
    job.write_text(job.read_text().replace("epochs: 2", "epochs: 3"))
    from snn_runner.jobs import load_job

    now_id = load_job(job).task(0).task_id
    assert now_id != submitted.task_id
    st = cli("status", str(out), cwd=tmp_path)
    # status reads the edited file: its task 0 was never submitted, the one sent has changed
    assert st.returncode == 3 and "not submitted" in st.stdout, st.stdout
    changed = [ln for ln in st.stdout.splitlines() if " changed " in ln]
    assert len(changed) == 1 and submitted.task_id in changed[0] and "edited after" in changed[0], st.stdout
    errors = "\n".join(p.read_text() for p in out.rglob("*_log.err"))
    deadline = time.monotonic() + 240
    while "TaskChangedError: " not in errors and time.monotonic() < deadline:
        time.sleep(2)
        errors = "\n".join(p.read_text() for p in out.rglob("*_log.err"))
    line = next(ln for ln in errors.splitlines() if "TaskChangedError: " in ln)
    assert submitted.task_id in line and now_id in line and str(job) in line, line
    assert not list(out.glob("*.h5")), "the edited task must not train"


def test_requeued_running_task_resumes_and_matches_uninterrupted_run(slurm_cluster, tmp_path):
    job = tmp_path / "long.yaml"
    job.write_text(LONG)
    out = tmp_path / "out"
    sent = cli("submit", str(job), "--output", str(out), cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    job_id = read_submissions(OutputLayout(out).submissions)[-1].job_id
    # requeue once the first epoch's checkpoint exists, i.e. in the middle of the run
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(out.glob(".*.ckpt")):
        time.sleep(0.5)
    assert list(out.glob(".*.ckpt")), "the task never saved a checkpoint"
    requeue = slurm_cluster.run("scontrol", "requeue", job_id, check=False)
    assert requeue.returncode == 0, requeue.stderr
    wait_all_done(out, tmp_path, timeout=420)

    straight = cli("train", str(job), "--output-dir", str(tmp_path / "straight"), cwd=tmp_path, timeout=600)
    assert straight.returncode == 0, straight.stderr
    a = read_result(next(out.glob("*.h5")))
    b = read_result(next((tmp_path / "straight").glob("*.h5")))
    assert a["attrs"]["resumes"] >= 1, "the requeued task should have resumed from its checkpoint"
    for key in ("train_loss", "test_loss", "test_accuracy", "spike_rate"):
        np.testing.assert_allclose(a["metrics"][key], b["metrics"][key], rtol=1e-6, err_msg=key)


def test_dry_run_splits_arrays_at_max_array_size(tmp_path, monkeypatch, capsys):
    from snn_runner.jobs import load_job
    from snn_runner.slurm import submit as submit_module

    job_file = tmp_path / "split.yaml"
    job_file.write_text(TINY.format(name="split") + "sweep: {grid: {train.seed: [0, 1, 2, 3, 4]}}\n")
    job = load_job(job_file)
    monkeypatch.setattr(submit_module, "max_array_size", lambda: 2)
    lines = []
    assert submit_module.submit(job, job.tasks(), tmp_path / "out", dry_run=True, log=lines.append) == []
    scripts = [line for line in lines if line.startswith("--- sbatch script")]
    assert scripts == ["--- sbatch script for tasks [0, 1] ---", "--- sbatch script for tasks [2, 3] ---",
                       "--- sbatch script for tasks [4] ---"]
    text = "\n".join(lines)
    assert "#SBATCH --array=0-1%2" in text and "#SBATCH --array=0-0%1" in text and "#SBATCH --partition=debug" in text and "#SBATCH --time=5" in text
    assert not (tmp_path / "out").exists(), "a dry run writes nothing"


def test_image_runs_tasks_through_the_launcher(tmp_path):
    from snn_runner.jobs import load_job
    from snn_runner.slurm.submit import python_command

    job_file = tmp_path / "img.yaml"
    job_file.write_text(TINY.format(name="img").replace("array_parallelism: 4",
                                                        "array_parallelism: 4, gpus: 1, binds: ['/data:/data']"))
    cmd = python_command(load_job(job_file), "/images/snn.sif")
    assert cmd == "apptainer exec --nv -B /data:/data /images/snn.sif python3"


def _epochs_lasting(seconds: float, tmp_path: Path) -> int:
    """How many epochs of LONG take about ``seconds`` on this machine now (it may be idle or busy)."""
    from snn_runner.dispatch import run_training
    from snn_runner.jobs import load_job

    probe = tmp_path / "probe.yaml"
    probe.write_text(LONG.replace("epochs: 4", "epochs: 3"))
    cfg = load_job(probe).task(0).config
    run = run_training(cfg, tmp_path / "probe.h5", log=lambda _: None)
    per_epoch = float(np.median(read_result(run.path)["metrics"]["epoch_seconds"][1:]))
    return int(min(2000, max(60, seconds / per_epoch)))


def test_task_hitting_its_time_limit_is_requeued_and_resumes(slurm_cluster, tmp_path):
    # 1-minute limit, USR2 10 s before it (Slurm checks limits every ~30 s, so it
    # lands 20-50 s in), and about 75 s of training (sized on this machine as it is
    # now): runs are stopped, save between two steps, are requeued by submitit and
    # resume until done.
    epochs = _epochs_lasting(75.0, tmp_path)
    job = tmp_path / "timeout.yaml"
    job.write_text(LONG.replace("epochs: 4", f"epochs: {epochs}").replace(
        "resources: {partition: debug, time_min: 10,", "resources: {partition: debug, time_min: 1, signal_delay_s: 10, max_timeouts: 12,"))
    out = tmp_path / "out"
    assert cli("submit", str(job), "--output", str(out), cwd=tmp_path).returncode == 0
    wait_all_done(out, tmp_path, timeout=600)
    a = read_result(next(out.glob("*.h5")))
    assert a["attrs"]["resumes"] >= 1, "the task should have been stopped by its time limit and resumed"
    logs = "\n".join(p.read_text() for p in out.rglob("*_log.out"))
    assert "interrupted: stopped by signal" in logs

    straight = cli("train", str(job), "--output-dir", str(tmp_path / "straight"), cwd=tmp_path, timeout=600)
    assert straight.returncode == 0, straight.stderr
    b = read_result(next((tmp_path / "straight").glob("*.h5")))
    for key in ("train_loss", "test_loss", "test_accuracy", "spike_rate"):
        np.testing.assert_allclose(a["metrics"][key], b["metrics"][key], rtol=1e-6, err_msg=key)
