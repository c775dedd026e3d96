"""`snn-runner sweep`, `submit` and `status`: job files and Slurm."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from snn_runner.cli.common import (
    load_job_or_fail,
    log,
    select_tasks,
)


@click.command()
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--list", "show", is_flag=True, help="List the tasks (index, id, overrides, result file).")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder whose result files count as done  [default: the job's output]")
def sweep(job, show, output_dir):
    """Validate a job file and show the tasks its sweep expands to."""
    from snn_runner.results.schema import is_complete

    job = load_job_or_fail(job)
    tasks = job.tasks()
    log(f"job {job.name} ({job.kind}): {len(tasks)} task(s), output {output_dir or job.output}")
    if show:
        for t in tasks:
            path = job.existing_result(t, output_dir, is_complete) or job.result(t, output_dir)
            state = "done" if is_complete(path) else "todo"
            overrides = " ".join(f"{k}={v}" for k, v in t.overrides.items()) or "(base)"
            log(f"{t.index:4d}  {t.task_id}  {state}  {overrides}  {path}")


@click.command()
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--image", default=None, metavar="IMAGE.sif",
              help="Run each task's Python inside this image (resources.launcher exec IMAGE python3)  "
                   "[default: resources.image, else this host's Python]")
@click.option("--output", "output_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for results, checkpoints and Slurm logs  [default: the job's output]")
@click.option("--tasks", "task_spec", default=None, metavar="LIST", help="Only these tasks, e.g. 0-9,12.")
@click.option("--dry-run", is_flag=True, help="Print the sbatch script(s) and the task list; submit nothing.")
def submit(job, image, output_dir, task_spec, dry_run):
    """Send a job file's unfinished tasks to Slurm as job arrays (via submitit).

    Tasks whose result file is complete, or that are still queued from an
    earlier submission, are skipped. Each task runs the same code as
    `snn-runner train/bench JOB --task N`, checkpoints every epoch and on
    SIGUSR2/SIGTERM, and is requeued on timeout.
    """
    from snn_runner.slurm.submit import SubmitError
    from snn_runner.slurm.submit import submit as submit_tasks

    job = load_job_or_fail(job)
    tasks = select_tasks(job, task_spec)
    if dry_run:
        for t in tasks:
            log(f"task {t.index:4d}  {t.task_id}  {' '.join(f'{k}={v}' for k, v in t.overrides.items()) or '(base)'}")
    try:
        records = submit_tasks(job, tasks, output_dir, image or job.resources.image or None, dry_run, log)
    except SubmitError as err:
        raise click.ClickException(str(err)) from None
    if records:
        log(f"follow with: snn-runner status {output_dir or job.output}")


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def status(folder):
    """Per task of the job submitted into FOLDER: done, pending, running, failed (with its error) or interrupted.

    Exit code 0 when every task is done, 3 otherwise.
    """
    from snn_runner.files import OutputLayout
    from snn_runner.slurm.status import task_statuses
    from snn_runner.slurm.submission import read_submissions

    submissions = OutputLayout(folder).submissions
    records = read_submissions(submissions)
    if not records:
        raise click.ClickException(f"{folder}: no submissions recorded here (expected {submissions} "
                                   "written by `snn-runner submit`)")
    job = load_job_or_fail(Path(records[-1].job_file))
    counts = {}
    for st in task_statuses(job, folder):
        counts[st.state] = counts.get(st.state, 0) + 1
        log(f"{st.index:4d}  {st.task_id}  {st.state:<13} {st.job_id:<12} {st.detail}")
    log("summary: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    sys.exit(0 if set(counts) == {"done"} else 3)
