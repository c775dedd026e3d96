import csv
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

from snn_runner.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from snn_runner.results.collect import collect, read_table, write_table
from snn_runner.results.report import report
from snn_runner.dispatch import run_training as train
from snn_runner.sparse import library

TINY = RunConfig(
    model=ModelConfig(hidden=(24,), implementation="dense", weight_scale=3.0),
    data=DataConfig(channels=16, classes=2, time_steps=15, train_samples_per_class=20, test_samples_per_class=10),
    train=TrainConfig(epochs=2, batch_size=10),
)

BENCH_JOB = """
name: b
kind: bench
bench: {network: tiny, steps: 5, warmup: 0}
sweep:
  list: [{model.implementation: dense}, {model.implementation: sparse_layer, model.max_activity: 0.05},
         {model.implementation: sparse_layer, model.max_activity: 0.2}]
"""


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    train(TINY, folder / "a.h5", log=lambda _: None)
    train(TINY.replace("train", seed=3), folder / "sub" / "b.h5", log=lambda _: None)
    (folder / ".c.h5.123.tmp").write_bytes(b"\x89HDF partial")  # a run still writing (or killed)
    (folder / "corrupt.h5").write_bytes(np.random.default_rng(0).bytes(2048))
    with h5py.File(folder / "incomplete.h5", "w") as f:  # valid HDF5, not a complete result
        f.attrs["schema_version"] = 1
    return folder


def test_collect_keeps_good_files_and_reports_the_rest(results_dir, tmp_path):
    coll = collect(results_dir)
    assert sorted(r["file"].rsplit("/", 1)[1] for r in coll.rows) == ["a.h5", "b.h5"]
    reasons = dict((name.rsplit("/", 1)[1], why) for name, why in coll.skipped)
    assert set(reasons) == {".c.h5.123.tmp", "corrupt.h5", "incomplete.h5"}
    assert "partial" in reasons[".c.h5.123.tmp"]
    assert "HDF5" in reasons["corrupt.h5"]
    assert "missing root attribute" in reasons["incomplete.h5"]

    rows, runs = read_table(write_table(coll, tmp_path / "t.h5"))
    assert len(rows) == 2 and all(r["kind"] == "train" for r in rows)
    assert all(len(run["metrics"]["epoch"]) == 2 for run in runs)
    with open(write_table(coll, tmp_path / "t.csv")) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 and float(table[0]["final_test_accuracy"]) >= 0


def _assert_real_png(path):
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("L"), np.float32)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels.std() > 5, f"{path} looks blank"
    assert (pixels < 128).mean() > 0.005, f"{path} has almost no drawing"


