"""Malformed result files through `inspect` and `collect`, and path/format confusion for all three commands.

Starts from real files (a tiny training run and a bench case), mutates copies
(deleted/retyped/reshaped datasets and attributes, truncation, flipped bytes,
complete False, bad schema versions, bad config JSON, NaN metrics, empty and
extra groups) and checks: no exception other than SystemExit, exit code 0/1,
no traceback, exactly one `Error:` line on failure; inspect rejects every
mutated-invalid file and accepts the originals; collect tables the good files
and lists every bad one by name.
"""

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from snn_runner.cli import cli
from tests.test_collect_report import TINY

ATTRS = {"job_name": "j", "task_index": 0, "task_id": "t0"}


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    from snn_runner.bench.measure import measure_case
    from snn_runner.bench.suite import case_config
    from snn_runner.config import BenchConfig
    from snn_runner.dispatch import resolve, run_training
    from snn_runner.results.store import write_bench_result

    folder = tmp_path_factory.mktemp("originals")
    run_training(TINY.replace("train", epochs=2), folder / "train.h5", log=lambda _: None, attrs=ATTRS)
    bench = BenchConfig(network="tiny", steps=5, warmup=0)
    cfg = resolve(case_config(bench, "dense", 1.0))
    write_bench_result(folder / "bench.h5", cfg.to_dict(),
                       {"job_name": "b", "task_index": 0, "task_id": "b0", "implementation": "dense",
                        "backend": cfg.train.backend}, measure_case(cfg, bench).to_dict())
    return {"train": folder / "train.h5", "bench": folder / "bench.h5"}


def _invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text
    assert result.exit_code in (0, 1), (args, result.exit_code, text)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    if result.exit_code:
        assert len(errors) == 1 and result.stderr.strip() == errors[0], result.stderr
    else:
        assert not errors
    return result


# --- mutations: each takes an open h5py file (mode "a") ------------------------------------------------------------

def _set_attr(key, value):
    def m(f):
        f.attrs[key] = value
    return m


def _del_attr(key, where="/"):
    def m(f):
        del f[where].attrs[key]
    return m


def _replace(path, make):
    def m(f):
        old = f[path][()]
        del f[path]
        make(f, path, old)
    return m


