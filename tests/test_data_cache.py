"""The preprocessing cache: reuse, keys, damaged entries, concurrent builders."""

import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from snn_runner.config import DataConfig
from snn_runner.data import CacheError, load_splits, prepare
from snn_runner.data import cache as cache_mod
from snn_runner.data import pipeline
from snn_runner.data.events import events_to_sparse
from snn_runner.data.tonic_sources import SOURCES, open_split, read_sample
from tests.fixtures import block_network
from tests.fixtures.event_data import make_nmnist, make_shd


@pytest.fixture
def nmnist(tmp_path, monkeypatch):
    monkeypatch.delenv("SNN_RUNNER_DATA_DIR", raising=False)
    monkeypatch.delenv("SNN_RUNNER_CACHE_DIR", raising=False)
    calls = block_network(monkeypatch)
    fx = make_nmnist(tmp_path / "data", per_class={"train": 2, "test": 1}, events=120)
    yield fx
    assert calls == []


@pytest.fixture
def binned(monkeypatch):
    """Counts samples binned by the pipeline (the expensive step the cache saves)."""
    calls = []
    real = pipeline.bin_sample

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "bin_sample", counting)
    return calls


def cfg(fx, **kw):
    base = dict(dataset="nmnist", data_dir=str(fx.root), cache_dir=str(fx.root.parent / "cache"), time_steps=40,
                input_capacity=16)
    return DataConfig(**{**base, **kw})


def entries(fx):
    return sorted((fx.root.parent / "cache").glob("*.h5"))


