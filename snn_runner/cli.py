"""The `snn-runner` command line."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
import numpy as np

from snn_runner.bench.presets import PRESETS
from snn_runner.config import BACKENDS, DATASETS, IMPLEMENTATIONS, ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig

# TensorFlow's C++ start-up chatter drowns the progress lines in batch logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="snn-runner")
def cli():
    """Train and benchmark activity-sparse spiking neural networks.

    Run `snn-runner COMMAND --help` for the options of each command.
    """


_defaults = RunConfig()


def _job_or_fail(path: Path):
    from snn_runner.jobs import JobFileError, load_job

    try:
        return load_job(path)
    except JobFileError as err:
        raise click.UsageError(str(err)) from None


def _select_tasks(job, spec: str | None):
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


def _job_arguments(command):
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


def _reject_options_with_job(ctx, job: Path, keep: tuple[str, ...] = ()) -> None:
    """A job file is the whole configuration: options that would change it are an error."""
    explicit = [p.opts[-1] for p in ctx.command.params
                if p.name not in ("job", "task_spec", "output_dir") + keep
                and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
    if explicit:
        raise click.UsageError(f"{', '.join(explicit)} cannot be combined with a job file; set them in {job} instead")


def _interrupted(err) -> None:
    from snn_runner.runner.checkpoint import INTERRUPTED_EXIT_CODE

    click.echo(f"interrupted: {err}", err=True)
    sys.exit(INTERRUPTED_EXIT_CODE)


@cli.command()
@_job_arguments
@click.option("--dataset", type=click.Choice(DATASETS), default=_defaults.data.dataset, show_default=True,
              help="Dataset to train on (randman is synthetic and needs no files).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding the event dataset  [default: $SNN_RUNNER_DATA_DIR]")
@click.option("--implementation", type=click.Choice(("auto",) + IMPLEMENTATIONS), default="auto",
              show_default=True, help="Model implementation; auto picks the fastest one available here.")
@click.option("--epochs", type=click.IntRange(min=1), default=_defaults.train.epochs, show_default=True,
              help="Number of training epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=_defaults.train.batch_size, show_default=True,
              help="Samples per training step.")
@click.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True),
              default=_defaults.train.learning_rate, show_default=True, help="Adam learning rate.")
@click.option("--hidden", type=LayerSizes(), default=",".join(map(str, _defaults.model.hidden)), show_default=True,
              help="Hidden layer sizes, comma separated.")
@click.option("--time-steps", type=click.IntRange(min=2), default=_defaults.data.time_steps, show_default=True,
              help="Simulation time steps per sample.")
@click.option("--max-activity", type=click.FloatRange(min=0, max=1, min_open=True),
              default=_defaults.model.max_activity, show_default=True,
              help="Hidden-layer spike capacity as a fraction of the layer size (sparse implementations).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for weights, data order and randman.")
@click.option("--backend", type=click.Choice(BACKENDS), default="cpu", show_default=True,
              help="cpu: TensorFlow with the compiled CPU ops; ipu: Graphcore IPU (needs tensorflow-ipu and the "
                   "Poplar SDK).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Result file to write  [default: results/<dataset>-<implementation>-<time>.h5]")
@click.pass_context
def train(ctx, job, task_spec, output_dir, dataset, data_dir, implementation, epochs, batch_size, learning_rate,
          hidden, time_steps, max_activity, seed, backend, output):
    """Train networks and write metrics, timings and spikes to HDF5.

    With JOB (a YAML job file): run its tasks (all, or those of --task), one
    result file each, skipping tasks already done and resuming interrupted
    ones. Without JOB: one run from the options; with no options at all, the
    main job on the synthetic randman task.

    Exit codes: 0 done, 1 failed, 2 bad input, 75 stopped by SIGTERM/SIGUSR2
    after saving a checkpoint (run the same command again to resume).
    """
    from snn_runner.runner.checkpoint import Interrupted, StopOnSignal

    if job is not None:
        _reject_options_with_job(ctx, job)
        _train_job(_job_or_fail(job), task_spec, output_dir)
        return
    if task_spec is not None or output_dir is not None:
        raise click.UsageError("--task and --output-dir need a JOB file")
    try:
        cfg = RunConfig(
            model=ModelConfig(hidden=hidden, max_activity=max_activity, implementation=implementation),
            data=DataConfig(dataset=dataset, time_steps=time_steps, seed=seed,
                            data_dir=str(data_dir) if data_dir else ""),
            train=TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                              backend=backend),
        ).validate()
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    from snn_runner.model import resolve_implementation
    from snn_runner.runner.train import train as run_training

    resolved = resolve_implementation(implementation)
    if output is None:
        output = Path("results") / f"{dataset}-{resolved}-{time.strftime('%Y%m%d-%H%M%S')}.h5"
    try:
        with StopOnSignal() as stop, _runtime_errors():
            summary = run_training(cfg, output, log=log, stop=stop)
    except Interrupted as err:
        _interrupted(err)
    log(f"result: {summary.path}")
    log(f"final test accuracy: {summary.test_accuracy:.4f}")


class _runtime_errors:
    """Turn the runtime errors a user can fix into one-line messages and exit 1."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        from snn_runner.runner.checkpoint import CheckpointCorrupt, CheckpointMismatch
        from snn_runner.sparse.library import OpsNotBuiltError

        from snn_runner.data import DataError
        from snn_runner.ipu.backend import IpuUnavailableError

        fixable = (OpsNotBuiltError, CheckpointCorrupt, CheckpointMismatch, FileNotFoundError, DataError,
                   IpuUnavailableError)
        if exc_type is not None and issubclass(exc_type, ConfigError):
            raise click.UsageError(str(exc)) from None
        if exc_type is not None and issubclass(exc_type, fixable):
            raise click.ClickException(str(exc)) from None
        return False


