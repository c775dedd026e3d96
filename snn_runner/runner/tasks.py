"""Run the tasks of a job file: the code path shared by the CLI and Slurm."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from snn_runner.jobs import Job, Task
from snn_runner.results.schema import is_complete

SKIPPED = "skipped"


def result_path(job: Job, task: Task, output_dir: Path | None = None) -> Path:
    return Path(output_dir or job.output) / task.result_name(job.name)


def task_attrs(job: Job, task: Task) -> dict:
    return {"job_name": job.name, "job_file": str(job.path), "task_index": task.index, "task_id": task.task_id}


def run_train_task(job: Job, task: Task, output_dir: Path | None = None, log: Callable[[str], None] = print,
                   stop=None):
    """Train one task unless its result is already complete; resumes from a checkpoint."""
    from snn_runner.runner.train import train

    path = result_path(job, task, output_dir)
    if is_complete(path):
        log(f"task {task.index} ({task.task_id}): already done: {path}")
        return SKIPPED
    log(f"task {task.index} ({task.task_id}) {task.overrides or ''} -> {path}")
    return train(task.config, path, log=log, attrs=task_attrs(job, task), stop=stop)


def run_bench_tasks(job: Job, tasks: list[Task], output_dir: Path | None = None,
                    log: Callable[[str], None] = print) -> list[dict]:
    """Time each bench task in its own process, side by side; one result file per task."""
    from snn_runner.bench.suite import run_case_isolated
    from snn_runner.model import resolve_implementation
    from snn_runner.results.store import write_bench_result

    records = []
    for task in tasks:
        path = result_path(job, task, output_dir)
        implementation = resolve_implementation(task.config.model.implementation)
        if is_complete(path):
            log(f"task {task.index} ({task.task_id}): already done: {path}")
            continue
        bench = task.bench
        rec = run_case_isolated((bench.network, bench.resolve(), implementation,
                                 task.config.model.max_activity, bench.steps, bench.warmup, task.config.train.seed))
        write_bench_result(path, task.config.to_dict(), task_attrs(job, task), rec)
        log(f"task {task.index} ({task.task_id}) {implementation} max_activity {rec['max_activity']}: "
            f"step {rec['step_ms_median']:.1f} ms, forward {rec['forward_ms_median']:.1f} ms -> {path}")
        records.append(rec)
    return records