def _mutations(kind, f):
    out = {}
    for key in ("schema_version", "package_version", "git_revision", "host", "created_utc", "config_json", "kind",
                "complete"):
        out[f"del-attr-{key}"] = _del_attr(key)
    for i, v in enumerate(["1", 1.0, 3, 0, -1, True, np.array([1, 1]), b"1"]):
        out[f"schema_version-{i}"] = _set_attr("schema_version", v)
    for i, v in enumerate([False, 0, 1, "yes", np.array([True, True])]):
        out[f"complete-{i}"] = _set_attr("complete", v)
    for i, v in enumerate(["not json", "[]", "{}", '{"model": {}, "data": {}}', '{"model": 1, "data": {}, "train": {}}',
                           5, '{"model": {"max_activity": "x"}, "data": {"dataset": 1, "time_steps": 1.5}, '
                              '"train": {"batch_size": null}}', "{" * 3]):
        out[f"config_json-{i}"] = _set_attr("config_json", v)
    for i, v in enumerate(["foo", 3, "table", ""]):
        out[f"kind-{i}"] = _set_attr("kind", v)
    for key, v in (("task_index", "zero"), ("job_name", 5), ("host", 1.5), ("slurm_job_id", np.arange(3))):
        out[f"attr-type-{key}"] = _set_attr(key, v)
    out["extra-root-group"] = lambda f: f.create_group("extra").create_dataset("x", data=[1])
    out["extra-root-dataset"] = lambda f: f.create_dataset("stray", data=[1, 2])
    if kind == "train":
        out["del-attr-sizes"] = _del_attr("sizes")
        out["sizes-string"] = _set_attr("sizes", "16,24,2")
        out["sizes-wrong-L"] = _set_attr("sizes", np.array([16, 24, 24, 2]))
        out["data_report-not-json"] = _set_attr("data_report_json", "{{")
        from snn_runner.results.store import LAYER_COLUMNS, METRIC_COLUMNS
        for key in METRIC_COLUMNS + LAYER_COLUMNS:
            p = f"metrics/{key}"
            out[f"del-{key}"] = lambda f, p=p: f.__delitem__(p)
            out[f"string-{key}"] = _replace(p, lambda f, p, old: f.create_dataset(
                p, data=np.asarray([str(x) for x in np.ravel(old)], dtype=object), dtype=h5py.string_dtype()))
            out[f"short-{key}"] = _replace(p, lambda f, p, old: f.create_dataset(p, data=old[:1]))
            out[f"2d-{key}"] = _replace(p, lambda f, p, old: f.create_dataset(p, data=np.stack([old, old], -1)))
            out[f"scalar-{key}"] = _replace(p, lambda f, p, old: f.create_dataset(p, data=old.ravel()[0]))
            out[f"group-{key}"] = _replace(p, lambda f, p, old: f.create_group(p))
            if key != "epoch":
                out[f"nan-{key}"] = _replace(p, lambda f, p, old: f.create_dataset(
                    p, data=np.where(np.ones_like(old, bool), np.nan, old.astype(float))))
        out["epoch-0-based"] = _replace("metrics/epoch", lambda f, p, old: f.create_dataset(p, data=old - 1))
        out["epoch-float"] = _replace("metrics/epoch", lambda f, p, old: f.create_dataset(p, data=old.astype(float)))

        def zero_epochs(f):
            for key in METRIC_COLUMNS + LAYER_COLUMNS:
                old = f["metrics"][key][()]
                del f["metrics"][key]
                f["metrics"].create_dataset(key, data=old[:0])
        out["zero-epochs"] = zero_epochs
        out["accuracy-above-1"] = _replace("metrics/test_accuracy", lambda f, p, old: f.create_dataset(p, data=old + 2))
        out["spike_rate-L+1"] = _replace("metrics/spike_rate", lambda f, p, old: f.create_dataset(
            p, data=np.concatenate([old, old[:, :1]], 1)))
        out["dropped-negative"] = _replace("metrics/dropped_spikes", lambda f, p, old: f.create_dataset(p, data=old - 5))
        out["odd-metrics-entry-group"] = lambda f: f["metrics"].create_group("odd")
        out["odd-metrics-entry-dataset"] = lambda f: f["metrics"].create_dataset("odd", data="x")
        out["empty-metrics"] = lambda f: [f["metrics"].__delitem__(k) for k in list(f["metrics"])]
        out["del-metrics"] = lambda f: f.__delitem__("metrics")
        out["metrics-as-dataset"] = lambda f: (f.__delitem__("metrics"), f.create_dataset("metrics", data=[1]))
        out["del-timing"] = lambda f: f.__delitem__("timing")
        out["del-step_seconds"] = lambda f: f.__delitem__("timing/step_seconds")
        out["step_seconds-nan"] = _replace("timing/step_seconds", lambda f, p, old: f.create_dataset(p, data=old * np.nan))
        out["del-compile_seconds"] = _del_attr("compile_seconds", "timing")
        out["compile_seconds-string"] = lambda f: f["timing"].attrs.__setitem__("compile_seconds", "fast")
        out["mode-int"] = lambda f: f["timing"].attrs.__setitem__("mode", 3)
        out["del-spikes"] = lambda f: f.__delitem__("spikes")
        out["del-spikes-labels"] = lambda f: f.__delitem__("spikes/labels")
        out["spikes-count-too-big"] = _replace("spikes/layer1_count", lambda f, p, old: f.create_dataset(p, data=old + 99))
        out["spikes-ids-2d"] = _replace("spikes/layer1_ids", lambda f, p, old: f.create_dataset(p, data=old[:, :, 0]))
        out["spikes-float"] = _replace("spikes/labels", lambda f, p, old: f.create_dataset(p, data=old + 0.5))
    else:
        for key in ("step_ms_all", "forward_ms_all"):
            p = f"bench/{key}"
            out[f"del-{key}"] = lambda f, p=p: f.__delitem__(p)
            out[f"empty-{key}"] = _replace(p, lambda f, p, old: f.create_dataset(p, data=old[:0]))
            out[f"2d-{key}"] = _replace(p, lambda f, p, old: f.create_dataset(p, data=np.stack([old, old])))
            out[f"nan-{key}"] = _replace(p, lambda f, p, old: f.create_dataset(p, data=old * np.nan))
            out[f"string-{key}"] = _replace(p, lambda f, p, old: f.create_dataset(p, data="fast"))
        for key in ("implementation", "network", "sizes", "max_activity", "step_ms_median", "forward_ms_median",
                    "compile_s", "peak_rss_mb", "spike_rate_per_layer", "dropped_spikes"):
            out[f"del-bench-{key}"] = _del_attr(key, "bench")
            out[f"retype-bench-{key}"] = (lambda f, key=key: f["bench"].attrs.__setitem__(
                key, 7 if isinstance(f["bench"].attrs[key], str) else "seven"))
        out["bench-nan-median"] = lambda f: f["bench"].attrs.__setitem__("step_ms_median", np.nan)
        out["bench-rates-wrong-L"] = lambda f: f["bench"].attrs.__setitem__("spike_rate_per_layer", np.ones(7))
        out["empty-bench"] = lambda f: [f["bench"].__delitem__(k) for k in list(f["bench"])]
        out["del-bench"] = lambda f: f.__delitem__("bench")
        out["bench-odd-group"] = lambda f: f["bench"].create_group("odd")
    return out


