"""What the commands share: logging, job-file arguments, error translation."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from snn_runner.config import ConfigError


def log(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


class LayerSizes(click.ParamType):
    name = "SIZES"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            sizes = tuple(int(v) for v in str(value).split(","))
        except ValueError:
            sizes = ()
        if not sizes or any(n < 1 for n in sizes):
            self.fail(f"{value!r} is not a comma-separated list of positive integers, e.g. 128 or 256,128", param, ctx)
        return sizes


def load_job_or_fail(path: Path):
    from snn_runner.jobs import JobFileError, load_job

    try:
        return load_job(path)
    except JobFileError as err:
        raise click.UsageError(str(err)) from None


def select_tasks(job, spec: str | None):
    tasks = job.tasks()
    if spec is None:
        return tasks
    wanted = set()
    for part in spec.split(","):
        try:
            lo, _, hi = part.partition("-")
            wanted.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise click.BadParameter(f"{spec!r} is not a task list like 3 or 0-9,12", param_hint="--task") from None
    bad = sorted(i for i in wanted if i >= len(tasks) or i < 0)
    if bad:
        raise click.BadParameter(f"task {bad[0]} does not exist; {job.path} has tasks 0-{len(tasks) - 1}",
                                 param_hint="--task")
    return [t for t in tasks if t.index in wanted]


def job_arguments(command):
    """JOB plus --task/--output-dir, shared by the commands that run job files."""
    for decorator in reversed((
        click.argument("job", required=False, type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--task", "task_spec", default=None, metavar="LIST",
                     help="With JOB: run only these tasks, e.g. 3 or 0-9,12  [default: all]"),
        click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="With JOB: folder for the result files  [default: the job's output]"),
    )):
        command = decorator(command)
    return command


def reject_options_with_job(ctx, job: Path, keep: tuple[str, ...] = ()) -> None:
    """A job file is the whole configuration: options that would change it are an error."""
    explicit = [p.opts[-1] for p in ctx.command.params
                if p.name not in ("job", "task_spec", "output_dir") + keep
                and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
    if explicit:
        raise click.UsageError(f"{', '.join(explicit)} cannot be combined with a job file; set them in {job} instead")


def exit_interrupted(err) -> None:
    from snn_runner.runner.signals import INTERRUPTED_EXIT_CODE

    click.echo(f"interrupted: {err}", err=True)
    sys.exit(INTERRUPTED_EXIT_CODE)


class runtime_errors:
    """Turn the runtime errors a user can fix into one-line messages and exit 1."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        from snn_runner.data import DataError
        from snn_runner.backend import IpuUnavailableError
        from snn_runner.runner.checkpoint import CheckpointCorrupt, CheckpointMismatch
        from snn_runner.sparse.library import OpsNotBuiltError

        fixable = (OpsNotBuiltError, CheckpointCorrupt, CheckpointMismatch, FileNotFoundError, DataError,
                   IpuUnavailableError)
        if exc_type is not None and issubclass(exc_type, ConfigError):
            raise click.UsageError(str(exc)) from None
        if exc_type is not None and issubclass(exc_type, fixable):
            raise click.ClickException(str(exc)) from None
        return False
