"""scripts/slurm-local brings up a Slurm that runs sbatch and submitit jobs,
with accounting (sacct), as the cluster workflow expects."""

import functools
import subprocess
import time

import pytest
import submitit

from tests.slurm_fixtures import SCRIPT, slurm_cluster  # noqa: F401

pytestmark = pytest.mark.slurm


def test_node_is_idle_in_default_partition(slurm_cluster):  # noqa: F811
    # Jobs of other tests, or of another session sharing the cluster, may
    # still hold the node: it must be idle once the queue is empty.
    deadline = time.monotonic() + 30
    while True:
        out = slurm_cluster.run("sinfo", "-h", "-N", "-o", "%N %P %T").stdout.split()
        queue = slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.strip()
        if out[2:] == ["idle"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert out[:2] == ["localhost", "debug*"]
    assert out[2] == "idle" or (queue and out[2] in ("mixed", "allocated", "completing")), (out, queue)
    status = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr


def test_sbatch_job_runs_and_sacct_reports_completed(slurm_cluster, tmp_path):  # noqa: F811
    out = tmp_path / "job-%j.out"
    proc = slurm_cluster.run(
        "sbatch", "--parsable", "--wait", "--time=1", f"--partition={slurm_cluster.partition}",
        f"--output={out}", "--wrap", "echo hello from $SLURM_JOB_ID",
        timeout=120,
    )
    job_id = proc.stdout.strip().split(";")[0]
    assert job_id.isdigit(), proc.stdout
    assert (tmp_path / f"job-{job_id}.out").read_text().strip() == f"hello from {job_id}"
    assert slurm_cluster.wait_for_state(job_id, timeout=30) == "COMPLETED"


def test_submitit_map_array_returns_results(slurm_cluster, tmp_path):  # noqa: F811
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    assert executor.cluster == "slurm"
    executor.update_parameters(timeout_min=1, slurm_partition=slurm_cluster.partition)
    # A builtin pickles by reference and imports in the job whatever its
    # working directory.
    square = functools.partial(pow, exp=2)
    jobs = executor.map_array(square, [1, 2, 3, 4])
    assert len(jobs) == 4
    # job.result() has no timeout of its own: a stuck queue must fail, not hang.
    deadline = time.monotonic() + 120
    while not all(job.done() for job in jobs):
        if time.monotonic() > deadline:
            pytest.fail(f"array not done after 120 s: {slurm_cluster.run('squeue').stdout}")
        time.sleep(0.5)
    assert [job.result() for job in jobs] == [1, 4, 9, 16]

    # job.state is cached by submitit and sacct learns of array tasks with a
    # short delay: poll with forced sacct calls.
    deadline = time.monotonic() + 30
    while True:
        states = [job.get_info(mode="force").get("State") for job in jobs]
        if all(s == "COMPLETED" for s in states) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert states == ["COMPLETED"] * 4
    assert [job.state for job in jobs] == ["COMPLETED"] * 4
