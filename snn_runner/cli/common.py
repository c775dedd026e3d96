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


def parse_task_spec(spec: str, count: int, where: str, option: str = "--task") -> list[int]:
    """Task indices of a list like ``3`` or ``0-9,12``, checked against ``count`` before anything is expanded."""
    def bad(reason: str):
        return click.BadParameter(f"{spec!r} {reason}", param_hint=option)

    ranges = []
    for part in spec.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not (lo.strip().isdigit() and lo.strip().isascii()) or (sep and not (hi.strip().isdigit()
                                                                                 and hi.strip().isascii())):
            raise bad("is not a task list like 3 or 0-9,12 (non-negative task numbers)")
        lo, hi = lo.strip()[-19:].rjust(19, "0"), hi.strip()[-19:].rjust(19, "0")
        a = int(lo) if not part.split("-")[0].strip().lstrip("0")[:-19] else count + 10**19
        b = (int(hi) if not part.split("-")[1].strip().lstrip("0")[:-19] else count + 10**19) if sep else a
        if b < a:
            raise bad(f"has the range {part} running backwards; write {b}-{a}")
        if b >= count:
            first = a if a >= count else count
            raise bad(f"asks for task {first}: task {first} does not exist; {where} has tasks 0-{count - 1}"
                      if count else f"asks for task {a}, but {where} has no tasks")
        ranges.append((a, b))
    wanted = set()
    for a, b in ranges:  # bounded by count now
        wanted.update(range(a, b + 1))
    return sorted(wanted)


def select_tasks(job, spec: str | None):
    tasks = job.tasks()
    if spec is None:
        return tasks
    wanted = set(parse_task_spec(spec, len(tasks), str(job.path)))
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
        from snn_runner.backend import IpuUnavailableError
        from snn_runner.distribute.cluster import ClusterError
        from snn_runner.distribute.strategy import WorkerLost
        from snn_runner.data import DataError
        from snn_runner.dispatch import ResultExists
        from snn_runner.files import WriteError
        from snn_runner.files.lock import OutputNotWritable, RunLocked
        from snn_runner.results.network import NoNetworkError
        from snn_runner.runner.checkpoint import CheckpointCorrupt, CheckpointMismatch
        from snn_runner.sparse.library import OpsNotBuiltError

        fixable = (OpsNotBuiltError, CheckpointCorrupt, CheckpointMismatch, FileNotFoundError, DataError,
                   ResultExists, RunLocked, OutputNotWritable, WriteError, IpuUnavailableError,
                   NoNetworkError, WorkerLost, ClusterError)
        if exc_type is not None and issubclass(exc_type, ConfigError):
            raise click.UsageError(str(exc)) from None
        if exc_type is not None and issubclass(exc_type, fixable):
            raise click.ClickException(str(exc)) from None
        return False