def _train_job(job, task_spec, output_dir):
    from snn_runner.runner.checkpoint import Interrupted, StopOnSignal
    from snn_runner.runner.tasks import SKIPPED, run_train_task

    if job.kind != "train":
        raise click.UsageError(f"{job.path} is a {job.kind} job; run it with `snn-runner {job.kind}`")
    tasks = _select_tasks(job, task_spec)
    log(f"job {job.name}: {len(tasks)} task(s) of {len(job.tasks())}")
    try:
        with StopOnSignal() as stop, _runtime_errors():
            for task in tasks:
                summary = run_train_task(job, task, output_dir, log=log, stop=stop)
                if summary != SKIPPED:
                    log(f"result: {summary.path}")
                    log(f"final test accuracy: {summary.test_accuracy:.4f}")
    except Interrupted as err:
        _interrupted(err)


@cli.command()
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--list", "show", is_flag=True, help="List the tasks (index, id, overrides, result file).")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder whose result files count as done  [default: the job's output]")
def sweep(job, show, output_dir):
    """Validate a job file and show the tasks its sweep expands to."""
    from snn_runner.results.schema import is_complete
    from snn_runner.runner.tasks import result_path

    job = _job_or_fail(job)
    tasks = job.tasks()
    log(f"job {job.name} ({job.kind}): {len(tasks)} task(s), output {output_dir or job.output}")
    if show:
        for t in tasks:
            path = result_path(job, t, output_dir)
            state = "done" if is_complete(path) else "todo"
            overrides = " ".join(f"{k}={v}" for k, v in t.overrides.items()) or "(base)"
            log(f"{t.index:4d}  {t.task_id}  {state}  {overrides}  {path}")


@cli.command()
@_job_arguments
@click.option("--network", type=click.Choice(sorted(PRESETS)), default="nmnist-base", show_default=True,
              help="Benchmark network preset (nmnist-base: [1156, 1470, 1460, 10], T=100, batch 48, "
                   "32 input events per step).")
@click.option("--implementation", "implementations", type=click.Choice(IMPLEMENTATIONS), multiple=True,
              help="Implementation to time; repeat for several  [default: all available]")
@click.option("--max-activity", "activities", type=click.FloatRange(min=0, max=1, min_open=True), multiple=True,
              help="Hidden capacity fraction; repeat for several  [default: 0.01 0.02 0.05 0.1]")
@click.option("--steps", type=click.IntRange(min=5), default=5, show_default=True,
              help="Timed training (and forward) steps per case; the median is reported.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed steps after the first (compiling) step.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one JSON record per (implementation, max_activity) to this file.")
@click.pass_context
def bench(ctx, job, task_spec, output_dir, network, implementations, activities, steps, warmup, json_path):
    """Time training steps of dense, sparse_ops and sparse_layer side by side.

    Each case runs in a fresh process (so peak memory is its own) within one
    invocation, and every speed-up is against the dense step measured in the
    same run. Compile time (the first step) is reported apart.

    With JOB (a bench job file): one HDF5 result file per task in the job's
    output folder, for `collect` and `report`.
    """
    from snn_runner.bench.suite import format_table, run_suite, with_speedups, write_json
    from snn_runner.sparse import library

    if job is not None:
        _reject_options_with_job(ctx, job, keep=("json_path",))
        job = _job_or_fail(job)
        if job.kind != "bench":
            raise click.UsageError(f"{job.path} is a {job.kind} job; run it with `snn-runner {job.kind}`")
        from snn_runner.runner.tasks import run_bench_tasks

        tasks = _select_tasks(job, task_spec)
        log(f"job {job.name}: {len(tasks)} bench task(s) on {job.bench.network}")
        try:
            with _runtime_errors():
                records = with_speedups(run_bench_tasks(job, tasks, output_dir, log=log))
        except RuntimeError as err:
            raise click.ClickException(str(err)) from None
        if records:
            log("")
            log(format_table(records))
        if json_path:
            write_json(records, json_path)
            log(f"json: {json_path}")
        return
    if task_spec is not None or output_dir is not None:
        raise click.UsageError("--task and --output-dir need a JOB file")

    implementations = list(implementations) or (
        list(IMPLEMENTATIONS) if library.available() else ["dense"])
    if not library.available() and any(i != "dense" for i in implementations):
        raise click.ClickException(f"the sparse implementations need the compiled ops at {library.library_path()}; "
                                   "build them with scripts/build-ops (./run does it on first use)")
    activities = list(activities) or [0.01, 0.02, 0.05, 0.1]
    try:
        records = run_suite(network, implementations, activities, steps, warmup, log)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None
    log("")
    log(format_table(records))
    if json_path:
        write_json(records, json_path)
        log(f"json: {json_path}")


