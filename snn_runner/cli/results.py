"""`snn-runner collect`, `report` and `inspect`: result files."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from snn_runner.cli.common import (
    log,
)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("-o", "--output", "table", type=click.Path(path_type=Path), required=True,
              help="Table to write: .h5 (for `report`) or .csv.")
def collect(folder, table):
    """Merge the result files under FOLDER into one table.

    Partial (temporary), corrupt, invalid and duplicate files are listed with
    the reason and left out; they do not fail the command. Of several files
    of one task (same task_id) the newest is tabled; copies and links of one
    file are tabled once. Temporaries left by writers that are gone are
    deleted. Exit 0 when a table was written, 1 when nothing could be
    collected or the table cannot be written (the previous table is kept).
    """
    from snn_runner.results.collect import check_target, write_table
    from snn_runner.results.collect import collect as collect_files

    try:
        check_target(table)
        coll = collect_files(folder, exclude=(table,))
    except (OSError, ValueError) as err:
        raise click.ClickException(_one_line(err)) from None
    for name in coll.removed:
        log(f"removed {name}: temporary file left by a writer that is gone")
    for name, reason in coll.skipped:
        log(_one_line(f"skipped {name}: {reason}"))
    if not coll.rows:
        listed = f" ({len(coll.skipped)} file(s) skipped, listed above)" if coll.skipped else ""
        raise click.ClickException(f"{folder}: no valid result files (*.h5) found{listed}; {table} was not written")
    try:
        path = write_table(coll, table)
    except (OSError, ValueError) as err:
        raise click.ClickException(_one_line(err)) from None
    log(f"collected {len(coll.rows)} result file(s), skipped {len(coll.skipped)} -> {path}")


@click.command()
@click.argument("table", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for the PNG plots and summary.md.")
def report(table, out_dir):
    """Plots (speed-up vs activity, accuracy/loss, spike rates, raster, accuracy vs capacity and vs SynOps) and a
    Markdown summary (with, for training runs, accuracy across implementations: mean ± sd over seeds, gap to dense).

    TABLE is the .h5 table written by `snn-runner collect FOLDER -o TABLE.h5`.
    """
    from snn_runner.results.report import report as make_report

    if not table.exists():
        raise click.ClickException(f"{table}: no such table; make one with `snn-runner collect FOLDER -o {table}`")
    try:
        written = make_report(table, out_dir)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        text = _one_line(err)
        raise click.ClickException(text if text.startswith(str(table)) or text.startswith(str(out_dir))
                                   else f"{table}: cannot report on it ({text})") from None
    for path in written:
        log(f"wrote {path}")


def _listing(file: Path) -> None:
    """Print what a result file holds (attrs, config, dataset shapes); never raises."""
    import h5py

    try:
        with h5py.File(file, "r") as f:
            for key in sorted(f.attrs):
                if key != "config_json":
                    log(_one_line(f"{key}: {f.attrs[key]}"))
            try:
                log("config: " + json.dumps(json.loads(f.attrs["config_json"]), sort_keys=True))
            except Exception:  # noqa: BLE001
                pass
            for group in ("metrics", "timing", "bench", "spikes"):
                g = f.get(group)
                if not isinstance(g, h5py.Group):
                    continue
                for key in sorted(g):
                    value = g[key]
                    if not isinstance(value, h5py.Dataset):
                        continue
                    text = f"shape {value.shape}"
                    if len(value.shape) == 1 and value.shape[0] <= 12 and value.dtype.kind in "iuf":
                        text += f"  {np.array2string(value[()], precision=4)}"
                    log(f"/{group}/{key}: {text}")
                for key in sorted(g.attrs):
                    log(_one_line(f"/{group}/{key}: {g.attrs[key]}"))
    except Exception:  # noqa: BLE001 - the listing is a courtesy; the check decides
        pass


def _version(file: Path) -> int:
    import h5py

    with h5py.File(file, "r") as f:
        return int(f.attrs["schema_version"])


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
def inspect(file):
    """Print a result file and check it against the schema.

    Exit 0 when it is a complete, valid result file; 1 (one `Error:` line
    with every problem) when it is not, or is something else: a folder, a
    checkpoint, a collected table, a temporary, a non-HDF5 file.
    """
    from snn_runner.results.schema import describe, kind_of, problems

    what = describe(file)
    if what is not None:
        raise click.ClickException(f"{file}: {what}")
    found = problems(file)
    if found:
        if kind_of(file) in ("train", "bench"):
            _listing(file)
        raise click.ClickException(_one_line(f"{file}: not a valid result file: " + "; ".join(found)))
    _listing(file)
    log(f"valid: {kind_of(file)} result file, schema version {_version(file)}")
