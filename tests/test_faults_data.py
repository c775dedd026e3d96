"""Malformed dataset files and untrustworthy cache entries (issue 12, parts 4 and 11).

Every file here is written in the real on-disk format (tests/fixtures/event_data.py)
and read by tonic's real readers. Each malformed case ends either in a one-line
``DataError`` naming the file and the dataset, or in a counted note in the split
report; never in a traceback.
"""

import os
import random
import re
import shutil
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from snn_runner.config import DataConfig
from snn_runner.data import DataError, DatasetCorruptError, load_dataset, load_splits, prepare
from snn_runner.data import cache as cache_mod
from snn_runner.data.cli_commands import data
from snn_runner.data.events import EventSet
from snn_runner.data.splits import check_eventset
from snn_runner.data.tonic_sources import SOURCES, check_files, fingerprint
from tests.fixtures.event_data import (
    flip_byte,
    h5_replace,
    make_dvsgesture,
    make_nmnist,
    make_shd,
    truncate,
    write_dvsgesture_npy,
    write_nmnist_bin,
    write_shd,
)


def cfg_for(dataset, root, **kw):
    kw.setdefault("cache_dir", str(root / "cache"))
    kw.setdefault("time_steps", 20)
    return DataConfig(dataset=dataset, data_dir=str(root), **kw)


def quiet(_line):
    pass


def refused(dataset, root, bad, *fragments, **kw):
    """Loading fails with a one-line DatasetCorruptError naming the file, the dataset and the fragments."""
    with pytest.raises(DatasetCorruptError) as err:
        load_dataset(cfg_for(dataset, root, **kw), quiet)
    text = str(err.value)
    assert "\n" not in text, text
    assert str(bad) in text and f"dataset {dataset}" in text and "replace it" in text, text
    for fragment in fragments:
        assert re.search(fragment, text), (fragment, text)
    return text


# ---------------------------------------------------------------- SHD (HDF5)

def shd_pair(root, **train):
    """Train and test SHD files; ``train`` overrides the train file's contents."""
    times = train.get("times", [[0.001, 0.002, 0.5], [0.01]])
    units = train.get("units", [[1, 2, 3], [699]])
    labels = train.get("labels", [3, 19])
    write_shd(root / "SHD" / "shd_test.h5", [[0.0]], [[4]], [0])
    return write_shd(root / "SHD" / "shd_train.h5", times, units, labels)


@pytest.mark.parametrize("key", ["labels", "extra/keys", "spikes/times", "spikes/units", "extra/speaker"])
def test_shd_missing_dataset_is_named(tmp_path, offline, key):
    bad = h5_replace(shd_pair(tmp_path), key)
    refused("shd", tmp_path, bad, f"HDF5 dataset '{re.escape(key)}'", "missing")


@pytest.mark.parametrize("key, data, dtype, fragment", [
    ("labels", [3.0, 1.5], np.float32, "float32 values, expected integers"),
    ("labels", [[3, 1]], np.uint16, r"shape \(1, 2\)"),
    ("labels", [3], np.uint16, "1 entries, but 'spikes/times' has 2"),  # fewer labels than samples
    ("labels", [3, 1, 2], np.uint16, "3 entries, but 'spikes/times' has 2"),
    ("labels", [3, 20], np.uint16, "label 20 of sample 1 outside"),
    ("spikes/units", [[1.0, 2.0, 3.0], [5.0]], h5py.vlen_dtype(np.float32), "expected integers"),
    ("spikes/units", [1, 2], np.uint16, "expected variable-length"),
    ("spikes/times", [[1, 2, 3], [4]], h5py.vlen_dtype(np.int32), "expected floats"),
    ("spikes/times", np.zeros((2, 3)), np.float32, r"shape \(2, 3\)"),
])
def test_shd_wrong_dtype_shape_or_length_is_named(tmp_path, offline, key, data, dtype, fragment):
    bad = h5_replace(shd_pair(tmp_path), key, data, dtype)
    refused("shd", tmp_path, bad, f"HDF5 dataset '{re.escape(key)}'", fragment)


def test_shd_group_in_place_of_a_dataset(tmp_path, offline):
    bad = h5_replace(shd_pair(tmp_path), "labels")
    with h5py.File(bad, "a") as f:
        f.create_group("labels")
    refused("shd", tmp_path, bad, "'labels'", "is a group")


@pytest.mark.parametrize("times, fragment", [
    ([[-0.5, 0.1, 0.2], [0.01]], "negative"),
    ([[np.nan, 0.1, 0.2], [0.01]], "NaN"),
    ([[np.inf, 0.1, 0.2], [0.01]], "infinite"),
    ([[60000.0, 0.1, 0.2], [0.01]], "span 60000 s, more than the 3600 s"),
])
def test_shd_bad_spike_times_are_refused(tmp_path, offline, times, fragment):
    bad = shd_pair(tmp_path, times=times)
    refused("shd", tmp_path, bad, r"\(sample 0\)", "'spikes/times'", fragment)


