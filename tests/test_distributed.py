"""Data-parallel runs (snn_runner.distribute): N workers of one run give the one-process result.

Real processes throughout: `snn-runner train --workers 2` starts two
TensorFlow workers joined by MultiWorkerMirroredStrategy's gRPC collectives,
and the Slurm tests submit 2-task jobs to the local single-node Slurm, whose
tasks find each other through SlurmClusterResolver.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from snn_runner.distribute.cluster import Workers, slurm_port_base
from snn_runner.distribute.strategy import worker_failure
from snn_runner.files import OutputLayout
from snn_runner.files import checkpoint_for
from snn_runner.results.network import read_network
from snn_runner.results.store import read_result
from snn_runner.runner.checkpoint import load as load_checkpoint
from snn_runner.runner.train import share
from snn_runner.slurm.submission import read_submissions
from tests.slurm_fixtures import slurm_cluster  # noqa: F401

REPO = Path(__file__).resolve().parents[1]

# 123 training samples in batches of 61: the last batch has one sample, so worker 1 gets none there.
# The rate and capacity penalties and clipping are on: each needs the whole batch, not a worker's share.
TINY = ["--hidden", "24", "--time-steps", "15", "--epochs", "2", "--batch-size", "61", "--progress-s", "0",
        "--set", "data.channels=16", "--set", "data.classes=3", "--set", "data.train_samples_per_class=41",
        "--set", "data.test_samples_per_class=10", "--set", "model.weight_scale=3.0",
        "--set", "train.rate_strength=20", "--set", "train.rate_high=0.05", "--set", "train.capacity_strength=1",
        "--set", "train.capacity_target=0.5", "--set", "train.clip_norm=0.5", "--set", "train.learning_rate=0.01"]


def cli(*args, cwd, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "snn_runner.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def assert_same_run(a: Path, b: Path, rtol: float = 1e-5) -> None:
    """Result files ``a`` and ``b`` hold the same run: per-epoch metrics to ``rtol``, final weights to 1e-5."""
    ra, rb = read_result(a), read_result(b)
    for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy", "spike_rate", "dropped_spikes"):
        np.testing.assert_allclose(ra["metrics"][key], rb["metrics"][key], rtol=rtol, err_msg=key)
    na, nb = read_network(a), read_network(b)
    assert len(na.weights) == len(nb.weights)
    for wa, wb in zip(na.weights, nb.weights):
        np.testing.assert_allclose(wa, wb, rtol=0, atol=1e-5 * max(1.0, float(np.abs(wb).max())))


def test_shares_cover_each_batch_once_in_order():
    for batch in (1, 2, 7, 61, 64):
        for world in (1, 2, 3, 8):
            parts = [share(batch, r, world) for r in range(world)]
            taken = np.concatenate([np.arange(batch)[p] for p in parts])
            assert taken.tolist() == list(range(batch))
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) - min(sizes) <= 1


def test_lost_worker_is_named_from_the_collective_error():
    workers = Workers(0, ("node-a:2000", "node-b:2001", "node-c:2002"))
    text = ("Collective ops is aborted by: Error reported from /job:worker/task:2: The following tasks are "
            "unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:2\nThe tasks have crashed.")
    message = str(worker_failure(RuntimeError(text), workers, "in a collective"))
    assert message.startswith("worker rank 2 on node-c stopped or cannot be reached")
    assert "rank 0 on node-a" in message
    assert "another worker" in str(worker_failure(RuntimeError("socket closed"), workers, "x"))


def test_slurm_ports_stay_in_range_and_differ_between_jobs():
    bases = {slurm_port_base(str(j)) for j in range(1, 400)}
    assert len(bases) == 399
    assert all(20000 <= b and b + 64 < 60000 for b in bases)


@pytest.mark.parametrize("implementation", [
    pytest.param("dense", marks=pytest.mark.slow), pytest.param("sparse_ops", marks=pytest.mark.slow),
    "sparse_layer"])
def test_two_local_workers_equal_one_process(implementation, tmp_path):
    args = ["train", *TINY, "--implementation", implementation]
    one = cli(*args, "-o", str(tmp_path / "one.h5"), cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = cli(*args, "-o", str(tmp_path / "two.h5"), "--workers", "2", cwd=tmp_path)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    assert_same_run(tmp_path / "two.h5", tmp_path / "one.h5")
    a, b = read_result(tmp_path / "two.h5"), read_result(tmp_path / "one.h5")
    assert int(a["attrs"]["world_size"]) == 2 and len(json.loads(a["attrs"]["worker_hosts"])) == 2
    assert "world_size" not in b["attrs"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".h5") == ["one.h5", "two.h5"]


def _processes():
    """(pid, parent pid, environment, command line) of every process we may read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = dict(item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0")
                           if b"=" in item)
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        yield int(entry.name), int(stat.rsplit(")", 1)[1].split()[1]), environ, cmdline


