"""Send a job file's unfinished tasks to Slurm as job arrays (client side)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable

from snn_runner.jobs import Job, Task
from snn_runner.results.schema import is_complete
from snn_runner.slurm.submission import (
    Submission,
    append_submissions,
    latest_by_task,
    read_submissions,
)

ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                 "REQUEUE_HOLD", "REQUEUE_FED")


class SubmitError(RuntimeError):
    pass


def python_command(job: Job, image: str | None) -> str:
    """The interpreter each task runs: the host's, or the image's through apptainer/singularity."""
    if not image:
        return shlex.quote(sys.executable)
    res = job.resources
    parts = [res.launcher, "exec"]
    if res.gpus > 0:
        parts.append("--nv")
    for bind in res.binds:
        parts += ["-B", bind]
    parts += [image, "python3"]
    return " ".join(shlex.quote(p) for p in parts)


def sbatch_parameters(job: Job) -> dict:
    res = job.resources
    params = {
        "job_name": f"snn-{job.name}",
        "time": res.time_min,
        "cpus_per_task": res.cpus_per_task,
        # mem_gb is per task (per worker), Slurm's --mem per node
        "mem": f"{int(res.mem_gb * res.tasks_per_node * 1024)}MB",
        "array_parallelism": res.array_parallelism,
        "signal_delay_s": res.signal_delay_s,
        "setup": list(res.setup),
    }
    for key, value in (("partition", res.partition), ("account", res.account), ("qos", res.qos)):
        if value:
            params[key] = value
    if res.gpus:
        params["gpus_per_node"] = res.gpus
    if res.world_size > 1:  # one data-parallel run over these tasks (srun starts them; see slurm.task)
        params["nodes"] = res.nodes
        params["ntasks_per_node"] = res.tasks_per_node
    return params


def max_array_size() -> int:
    """Slurm's MaxArraySize (array indices must stay below it); 1001 when it cannot be read."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 1001
    for line in out.splitlines():
        if line.strip().startswith("MaxArraySize"):
            return int(line.split("=", 1)[1].strip())
    return 1001


def chunks(tasks: list[Task], size: int) -> list[list[Task]]:
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


def job_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm state per job id (array tasks as JOB_INDEX), from sacct, else squeue."""
    if not job_ids:
        return {}
    states = {}
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(sorted(set(
            j.split("_")[0] for j in job_ids)))], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            jid, _, state = line.partition("|")
            states[jid] = state.split()[0] if state else "UNKNOWN"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True,
                             timeout=30).stdout
        for line in out.splitlines():
            jid, _, state = line.partition("|")
            states[jid] = state  # squeue is current; sacct can lag behind a requeue
    except (OSError, subprocess.SubprocessError):
        pass
    return states


def submit(job: Job, tasks: list[Task], output_dir: Path | None = None, image: str | None = None,
           dry_run: bool = False, log: Callable[[str], None] = print) -> list[Submission]:
    """Submit the tasks that are neither done nor already queued; returns one record per task sent."""
    import submitit
    from submitit.slurm.slurm import _make_sbatch_string

    from snn_runner.slurm.task import TaskRunner

    layout = job.layout(Path(output_dir or job.output).resolve())
    out = layout.root
    done = [t for t in tasks if job.existing_result(t, out, is_complete)]
    previous = latest_by_task(read_submissions(layout.submissions))
    states = job_states([r.job_id for r in previous.values()]) if previous and not dry_run else {}
    queued = [t for t in tasks if t not in done and t.task_id in previous
              and states.get(previous[t.task_id].job_id) in ACTIVE_STATES]
    todo = [t for t in tasks if t not in done and t not in queued]
    log(f"submit {job.name}: {len(tasks)} task(s): {len(done)} done, {len(queued)} already queued, "
        f"{len(todo)} to submit -> {out}")
    if not todo:
        return []
    params = sbatch_parameters(job)
    python = python_command(job, image)
    folder = layout.logs
    limit = max(1, max_array_size())  # indices 0..limit-1 stay below MaxArraySize
    groups = chunks(todo, limit)
    if dry_run:
        command = " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])
        for group in groups:
            log(f"--- sbatch script for tasks {[t.index for t in group]} ---")
            log(_make_sbatch_string(command=command, folder=str(folder), map_count=len(group), **params))
        return []
    try:
        executor = submitit.SlurmExecutor(folder=folder, python=python, max_num_timeout=job.resources.max_timeouts)
    except RuntimeError as err:
        raise SubmitError(f"cannot submit: {err} (is this a Slurm login node? try scripts/slurm-local start)")
    executor.update_parameters(**params)
    job_file = str(job.path.resolve())
    records = []
    out.mkdir(parents=True, exist_ok=True)
    for group in groups:
        runner = TaskRunner()
        try:
            # each task carries its configuration id, so an edited job file is caught when it runs
            slurm_jobs = executor.map_array(runner, [job_file] * len(group), [t.index for t in group],
                                            [t.task_id for t in group], [str(out)] * len(group))
        except Exception as err:  # sbatch rejected it: name the reason, keep what was sent before
            raise SubmitError(f"sbatch refused the array for tasks {[t.index for t in group]}: {err}") from None
        sent = [Submission.now(job_file, t.index, t.task_id, sj.job_id, str(folder))
                for t, sj in zip(group, slurm_jobs)]
        append_submissions(layout.submissions, sent)
        records += sent
        kind = "array" if len(group) > 1 else "job"  # submitit sends a single task as a plain job
        log(f"submitted {kind} {slurm_jobs[0].job_id.split('_')[0]} with {len(group)} task(s): "
            f"{[t.index for t in group]}")
    return records
