"""`snn-runner evaluate`: run the network a training run saved, on its own data or others."""

from __future__ import annotations

import json
from pathlib import Path

import click

from snn_runner.cli.common import log, runtime_errors
from snn_runner.config import DATASETS, IMPLEMENTATIONS


@click.command()
@click.argument("result", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dataset", type=click.Choice(DATASETS), default=None,
              help="Evaluate on this dataset  [default: the run's own]")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding the event dataset  [default: the run's own]")
@click.option("--split", type=click.Choice(("test", "validation", "train")), default="test", show_default=True,
              help="Which split to run on.")
@click.option("--implementation", type=click.Choice(("auto",) + IMPLEMENTATIONS), default=None,
              help="Run the network with this implementation  [default: the run's own]")
@click.option("--max-activity", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
              help="Hidden capacity fraction to run at  [default: the run's own]")
@click.option("--best", is_flag=True, help="Use /model_best (best validation epoch) instead of /model.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures to this JSON file.")
def evaluate(result, dataset, data_dir, split, implementation, max_activity, best, json_path):
    """Evaluate the trained network of RESULT (a training result file).

    Prints accuracy, loss, per-layer spike rates and dropped spikes. With the
    run's own data and implementation it reproduces the recorded final test
    accuracy.
    """
    from snn_runner.evaluate import evaluate as run_evaluation
    from snn_runner.files import atomic_text
    from snn_runner.results.network import NoNetworkError

    if json_path is not None and not json_path.resolve().parent.is_dir():
        raise click.UsageError(f"--json: the folder {json_path.parent} does not exist")
    try:
        with runtime_errors():
            ev = run_evaluation(result, dataset, data_dir, split, implementation, max_activity, best, log)
    except NoNetworkError as err:
        raise click.ClickException(str(err)) from None
    log(f"evaluate: {ev.network} of {ev.result} on {ev.dataset} {ev.split} ({ev.samples} samples), "
        f"{ev.implementation} at max_activity {ev.max_activity}")
    log(f"accuracy {ev.accuracy:.4f}  loss {ev.loss:.4f}  rate {'/'.join(f'{r:.4f}' for r in ev.spike_rate)}  "
        f"dropped {'/'.join(str(d) for d in ev.dropped_spikes)}")
    if json_path is not None:
        atomic_text(json_path, json.dumps(ev.to_dict(), indent=1))
        log(f"json: {json_path}")
