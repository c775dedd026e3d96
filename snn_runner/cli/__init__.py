"""The `snn-runner` command line: one module per group of commands."""

from __future__ import annotations

import os

import click

# TensorFlow's C++ start-up chatter drowns the progress lines in batch logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from snn_runner.cli.bench import bench  # noqa: E402
from snn_runner.cli.jobs import status, submit, sweep  # noqa: E402
from snn_runner.cli.results import collect, inspect, report  # noqa: E402
from snn_runner.cli.train import train  # noqa: E402
from snn_runner.data.cli_commands import data  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="snn-runner")
def cli():
    """Train and benchmark activity-sparse spiking neural networks.

    Run `snn-runner COMMAND --help` for the options of each command.
    """


for _command in (train, bench, sweep, submit, status, collect, report, inspect, data):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="snn-runner")