def test_shd_units_out_of_range_and_unequal_lengths(tmp_path, offline):
    bad = shd_pair(tmp_path, units=[[1, 2, 700], [699]])
    refused("shd", tmp_path, bad, "'spikes/units'", r"x spans \[1, 700\]")
    bad = shd_pair(tmp_path, times=[[0.1, 0.2, 0.3], [0.01, 0.02]], units=[[1, 2, 3], [5]])
    refused("shd", tmp_path, bad, r"\(sample 1\)", "2 spike times but 1 units")


@pytest.mark.parametrize("content", [b"", b"this is not HDF5 at all\n" * 20, "truncated"])
def test_shd_empty_foreign_or_truncated_file(tmp_path, offline, content):
    bad = shd_pair(tmp_path)
    if content == "truncated":
        truncate(bad, bad.stat().st_size // 2)
    else:
        bad.write_bytes(content)
    refused("shd", tmp_path, bad, "not a readable HDF5 file|cannot be read|tonic cannot")


# ---------------------------------------------------------------- N-MNIST (.bin)

def test_nmnist_zero_length_recording_is_a_counted_note(tmp_path, offline):
    make_nmnist(tmp_path, per_class={"train": 1, "test": 1}, events=30, include_sample=False)
    empty = tmp_path / "NMNIST" / "Train" / "5" / "00001.bin"
    empty.write_bytes(b"")
    lines = []
    sets = load_splits(cfg_for("nmnist", tmp_path, validation_fraction=0.0), lines.append)
    r = sets["train"].report
    assert r["empty_recordings"] == 1 and sets["test"].report["empty_recordings"] == 0
    assert len(r["notes"]) == 1 and str(empty) in r["notes"][0] and "dataset nmnist" in r["notes"][0]
    assert any(line.startswith("note: nmnist train: 1 empty recording") and str(empty) in line for line in lines)
    assert "1 empty recordings" in "\n".join(lines)
    row = sorted(str(p) for p in (tmp_path / "NMNIST" / "Train").glob("*/*.bin")).index(str(empty))
    assert sets["train"].count[row].sum() == 0 and sets["train"].labels[row] == 5
    # from the cache, the note is still there
    again = load_splits(cfg_for("nmnist", tmp_path), lines.append)["train"].report
    assert again["empty_recordings"] == 1 and again["notes"] == r["notes"]


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_nmnist_partial_event_is_refused(tmp_path, offline, cut):
    make_nmnist(tmp_path, per_class={"train": 1, "test": 1}, events=30, include_sample=False)
    bad = write_nmnist_bin(tmp_path / "NMNIST/Train/2/00000.bin", [1, 2], [3, 4], [10, 20], [0, 1])
    truncate(bad, 10 - cut)
    refused("nmnist", tmp_path, bad, "not a whole number of 5-byte events")


# ---------------------------------------------------------------- DVS Gesture (.npy)

def dvs_pair(root):
    write_dvsgesture_npy(root / "DVSGesture/ibmGestureTest/user02_led/1.npy", [1], [1], [0], [0])
    return write_dvsgesture_npy(root / "DVSGesture/ibmGestureTrain/user01_led/4.npy", [0, 5], [0, 6], [0, 1],
                                [100, 103])


@pytest.mark.parametrize("array, fragment", [
    (np.array([[1, 2, 0, np.nan], [3, 4, 1, 5.0]]), "negative, NaN"),
    (np.array([[1, 2, 0, -5], [3, 4, 1, 5]]), "negative"),
    (np.array([[1, 2, 0, 0], [3, 4, 1, 10**10]]), "more than the 3600 s"),
    (np.array([[1, 2, 0], [3, 4, 1]]), "tonic cannot read it"),
    (np.array([1, 2, 0, 5]), "tonic cannot read it"),
    (np.array([[200, 2, 0, 5]]), r"x spans \[200, 200\]"),
])
def test_dvsgesture_malformed_arrays(tmp_path, offline, array, fragment):
    bad = dvs_pair(tmp_path)
    np.save(bad, array)
    refused("dvsgesture", tmp_path, bad, fragment)


@pytest.mark.parametrize("content", [b"", b"not a numpy file", "truncated"])
def test_dvsgesture_empty_foreign_or_truncated_file(tmp_path, offline, content):
    bad = dvs_pair(tmp_path)
    if content == "truncated":
        truncate(bad, bad.stat().st_size - 7)
    else:
        bad.write_bytes(content)
    refused("dvsgesture", tmp_path, bad, "tonic cannot read it")


def test_dvsgesture_label_out_of_range_and_zero_length(tmp_path, offline):
    dvs_pair(tmp_path)
    bad = write_dvsgesture_npy(tmp_path / "DVSGesture/ibmGestureTrain/user01_led/11.npy", [1], [1], [0], [0])
    refused("dvsgesture", tmp_path, bad, r"label 11 outside \[0, 11\)")
    bad.unlink()
    empty = tmp_path / "DVSGesture/ibmGestureTrain/user01_led/7.npy"
    np.save(empty, np.zeros((0, 4), np.int64))
    train = load_splits(cfg_for("dvsgesture", tmp_path), quiet)["train"]
    assert train.report["empty_recordings"] == 1 and str(empty) in train.report["notes"][0]


# ---------------------------------------------------------------- cache trust

def test_recording_rewritten_in_place_gets_a_new_entry(tmp_path, offline):
    fx = make_nmnist(tmp_path / "d", per_class={"train": 1, "test": 1}, events=40, include_sample=False)
    c = cfg_for("nmnist", tmp_path / "d", cache_dir=str(tmp_path / "cache"))
    first = prepare(c, quiet)
    target = fx.files["train"][3]
    folder_times = [(p, p.stat().st_mtime_ns) for p in (target.parent, target.parent.parent)]
    write_nmnist_bin(target, [7], [7], [5], [1])  # same folder, same name, new content
    for p, ns in folder_times:
        os.utime(p, ns=(ns, ns))  # folder mtimes unchanged: only the file's own stat tells
    second = prepare(c, quiet)
    assert second.built and second.path != first.path
    row = fx.files["train"].index(target)
    assert second.entry.splits["train"].count[row].sum() == 1
    # a change of mtime alone (same bytes) is also a new entry; nothing changed: the same entry
    os.utime(target, ns=(1, 1))
    assert prepare(c, quiet).built and not prepare(c, quiet).built


def test_fingerprint_listing_is_cheap(tmp_path):
    make_nmnist(tmp_path, per_class={"train": 100, "test": 20}, events=4, include_sample=False)
    spec = SOURCES["nmnist"]
    paths = check_files(spec, tmp_path)
    start = time.perf_counter()
    fp = fingerprint(spec, paths)
    elapsed = time.perf_counter() - start
    print(f"fingerprint of 1,200 N-MNIST files: {elapsed * 1e3:.1f} ms")
    assert [row[2] for row in fp] == [1000, 200]
    assert elapsed < 1.0  # ~20 us per file here; 70,000 files stay well under a few seconds


@pytest.mark.parametrize("damage", ["ids", "labels", "count_shape"])
def test_out_of_range_cache_contents_are_rebuilt(tmp_path, offline, damage):
    make_shd(tmp_path, samples={"train": 4, "test": 2}, spikes=40)
    c = cfg_for("shd", tmp_path)
    first = prepare(c, quiet)
    reference = load_splits(c, quiet)
    with h5py.File(first.path, "a") as f:
        key = f.attrs["key"]
        if damage == "ids":
            ids = f["train/ids"][()]
            ids[0] = 700  # channels is 700
            f["train/ids"][...] = ids
        elif damage == "labels":
            f["test/labels"][0] = 25
        else:
            count = f["train/count"][()]
            del f["train/count"]
            f.create_dataset("train/count", data=count.T.copy())
    with pytest.raises(cache_mod.CacheEntryInvalid, match="outside|disagree"):
        cache_mod.read_entry(first.path, key)
    lines = []
    again = load_splits(c, lines.append)
    assert any("is unusable" in line and "rebuilding" in line for line in lines), lines
    for name in reference:
        np.testing.assert_array_equal(again[name].ids, reference[name].ids)
        np.testing.assert_array_equal(again[name].labels, reference[name].labels)


def test_eventsets_are_range_checked_once_in_load_splits():
    ids = np.full((2, 3, 2), -1, np.int32)
    count = np.zeros((2, 3), np.int32)
    ids[0, 0, 0], count[0, 0] = 5, 1
    ok = EventSet(ids, count, np.array([0, 1]), channels=6, classes=2)
    check_eventset(ok, "randman", "train", "generated by randman")
    with pytest.raises(DataError, match=r"randman train split .*input ids span \[-1, 6\], outside \[0, 6\)"):
        bad = ids.copy()
        bad[1, 2, 1] = 6
        check_eventset(EventSet(bad, count, np.array([0, 1]), 6, 2), "randman", "train", "generated by randman")
    with pytest.raises(DataError, match=r"labels span \[0, 2\]"):
        check_eventset(EventSet(ids, count, np.array([0, 2]), 6, 2), "random", "test", "generated by random")
    # generated sets go through the check too (and pass)
    sets = load_splits(DataConfig(channels=20, classes=3, time_steps=10, train_samples_per_class=4,
                                  test_samples_per_class=2))
    assert set(sets) == {"train", "test"}


# ---------------------------------------------------------------- fuzz: mutated fixture files

def _bases(root):
    bases = {}
    for name, make in (("nmnist", lambda r: make_nmnist(r, per_class={"train": 1, "test": 1}, events=30,
                                                         include_sample=False)),
                       ("shd", lambda r: make_shd(r, samples={"train": 4, "test": 2}, spikes=30)),
                       ("dvsgesture", lambda r: make_dvsgesture(r, users={"train": [1], "test": [2]},
                                                                labels=range(3), events=30))):
        fx = make(root / name)
        bases[name] = (fx.root, fx.files["train"][1 if name != "shd" else 0])
    return bases


def _mutations(rng, dataset, size):
    """(description, function(path)) pairs: truncations at many offsets and byte flips, plus HDF5 edits."""
    out = []
    for frac in (0.0, 0.01, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.97, 0.999):
        n = int(size * frac)
        out.append((f"truncate to {n}", lambda p, n=n: truncate(p, n)))
    for _ in range(16):
        offset, mask = rng.randrange(size), rng.choice([0x01, 0x80, 0xFF, 0x10])
        out.append((f"flip {mask:#x} at {offset}", lambda p, o=offset, m=mask: flip_byte(p, o, m)))
    for offset in (0, 3, 8, size // 2, size - 1):
        out.append((f"flip all at {offset}", lambda p, o=offset: flip_byte(p, o)))
    if dataset == "shd":
        keys = ["labels", "extra/keys", "extra/speaker", "spikes/times", "spikes/units"]
        for key in keys:
            out.append((f"delete {key}", lambda p, k=key: h5_replace(p, k)))
        retypes = [("labels", np.array([b"a", b"b", b"c", b"d"])), ("labels", np.zeros(4, np.float64)),
                   ("labels", np.int64(3)), ("labels", np.full(4, -1, np.int64)), ("labels", np.zeros(3, np.uint8)),
                   ("spikes/times", np.zeros(4)), ("spikes/units", np.zeros((4, 2), np.int32)),
                   ("spikes/times", np.array([b"x"] * 4)), ("extra/keys", np.zeros((2, 2))),
                   ("extra/speaker", np.array([b"s"]))]
        for key, value in retypes:
            out.append((f"retype {key} as {value.dtype}{value.shape}",
                        lambda p, k=key, v=value: h5_replace(p, k, v)))
    return out


def test_fuzz_mutated_dataset_files_never_give_a_traceback(tmp_path, offline):
    rng = random.Random(12)
    bases = _bases(tmp_path / "base")
    tried = clear = ok = 0
    tracebacks = []
    start = time.perf_counter()
    for dataset, (root, victim) in bases.items():
        for n, (what, mutate) in enumerate(_mutations(rng, dataset, victim.stat().st_size)):
            case = tmp_path / f"{dataset}-{n}"
            shutil.copytree(root, case)
            bad = case / victim.relative_to(root)
            mutate(bad)
            tried += 1
            try:
                load_dataset(cfg_for(dataset, case, time_steps=10), quiet)
                ok += 1
            except DataError as err:
                text = str(err)
                if "\n" in text or str(bad) not in text or f"dataset {dataset}" not in text:
                    tracebacks.append(f"{dataset} {what}: unclear error: {text}")
                else:
                    clear += 1
            except Exception as err:  # noqa: BLE001 - exactly what the test counts
                tracebacks.append(f"{dataset} {what}: {type(err).__name__}: {err}")
            shutil.rmtree(case)
    elapsed = time.perf_counter() - start
    print(f"fuzz: {tried} cases tried, {clear} clear errors, {ok} loaded, {len(tracebacks)} tracebacks "
          f"({elapsed:.1f} s)")
    assert tried >= 100
    assert tracebacks == []
    assert clear + ok == tried and clear >= 40


@pytest.mark.parametrize("dataset", ["nmnist", "shd", "dvsgesture"])
def test_cli_prepare_on_a_malformed_file_is_one_error_line(tmp_path, offline, dataset):
    root, victim = _bases(tmp_path)[dataset]
    truncate(victim, 3 if dataset != "shd" else 600)
    result = CliRunner().invoke(data, ["prepare", "--dataset", dataset, "--data-dir", str(root), "--cache-dir",
                                       str(tmp_path / "cache"), "--time-steps", "10"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(victim) in errors[0] and f"dataset {dataset}" in errors[0], result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (KeyError, OSError, ValueError))
