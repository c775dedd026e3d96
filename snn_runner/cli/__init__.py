"""The `snn-runner` command line: one module per group of commands."""

from __future__ import annotations

import click

# Importing snn_runner already quieted TensorFlow's C++ start-up chatter (it
# drowns the progress lines in batch logs); --verbose turns it back on.
from snn_runner import console
from snn_runner.cli.bench import bench
from snn_runner.cli.evaluate import evaluate
from snn_runner.cli.export import export
from snn_runner.cli.jobs import status, submit, sweep
from snn_runner.cli.results import collect, inspect, report
from snn_runner.cli.train import train
from snn_runner.data.cli_commands import data


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="snn-runner")
@click.option("-v", "--verbose", is_flag=True,
              help=f"Show TensorFlow's start-up log lines (also in spawned and Slurm processes); "
                   f"same as {console.VERBOSE_ENV}=1.")
def cli(verbose: bool):
    """Train and benchmark activity-sparse spiking neural networks.

    Run `snn-runner COMMAND --help` for the options of each command.
    """
    # TensorFlow is imported lazily inside the commands, so this still applies;
    # the environment variable carries it to child processes.
    if verbose:
        console.set_verbose(True)


for _command in (train, bench, evaluate, export, sweep, submit, status, collect, report, inspect, data):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="snn-runner")
