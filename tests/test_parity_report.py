"""The report's accuracy-across-implementations section and its two plots, from result files of known accuracy.

The files go through the real store writer (the numbers a trained run would
record, chosen so every mean, sd and gap is known by hand); no training runs.
"""

import json

import numpy as np
import pytest

from snn_runner.results.collect import collect, write_table
from snn_runner.results.network import SavedNetwork
from snn_runner.results.report import dense_baselines, parity_groups, report
from snn_runner.results.store import write_train_result
from tests.test_collect_report import TINY, _assert_real_png

SIZES = (16, 24, 2)  # TINY's network
SAMPLES, STEPS = 40, 15  # TINY's training split: 2 classes x 20 samples, 15 time steps

# (implementation, max_activity, readout, seed, final test accuracy, dropped spikes of the last epoch, SynOps)
RUNS = [
    ("dense", 0.1, "spike_count", 1, 0.80, [0, 0], [2000, 500]),
    ("dense", 0.1, "spike_count", 2, 0.82, [0, 0], [2000, 500]),
    ("dense", 0.5, "spike_count", 3, 0.84, [0, 0], [2000, 500]),  # dense ignores the capacity
    ("sparse_layer", 0.05, "spike_count", 1, 0.70, [30, 10], [2000, 500]),
    ("sparse_layer", 0.05, "spike_count", 2, 0.74, [60, 20], [3000, 500]),
    ("sparse_layer", 0.2, "spike_count", 1, 0.81, [0, 0], [2000, 1500]),
    ("sparse_ops", 0.05, "spike_count", 1, 0.78, [6, 0], [1000, 200]),
    ("sparse_ops", 0.05, "spike_count", 2, 0.80, [6, 0], [1000, 200]),
    ("sparse_ops", 0.05, "spike_count", 3, 0.85, [6, 0], [1000, 200]),
    ("dense", 0.1, "membrane_max", 1, 0.90, [0, 0], [2000, 500]),
    ("sparse_layer", 0.05, "membrane_max", 1, 0.85, [0, 0], [2000, 500]),
]


def write_run(path, implementation, max_activity, readout, seed, accuracy, dropped, synops):
    """A complete train result file whose last epoch has these figures."""
    cfg = TINY.replace("model", implementation=implementation, max_activity=max_activity, readout=readout)
    cfg = cfg.replace("train", seed=seed)
    net = SavedNetwork(SIZES, (3, 1), 5, 10.0, 10.0, readout,
                       [np.zeros((a, b), np.float32) for a, b in zip(SIZES, SIZES[1:])],
                       *[[np.ones(n, np.float32) for n in SIZES[1:]] for _ in range(3)])
    rows = [{"epoch": e, "train_loss": 1.0, "train_accuracy": 0.5, "test_loss": 1.0,
             "test_accuracy": accuracy if e == 2 else 0.5, "epoch_seconds": 0.1, "spike_rate": [0.1, 0.2],
             "dropped_spikes": dropped if e == 2 else [999, 999]} for e in (1, 2)]
    if synops is not None:  # None: a file from before runs recorded SynOps
        for row in rows:
            row["synops"] = synops if row["epoch"] == 2 else [1.0, 1.0]
    report_json = json.dumps({"train": {"samples": SAMPLES, "time_steps": STEPS}, "test": {"samples": 20}})
    attrs = {"implementation": implementation, "sizes": np.asarray(SIZES), "capacities": np.asarray((3, 1)),
             "data_report_json": report_json, "task_id": path.stem, "job_name": "p", "task_index": int(path.stem[1:])}
    write_train_result(path, cfg.to_dict(), attrs, rows, [0.01, 0.01], 0.5, "test", network=net)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity")
    for i, run in enumerate(RUNS):
        write_run(folder / f"r{i}.h5", *run)
    coll = collect(folder)
    assert not coll.skipped and len(coll.rows) == len(RUNS)
    return write_table(coll, folder.parent / f"{folder.name}-table.h5")


def _parity_rows(summary: str) -> dict[tuple[str, str, str], list[str]]:
    """(readout, implementation, max_activity) -> the cells of the parity table."""
    part = summary.split("## Accuracy across implementations")[1].split("\n## ")[0]
    rows = [line.strip("|").split("|") for line in part.splitlines() if line.startswith("| randman")]
    return {(c[2].strip(), c[3].strip(), c[4].strip()): [x.strip() for x in c] for c in rows}