def _cases(originals, folder):
    """(name, path, expect_invalid): structural mutations, truncations, byte flips, non-result files."""
    cases = []
    for kind, src in originals.items():
        with h5py.File(src, "r") as f:
            names = list(_mutations(kind, f))
        for name in names:
            dst = folder / f"{kind}-{name}.h5"
            shutil.copy(src, dst)
            with h5py.File(dst, "a") as f:
                _mutations(kind, f)[name](f)
            cases.append((name, dst, True))
        data = src.read_bytes()
        for i, cut in enumerate(np.unique(np.linspace(0, len(data) - 1, 30).astype(int))):
            dst = folder / f"{kind}-cut{cut}.h5"
            dst.write_bytes(data[:cut])
            cases.append((f"truncate-{cut}", dst, True))
        rng = np.random.default_rng(len(data))
        for i, pos in enumerate(rng.integers(0, len(data), 25)):
            flipped = bytearray(data)
            flipped[pos] ^= 0xFF
            dst = folder / f"{kind}-flip{pos}.h5"
            dst.write_bytes(bytes(flipped))
            cases.append((f"flip-{pos}", dst, None))  # may or may not stay valid
    (folder / "empty.h5").write_bytes(b"")
    (folder / "text.h5").write_text("file,kind\na.h5,train\n")
    (folder / "random.h5").write_bytes(np.random.default_rng(1).bytes(4096))
    (folder / "signature-only.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    cases += [(n, folder / n, True) for n in ("empty.h5", "text.h5", "random.h5", "signature-only.h5")]
    return cases


@pytest.mark.slow
def test_fuzz_inspect_and_collect(originals, tmp_path):
    stats = {"cases": 0, "clear errors": 0, "accepted": 0, "tracebacks": 0}
    for src in originals.values():
        assert _invoke("inspect", src).exit_code == 0
    bad_dir = tmp_path / "cases"
    bad_dir.mkdir()
    cases = _cases(originals, bad_dir)
    assert len(cases) >= 200
    valid = {}
    for name, path, expect_invalid in cases:
        stats["cases"] += 1
        try:
            result = _invoke("inspect", path)
        except AssertionError:
            stats["tracebacks"] += 1
            raise
        if expect_invalid:
            assert result.exit_code == 1, (name, result.stdout)
        assert (result.exit_code == 1) == bool(result.stderr.strip())
        stats["clear errors" if result.exit_code else "accepted"] += 1
        valid[path] = result.exit_code == 0
    # collect: each case beside the originals, in its own folder
    for i, (name, path, _) in enumerate(cases):
        d = tmp_path / f"c{i}"
        d.mkdir()
        for src in originals.values():
            os.link(src, d / src.name)
        os.link(path, d / path.name)
        result = _invoke("collect", d, "-o", tmp_path / f"t{i}.h5")
        assert result.exit_code == 0, (name, result.stderr)
        skipped = [line for line in result.stdout.splitlines() if line.startswith("skipped ")]
        if valid[path]:  # a flip that left a valid file: a duplicate task, tabled once
            assert "collected 2 result file(s), skipped 1" in result.stdout, (name, result.stdout)
        else:
            assert len(skipped) == 1 and skipped[0].startswith(f"skipped {d / path.name}: "), (name, result.stdout)
            assert "collected 2 result file(s)" in result.stdout, (name, result.stdout)
    # all of them at once: the originals are tabled, every invalid file is listed by name
    for src in originals.values():
        shutil.copy(src, bad_dir / f"zz-{src.name}")
    result = _invoke("collect", bad_dir, "-o", tmp_path / "all.h5")
    for name, path, _ in cases:
        if not valid[path]:
            assert f"skipped {path}: " in result.stdout, name
    print(f"\nfuzz: {stats['cases']} cases, {stats['clear errors']} clear errors, {stats['accepted']} accepted "
          f"(byte flips that left a valid file), {stats['tracebacks']} tracebacks")


# --- specific refusals -----------------------------------------------------------------------------------------------

def test_inspect_says_what_a_non_result_file_is(originals, tmp_path):
    from snn_runner.runner.checkpoint import TrainState, save

    ckpt = tmp_path / ".x.h5.ckpt"
    save(ckpt, TrainState(), [np.zeros(3)], [np.zeros(3)], "{}")
    plain_ckpt = tmp_path / "renamed-checkpoint.h5"
    shutil.copy(ckpt, plain_ckpt)
    assert "checkpoint" in _invoke("inspect", ckpt).stderr
    assert "checkpoint" in _invoke("inspect", plain_ckpt).stderr
    table = tmp_path / "t.h5"
    _invoke("collect", originals["train"].parent, "-o", table)
    assert "table written by `snn-runner collect`" in _invoke("inspect", table).stderr
    assert "is a folder" in _invoke("inspect", tmp_path).stderr
    assert "no such file" in _invoke("inspect", tmp_path / "nope.h5").stderr
    (tmp_path / "e.h5").write_bytes(b"")
    assert "empty file" in _invoke("inspect", tmp_path / "e.h5").stderr
    tmp = tmp_path / f".r.h5.{os.getpid()}-abcd@host.tmp"
    tmp.write_bytes(b"x")
    assert "temporary file" in _invoke("inspect", tmp).stderr


def test_report_and_collect_path_confusion(originals, tmp_path):
    csv_table = tmp_path / "t.csv"
    assert _invoke("collect", originals["train"].parent, "-o", csv_table).exit_code == 0
    err = _invoke("report", csv_table, "-o", tmp_path / "rep").stderr
    assert "CSV" in err and "reads the .h5 table written by `snn-runner collect" in err
    assert "not a table" in _invoke("report", originals["train"], "-o", tmp_path / "rep").stderr
    assert "no such table" in _invoke("report", tmp_path / "nope.h5", "-o", tmp_path / "rep").stderr
    (tmp_path / "e.h5").write_bytes(b"")
    assert "empty file" in _invoke("report", tmp_path / "e.h5", "-o", tmp_path / "rep").stderr
    table = tmp_path / "t.h5"
    _invoke("collect", originals["train"].parent, "-o", table)
    assert "does not exist" in _invoke("report", table, "-o", tmp_path / "no" / "rep").stderr
    assert "not a folder" in _invoke("report", table, "-o", csv_table).stderr
    assert "does not exist" in _invoke("collect", originals["train"].parent, "-o", tmp_path / "no" / "t.h5").stderr
    assert "must end in .h5" in _invoke("collect", originals["train"].parent, "-o", tmp_path / "t.txt").stderr
    assert "is a folder" in _invoke("collect", originals["train"].parent, "-o", tmp_path).stderr
    assert "no such folder" in _invoke("collect", tmp_path / "nope", "-o", table).stderr
    assert "is a file" in _invoke("collect", originals["train"], "-o", table).stderr
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("x")
    before = table.read_bytes()
    assert "no valid result files" in _invoke("collect", tmp_path / "none", "-o", table).stderr
    assert table.read_bytes() == before  # the previous table is kept
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert "not writable" in _invoke("collect", originals["train"].parent, "-o", ro / "t.h5").stderr
            assert "not writable" in _invoke("report", table, "-o", ro / "rep").stderr
        finally:
            ro.chmod(0o700)


def test_collect_tables_each_task_once_and_sorts_out_temporaries(originals, tmp_path):
    d = tmp_path / "res"
    (d / "sub").mkdir(parents=True)
    shutil.copy(originals["train"], d / "a.h5")
    shutil.copy(originals["train"], d / "sub" / "copy.h5")  # byte copy in a subfolder
    os.symlink(d / "a.h5", d / "sub" / "link.h5")  # the same file again
    (d / "linked").symlink_to(d / "sub")  # a linked folder: its files are the same files
    shutil.copy(originals["bench"], d / "bench.h5")
    with h5py.File(d / "sub" / "newer.h5", "w") as f:  # same task_id, different content, newer
        with h5py.File(originals["train"], "r") as src:
            for key, value in src.attrs.items():
                f.attrs[key] = value
            for name in src:
                src.copy(name, f)
        f.attrs["created_utc"] = "2999-01-01T00:00:00Z"
    live = d / f".x.h5.{os.getpid()}-abcd@{_host()}.tmp"
    live.write_bytes(b"\x89HDF")
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
    dead = d / f".y.h5.{dead_pid}-abcd@{_host()}.tmp"
    dead.write_bytes(b"\x89HDF")
    result = _invoke("collect", d, "-o", tmp_path / "t.h5")
    from snn_runner.results.collect import read_table

    rows, _ = read_table(tmp_path / "t.h5")
    assert sorted(r["file"] for r in rows) == sorted([str(d / "bench.h5"), str(d / "sub" / "newer.h5")])
    out = result.stdout
    assert f"skipped {d / 'sub' / 'link.h5'}: duplicate: the same file as" in out
    assert f"skipped {d / 'sub' / 'copy.h5'}: duplicate: the same content as {d / 'a.h5'}" in out
    assert f"skipped {d / 'a.h5'}: duplicate: task_id t0 is also in {d / 'sub' / 'newer.h5'}" in out
    assert f"skipped {live}: partial (still being written by process {os.getpid()})" in out
    assert f"removed {dead}" in out and not dead.exists()
    assert "linked" not in out  # the linked folder was walked once, as sub


def _host():
    from snn_runner.results.collect import _host

    return _host()
