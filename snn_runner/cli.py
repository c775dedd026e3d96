"""The `snn-runner` command line."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from snn_runner.bench.presets import PRESETS
from snn_runner.config import DATASETS, IMPLEMENTATIONS, ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig

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


@cli.command()
@click.option("--dataset", type=click.Choice(DATASETS), default=_defaults.data.dataset, show_default=True,
              help="Dataset to train on (randman is synthetic and needs no files).")
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
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Result file to write  [default: results/<dataset>-<implementation>-<time>.h5]")
def train(dataset, implementation, epochs, batch_size, learning_rate, hidden, time_steps, max_activity, seed,
          output):
    """Train a network and write its metrics and timings to one HDF5 file.

    With no options: the main job, a dense-or-faster LIF network on the
    synthetic randman task, in a few minutes on a laptop-class CPU.
    """
    try:
        cfg = RunConfig(
            model=ModelConfig(hidden=hidden, max_activity=max_activity, implementation=implementation),
            data=DataConfig(dataset=dataset, time_steps=time_steps, seed=seed),
            train=TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed),
        ).validate()
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    from snn_runner.model import resolve_implementation
    from snn_runner.runner.train import train as run_training
    from snn_runner.sparse.library import OpsNotBuiltError

    resolved = resolve_implementation(implementation)
    if output is None:
        output = Path("results") / f"{dataset}-{resolved}-{time.strftime('%Y%m%d-%H%M%S')}.h5"
    try:
        summary = run_training(cfg, output, log=log)
    except OpsNotBuiltError as err:
        raise click.ClickException(str(err)) from None
    log(f"result: {summary.path}")
    log(f"final test accuracy: {summary.test_accuracy:.4f}")


@cli.command()
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
def bench(network, implementations, activities, steps, warmup, json_path):
    """Time training steps of dense, sparse_ops and sparse_layer side by side.

    Each case runs in a fresh process (so peak memory is its own) within one
    invocation, and every speed-up is against the dense step measured in the
    same run. Compile time (the first step) is reported apart.
    """
    from snn_runner.bench.suite import format_table, run_suite, write_json
    from snn_runner.sparse import library

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


def main() -> None:
    cli(prog_name="snn-runner")


if __name__ == "__main__":
    main()
