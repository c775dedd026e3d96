"""A run or a job's tasks, start to end: the one module above the trainer and the bench.

For every run: resolve the configuration (``auto`` becomes the implementation
that will run, and that is what gets recorded), check that the output folder
can be written, take the result's run lock (one writer per result), skip it
when its result is already complete, train or time it, write the result
file, and only then drop the checkpoint. The CLI and the Slurm task both come
through here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from snn_runner.config import RunConfig
from snn_runner.files import checkpoint_for
from snn_runner.files.lock import check_writable, run_lock
from snn_runner.jobs import Job, Task
from snn_runner.runner.budget import ResourceError, check_memory
from snn_runner.results.schema import is_complete

SKIPPED = "skipped"


def resolve(cfg: RunConfig) -> RunConfig:
    """See ``snn_runner.model.resolve``: imported late, so importing dispatch does not start TensorFlow."""
    from snn_runner.model import resolve as resolve_model

    return resolve_model(cfg)


class ResultExists(FileExistsError):
    """A run was pointed at a result file that is already there."""


@dataclass
class RunSummary:
    path: Path
    implementation: str
    test_accuracy: float
    test_loss: float
    epochs: int


def task_attrs(job: Job, task: Task) -> dict:
    return {"job_name": job.name, "job_file": str(job.path), "task_index": task.index, "task_id": task.task_id}


def starting_network(cfg: RunConfig):
    """The trained network ``train.init_from`` names (a SavedNetwork), or None; checked against the hidden sizes now."""
    if not cfg.train.init_from:
        return None
    from snn_runner.config import ConfigError
    from snn_runner.results.network import read_network

    net = read_network(cfg.train.init_from)
    if tuple(net.sizes[1:-1]) != tuple(cfg.model.hidden):
        raise ConfigError(f"train.init_from: {cfg.train.init_from} holds a network of sizes {list(net.sizes)} "
                          f"(hidden {list(net.sizes[1:-1])}), but this run has hidden {list(cfg.model.hidden)}; "
                          "use the same hidden sizes or another init_from")
    return net


def _train_into(cfg: RunConfig, result: Path, log, stop, attrs: dict | None, workers=None) -> RunSummary:
    from snn_runner.results.store import write_train_result
    from snn_runner.runner.train import train

    ckpt = checkpoint_for(result)
    record = train(cfg, ckpt, log=log, stop=stop, init=starting_network(cfg), workers=workers)
    last = record.rows[-1]
    summary = RunSummary(result, cfg.model.implementation, last["test_accuracy"], last["test_loss"], len(record.rows))
    if workers is not None:
        if not workers.is_chief:
            return summary  # one result per run: rank 0 writes it
        attrs = {**(attrs or {}), **workers.attrs()}
    from snn_runner.results.network import SavedNetwork

    write_train_result(result, cfg.to_dict(), {**record.attrs, **(attrs or {})}, record.rows, record.step_seconds,
                       record.compile_seconds, record.mode, record.spikes, network=SavedNetwork(**record.network),
                       best=SavedNetwork(**record.best_network) if record.best_network else None)
    ckpt.unlink(missing_ok=True)  # only once the result is safely in place
    return summary


def _writer_lock(result: Path, workers, wait_s: float, log):
    """The run lock of ``result`` for its writer; the other workers of a run write nothing and take none."""
    if workers is not None and not workers.is_chief:
        return contextlib.nullcontext()
    return run_lock(result, wait_s, log)


def run_training(cfg: RunConfig, result: Path, log: Callable[[str], None] = print, stop=None,
                 attrs: dict | None = None, workers=None) -> RunSummary:
    """Train ``cfg`` (resuming from its checkpoint) into the new result file ``result``.

    Refuses a result that already exists and a result another run is writing.
    With ``workers`` this process is one worker of a data-parallel run.
    """
    cfg = resolve(cfg)
    result = Path(result)
    check_writable(result.parent)
    with _writer_lock(result, workers, 0.0, log):
        if result.exists():
            raise ResultExists(f"{result} already exists; choose another output file (-o) or delete it first")
        return _train_into(cfg, result, log, stop, attrs, workers)


def run_train_task(job: Job, task: Task, output_dir: Path | None = None, log: Callable[[str], None] = print,
                   stop=None, wait_s: float = 0.0, workers=None):
    """Train one task unless its result is already complete; resumes from a checkpoint.

    A task another process is running is waited for up to ``wait_s`` seconds
    (then refused); if that run finished it, the task counts as done.
    """
    path = job.result(task, output_dir)
    done = job.existing_result(task, output_dir, is_complete)  # under any index: the id is the identity
    if done is not None:
        log(f"task {task.index} ({task.task_id}): already done: {done}")
        return SKIPPED
    check_writable(path.parent)
    with _writer_lock(path, workers, wait_s, log):
        if is_complete(path):
            log(f"task {task.index} ({task.task_id}): done meanwhile by another run: {path}")
            return SKIPPED
        log(f"task {task.index} ({task.task_id}) {task.overrides or ''} -> {path}")
        return _train_into(resolve(task.config), path, log, stop, task_attrs(job, task), workers)


def run_bench_tasks(job: Job, tasks: list[Task], output_dir: Path | None = None,
                    log: Callable[[str], None] = print) -> list[dict]:
    """Time each bench task in its own process, side by side; one result file per task."""
    from snn_runner.bench.suite import run_case_isolated
    from snn_runner.results.store import write_bench_result

    records = []
    for task in tasks:
        path = job.result(task, output_dir)
        done = job.existing_result(task, output_dir, is_complete)
        if done is not None:
            log(f"task {task.index} ({task.task_id}): already done: {done}")
            continue
        check_writable(path.parent)
        cfg = resolve(task.config)
        try:
            check_memory(cfg)
        except ResourceError as err:
            if len(tasks) == 1:
                raise
            # a sweep over sizes goes on without the case that cannot fit (dense at the widest, usually)
            log(f"task {task.index} ({task.task_id}) {cfg.model.implementation}: left out: {err}")
            continue
        with run_lock(path, log=log):
            rec = run_case_isolated(cfg, task.bench)
            attrs = {**task_attrs(job, task), "implementation": cfg.model.implementation,
                     "backend": cfg.train.backend}
            write_bench_result(path, cfg.to_dict(), attrs, rec)
        log(f"task {task.index} ({task.task_id}) {cfg.model.implementation} max_activity {rec['max_activity']}: "
            f"step {rec['step_ms_median']:.1f} ms, forward {rec['forward_ms_median']:.1f} ms -> {path}")
        records.append(rec)
    return records