def _worker_pids(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the workers a `--workers` launcher started (from their environment)."""
    return {json.loads(env[b"SNN_RUNNER_WORKERS"])["rank"]: pid for pid, ppid, env, _ in _processes()
            if ppid == launcher_pid and b"SNN_RUNNER_WORKERS" in env}


def _start(args, result: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "snn_runner.cli", *args, "-o", str(result), "--workers", "2"],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_save(ckpt: Path, after: float, launcher: subprocess.Popen) -> None:
    """Until the checkpoint has been written after the time ``after``."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and launcher.poll() is None:
        if ckpt.exists() and ckpt.stat().st_mtime > after:
            return
        time.sleep(0.1)
    pytest.fail("no checkpoint was saved: " + launcher.communicate()[1][-3000:])


@pytest.mark.slow
def test_signalled_and_killed_workers_stop_the_run_and_reruns_resume_it(tmp_path):
    args = ["train", *TINY, "--implementation", "sparse_layer", "--epochs", "80"]
    result = tmp_path / "run.h5"
    ckpt = checkpoint_for(result)

    # SIGTERM to the launcher: both workers stop after the same step, rank 0 saves, exit 75
    launcher = _start(args, result, tmp_path)
    _wait_for_save(ckpt, 0.0, launcher)
    launcher.send_signal(signal.SIGTERM)
    out, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 75, err[-3000:]
    assert "interrupted: stopped by signal" in err and "Traceback" not in err

    # the rerun resumes; SIGKILL one worker: the other names it and the run ends within a minute
    started = time.time()
    launcher = _start(args, result, tmp_path)
    _wait_for_save(ckpt, started, launcher)
    pids = _worker_pids(launcher.pid)
    assert sorted(pids) == [0, 1]
    os.kill(pids[1], signal.SIGKILL)
    killed = time.monotonic()
    out, err = launcher.communicate(timeout=120)
    assert time.monotonic() - killed < 60, "the run did not stop within a minute of losing a worker"
    assert launcher.returncode == 1
    assert "resume: from" in out
    assert "Error: worker rank 1 on localhost stopped or cannot be reached" in err, err[-3000:]
    assert "Traceback" not in err
    assert "worker rank 1 (pid" in out and "SIGKILL" in out
    assert not result.exists()
    assert [p.name for p in tmp_path.glob(".*.ckpt")] == [ckpt.name]
    assert load_checkpoint(ckpt, _identity_of(ckpt))[0].epoch >= 2  # whole and readable

    again = cli(*args, "-o", str(result), "--workers", "2", cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resume: from" in again.stdout
    # the uninterrupted run of the same two workers (a one-process run drifts apart in the last bits over 80 epochs)
    straight = cli(*args, "-o", str(tmp_path / "straight.h5"), "--workers", "2", cwd=tmp_path, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert int(read_result(result)["attrs"]["resumes"]) == 2
    assert_same_run(result, tmp_path / "straight.h5")


def _identity_of(ckpt: Path) -> str:
    import h5py

    with h5py.File(ckpt, "r") as f:
        value = f.attrs["config_json"]
    return value.decode() if isinstance(value, bytes) else value


# ---- under the local Slurm: 2 tasks of one job are the 2 workers of one run

JOB = """
name: {name}
kind: train
model: {{hidden: [{hidden}], implementation: sparse_layer, weight_scale: 3.0, max_activity: 0.2}}
data: {{dataset: randman, channels: 30, classes: 3, time_steps: {steps}, train_samples_per_class: {samples},
        test_samples_per_class: 10}}
train: {{epochs: {epochs}, batch_size: 16, learning_rate: 0.005, rate_strength: 20, rate_high: 0.1,
         clip_norm: 1.0, progress_s: 0}}
resources: {{partition: debug, time_min: 10, cpus_per_task: 1, mem_gb: 1, tasks_per_node: 2}}
"""


def _submit(job: Path, out: Path, cwd: Path) -> str:
    sent = cli("submit", str(job), "--output", str(out), cwd=cwd)
    assert sent.returncode == 0, sent.stderr
    return read_submissions(OutputLayout(out).submissions)[-1].job_id


def _wait_result(slurm_cluster, job_id, out: Path, timeout: float = 420) -> Path:  # noqa: F811
    state = slurm_cluster.wait_for_state(job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout)
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(out.rglob("*_log.*")))
    assert state == "COMPLETED", f"job {job_id}: {state}\n{logs}"
    return next(out.glob("*.h5"))


def _submit_long_run(name: str, tmp_path: Path) -> tuple[Path, Path, str]:
    """A 2-task run of about 20 s, submitted and past its first checkpoint: (job file, output, job id)."""
    job = tmp_path / f"{name}.yaml"
    job.write_text(JOB.format(name=name, hidden=128, steps=60, samples=150, epochs=100))
    out = tmp_path / "out"
    job_id = _submit(job, out, tmp_path)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(out.glob(".*.ckpt")):
        time.sleep(0.5)
    assert list(out.glob(".*.ckpt")), "the run never saved a checkpoint"
    return job, out, job_id


def _straight(job: Path, tmp_path: Path, *workers: str) -> Path:
    """The job's run uninterrupted, outside Slurm (in one process, or with ``--workers N``)."""
    run = cli("train", str(job), "--output-dir", str(tmp_path / "straight"), *workers, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return next((tmp_path / "straight").glob("*.h5"))


@pytest.mark.slurm
def test_two_slurm_tasks_train_one_run_equal_to_one_process(slurm_cluster, tmp_path):  # noqa: F811
    job = tmp_path / "two.yaml"
    job.write_text(JOB.format(name="two", hidden=32, steps=20, samples=40, epochs=2))
    out = tmp_path / "out"
    job_id = _submit(job, out, tmp_path)
    path = _wait_result(slurm_cluster, job_id, out)
    a = read_result(path)
    assert int(a["attrs"]["world_size"]) == 2
    assert a["attrs"]["slurm_step_id"].startswith(f"{job_id}.")
    assert len(json.loads(a["attrs"]["worker_hosts"])) == 2
    assert len(list(out.glob("*.h5"))) == 1  # one result per run
    logs = "\n".join(p.read_text() for p in out.rglob("*_log.out"))
    assert "worker rank 0 of 2" in logs and "worker rank 1 of 2" in logs
    assert_same_run(path, _straight(job, tmp_path))


@pytest.mark.slurm
def test_requeued_two_task_run_resumes_both_and_equals_uninterrupted(slurm_cluster, tmp_path):  # noqa: F811
    job, out, job_id = _submit_long_run("requeue", tmp_path)
    requeue = slurm_cluster.run("scontrol", "requeue", job_id, check=False)
    assert requeue.returncode == 0, requeue.stderr
    path = _wait_result(slurm_cluster, job_id, out, timeout=600)
    assert int(read_result(path)["attrs"]["resumes"]) >= 1, "the requeued run should have resumed"
    logs = "\n".join(p.read_text() for p in out.rglob("*_log.out"))
    assert logs.count("worker rank 1 of 2") >= 2, "both tasks should have started again"
    # against the same two workers uninterrupted: over 100 epochs a one-process run drifts in the last bits
    assert_same_run(path, _straight(job, tmp_path, "--workers", "2"))


def _slurm_task_pid(job_id: str, rank: int) -> int | None:
    for pid, _, env, cmdline in _processes():
        if (env.get(b"SLURM_JOB_ID") == job_id.encode() and env.get(b"SLURM_PROCID") == str(rank).encode()
                and b"submitit.core._submit" in cmdline):
            return pid
    return None


@pytest.mark.slurm
def test_killed_slurm_worker_fails_the_job_with_its_rank_and_a_resubmit_resumes(slurm_cluster, tmp_path):  # noqa: F811
    job, out, job_id = _submit_long_run("kill", tmp_path)
    pid = _slurm_task_pid(job_id, 1)
    assert pid is not None, "rank 1's process not found"
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    state = slurm_cluster.wait_for_state(job_id, ("FAILED", "CANCELLED", "COMPLETED"), timeout=120)
    assert state == "FAILED" and time.monotonic() - killed < 60, state
    errors = "\n".join(p.read_text() for p in out.rglob("*_0_log.err"))
    assert "worker rank 1 on localhost stopped or cannot be reached" in errors, errors[-3000:]
    assert list(out.glob(".*.ckpt")) and not list(out.glob("*.h5"))

    again = _submit(job, out, tmp_path)
    path = _wait_result(slurm_cluster, again, out, timeout=600)
    assert int(read_result(path)["attrs"]["resumes"]) >= 1
    assert_same_run(path, _straight(job, tmp_path, "--workers", "2"))


def test_several_tasks_are_asked_of_slurm_with_memory_per_task(tmp_path):
    from snn_runner.jobs import load_job
    from snn_runner.slurm.submit import sbatch_parameters

    path = tmp_path / "job.yaml"
    path.write_text(JOB.format(name="p", hidden=8, steps=5, samples=4, epochs=1).replace(
        "mem_gb: 1, tasks_per_node: 2", "mem_gb: 1.5, nodes: 3, tasks_per_node: 2"))
    params = sbatch_parameters(load_job(path))
    assert (params["nodes"], params["ntasks_per_node"], params["mem"]) == (3, 2, "3072MB")
    single = sbatch_parameters(load_job(REPO / "jobs" / "smoke.yaml"))
    assert "nodes" not in single and "ntasks_per_node" not in single


def test_workers_option_needs_a_named_result_and_matches_the_launcher(tmp_path):
    run = cli("train", "--workers", "2", cwd=tmp_path, timeout=60)
    assert run.returncode == 2 and "--workers needs -o/--output" in run.stderr
    env = {**os.environ, "SNN_RUNNER_WORKERS": Workers(0, ("localhost:1", "localhost:2", "localhost:3")).to_env()}
    run = cli("train", "--workers", "2", "-o", "x.h5", cwd=tmp_path, timeout=60, env=env)
    assert run.returncode == 1 and "belongs to a run of 3 workers" in run.stderr and "Traceback" not in run.stderr
    env["SNN_RUNNER_WORKERS"] = "{not json"
    run = cli("train", "-o", "x.h5", cwd=tmp_path, timeout=60, env=env)
    assert run.returncode == 1 and "SNN_RUNNER_WORKERS is not a worker description" in run.stderr


def test_the_ipu_backend_refuses_several_workers(tmp_path):
    from snn_runner.config import ConfigError, RunConfig, TrainConfig
    from snn_runner.runner.train import train

    cfg = RunConfig(train=TrainConfig(backend="ipu"))
    with pytest.raises(ConfigError, match="train.backend: ipu cannot run with several workers"):
        train(cfg, tmp_path / "x.ckpt", workers=Workers(0, ("localhost:1", "localhost:2")))


def test_a_worker_whose_peers_never_come_stops_with_an_error_in_bounded_time(tmp_path):
    env = {**os.environ, "SNN_RUNNER_WORKER_STARTUP_S": "8",
           "SNN_RUNNER_WORKERS": Workers(0, ("localhost:1", "localhost:2")).to_env()}
    env["SNN_RUNNER_WORKERS"] = env["SNN_RUNNER_WORKERS"].replace("localhost:1", f"localhost:{_free_port()}")
    started = time.monotonic()
    run = cli("train", *TINY, "--workers", "2", "-o", str(tmp_path / "r.h5"), cwd=tmp_path, timeout=120, env=env)
    assert time.monotonic() - started < 60
    assert run.returncode != 0
    assert "Error: not every one of the 2 workers joined within 8 s (rank 0 on localhost waited)" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "r.h5").exists() and not checkpoint_for(tmp_path / "r.h5").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
