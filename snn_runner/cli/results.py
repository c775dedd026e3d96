"""`snn-runner collect`, `report` and `inspect`: result files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from snn_runner.cli.common import (
    log,
)


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("-o", "--output", "table", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Table to write: .h5 (for `report`) or .csv.")
def collect(folder, table):
    """Merge the result files under FOLDER into one table.

    Partial (temporary), corrupt and incomplete files are listed and left
    out; they do not fail the command.
    """
    from snn_runner.results.collect import collect as collect_files
    from snn_runner.results.collect import write_table

    try:
        coll = collect_files(folder)
        path = write_table(coll, table)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    for name, reason in coll.skipped:
        log(f"skipped {name}: {reason}")
    log(f"collected {len(coll.rows)} result file(s), skipped {len(coll.skipped)} -> {path}")


@click.command()
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


@click.command()
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