@cli.command()
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
    from snn_runner.slurm.submit import SubmitError, submit as submit_tasks

    job = _job_or_fail(job)
    tasks = _select_tasks(job, task_spec)
    if dry_run:
        for t in tasks:
            log(f"task {t.index:4d}  {t.task_id}  {' '.join(f'{k}={v}' for k, v in t.overrides.items()) or '(base)'}")
    try:
        records = submit_tasks(job, tasks, output_dir, image or job.resources.image or None, dry_run, log)
    except SubmitError as err:
        raise click.ClickException(str(err)) from None
    if records:
        log(f"follow with: snn-runner status {output_dir or job.output}")


@cli.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def status(folder):
    """Per task of the job submitted into FOLDER: done, pending, running, failed (with its error) or interrupted.

    Exit code 0 when every task is done, 3 otherwise.
    """
    from snn_runner.slurm.status import task_statuses
    from snn_runner.slurm.submit import read_submissions

    records = read_submissions(folder)
    if not records:
        raise click.ClickException(f"{folder}: no submissions recorded here (expected {folder}/.snn-submissions.jsonl "
                                   "written by `snn-runner submit`)")
    job = _job_or_fail(Path(records[-1]["job_file"]))
    counts = {}
    for st in task_statuses(job, folder):
        counts[st.state] = counts.get(st.state, 0) + 1
        log(f"{st.index:4d}  {st.task_id}  {st.state:<13} {st.job_id:<12} {st.detail}")
    log("summary: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    sys.exit(0 if set(counts) == {"done"} else 3)


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("-o", "--output", "table", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Table to write: .h5 (for `report`) or .csv.")
def collect(folder, table):
    """Merge the result files under FOLDER into one table.

    Partial (temporary), corrupt and incomplete files are listed and left
    out; they do not fail the command.
    """
    from snn_runner.results.collect import collect as collect_files, write_table

    try:
        coll = collect_files(folder)
        path = write_table(coll, table)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    for name, reason in coll.skipped:
        log(f"skipped {name}: {reason}")
    log(f"collected {len(coll.rows)} result file(s), skipped {len(coll.skipped)} -> {path}")


@cli.command()
@click.argument("table", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the PNG plots and summary.md.")
def report(table, out_dir):
    """Plots (speed-up vs activity, accuracy/loss, spike rates, raster) and a Markdown summary."""
    from snn_runner.results.report import report as make_report

    if not table.is_file():
        raise click.ClickException(f"{table}: no such table; make one with `snn-runner collect DIR -o {table}`")
    try:
        written = make_report(table, out_dir)
    except (OSError, ValueError, KeyError) as err:
        raise click.ClickException(f"{table}: cannot report on it ({err})") from None
    for path in written:
        log(f"wrote {path}")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def inspect(file):
    """Print a result file and check it against the schema (exit 1 if invalid)."""
    from snn_runner.results.schema import problems
    from snn_runner.results.store import read_result

    found = problems(file)
    if found and ("no such file" in found[0] or "not a readable" in found[0]):
        raise click.ClickException(f"{file}: {found[0]}")
    rec = read_result(file) if not any("config_json" in p for p in found) else {"attrs": {}}
    for key, value in sorted(rec.get("attrs", {}).items()):
        if key != "config_json":
            log(f"{key}: {value}")
    if "config" in rec:
        log("config: " + json.dumps(rec["config"], sort_keys=True))
    for group in ("metrics", "timing", "bench", "spikes"):
        for key, value in sorted(rec.get(group, {}).items()):
            shape = getattr(value, "shape", None)
            text = f"shape {shape}" if shape else repr(value)
            if shape and len(shape) == 1 and shape[0] <= 12:
                text += f"  {np.array2string(value, precision=4)}"
            log(f"/{group}/{key}: {text}")
    if found:
        for p in found:
            log(f"INVALID: {p}")
        sys.exit(1)
    log("valid: schema version " + str(rec["attrs"].get("schema_version")))


def _register_subgroups() -> None:
    from snn_runner.data.cli_commands import data

    cli.add_command(data)


_register_subgroups()


def main() -> None:
    cli(prog_name="snn-runner")


if __name__ == "__main__":
    main()
