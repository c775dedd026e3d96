"""`snn-runner export`: a result file's trained network for other tools."""

from __future__ import annotations

from pathlib import Path

import click

from snn_runner.cli.common import log

FORMATS = ("nir",)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _check_result(path: Path, group: str) -> None:
    """Clearer messages than read_network's for the common mistakes: not HDF5, no /model_best."""
    import h5py

    from snn_runner.results.network import NoNetworkError

    if path.is_dir():
        raise NoNetworkError(f"{path} is a folder, not a result file")
    if not path.is_file():
        return  # read_network says what is wrong
    if not h5py.is_hdf5(path):
        raise NoNetworkError(f"{path} is not an HDF5 file, so not a result file")
    if group == "model_best":
        try:
            with h5py.File(path, "r") as f:
                missing = "model_best" not in f and "model" in f
        except OSError:
            return
        if missing:
            raise NoNetworkError(f"{path} has no /model_best (it is written only when training used a validation "
                                 f"split); export the last network, /model, without --best")


@click.command()
@click.argument("result", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="nir", show_default=True,
              help="What to write: nir = a NIR graph (HDF5), readable with nir.read in NIR's tools.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="File to write, e.g. NET.nir; its folder must exist.")
@click.option("--best", is_flag=True,
              help="Export the best-validation network (/model_best) instead of the last one (/model).")
@click.option("--dt", "dt_ms", type=click.FloatRange(min=0, min_open=True), default=None, metavar="MS",
              help="Step length in milliseconds  [default: the encoding's dt_ms, else 1 ms]")
def export(result, fmt, output, best, dt_ms):
    """Write the network trained in RESULT (a result file) as a NIR graph.

    Layers become Linear -> LIF nodes (tau = dt/(1-alpha), r = c, v_leak = 0,
    v_threshold = theta, v_reset = 0), one-step Delay nodes sit between
    layers, and the readout, dt and input encoding go into the graph's
    metadata (docs/nir.md). Exit 1 with one `Error:` line, and nothing
    written, when RESULT holds no network or the file cannot be written.
    """
    from snn_runner.export.nir import check_target, default_dt, write_nir
    from snn_runner.files import WriteError
    from snn_runner.results.network import NoNetworkError, read_network

    group = "model_best" if best else "model"
    try:
        check_target(output)  # before reading: a missing folder is refused, never created
        _check_result(result, group)
        net = read_network(result, group)
        dt = dt_ms / 1000.0 if dt_ms is not None else default_dt(net)
        graph = write_nir(net, output, dt)
    except (NoNetworkError, WriteError, OSError, ValueError) as err:
        raise click.ClickException(_one_line(err)) from None
    size = output.stat().st_size
    layers = net.layers
    log(f"wrote {output} ({size} bytes): NIR graph of {len(graph.nodes)} nodes, {len(graph.edges)} edges "
        f"({' -> '.join(graph.nodes)}); sizes {list(net.sizes)}, dt {dt * 1000:g} ms, readout {net.readout}, "
        f"/{group} (epoch {net.epoch}), {layers} LIF layer{'s' if layers != 1 else ''}")
