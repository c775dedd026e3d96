"""The `snn-runner` command line."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

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


def main() -> None:
    cli(prog_name="snn-runner")


if __name__ == "__main__":
    main()