def test_second_prepare_reuses_the_entry_without_binning(nmnist, binned):
    lines = []
    first = prepare(cfg(nmnist), lines.append)
    assert first.built and first.samples_binned == len(binned) == 30
    stat = os.stat(first.path)
    lines.clear()
    second = prepare(cfg(nmnist), lines.append)
    assert not second.built and second.samples_binned == 0 and len(binned) == 30
    after = os.stat(second.path)
    assert second.path == first.path and (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert f"cache: using {first.path}" in lines and not any("building" in line for line in lines)
    assert second.reports == first.reports
    load_splits(cfg(nmnist, validation_fraction=0.2), lines.append)  # validation splits at load time
    assert len(binned) == 30 and entries(nmnist) == [first.path]


def test_cached_sets_equal_a_direct_conversion(nmnist):
    """Cache round trip == tonic reader + preprocessing + events_to_sparse, without any file in between."""
    c = cfg(nmnist, time_steps=60, input_capacity=0)
    prepare(c, lambda _: None)
    sets = load_splits(c, lambda _: None)
    spec = SOURCES["nmnist"]
    for split in ("train", "test"):
        ds = open_split(spec, nmnist.root, split)
        samples, labels = [], []
        for i in range(len(ds)):
            events, label = read_sample(spec, ds, i)
            samples.append((events["t"] // 1000, (events["p"] * 34 + events["y"]) * 34 + events["x"]))
            labels.append(label)
        direct = events_to_sparse(samples, labels, 60, 2312, 10, capacity=sets["train"].capacity)
        np.testing.assert_array_equal(sets[split].ids, direct.ids)
        np.testing.assert_array_equal(sets[split].count, direct.count)
        np.testing.assert_array_equal(sets[split].labels, direct.labels)


@pytest.mark.parametrize("change", [
    {"time_steps": 41}, {"dt_ms": 2.0}, {"input_capacity": 8}, {"denoise_ms": 1.0}, {"downsample": 0.5},
    {"max_samples": 5}, {"seed": 1},
])
def test_every_preprocessing_parameter_makes_a_new_entry(nmnist, binned, change):
    base = prepare(cfg(nmnist), lambda _: None)
    other = prepare(cfg(nmnist, **change), lambda _: None)
    assert other.built and other.path != base.path
    assert set(entries(nmnist)) == {base.path, other.path}
    assert json_params(other.path)[next(iter(change))] == next(iter(change.values()))
    assert not prepare(cfg(nmnist), lambda _: None).built  # the first entry is still there and valid


def json_params(path):
    import json

    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["params"])


def test_key_covers_format_version_and_source_files(nmnist, monkeypatch):
    c = cfg(nmnist)
    first = prepare(c, lambda _: None)
    monkeypatch.setattr(cache_mod, "FORMAT_VERSION", cache_mod.FORMAT_VERSION + 1)
    assert prepare(c, lambda _: None).path != first.path
    monkeypatch.undo()
    block_network(monkeypatch)
    # A recording added to the data folder changes the folder's mtime: a new entry, not stale data.
    extra = nmnist.root / "NMNIST" / "Train" / "0" / "09999.bin"
    extra.write_bytes(nmnist.files["train"][0].read_bytes())
    os.utime(extra.parent, ns=(1, 1))
    changed = prepare(c, lambda _: None)
    assert changed.built and changed.path != first.path and len(changed.entry.splits["train"]) == 21


@pytest.mark.parametrize("damage", ["truncate", "incomplete", "garbage", "empty"])
def test_damaged_entry_is_rebuilt_with_a_logged_line(nmnist, binned, damage):
    first = prepare(cfg(nmnist), lambda _: None)
    reference = load_splits(cfg(nmnist), lambda _: None)
    path = first.path
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "incomplete":
        with h5py.File(path, "a") as f:
            del f.attrs["complete"]
    elif damage == "garbage":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(2000))
    else:
        path.write_bytes(b"")
    lines = []
    again = prepare(cfg(nmnist), lines.append)
    assert again.built and len(binned) == 60
    assert any(line.startswith(f"cache: {path} is unusable (") and "rebuilding" in line for line in lines), lines
    rebuilt = load_splits(cfg(nmnist), lambda _: None)
    for split in reference:
        np.testing.assert_array_equal(rebuilt[split].ids, reference[split].ids)


def test_damaged_data_inside_a_complete_file_is_detected(nmnist):
    first = prepare(cfg(nmnist), lambda _: None)
    with h5py.File(first.path, "a") as f:
        del f["train/labels"]
        key = f.attrs["key"]
    with pytest.raises(cache_mod.CacheEntryInvalid, match="labels"):
        cache_mod.read_entry(first.path, key)
    assert prepare(cfg(nmnist), lambda _: None).built


def test_interleaved_writers_leave_one_whole_entry(tmp_path):
    """Without a lock (file systems that refuse flock) builders still never expose a partial file."""
    path = tmp_path / "x-entry.h5"
    writers = [cache_mod.EntryWriter(path, "k", {"n": 1}) for _ in range(2)]
    for w in writers:
        w.__enter__()
    for n, w in enumerate(writers):
        for split in cache_mod.SPLIT_NAMES:
            s = w.split(split, 1, 3, 5, 2)
            s.add(np.array([n, 4], np.int32), np.array([1, 1, 0]), 1, 0, events=2, denoised=0, outside=0,
                  duplicates=0, capped=0, peak=1)
            s.close()
        assert not path.exists()  # nothing under the final name until a writer is done
        w.finish(capacity=1)
    writers[0].__exit__(None, None, None)
    writers[1].__exit__(None, None, None)
    entry = cache_mod.read_entry(path, "k")
    assert list(entry.splits["train"].ids) == [1, 4]  # the last rename wins, whole
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_failed_build_leaves_no_files(tmp_path):
    path = tmp_path / "y-entry.h5"
    with pytest.raises(RuntimeError):
        with cache_mod.EntryWriter(path, "k", {}) as w:
            w.split("train", 2, 3, 5, 2).close()  # 0 of 2 samples: refused
    assert list(tmp_path.iterdir()) == []


_BUILDER = textwrap.dedent("""
    import sys
    from snn_runner.config import DataConfig
    from snn_runner.data import prepare
    cfg = DataConfig(dataset="shd", data_dir=sys.argv[1], cache_dir=sys.argv[2], time_steps=100, input_capacity=4)
    prepare(cfg, lambda line: print(line, flush=True))
""")


def test_two_processes_building_the_same_entry(tmp_path):
    make_shd(tmp_path / "data", samples={"train": 400, "test": 100}, spikes=400)
    args = [str(tmp_path / "data"), str(tmp_path / "cache")]
    procs = [subprocess.Popen([sys.executable, "-c", _BUILDER, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    built = [o[0] for o in outs if "cache: building" in o[0]]
    assert len(built) == 1, outs  # the lock made the second one wait and reuse
    other = next(o[0] for o in outs if "cache: building" not in o[0])
    assert "cache: using" in other or "waiting" in other
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len([f for f in files if f.endswith(".h5")]) == 1 and not [f for f in files if f.endswith(".tmp")]
    assert len(load_splits(DataConfig(dataset="shd", data_dir=args[0], cache_dir=args[1], time_steps=100,
                                      input_capacity=4), lambda _: None)["train"]) == 400


def test_unwritable_cache_folder_is_a_clear_error(nmnist, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(CacheError, match="SNN_RUNNER_CACHE_DIR"):
        prepare(cfg(nmnist, cache_dir=str(blocker / "cache")), lambda _: None)