@pytest.mark.skipif(not library.available(), reason="compiled ops not built (run scripts/build-ops)")
@pytest.mark.slow
def test_bench_job_collect_report_from_the_command_line(results_dir, tmp_path):
    (tmp_path / "bench.yaml").write_text(BENCH_JOB)

    def run(*args):
        done = subprocess.run([sys.executable, "-m", "snn_runner.cli", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    out = run("bench", "bench.yaml", "--output-dir", "res")
    assert "| sparse_layer | 0.20 |" in out and "| dense | - |" in out
    assert "| SynOps/sample |" in out
    # each bench file records the configuration that was timed: the preset's network, input and batch
    from snn_runner.config import BENCH_NETWORKS, RunConfig
    from snn_runner.results.store import read_result

    tiny = BENCH_NETWORKS["tiny"]
    files = sorted((tmp_path / "res").glob("b-*.h5"))
    assert len(files) == 3
    for f in files:
        rec = read_result(f)
        cfg = RunConfig.from_dict(rec["config"])
        assert (cfg.data.channels, *cfg.model.hidden, cfg.data.classes) == tiny.sizes == tuple(rec["bench"]["sizes"])
        assert (cfg.data.dataset, cfg.data.time_steps, cfg.train.batch_size, cfg.data.input_capacity,
                cfg.model.weight_scale) == ("random", tiny.time_steps, tiny.batch_size, tiny.input_events,
                                            tiny.weight_scale)
        assert cfg.model.implementation == rec["bench"]["implementation"] == rec["attrs"]["implementation"]
    for f in results_dir.rglob("*.h5"):  # mix training results into the same folder
        if f.name in ("a.h5", "b.h5"):
            (tmp_path / "res" / f.name).write_bytes(f.read_bytes())
    run("collect", "res", "-o", "table.h5")
    rows, _ = read_table(tmp_path / "table.h5")
    bench_rows = [r for r in rows if r["kind"] == "bench"]
    assert len(bench_rows) == 3
    for r in bench_rows:
        assert (r["dataset"], r["time_steps"], r["batch_size"], r["sizes"]) == (
            "random", tiny.time_steps, tiny.batch_size, str(list(tiny.sizes)))
    out = run("report", "table.h5", "-o", "rep")
    for name in ("speedup_vs_activity.png", "accuracy_loss.png", "spike_rates.png", "spike_raster.png",
                 "accuracy_vs_synops.png"):
        _assert_real_png(tmp_path / "rep" / name)
    assert not (tmp_path / "rep" / "accuracy_vs_capacity.png").exists()  # the training runs are dense only
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "## Benchmark" in summary and "## Training" in summary and "## Accuracy across implementations" in summary
    assert all(r["synops"] != "" for r in bench_rows)
    bench_part = summary.split("## Training")[0]
    assert bench_part.count("| sparse_layer |") == 2 and bench_part.count("| dense |") == 1
    assert "1.00x" in bench_part
    # a re-run skips finished tasks
    assert run("bench", "bench.yaml", "--output-dir", "res").count("already done") == 3


def test_report_rejects_a_missing_or_wrong_table(tmp_path, results_dir):
    with pytest.raises(ValueError, match="not a table"):
        report(results_dir / "a.h5", tmp_path / "rep")


# --- the newer columns: seed, readout, best epoch, dropped per step, SynOps --------------------------------------

NEW_COLUMNS = ("seed", "readout", "best_test_accuracy", "best_epoch", "dropped_per_step", "synops")


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory):
    """A real sparse run at a capacity small enough to drop spikes, with a validation split (a best epoch)."""
    if not library.available():
        pytest.skip("compiled ops not built (run scripts/build-ops)")
    folder = tmp_path_factory.mktemp("validated")
    cfg = TINY.replace("model", implementation="sparse_layer", max_activity=0.05).replace(
        "data", validation_fraction=0.25).replace("train", seed=7)
    train(cfg, folder / "v.h5", log=lambda _: None)
    return folder / "v.h5"


def test_collect_new_columns_of_real_runs(results_dir):
    from snn_runner.results.store import read_result

    rows = {r["file"].rsplit("/", 1)[1]: r for r in collect(results_dir).rows}
    assert (rows["a.h5"]["seed"], rows["b.h5"]["seed"]) == (TINY.train.seed, 3)
    for name in ("a.h5", "b.h5"):
        r, rec = rows[name], read_result(results_dir / ("sub/b.h5" if name == "b.h5" else name))
        assert r["readout"] == "spike_count"
        assert r["synops"] == pytest.approx(float(np.sum(rec["metrics"]["synops"][-1]))) and r["synops"] > 0
        # 2 classes x 20 training samples, 15 steps each
        assert r["dropped_per_step"] == pytest.approx(int(np.sum(rec["metrics"]["dropped_spikes"][-1])) / (40 * 15))
        assert r["best_test_accuracy"] == "" and r["best_epoch"] == ""  # no validation split


def test_collect_best_epoch_and_dropped_per_step_with_a_validation_split(validated_run):
    from snn_runner.results.store import read_result

    rec = read_result(validated_run)
    [row] = collect(validated_run.parent).rows
    assert row["best_epoch"] == rec["attrs"]["best_epoch"] >= 1
    best = rec["metrics"]["test_accuracy"][row["best_epoch"] - 1]
    assert row["best_test_accuracy"] == pytest.approx(float(best))
    dropped = int(np.sum(rec["metrics"]["dropped_spikes"][-1]))
    assert dropped > 0, "the capacity should be small enough to drop spikes"
    # a quarter of the 40 training samples is held out for validation: the epoch trained on 30
    assert row["dropped_per_step"] == pytest.approx(dropped / (30 * 15))
    assert row["seed"] == 7 and row["max_activity"] == 0.05


def _older_result(path):
    """A train file as written before synops, model.readout and the data report existed (real store writer)."""
    from snn_runner.results.network import SavedNetwork
    from snn_runner.results.store import write_train_result

    config = TINY.to_dict()
    del config["model"]["readout"]
    sizes = (16, 24, 2)
    net = SavedNetwork(sizes, (3, 1), 5, 10.0, 10.0, "spike_count",
                       [np.zeros((a, b), np.float32) for a, b in zip(sizes, sizes[1:])],
                       *[[np.ones(n, np.float32) for n in sizes[1:]] for _ in range(3)])
    rows = [{"epoch": e, "train_loss": 1.0, "train_accuracy": 0.5, "test_loss": 1.0, "test_accuracy": 0.25 * e,
             "epoch_seconds": 0.1, "spike_rate": [0.1, 0.2], "dropped_spikes": [4, 0]} for e in (1, 2)]
    write_train_result(path, config, {"implementation": "dense", "sizes": np.asarray(sizes)}, rows, [0.01], 0.5,
                       "test", network=net)


def test_collect_reads_older_files_and_tables(tmp_path):
    _older_result(tmp_path / "old.h5")
    coll = collect(tmp_path)
    assert not coll.skipped
    [row] = coll.rows
    assert row["final_test_accuracy"] == 0.5 and row["dropped_spikes"] == 4
    assert (row["synops"], row["dropped_per_step"], row["best_epoch"], row["best_test_accuracy"]) == ("", "", "", "")
    assert row["readout"] == "spike_count" and row["seed"] == TINY.train.seed

    table = write_table(coll, tmp_path / "t.h5")
    rows, _ = read_table(table)
    assert {c: rows[0][c] for c in NEW_COLUMNS} == {**{c: "" for c in NEW_COLUMNS}, "seed": TINY.train.seed,
                                                      "readout": "spike_count"}
    with open(write_table(coll, tmp_path / "t.csv")) as fh:
        [csv_row] = list(csv.DictReader(fh))
    assert csv_row["synops"] == "" and csv_row["readout"] == "spike_count" and csv_row["seed"] == str(TINY.train.seed)

    # a table collected before the new columns existed still reads, with "" there
    with h5py.File(table, "a") as f:
        for c in NEW_COLUMNS:
            del f["table"][c]
    rows, _ = read_table(table)
    assert all(rows[0][c] == "" for c in NEW_COLUMNS) and rows[0]["final_test_accuracy"] == 0.5
    with h5py.File(table, "a") as f:  # an original column missing is still damage
        del f["table"]["dropped_spikes"]
    with pytest.raises(ValueError, match="lacks column"):
        read_table(table)


def test_new_columns_round_trip_through_hdf5_and_csv(results_dir, validated_run, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for src in (results_dir / "a.h5", validated_run):
        (folder / src.name).write_bytes(src.read_bytes())
    _older_result(folder / "old.h5")
    coll = collect(folder)
    assert len(coll.rows) == 3
    rows, _ = read_table(write_table(coll, tmp_path / "t.h5"))
    with open(write_table(coll, tmp_path / "t.csv")) as fh:
        table = list(csv.DictReader(fh))
    for want, h5_row, csv_row in zip(coll.rows, rows, table):
        for c in NEW_COLUMNS:
            if want[c] == "":
                assert h5_row[c] == "" and csv_row[c] == "", c
            elif isinstance(want[c], str):
                assert h5_row[c] == csv_row[c] == want[c], c
            else:
                assert float(h5_row[c]) == pytest.approx(want[c]) and float(csv_row[c]) == pytest.approx(want[c]), c


# --- SynOps in bench records ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench_record():
    from snn_runner.bench.measure import measure_case
    from snn_runner.bench.suite import case_config
    from snn_runner.config import BenchConfig
    from snn_runner.dispatch import resolve

    bench = BenchConfig(network="tiny", hidden=(20, 12), steps=5, warmup=0)
    cfg = resolve(case_config(bench, "dense", 1.0))
    return cfg, measure_case(cfg, bench).to_dict()


def test_bench_synops_per_sample_follow_the_spike_rates(bench_record):
    from snn_runner.config import BENCH_NETWORKS

    cfg, rec = bench_record
    tiny = BENCH_NETWORKS["tiny"]
    sizes = (100, 20, 12, 10)
    assert rec["sizes"] == list(sizes)
    T = tiny.time_steps
    # random input fills every one of the K_in slots of every step
    expected = [T * tiny.input_events * sizes[1]]
    rates = rec["spike_rate_per_layer"]
    expected += [rate * T * n * fan_out for rate, n, fan_out in zip(rates, sizes[1:-1], sizes[2:])]
    assert len(rec["synops_per_sample"]) == len(sizes) - 1
    assert rec["synops_per_sample"] == pytest.approx(expected, rel=1e-9)
    assert rec["synops_per_sample"][1] > 0, "the first hidden layer should spike"
    assert rec["synops_total"] == pytest.approx(sum(expected), rel=1e-9)


def test_bench_synops_in_the_table_and_collect(bench_record, tmp_path):
    from snn_runner.bench.measure import format_synops
    from snn_runner.bench.suite import format_table, with_speedups
    from snn_runner.results.store import write_bench_result

    cfg, rec = bench_record
    old = {k: v for k, v in rec.items() if not k.startswith("synops")}  # a record made before bench counted them
    text = format_table(with_speedups([rec, {**old, "implementation": "sparse_layer", "max_activity": 0.1}]))
    head, _, new_line, old_line = text.splitlines()
    column = head.split("|").index(" SynOps/sample ")
    assert new_line.split("|")[column].strip() == format_synops(rec["synops_total"]) != ""
    assert old_line.split("|")[column].strip() == ""

    attrs = {"job_name": "b", "implementation": "dense", "backend": cfg.train.backend}
    write_bench_result(tmp_path / "new.h5", cfg.to_dict(), {**attrs, "task_id": "n"}, rec)
    write_bench_result(tmp_path / "old.h5", cfg.to_dict(), {**attrs, "task_id": "o"}, old)
    coll = collect(tmp_path)
    assert not coll.skipped
    rows = {r["file"].rsplit("/", 1)[1]: r for r in coll.rows}
    assert rows["new.h5"]["synops"] == pytest.approx(rec["synops_total"])
    assert rows["old.h5"]["synops"] == ""
    per_step = sum(rec["dropped_spikes"]) / (rec["batch_size"] * rec["time_steps"])
    assert rows["new.h5"]["dropped_per_step"] == pytest.approx(per_step)
    out = report(write_table(coll, tmp_path / "t.h5"), tmp_path / "rep")
    bench_part = (tmp_path / "rep" / "summary.md").read_text().split("## Figures")[0]
    assert f"| {format_synops(rec['synops_total'])} |" in bench_part
    assert "## Accuracy across implementations" not in bench_part  # no train rows
    assert {p.name for p in out} == {"speedup_vs_activity.png", "summary.md"}


def test_format_synops_picks_a_readable_unit():
    from snn_runner.bench.measure import format_synops

    assert [format_synops(x) for x in (0, 430, 2500, 4.7e6, 1.25e10)] == ["0", "430", "2.5 k", "4.7 M", "12.5 G"]
