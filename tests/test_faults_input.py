"""Malformed input never gives a traceback: job files, task lists and oversized runs.

The fuzz test feeds generated malformed job files (mutations of the shipped
jobs/*.yaml and of a tiny base job) through `snn-runner sweep JOB --list` and
`snn-runner train JOB` in-process; every non-zero exit must be one `Error:`
line with exit code 1 or 2. No real training runs: `train` is only invoked on
files that fail validation, or with a task list out of range.
"""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from snn_runner.cli import cli
from snn_runner.config import ConfigError, RunConfig
from snn_runner.jobs import JobFileError, load_job
from snn_runner.runner.budget import ResourceError, check_memory, estimate

REPO = Path(__file__).resolve().parents[1]
BASE = {
    "name": "t",
    "kind": "train",
    "model": {"hidden": [16], "implementation": "dense"},
    "data": {"dataset": "randman", "channels": 10, "classes": 2, "time_steps": 10},
    "train": {"epochs": 1, "batch_size": 8},
    "sweep": {"grid": {"train.seed": [0, 1]}},
}
NASTY = [None, True, False, 0, -1, -(2**40), 2**70, 1e308, float("nan"), float("inf"), float("-inf"), "",
         "x", "1e-3", "ü\u202e\u0000", [], [1, "a"], {}, {"a": 1}, [[1]], 3.5, "2020-01-01", -0.0]


def _sections(doc):
    return [k for k, v in doc.items() if isinstance(v, dict)]


def _mutate(doc: dict, rng: random.Random) -> dict | str:
    doc = copy.deepcopy(doc)
    op = rng.randrange(9)
    keys = list(doc)
    if op == 0 and keys:  # delete a key anywhere
        sec = rng.choice(keys)
        if isinstance(doc[sec], dict) and doc[sec] and rng.random() < 0.7:
            del doc[sec][rng.choice(list(doc[sec]))]
        else:
            del doc[sec]
    elif op == 1 and keys:  # retype a top-level value
        doc[rng.choice(keys)] = rng.choice(NASTY)
    elif op == 2 and _sections(doc):  # retype a value inside a section
        sec = doc[rng.choice(_sections(doc))]
        if sec:
            sec[rng.choice(list(sec))] = rng.choice(NASTY)
    elif op == 3:  # wrong nesting
        sec = rng.choice(["model", "data", "train", "bench", "resources"])
        doc[sec] = {"inner": doc.get(sec)} if rng.random() < 0.5 else [doc.get(sec)]
    elif op == 4:  # a key that is not a word, or unknown
        doc[rng.choice([5, None, 1.5, "trian", "ü", "model.hidden"])] = {}
    elif op == 5:  # a sweep that is malformed
        doc["sweep"] = rng.choice([[], {"grid": []}, {"grid": {"train.seed": 3}}, {"grid": {"train.seed": []}},
                                   {"list": {}}, {"list": [1]}, {"grid": {5: [1]}}, {"grid": {"train.seed": [-1]}},
                                   {"grid": {f"train.seed": list(range(200))}, "list": [{}] * 1000},
                                   {"grid": {"model.hidden": [[2**40]]}}, {"list": [{"model": 1}]},
                                   {"grid": {"train.learning_rate": ["1e-3", "abc", float("nan")]}}])
    elif op == 6:  # huge or negative numbers where sizes go
        sec = rng.choice(["data", "train", "model"])
        key = rng.choice({"data": ["channels", "time_steps", "seed", "classes", "max_samples"],
                          "train": ["epochs", "batch_size", "seed", "learning_rate"],
                          "model": ["max_activity", "alpha", "threshold2_fraction"]}[sec])
        if not isinstance(doc.get(sec), dict):
            doc[sec] = {}
        doc[sec][key] = rng.choice([-1, -(2**31), 2**32, 2**63, 10**30, 1e20, "1e-3", "-.inf", ".nan"])
    elif op == 7:  # a garbage string
        return rng.choice(["", "\n", "{", "name: [", "- a\n- b\n", "::::", "a: b: c", "\t- x", "!!python/object:os.system x",
                           "&a [*a]", "a: &x {b: *x}", "[" * 3000, "x" * 70000, "name: t\nname: u\n",
                           "train: {}\ntrain: {}\n", "model: {hidden: [1], hidden: [2]}\n", "%YAML 9.9\n---\na: 1",
                           "a: 1\n---\nb: 2\n", "? [1, 2]\n: 3\n", "a: !!binary aGVsbG8=", "a: !!set {x}",
                           "model: {hidden: 2021-01-01}", "bomb: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]"
                           "\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c]\n"
                           "e: &e [*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e]\nmodel: {hidden: *f}"])
    else:  # duplicate a section in the text
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        lines = text.splitlines(keepends=True)
        if lines:
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(lines))
        return "".join(lines)
    return doc


