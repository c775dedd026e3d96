"""`snn-runner train`: one run from options, or the tasks of a job file."""

from __future__ import annotations

import contextlib
import secrets
import sys
import time
from pathlib import Path

import click

from snn_runner.cli.common import (
    LayerSizes,
    exit_interrupted,
    job_arguments,
    load_job_or_fail,
    log,
    reject_options_with_job,
    runtime_errors,
    select_tasks,
)
from snn_runner.config import (
    BACKENDS,
    DATASETS,
    IMPLEMENTATIONS,
    READOUTS,
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)

_defaults = RunConfig()


@contextlib.contextmanager
def stopped_at_once():
    """A second Ctrl-C does not wait for the step to end; say what is kept."""
    try:
        yield
    except KeyboardInterrupt:
        raise click.ClickException("stopped at once by a second Ctrl-C; the checkpoint of the last finished epoch "
                                   "is kept: run the same command again to resume from it") from None


@click.command()
@job_arguments
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
@click.option("--progress-s", type=click.FloatRange(min=0), default=_defaults.train.progress_s, show_default=True,
              help="Seconds between progress lines inside an epoch (step, samples/s, loss, ETA); 0: off.")
@click.option("--init-from", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Start from the weights of the network trained in this result file (fine-tuning, or "
                   "retraining at another capacity); sizes must match.")
@click.option("--readout", type=click.Choice(READOUTS), default=_defaults.model.readout, show_default=True,
              help="Logits: output spikes summed over time, or a non-spiking output layer's membrane max / mean.")
@click.option("--set", "settings", metavar="SECTION.KEY=VALUE", multiple=True,
              help="Any other job-file key, e.g. --set train.optimizer=adamw --set train.weight_decay=1e-4 "
                   "(repeatable; applied after the options above, checked like a job file).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Result file to write  [default: results/<dataset>-<implementation>-<time>.h5]")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train each run data-parallel in this many local processes (tf.distribute, one share of "
                   "every batch each; the result equals a one-process run). Under Slurm use the job keys "
                   "resources.nodes and resources.tasks_per_node instead.")
@click.pass_context
def train(ctx, job, task_spec, output_dir, dataset, data_dir, implementation, epochs, batch_size, learning_rate,
          hidden, time_steps, max_activity, seed, backend, progress_s, init_from, readout, settings, output,
          workers):
    """Train networks and write metrics, timings and spikes to HDF5.

    With JOB (a YAML job file): run its tasks (all, or those of --task), one
    result file each, skipping tasks already done and resuming interrupted
    ones. Without JOB: one run from the options; with no options at all, the
    main job on the synthetic randman task.

    Exit codes: 0 done, 1 failed, 2 bad input, 75 stopped by SIGTERM/SIGUSR2
    after saving a checkpoint (run the same command again to resume).
    """
    from snn_runner.runner.signals import Interrupted, StopOnSignal

    this_worker = _this_worker(workers)
    if job is not None:
        reject_options_with_job(ctx, job, keep=("workers",))
        loaded = load_job_or_fail(job)
        if this_worker is None and workers > 1:
            _launch(workers, loaded.resources.communication)
        _train_job(loaded, task_spec, output_dir, this_worker)
        return
    if task_spec is not None or output_dir is not None:
        raise click.UsageError("--task and --output-dir need a JOB file")
    try:
        cfg = RunConfig(
            model=ModelConfig(hidden=hidden, max_activity=max_activity, implementation=implementation,
                              readout=readout),
            data=DataConfig(dataset=dataset, time_steps=time_steps, seed=seed,
                            data_dir=str(data_dir) if data_dir else ""),
            train=TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                              backend=backend, progress_s=progress_s,
                              init_from=str(init_from) if init_from else ""),
        ).validate()
        cfg = with_settings(cfg, settings)
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    from snn_runner.dispatch import resolve, run_training

    cfg = resolve(cfg)
    named = output is not None
    if this_worker is None and workers > 1:
        if not named:
            raise click.UsageError("--workers needs -o/--output: every worker must name the same result file")
        _launch(workers, "auto")
    if not named:
        # the time alone is not unique: runs started together would share a name
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        output = Path("results") / f"{dataset}-{cfg.model.implementation}-{stamp}.h5"
    try:
        with StopOnSignal() as stop, runtime_errors(), stopped_at_once():
            summary = run_training(cfg, output, log=log, stop=stop, workers=this_worker)
    except Interrupted as err:
        exit_interrupted(err if named else f"{err} with -o {output}")
    log(f"result: {summary.path}")
    log(f"final test accuracy: {summary.test_accuracy:.4f}")


def with_settings(cfg: RunConfig, settings: tuple[str, ...]) -> RunConfig:
    """``cfg`` with ``--set SECTION.KEY=VALUE`` applied; values are read as YAML scalars (1e-4, -.inf, [64, 64])."""
    import yaml

    if not settings:
        return cfg
    raw = cfg.to_dict()
    for item in settings:
        dotted, eq, text = item.partition("=")
        section, _, key = dotted.strip().partition(".")
        if not eq or section not in raw or not key:
            raise ConfigError(f"--set {item}: expected SECTION.KEY=VALUE with SECTION one of "
                              f"{', '.join(raw)}, e.g. --set train.clip_norm=1.0")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}: {text!r} is not a value; write numbers, words or lists "
                              "as in a job file") from None
        raw[section][key.strip()] = value
    return RunConfig.from_dict(raw, where="--set")


def _this_worker(requested: int):
    """This process's place when the launcher of ``--workers`` started it, else None."""
    from snn_runner.distribute import workers_from_environment
    from snn_runner.distribute.cluster import ClusterError

    try:
        found = workers_from_environment()
    except ClusterError as err:
        raise click.ClickException(str(err)) from None
    if found is not None and found.world_size != requested:
        raise click.ClickException(f"this worker belongs to a run of {found.world_size} workers but the command "
                                   f"asks for --workers {requested}; unset SNN_RUNNER_WORKERS")
    return found


def _launch(count: int, communication: str):
    """Start ``count`` workers running this same command, wait for them, and exit with the run's code."""
    from snn_runner.distribute.launch import run_local

    sys.exit(run_local(count, sys.argv[1:], communication, log=log))


def _train_job(job, task_spec, output_dir, this_worker=None):
    from snn_runner.runner.signals import Interrupted, StopOnSignal
    from snn_runner.dispatch import SKIPPED, run_train_task

    if job.kind != "train":
        raise click.UsageError(f"{job.path} is a {job.kind} job; run it with `snn-runner {job.kind}`")
    tasks = select_tasks(job, task_spec)
    log(f"job {job.name}: {len(tasks)} task(s) of {len(job.tasks())}")
    try:
        with StopOnSignal() as stop, runtime_errors(), stopped_at_once():
            for task in tasks:
                summary = run_train_task(job, task, output_dir, log=log, stop=stop, workers=this_worker)
                if summary != SKIPPED:
                    log(f"result: {summary.path}")
                    log(f"final test accuracy: {summary.test_accuracy:.4f}")
    except Interrupted as err:
        exit_interrupted(err)