def test_parity_summary_numbers(table, tmp_path):
    report(table, tmp_path / "rep")
    summary = (tmp_path / "rep" / "summary.md").read_text()
    rows = _parity_rows(summary)
    # columns: dataset, sizes, readout, implementation, max_activity, seeds, accuracy, gap, dropped/step, SynOps
    got = {key: cells[5:] for key, cells in rows.items()}
    assert got == {
        # sd of (80, 82) = 1.41; one seed: n/a
        ("spike_count", "dense", "0.1"): ["2", "81.00 ± 1.41", "—", "0", "2.5 k"],
        ("spike_count", "dense", "0.5"): ["1", "84.00 ± n/a", "—", "0", "2.5 k"],
        # dense baseline: all three dense seeds (80, 82, 84) whatever their max_activity = 82.00
        # (70, 74): sd 2.83, gap -10; dropped per sample and step (40 and 80) / (40 x 15) -> mean 0.1
        ("spike_count", "sparse_ops", "0.05"): ["3", "81.00 ± 3.61", "-1.00", "0.01", "1.2 k"],
        ("spike_count", "sparse_layer", "0.05"): ["2", "72.00 ± 2.83", "-10.00", "0.1", "3 k"],
        ("spike_count", "sparse_layer", "0.2"): ["1", "81.00 ± n/a", "-1.00", "0", "3.5 k"],
        # a readout is compared with dense of the same readout
        ("membrane_max", "dense", "0.1"): ["1", "90.00 ± n/a", "—", "0", "2.5 k"],
        ("membrane_max", "sparse_layer", "0.05"): ["1", "85.00 ± n/a", "-5.00", "0", "2.5 k"],
    }
    # order: setting (readout within dataset and sizes), then dense, sparse_ops, sparse_layer, then capacity
    assert list(rows) == [("membrane_max", "dense", "0.1"), ("membrane_max", "sparse_layer", "0.05"),
                          ("spike_count", "dense", "0.1"), ("spike_count", "dense", "0.5"),
                          ("spike_count", "sparse_ops", "0.05"), ("spike_count", "sparse_layer", "0.05"),
                          ("spike_count", "sparse_layer", "0.2")]
    assert "runs that share a seed" not in summary
    assert summary.index("## Training") < summary.index("## Accuracy across implementations") < summary.index(
        "## Figures")


def test_parity_groups_and_dense_baseline(table):
    from snn_runner.results.collect import read_table

    rows, _ = read_table(table)
    groups = {(g.readout, g.implementation, g.max_activity): g for g in parity_groups(rows)}
    g = groups[("spike_count", "sparse_ops", 0.05)]
    assert sorted(g.accuracies) == [0.78, 0.80, 0.85]
    assert g.mean == pytest.approx(np.mean([0.78, 0.80, 0.85]))
    assert g.sd == pytest.approx(np.std([0.78, 0.80, 0.85], ddof=1))
    assert groups[("spike_count", "sparse_layer", 0.2)].sd is None
    mean, sd = dense_baselines(parity_groups(rows))[("randman", "[16, 24, 2]", "spike_count")]
    assert (mean, sd) == (pytest.approx(0.82), pytest.approx(0.02))


def test_a_repeated_seed_is_marked_and_weighs_once_in_the_dense_baseline(tmp_path):
    # dense at two capacities with the same seed repeats one run: it must not outweigh seed 2
    for i, run in enumerate([("dense", 0.1, "spike_count", 1, 0.80, [0, 0], [1, 1]),
                             ("dense", 0.1, "spike_count", 1, 0.80, [0, 0], [1, 1]),
                             ("dense", 0.5, "spike_count", 1, 0.80, [0, 0], [1, 1]),
                             ("dense", 0.5, "spike_count", 2, 0.90, [0, 0], [1, 1]),
                             ("sparse_layer", 0.1, "spike_count", 1, 0.75, [0, 0], [1, 1]),
                             ("sparse_layer", 0.3, "spike_count", 1, 0.75, [0, 0], [1, 1])]):
        write_run(tmp_path / f"r{i}.h5", *run)
    coll = collect(tmp_path)
    report(write_table(coll, tmp_path / "t.h5"), tmp_path / "rep")
    summary = (tmp_path / "rep" / "summary.md").read_text()
    rows = _parity_rows(summary)
    assert rows[("spike_count", "dense", "0.1")][5] == "2*"
    assert "runs that share a seed" in summary
    # with dense runs at the same capacity, the gap is to those (80 %)
    assert rows[("spike_count", "sparse_layer", "0.1")][7] == "-5.00"
    # without, to the pooled baseline: seed 1 at 80 %, seed 2 at 90 % -> 85 %, not the run mean 82.5 %
    assert rows[("spike_count", "sparse_layer", "0.3")][7] == "-10.00"


def test_the_two_parity_plots(table, tmp_path):
    out = report(table, tmp_path / "rep")
    names = {p.name for p in out}
    assert {"accuracy_vs_capacity.png", "accuracy_vs_synops.png"} <= names
    for name in ("accuracy_vs_capacity.png", "accuracy_vs_synops.png"):
        _assert_real_png(tmp_path / "rep" / name)
        assert f"![{name[:-4]}]({name})" in (tmp_path / "rep" / "summary.md").read_text()


def test_plots_only_with_data_for_them(tmp_path):
    # dense alone: no capacity axis; a file without SynOps: nothing for a SynOps axis
    write_run(tmp_path / "r0.h5", "dense", 0.1, "spike_count", 1, 0.8, [0, 0], None)
    out = report(write_table(collect(tmp_path), tmp_path / "t.h5"), tmp_path / "rep")
    names = {p.name for p in out}
    assert "accuracy_vs_capacity.png" not in names and "accuracy_vs_synops.png" not in names
    rows = _parity_rows((tmp_path / "rep" / "summary.md").read_text())
    assert rows[("spike_count", "dense", "0.1")][5:] == ["1", "80.00 ± n/a", "—", "0", ""]

    # with a sparse run (still without SynOps) the capacity plot appears, the SynOps plot does not
    write_run(tmp_path / "r1.h5", "sparse_layer", 0.1, "spike_count", 1, 0.7, [0, 0], None)
    names = {p.name for p in report(write_table(collect(tmp_path), tmp_path / "t.h5"), tmp_path / "rep")}
    assert "accuracy_vs_capacity.png" in names and "accuracy_vs_synops.png" not in names
