"""Where each task of a submitted job stands, read from its output folder and Slurm."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from snn_runner.jobs import Job
from snn_runner.results.schema import is_complete
from snn_runner.slurm.submission import latest_by_task, read_submissions
from snn_runner.slurm.submit import ACTIVE_STATES, job_states


@dataclass
class TaskStatus:
    index: int
    task_id: str
    state: str  # done | pending | running | failed | interrupted | not submitted | changed
    job_id: str = ""
    detail: str = ""


def _error_line(log_folder: str, job_id: str) -> str:
    """The last line of the task's traceback (submitit's result pickle or stderr)."""
    import submitit
    from submitit.core.utils import pickle_load

    paths = submitit.SlurmJob(folder=log_folder, job_id=job_id).paths
    try:
        outcome, payload = pickle_load(paths.result_pickle)
        if outcome == "error":
            return _exception_line(str(payload).splitlines()) or "failed"
    except (OSError, EOFError, ValueError, TypeError):
        pass
    try:
        return _exception_line(paths.stderr.read_text().splitlines()) or "failed (see the task's log)"
    except OSError:
        return "failed (no log)"


def _exception_line(lines: list[str]) -> str:
    """The 'SomeError: message' line that ends a traceback (messages may span lines)."""
    heads = [ln.strip() for ln in lines if _EXCEPTION.match(ln)]
    if heads:
        return heads[-1]
    lines = [ln.strip() for ln in lines if ln.strip()]
    return lines[-1] if lines else ""


_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")


def task_statuses(job: Job, output_dir: Path | None = None) -> list[TaskStatus]:
    layout = job.layout(Path(output_dir or job.output).resolve())
    latest = latest_by_task(read_submissions(layout.submissions))
    states = job_states([r.job_id for r in latest.values()])
    result = []
    for task in job.tasks():
        rec = latest.get(task.task_id)
        path = layout.result(task.index, task.task_id)
        checkpointed = layout.checkpoint(task.index, task.task_id).exists()
        if is_complete(path):
            result.append(TaskStatus(task.index, task.task_id, "done", rec.job_id if rec else "", str(path)))
            continue
        if rec is None:
            state = "interrupted" if checkpointed else "not submitted"
            result.append(TaskStatus(task.index, task.task_id, state))
            continue
        slurm = states.get(rec.job_id, "UNKNOWN")
        if slurm in ACTIVE_STATES:
            state = "running" if slurm in ("RUNNING", "COMPLETING") else "pending"
            result.append(TaskStatus(task.index, task.task_id, state, rec.job_id, slurm))
        elif checkpointed and slurm not in ("FAILED", "COMPLETED"):
            result.append(TaskStatus(task.index, task.task_id, "interrupted", rec.job_id,
                                     f"{slurm}; checkpoint saved, resubmit to resume"))
        else:
            result.append(TaskStatus(task.index, task.task_id, "failed", rec.job_id,
                                     f"{slurm}: {_error_line(rec.log_folder, rec.job_id)}"))
    current = {t.task_id for t in job.tasks()}
    for rec in latest.values():
        if rec.task_id not in current:  # its task refuses to run (TaskChangedError) or ran before the edit
            result.append(TaskStatus(rec.task_index, rec.task_id, "changed", rec.job_id,
                                     f"{job.path} was edited after this task was submitted; resubmit it"))
    return result
