"""``snn-runner data ...``: prepare the event-dataset cache and time the loader.

Registered in the main CLI with ``cli.add_command(data)``. Data problems
(missing or corrupt files, an unwritable cache) exit with status 1 and the
error's message; invalid option values exit with status 2.
"""

from __future__ import annotations

import functools
import sys

import click

from snn_runner.config import ConfigError, DataConfig
from snn_runner.data.errors import DataError
from snn_runner.data.tonic_sources import SOURCES

_defaults = DataConfig()


def _log(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


def _data_options(command):
    """The DataConfig fields that shape the prepared tensors, as options."""
    options = [
        click.option("--dataset", type=click.Choice(sorted(SOURCES)), required=True,
                     help="Event dataset to prepare."),
        click.option("--data-dir", default="", help="Folder holding the dataset  [default: $SNN_RUNNER_DATA_DIR]"),
        click.option("--cache-dir", default="",
                     help="Cache folder  [default: $SNN_RUNNER_CACHE_DIR, else <data-dir>/.snn-cache]"),
        click.option("--time-steps", type=click.IntRange(min=2), default=_defaults.time_steps, show_default=True,
                     help="Time bins T per sample."),
        click.option("--dt-ms", type=click.FloatRange(min=0, min_open=True), default=_defaults.dt_ms,
                     show_default=True, help="Width of one time bin in milliseconds."),
        click.option("--input-capacity", type=click.IntRange(min=0), default=_defaults.input_capacity,
                     show_default=True, help="K_in: input ids kept per bin (0: the busiest bin of the data)."),
        click.option("--denoise-ms", type=click.FloatRange(min=0), default=_defaults.denoise_ms, show_default=True,
                     help="tonic Denoise filter time in ms (0: off; camera datasets only)."),
        click.option("--downsample", type=click.FloatRange(min=0, max=1, min_open=True),
                     default=_defaults.downsample, show_default=True,
                     help="Spatial downsampling factor (1: off)."),
        click.option("--max-samples", type=click.IntRange(min=0), default=_defaults.max_samples, show_default=True,
                     help="Samples per split, a seeded subset (0: all)."),
        click.option("--seed", type=int, default=_defaults.seed, show_default=True,
                     help="Seed of the subset and of the random choice in over-full bins."),
    ]
    for option in reversed(options):
        command = option(command)

    @functools.wraps(command)
    def with_config(**kwargs):
        fields = {name: kwargs.pop(name) for name in ("dataset", "data_dir", "cache_dir", "time_steps", "dt_ms",
                                                      "input_capacity", "denoise_ms", "downsample", "max_samples",
                                                      "seed")}
        try:
            cfg = DataConfig(**fields)
            cfg.validate()
        except ConfigError as err:
            raise click.UsageError(str(err)) from None
        try:
            return command(cfg=cfg, **kwargs)
        except DataError as err:
            raise click.ClickException(str(err)) from None

    return with_config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def data():
    """Prepare the event datasets (N-MNIST, SHD, DVS Gesture) and time their loading.

    The files are read from the data folder and never downloaded; see
    docs/datasets.md for where to get them and how to lay them out.
    """


@data.command()
@click.option("--progress-every", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Log a progress line every this many samples (0: none).")
@_data_options
def prepare(cfg: DataConfig, progress_every: int):
    """Bin the dataset into the cache (or find it there) and print its report.

    Run it once before a sweep: every task with the same preprocessing options
    then reads the cache entry instead of the raw files.
    """
    from snn_runner.data.pipeline import prepare as prepare_entry

    result = prepare_entry(cfg, _log, progress_every)
    how = "built" if result.built else "already cached"
    _log(f"cache entry: {result.path} ({how}, {result.seconds:.1f} s)")


@data.command("bench-loader")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Cache loads to time; the fastest is reported.")
@_data_options
def bench_loader(cfg: DataConfig, repeats: int):
    """Samples/s of a cold prepare (raw files -> cache) vs a load from the cache."""
    from snn_runner.data.loader_bench import bench_loader as run

    run(cfg, _log, repeats)
