"""A run or a job's tasks, start to end: the one module above the trainer and the bench.

For every run: resolve the configuration (``auto`` becomes the implementation
that will run, and that is what gets recorded), skip it when its result is
already complete, train or time it, write the result file, and only then
drop the checkpoint. The CLI and the Slurm task both come through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from snn_runner.config import RunConfig
from snn_runner.files import checkpoint_for
from snn_runner.jobs import Job, Task
from snn_runner.results.schema import is_complete

SKIPPED = "skipped"


@dataclass
class RunSummary:
    path: Path
    implementation: str
    test_accuracy: float
    test_loss: float
    epochs: int


def resolve(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``model.implementation`` as it will run (the only place ``auto`` is decided)."""
    if cfg.model.implementation != "auto":
        return cfg
    from snn_runner.model import resolve_implementation

    implementation = resolve_implementation("auto")
    if implementation == "sparse_layer" and cfg.train.rate_strength > 0:
        implementation = "sparse_ops"  # the fastest one whose gradient covers the activity regulariser
    return cfg.replace("model", implementation=implementation)


def task_attrs(job: Job, task: Task) -> dict:
    return {"job_name": job.name, "job_file": str(job.path), "task_index": task.index, "task_id": task.task_id}


def run_training(cfg: RunConfig, result: Path, log: Callable[[str], None] = print, stop=None,
                 attrs: dict | None = None) -> RunSummary:
    """Train ``cfg`` (resuming from its checkpoint) and write the result file ``result``."""
    from snn_runner.results.store import write_train_result
    from snn_runner.runner.train import train

    cfg = resolve(cfg)
    result = Path(result)
    ckpt = checkpoint_for(result)
    record = train(cfg, ckpt, log=log, stop=stop)
    write_train_result(result, cfg.to_dict(), {**record.attrs, **(attrs or {})}, record.rows, record.step_seconds,
                       record.compile_seconds, record.mode, record.spikes)
    ckpt.unlink(missing_ok=True)  # only once the result is safely in place
    last = record.rows[-1]
    return RunSummary(result, cfg.model.implementation, last["test_accuracy"], last["test_loss"], len(record.rows))


def run_train_task(job: Job, task: Task, output_dir: Path | None = None, log: Callable[[str], None] = print,
                   stop=None):
    """Train one task unless its result is already complete; resumes from a checkpoint."""
    path = job.result(task, output_dir)
    if is_complete(path):
        log(f"task {task.index} ({task.task_id}): already done: {path}")
        return SKIPPED
    log(f"task {task.index} ({task.task_id}) {task.overrides or ''} -> {path}")
    return run_training(task.config, path, log=log, stop=stop, attrs=task_attrs(job, task))


def run_bench_tasks(job: Job, tasks: list[Task], output_dir: Path | None = None,
                    log: Callable[[str], None] = print) -> list[dict]:
    """Time each bench task in its own process, side by side; one result file per task."""
    from snn_runner.bench.suite import run_case_isolated
    from snn_runner.results.store import write_bench_result

    records = []
    for task in tasks:
        path = job.result(task, output_dir)
        if is_complete(path):
            log(f"task {task.index} ({task.task_id}): already done: {path}")
            continue
        cfg = resolve(task.config)
        rec = run_case_isolated(cfg, task.bench)
        attrs = {**task_attrs(job, task), "implementation": cfg.model.implementation, "backend": cfg.train.backend}
        write_bench_result(path, cfg.to_dict(), attrs, rec)
        log(f"task {task.index} ({task.task_id}) {cfg.model.implementation} max_activity {rec['max_activity']}: "
            f"step {rec['step_ms_median']:.1f} ms, forward {rec['forward_ms_median']:.1f} ms -> {path}")
        records.append(rec)
    return records
