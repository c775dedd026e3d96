"""What one Slurm array task runs: the same code path as `snn-runner train/bench --task N`.

The callable is submitit-checkpointable: on the timeout signal (USR2) it
finishes the current training step, saves the run's checkpoint, and lets
submitit requeue it; the requeued task resumes from that checkpoint. On
SIGTERM (`scontrol requeue`, preemption, scancel) it saves and exits without
a result, and Slurm's own requeue (if any) resumes it the same way.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import submitit

from snn_runner.distribute.strategy import WorkerLost
from snn_runner.runner.signals import INTERRUPTED_EXIT_CODE, Interrupted, StopOnSignal


LOCK_WAIT_S = 300.0


def _log(line: str) -> None:
    print(line, flush=True)


class TaskRunner(submitit.helpers.Checkpointable):
    """Run task ``index`` (configuration id ``task_id``) of the job file ``job_path`` into ``output_dir``."""

    def __call__(self, job_path: str, index: int, task_id: str, output_dir: str) -> str:
        from snn_runner.dispatch import run_bench_tasks, run_train_task
        from snn_runner.jobs import load_job

        job = load_job(job_path)
        task = job.task(index, expected_id=task_id)  # refuses a job file edited since submission
        out = Path(output_dir)
        if job.kind == "bench":
            run_bench_tasks(job, [task], out, log=_log)
            return str(job.result(task, out))
        workers = None
        if job.resources.world_size > 1:
            from snn_runner.distribute import slurm_workers

            # the task's CPUs, not the node's, are its op pool (several workers may share a node)
            os.environ.setdefault("TF_NUM_INTRAOP_THREADS", os.environ.get("SLURM_CPUS_PER_TASK", "1"))
            workers = slurm_workers(job.resources.world_size, job.resources.communication)
            _log(f"worker rank {workers.rank} of {workers.world_size} on {workers.host_of(workers.rank)} "
                 f"(step {workers.slurm_step})")
        with StopOnSignal() as stop:
            try:
                # a requeued task may start while its previous instance is still saving: wait for it
                run_train_task(job, task, out, log=_log, stop=stop, wait_s=LOCK_WAIT_S, workers=workers)
            except WorkerLost as err:
                # one line naming the lost worker on top of submitit's record of the failure
                print(f"Error: {err}", file=sys.stderr, flush=True)
                raise
            except Interrupted as err:
                _log(f"interrupted: {err}")
                previous = stop.previous_handler(stop.received)
                if stop.received == signal.SIGUSR2 and callable(previous):
                    previous(stop.received, None)  # submitit: checkpoint() + requeue + exit
                # SIGTERM and the others: no result, so a Slurm requeue starts the task afresh (and resumes)
                sys.stdout.flush()
                os._exit(INTERRUPTED_EXIT_CODE)
        return str(job.result(task, out))

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # The run's own checkpoint file holds the state; requeue the same call.
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