def _cases() -> list[tuple[str, bytes]]:
    rng = random.Random(12)
    bases = [BASE] + [yaml.safe_load(p.read_text()) for p in sorted((REPO / "jobs").glob("*.yaml"))]
    cases = [("empty", b""), ("binary", bytes(range(256))), ("nul", b"name: t\x00\n"),
             ("latin1", "name: caf\xe9".encode("latin-1")), ("bom", b"\xef\xbb\xbfname: t\n"),
             ("utf16", "name: t\n".encode("utf-16"))]
    for n in range(240):
        doc = rng.choice(bases)
        for _ in range(rng.randint(1, 3)):
            doc = _mutate(doc, rng) if isinstance(doc, dict) else doc
        if isinstance(doc, dict):
            try:
                text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
            except yaml.YAMLError:
                continue
        else:
            text = doc
        cases.append((f"m{n}", text.encode("utf-8", "surrogatepass")))
    return cases


def _check(result, what: str, stats: dict) -> None:
    out = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{what}: {type(result.exception).__name__}: {result.exception}"
    assert "Traceback" not in out, f"{what}: {out}"
    assert result.exit_code in (0, 1, 2), f"{what}: exit {result.exit_code}: {out}"
    if result.exit_code:
        errors = [line for line in out.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, f"{what}: {out}"
        assert len(errors[0]) < 600, f"{what}: too long: {errors[0][:300]}..."
        stats["errors"] += 1


def test_fuzzed_job_files_give_one_error_line_never_a_traceback(tmp_path, capsys):
    runner = CliRunner()
    stats = {"cases": 0, "runs": 0, "errors": 0, "valid": 0}
    for name, data in _cases():
        path = tmp_path / f"{name}.yaml"
        path.write_bytes(data)
        stats["cases"] += 1
        listed = runner.invoke(cli, ["sweep", str(path), "--list", "--output-dir", str(tmp_path / "out")])
        stats["runs"] += 1
        _check(listed, f"sweep {name}", stats)
        # train only what cannot start a real run: refused files, or an out-of-range task list
        args = ["train", str(path)] if listed.exit_code else ["train", str(path), "--task", "0-99999999999"]
        stats["valid"] += listed.exit_code == 0
        trained = runner.invoke(cli, args + ["--output-dir", str(tmp_path / "out")])
        stats["runs"] += 1
        _check(trained, f"train {name}", stats)
        assert trained.exit_code != 0, f"train {name} started a run: {trained.output}"
    with capsys.disabled():
        print(f"\nfuzz: {stats['cases']} job files, {stats['runs']} runs, {stats['valid']} valid, "
              f"{stats['errors']} clear errors, 0 tracebacks")
    assert stats["cases"] >= 200


def _job(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


TINY = "name: t\nmodel: {hidden: [16]}\ndata: {channels: 10, classes: 2, time_steps: 10}\n"


@pytest.mark.parametrize("text, expected", [
    (TINY + "train: {epochs: 1}\ntrain: {epochs: 2}\n", "found the key 'train' twice (first on line 4, again on line 5)"),
    (TINY.replace("[16]}", "[16], hidden: [8]}"), "found the key 'hidden' twice"),
    (TINY + "train: false\n", "train (line 4): expected a mapping"),
    (TINY + "sweep: []\n", "sweep (line 4): expected a mapping"),
    (TINY + "resources: [a]\n", "resources (line 4): expected a mapping"),
    (TINY + "train: {seed: -1}\n", "train.seed: invalid value -1; expected a seed from 0 to 4294967295 (line 4)"),
    (TINY + "train: {seed: 4294967296}\n", "train.seed: invalid value 4294967296"),
    (TINY + "train: {epochs: 100000000000000000000}\n", "expected an integer below 2**62"),
    (TINY + "train: {learning_rate: abc}\n", "train.learning_rate: expected a number like 0.002, got the text 'abc' (line 4)"),
    (TINY + "train: {learning_rate: .nan}\n", "got NaN"),
    (TINY + "train: {learning_rate: .inf}\n", "expected a finite number"),
    (TINY + "train: {epochs: true}\n", "expected an integer like 8, got the boolean True"),
    (TINY + "name: 5\n", "found the key 'name' twice"),
    ("name: 5\n", "name (line 1): invalid value 5"),
    ("output: [a]\n", "output (line 1): expected a folder path"),
    ("5: {}\n", "top-level key 5 (line 1) is not a word"),
    (TINY + "sweep: {grid: {train.seed: 3}}\n", "sweep.grid (line 4): train.seed: expected a non-empty list"),
    (TINY + "sweep: {grid: {train.seed: [0, -4]}}\n", "train.seed: invalid value -4"),
    (TINY + "sweep: {grid: {train.seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}, list: " + "[" + "{}, " * 20000 + "{}]}\n",
     "more than the 100000 a job may have"),
    ("", "the job file is empty"),
    ("a: &x [*x]\n", "nested more than 100 levels"),
])
def test_malformed_job_files_are_refused_naming_key_and_line(tmp_path, text, expected):
    path = _job(tmp_path, text)
    with pytest.raises(JobFileError) as err:
        load_job(path)
    assert str(path) in str(err.value) and expected in str(err.value), str(err.value)


def test_exponent_strings_are_the_floats_a_user_means(tmp_path):
    text = TINY.replace("hidden: [16]", "hidden: [16], threshold2_fraction: -inf") + "train: {learning_rate: 1e-3}\n"
    cfg = load_job(_job(tmp_path, text)).tasks()[0].config
    assert cfg.train.learning_rate == 1e-3 and cfg.model.threshold2_fraction == -math.inf


def test_task_lists_are_checked_before_they_are_expanded():
    runner = CliRunner()
    for spec, expected in [("0-99999999999", "task 4 does not exist"), ("3-1", "running backwards"),
                           ("-1", "is not a task list"), ("9" * 5000, "does not exist"), ("", "is not a task list")]:
        result = runner.invoke(cli, ["train", str(REPO / "jobs/smoke.yaml"), "--task", spec])
        assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output, result.output


@pytest.mark.parametrize("raw", [
    {"model": {"hidden": [3_000_000_000]}},
    {"data": {"channels": 100_000_000}},
    {"data": {"time_steps": 100_000}, "model": {"implementation": "dense"}},
    {"data": {"dataset": "random", "channels": 100_000, "input_capacity": 10, "time_steps": 1000}},
])
def test_runs_that_cannot_fit_are_refused_before_allocating(raw):
    cfg = RunConfig.from_dict(raw)
    with pytest.raises(ResourceError, match=r"needs about [\d.]+ GB .* this machine has [\d.]+ GB available") as err:
        check_memory(cfg, available=24 * 1024**3)
    assert isinstance(err.value, ConfigError)


@pytest.mark.parametrize("raw", [
    {},
    {"model": {"hidden": [1470, 1460], "implementation": "sparse_layer"},
     "data": {"dataset": "nmnist", "time_steps": 100, "input_capacity": 64}, "train": {"batch_size": 48}},
    {"model": {"hidden": [700], "implementation": "dense"}, "data": {"dataset": "shd", "time_steps": 100}},
    {"model": {"hidden": [128, 128], "implementation": "sparse_ops"}, "data": {"dataset": "dvsgesture",
                                                                              "downsample": 0.25}},
])
def test_normal_runs_fit_with_room_to_spare(raw):
    cfg = RunConfig.from_dict(raw)
    est = check_memory(cfg, available=8 * 1024**3)
    assert est.total < 4 * 1024**3


def test_shipped_jobs_fit_the_memory_they_ask_for():
    # the scaling benchmarks ask for a large node; every other job fits a small machine
    for path in sorted((REPO / "jobs").glob("*.yaml")):
        job = load_job(path)
        limit = job.resources.mem_gb if path.stem in ("bench-time", "bench-width") else min(6, job.resources.mem_gb)
        for task in job.tasks():
            assert estimate(task.config).total < limit * 1024**3, (path, task.index)


def test_existing_result_is_found_under_any_index(tmp_path):
    job = load_job(_job(tmp_path, TINY + "sweep: {grid: {train.seed: [0, 1]}}\n"))
    t0, t1 = job.tasks()
    assert job.existing_result(t1, tmp_path) is None
    moved = tmp_path / f"t-007-{t1.task_id}.h5"  # done under another index before the sweep was edited
    moved.write_bytes(b"x")
    (tmp_path / f".t-001-{t1.task_id}.h5").write_bytes(b"x")  # hidden files never count
    assert job.existing_result(t1, tmp_path) == moved
    assert job.existing_result(t1, tmp_path, is_complete=lambda p: False) is None
    assert job.existing_result(t0, tmp_path) is None
    own = job.result(t1, tmp_path)
    own.write_bytes(b"x")
    assert job.results_of(t1, tmp_path) == [own, moved]
