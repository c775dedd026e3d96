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
    for name in ("speedup_vs_activity.png", "accuracy_loss.png", "spike_rates.png", "spike_raster.png"):
        _assert_real_png(tmp_path / "rep" / name)
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "## Benchmark" in summary and "## Training" in summary
    bench_part = summary.split("## Training")[0]
    assert bench_part.count("| sparse_layer |") == 2 and bench_part.count("| dense |") == 1
    assert "1.00x" in bench_part
    # a re-run skips finished tasks
    assert run("bench", "bench.yaml", "--output-dir", "res").count("already done") == 3


def test_report_rejects_a_missing_or_wrong_table(tmp_path, results_dir):
    with pytest.raises(ValueError, match="not a table"):
        report(results_dir / "a.h5", tmp_path / "rep")
