"""Event datasets read through tonic: formats, binning, ids, offline failures, the CLI group."""

import re
import subprocess
import sys
import textwrap
import time
import types

import numpy as np
import pytest
from click.testing import CliRunner

from snn_runner.config import DataConfig
from snn_runner.data import DatasetCorruptError, DatasetMissingError, load_dataset, load_splits, prepare
from snn_runner.data.cli_commands import data
from snn_runner.data.denoise import denoise
from snn_runner.data.events import PAD, bin_sample, events_to_sparse, expand
from snn_runner.data.preprocess import Preprocessing, SamplePreprocessor
from snn_runner.data.tonic_sources import SOURCES, check_files, offline_class, open_split, read_sample
from tests.reference import dense_frames
from tests.fixtures.event_data import (
    SAMPLE_NMNIST,
    SAMPLE_NMNIST_EVENTS,
    make_dvsgesture,
    make_nmnist,
    make_shd,
    random_camera_events,
    write_dvsgesture_npy,
    write_nmnist_bin,
    write_shd,
)

MAKERS = {"nmnist": make_nmnist, "shd": make_shd, "dvsgesture": make_dvsgesture}


def cfg_for(dataset, root, **kw):
    kw.setdefault("cache_dir", str(root / "cache"))
    return DataConfig(dataset=dataset, data_dir=str(root), **kw)


def quiet(_line):
    pass


# ---------------------------------------------------------------- binning by hand

def test_bin_sample_dedups_counts_and_drops_by_time():
    bins = np.array([0, 0, 1, 1, 1, 3, 4, -1])
    ids = np.array([7, 7, 2, 9, 2, 0, 5, 1])
    s = bin_sample(bins, ids, time_steps=4, channels=10)
    np.testing.assert_array_equal(s.count, [1, 2, 0, 1])
    np.testing.assert_array_equal(s.ids, [7, 2, 9, 0])  # bin-major, ascending inside a bin
    assert (s.outside, s.duplicates, s.capped, s.peak) == (2, 2, 0, 2)


def test_bin_sample_cap_is_seeded_uniform_and_counted():
    bins = np.zeros(8, int)
    ids = np.arange(8)[::-1]
    a = bin_sample(bins, ids, 2, 8, capacity=3, rng=np.random.default_rng(5))
    b = bin_sample(bins, ids, 2, 8, capacity=3, rng=np.random.default_rng(5))
    assert a.capped == 5 and a.peak == 8 and list(a.count) == [3, 0]
    np.testing.assert_array_equal(a.ids, b.ids)
    assert list(a.ids) == sorted(set(a.ids.tolist())) and set(a.ids) <= set(range(8))
    # every id survives for some seed: the subset is not biased to one end
    kept = set()
    for seed in range(40):
        kept |= set(bin_sample(bins, ids, 2, 8, 3, np.random.default_rng(seed)).ids.tolist())
    assert kept == set(range(8))


def test_bin_sample_gives_the_same_result_for_small_and_huge_id_spaces():
    # 10 channels take the flag-array path, 5 million channels the np.unique path
    rng = np.random.default_rng(2)
    bins, ids = rng.integers(-1, 7, 300), rng.integers(0, 10, 300)
    small = bin_sample(bins, ids, 6, 10, capacity=4, rng=np.random.default_rng(9))
    huge = bin_sample(bins, ids, 6, 5_000_000, capacity=4, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(small.ids, huge.ids)
    np.testing.assert_array_equal(small.count, huge.count)
    assert (small.outside, small.duplicates, small.capped, small.peak) == \
        (huge.outside, huge.duplicates, huge.capped, huge.peak)
    assert small.capped > 0  # the cap was exercised on both paths
    assert small.duplicates + small.outside + int(small.count.sum()) + small.capped == 300  # every event accounted


def test_bin_sample_rejects_ids_outside_the_channels():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        bin_sample(np.array([0]), np.array([4]), 2, 4)


def test_expand_pads_ragged_ids():
    count = np.array([[2, 0], [1, 3]])
    ids = expand(np.array([4, 6, 1, 0, 2, 3]), count, capacity=3)
    np.testing.assert_array_equal(ids, [[[4, 6, PAD], [PAD] * 3], [[1, PAD, PAD], [0, 2, 3]]])
    with pytest.raises(ValueError, match="capacity"):
        expand(np.array([4, 6, 1, 0, 2, 3]), count, capacity=2)


def test_dense_frame_is_the_scatter_of_the_ids_and_matches_the_dense_model():
    rng = np.random.default_rng(3)
    samples = [(rng.integers(0, 6, 40), rng.integers(0, 11, 40)) for _ in range(4)]
    ev = events_to_sparse(samples, np.zeros(4), time_steps=5, channels=11, classes=2, capacity=0)
    frames = dense_frames(ev.ids, ev.count, 11)
    expected = np.zeros((4, 5, 11), np.uint8)
    for n, (b, c) in enumerate(samples):
        inside = b < 5
        expected[n, b[inside], c[inside]] = 1  # scatter of the raw events: de-dup is implicit
    np.testing.assert_array_equal(frames, expected)
    from snn_runner.sparse.spikes import frames_from_sparse

    np.testing.assert_array_equal(frames_from_sparse(ev.ids, ev.count, 11).numpy(), expected.astype(np.float32))


# ---------------------------------------------------------------- formats through tonic

def test_nmnist_sample_recording_goes_through_the_pipeline(tmp_path, offline):
    if not SAMPLE_NMNIST.exists():
        print(f"skipped: real N-MNIST recording not found at {SAMPLE_NMNIST}")
        pytest.skip(f"real N-MNIST recording not found at {SAMPLE_NMNIST}")
    fx = make_nmnist(tmp_path, per_class={"train": 1, "test": 1}, events=50)
    spec = SOURCES["nmnist"]
    ds = open_split(spec, tmp_path, "train")
    index = ds.data.index(str(tmp_path / "NMNIST" / "Train" / "3" / "00000.bin"))
    events, label = read_sample(spec, ds, index)
    assert label == 3 and len(events) == SAMPLE_NMNIST_EVENTS
    assert events["x"].min() >= 0 and events["x"].max() == 33 and events["y"].max() == 33
    assert set(np.unique(events["p"])) == {0, 1} and np.all(np.diff(events["t"]) >= 0)
    assert events["t"].max() < 320_000  # one N-MNIST recording: three saccades, ~300 ms

    # All of the recording fits 32 bins of 10 ms; K_in 0 keeps every distinct (bin, pixel, polarity).
    sets = load_splits(cfg_for("nmnist", tmp_path, time_steps=32, dt_ms=10.0), quiet)
    train = sets["train"]
    row = index  # EventSet rows follow tonic's sorted file order
    bins = events["t"] // 10_000
    ids = (events["p"] * 34 + events["y"]) * 34 + events["x"]
    assert train.count[row].sum() == len(np.unique(bins * 2312 + ids))
    for t in (0, 10, 31):
        got = train.ids[row, t, :train.count[row, t]]
        np.testing.assert_array_equal(got, np.unique(ids[bins == t]))
    assert train.channels == 2312 and train.report["events"] == sum(fx.events["train"])


def test_nmnist_binning_and_flattening_by_hand(tmp_path, offline):
    # (x, y, t us, p); id = (p * 34 + y) * 34 + x
    rec = [(1, 0, 100, 0), (1, 0, 900, 0), (0, 2, 1500, 1), (33, 33, 2999, 1), (5, 1, 3000, 0), (5, 1, 4000, 0)]
    x, y, t, p = (np.array(c) for c in zip(*rec))
    write_nmnist_bin(tmp_path / "NMNIST" / "Train" / "7" / "00000.bin", x, y, t, p)
    write_nmnist_bin(tmp_path / "NMNIST" / "Test" / "0" / "00000.bin", [2, 3], [0, 0], [10, 20], [0, 0])
    sets = load_splits(cfg_for("nmnist", tmp_path, time_steps=4), quiet)
    train, test = sets["train"], sets["test"]
    assert train.capacity == test.capacity == 2  # K_in 0: the busiest bin of all splits (test bin 0)
    assert list(train.labels) == [7] and list(test.labels) == [0]
    np.testing.assert_array_equal(train.count[0], [1, 1, 1, 1])
    np.testing.assert_array_equal(train.ids[0], [[1, PAD], [1224, PAD], [2311, PAD], [39, PAD]])
    np.testing.assert_array_equal(test.ids[0, 0], [2, 3])
    r = train.report
    assert (r["events"], r["outside_window"], r["duplicates_merged"], r["dropped_by_cap"]) == (6, 1, 1, 0)
    assert r["events_per_bin_max"] == 1 and r["events_per_bin_mean"] == 1.0


def test_shd_binning_by_hand_and_channel_downsampling(tmp_path, offline):
    # float16-exact seconds: 2**-10 s = 976.56 us (bin 0), 2**-9 s = 1953.1 us (bin 1)
    times = [0.0, 2**-10, 2**-9, 2**-9, 3 * 2**-10, 0.5]
    units = [3, 5, 699, 699, 0, 1]
    write_shd(tmp_path / "SHD" / "shd_train.h5", [times], [units], [13])
    write_shd(tmp_path / "SHD" / "shd_test.h5", [[0.0]], [[42]], [19])
    sets = load_splits(cfg_for("shd", tmp_path, time_steps=4), quiet)
    train = sets["train"]
    assert train.channels == 700 and train.classes == 20 and list(train.labels) == [13]
    np.testing.assert_array_equal(train.count[0], [2, 1, 1, 0])
    np.testing.assert_array_equal(train.ids[0, :3, :2], [[3, 5], [699, PAD], [0, PAD]])
    assert train.report["duplicates_merged"] == 1 and train.report["outside_window"] == 1
    # downsample 0.5 merges channel pairs: 700 -> floor(699 * 0.5) + 1 = 350
    half = load_splits(cfg_for("shd", tmp_path, time_steps=4, downsample=0.5), quiet)["train"]
    assert half.channels == 350
    np.testing.assert_array_equal(half.ids[0, :3, :2], [[1, 2], [349, PAD], [0, PAD]])


def test_dvsgesture_clock_starts_at_the_first_event(tmp_path, offline):
    # x, y, p, t ms; id = (p * 128 + y) * 128 + x
    write_dvsgesture_npy(tmp_path / "DVSGesture/ibmGestureTrain/user01_led/4.npy",
                         [0, 127, 3, 3], [0, 127, 2, 2], [0, 1, 0, 0], [5005, 5005, 5006, 5008])
    write_dvsgesture_npy(tmp_path / "DVSGesture/ibmGestureTest/user02_natural/10.npy", [1], [1], [1], [0])
    sets = load_splits(cfg_for("dvsgesture", tmp_path, time_steps=3), quiet)
    train, test = sets["train"], sets["test"]
    assert train.channels == 32768 and list(train.labels) == [4] and list(test.labels) == [10]
    np.testing.assert_array_equal(train.count[0], [2, 1, 0])
    np.testing.assert_array_equal(train.ids[0, 0], [0, 32767])
    np.testing.assert_array_equal(train.ids[0, 1, :1], [2 * 128 + 3])
    assert train.report["outside_window"] == 1
    assert test.ids[0, 0, 0] == (1 * 128 + 1) * 128 + 1


def test_camera_downsampling_matches_tonic_transform(tmp_path, offline):
    import tonic

    fx = make_nmnist(tmp_path, per_class={"train": 1, "test": 1}, events=300, include_sample=False)
    ev = load_splits(cfg_for("nmnist", tmp_path, time_steps=300, downsample=0.5), quiet)["train"]
    assert ev.channels == 2 * 17 * 17
    raw = tonic.io.read_mnist_file(str(fx.files["train"][4]), dtype=tonic.datasets.NMNIST.dtype)
    small = tonic.transforms.Downsample(spatial_factor=0.5)(raw)
    ids = (small["p"] * 17 + small["y"]) * 17 + small["x"]
    bins = small["t"] // 1000
    expected = np.zeros((300, ev.channels), np.uint8)
    expected[bins, ids] = 1
    np.testing.assert_array_equal(dense_frames(ev.ids[4:5], ev.count[4:5], ev.channels)[0], expected)


def test_denoise_equals_tonic_denoise(tmp_path):
    import tonic

    rng = np.random.default_rng(0)
    recordings = []
    if SAMPLE_NMNIST.exists():
        recordings.append(tonic.io.read_mnist_file(str(SAMPLE_NMNIST), dtype=tonic.datasets.NMNIST.dtype))
    for n in (1, 2, 30, 500):
        e = np.zeros(n, tonic.datasets.DVSGesture.dtype)
        x, y, t, p = random_camera_events(rng, n, 6, 5, 20_000)
        e["x"], e["y"], e["t"], e["p"] = x, y, t, p
        recordings.append(e)
        recordings.append(e[rng.permutation(n)])  # tonic's filter follows array order, not time
    for events in recordings:
        for filter_time in (1_000, 5_000, 20_000):
            np.testing.assert_array_equal(denoise(events, filter_time),
                                          tonic.transforms.Denoise(filter_time=filter_time)(events))


def test_denoise_in_the_pipeline_counts_what_it_removed(tmp_path, offline):
    import tonic

    fx = make_nmnist(tmp_path, per_class={"train": 1, "test": 1}, events=300, include_sample=False)
    ev = load_splits(cfg_for("nmnist", tmp_path, time_steps=50, denoise_ms=2.0), quiet)["train"]
    removed = sum(len(r) - len(tonic.transforms.Denoise(filter_time=2000)(r)) for r in
                  (tonic.io.read_mnist_file(str(f), dtype=tonic.datasets.NMNIST.dtype) for f in fx.files["train"]))
    assert ev.report["removed_by_denoise"] == removed > 0
    with pytest.raises(Exception, match="camera datasets"):
        SamplePreprocessor(SOURCES["shd"], Preprocessing(10, denoise_ms=1.0))


def test_input_capacity_caps_each_bin_reproducibly(tmp_path, offline):
    # six distinct pixels in bin 0, K_in 4
    write_nmnist_bin(tmp_path / "NMNIST/Train/1/00000.bin", np.arange(6), np.zeros(6), np.arange(6) * 10,
                     np.zeros(6))
    write_nmnist_bin(tmp_path / "NMNIST/Test/2/00000.bin", [0], [0], [0], [0])
    a = load_splits(cfg_for("nmnist", tmp_path, time_steps=2, input_capacity=4, seed=1), quiet)["train"]
    assert a.capacity == 4 and a.count[0, 0] == 4 and a.dropped_events == 2
    assert set(a.ids[0, 0]) <= set(range(6)) and len(set(a.ids[0, 0])) == 4
    assert a.report["dropped_by_cap"] == 2 and a.report["dropped_fraction"] == pytest.approx(2 / 6)
    b = load_splits(cfg_for("nmnist", tmp_path, time_steps=2, input_capacity=4, seed=1,
                            cache_dir=str(tmp_path / "other")), quiet)["train"]
    np.testing.assert_array_equal(a.ids, b.ids)
    kept = {tuple(load_splits(cfg_for("nmnist", tmp_path, time_steps=2, input_capacity=4, seed=s), quiet)
                  ["train"].ids[0, 0]) for s in range(8)}
    assert len(kept) > 1  # the seed decides which ids go


def test_max_samples_and_validation_are_seeded_subsets(tmp_path, offline):
    make_nmnist(tmp_path, per_class={"train": 3, "test": 2}, events=40, include_sample=False)
    cfg = cfg_for("nmnist", tmp_path, time_steps=20, max_samples=12, validation_fraction=0.25, seed=4)
    a, b = load_splits(cfg, quiet), load_splits(cfg, quiet)
    assert (len(a["train"]), len(a["validation"]), len(a["test"])) == (9, 3, 12)
    for name in a:
        np.testing.assert_array_equal(a[name].ids, b[name].ids)
        np.testing.assert_array_equal(a[name].labels, b[name].labels)
    everything = load_splits(cfg_for("nmnist", tmp_path, time_steps=20, max_samples=12, seed=4), quiet)["train"]
    joined = np.concatenate([a["train"].ids, a["validation"].ids])
    assert sorted(map(bytes, joined)) == sorted(map(bytes, everything.ids))  # a partition of train
    train, test = load_dataset(cfg, quiet)
    np.testing.assert_array_equal(train.ids, a["train"].ids)
    assert train.capacity == test.capacity


def test_randman_gets_reports_and_a_validation_split():
    cfg = DataConfig(channels=20, classes=3, time_steps=15, train_samples_per_class=8, test_samples_per_class=4,
                     validation_fraction=0.25)
    sets = load_splits(cfg)
    assert (len(sets["train"]), len(sets["validation"]), len(sets["test"])) == (18, 6, 12)
    assert sets["train"].report["samples"] == 18 and sets["test"].report["dropped_fraction"] == 0.0


@pytest.mark.parametrize("dataset", sorted(MAKERS))
def test_fixture_layouts_satisfy_stock_tonic(tmp_path, offline, dataset):
    """Unmodified tonic classes accept the fixtures once padded to tonic's own file counts."""
    import tonic

    if dataset == "nmnist":
        fx = make_nmnist(tmp_path, archives=True, per_class={"train": 1000, "test": 1}, events=2,
                         include_sample=False)
    elif dataset == "dvsgesture":
        fx = make_dvsgesture(tmp_path, archives=True, users={"train": list(range(1, 11)), "test": [11]},
                             labels=range(10), events=2)
    else:
        fx = make_shd(tmp_path, archives=True)
    spec = SOURCES[dataset]
    stock = getattr(tonic.datasets, spec.tonic_name)(str(tmp_path), train=True)
    ours = open_split(spec, tmp_path, "train")
    assert len(stock) == len(ours) == len(fx.labels["train"])
    for i in (0, len(ours) - 1):
        mine, label = read_sample(spec, ours, i)
        j = stock.data.index(ours.data[i]) if isinstance(stock.data, list) and stock.data else i
        theirs, their_label = stock[j]
        np.testing.assert_array_equal(mine, theirs)
        assert label == their_label == fx.labels["train"][i]


# ---------------------------------------------------------------- offline failures

@pytest.mark.parametrize("dataset", sorted(MAKERS))
def test_missing_dataset_names_folder_files_and_remedy(tmp_path, offline, dataset):
    spec = SOURCES[dataset]
    with pytest.raises(DatasetMissingError) as err:
        prepare(cfg_for(dataset, tmp_path), quiet)
    text = str(err.value)
    assert str(tmp_path) in text and spec.tonic_name in text
    assert spec.split_paths["train"] in text and spec.split_paths["test"] in text
    assert "http" in text and "SNN_RUNNER_DATA_DIR" in text and "-B /path/to/data:/data" in text
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("dataset", sorted(MAKERS))
def test_one_missing_split_is_named(tmp_path, offline, dataset):
    fx = MAKERS[dataset](tmp_path)
    test_path = tmp_path / SOURCES[dataset].tonic_name / SOURCES[dataset].split_paths["test"]
    for f in fx.files["test"]:
        f.unlink()
    with pytest.raises(DatasetMissingError, match="Missing:\n  " + re.escape(str(test_path))):
        prepare(cfg_for(dataset, tmp_path), quiet)


def test_no_data_folder_configured(monkeypatch, offline):
    with pytest.raises(DatasetMissingError, match="SNN_RUNNER_DATA_DIR"):
        prepare(DataConfig(dataset="shd"), quiet)


def test_environment_folders_are_used(tmp_path, monkeypatch, offline):
    make_shd(tmp_path / "d")
    monkeypatch.setenv("SNN_RUNNER_DATA_DIR", str(tmp_path / "d"))
    result = prepare(DataConfig(dataset="shd", time_steps=5), quiet)
    assert result.path.parent == tmp_path / "d" / ".snn-cache"
    monkeypatch.setenv("SNN_RUNNER_CACHE_DIR", str(tmp_path / "c"))
    assert prepare(DataConfig(dataset="shd", time_steps=5), quiet).path.parent == tmp_path / "c"


def test_tonic_download_is_replaced_by_an_error():
    cls = offline_class(SOURCES["nmnist"])
    assert cls.__name__ == "NMNIST"  # tonic derives the folder from the class name
    with pytest.raises(DatasetMissingError, match="never downloads"):
        cls.download(types.SimpleNamespace(filename="train.zip", location_on_system="/nowhere/NMNIST"))


def _corrupt(dataset, root):
    fx = MAKERS[dataset](root)
    if dataset == "nmnist":
        bad = fx.files["train"][5]
        bad.write_bytes(bad.read_bytes()[:-2])  # cut inside the last event
    elif dataset == "shd":
        bad = fx.files["train"][0]
        bad.write_bytes(bad.read_bytes()[:1000])
    else:
        bad = fx.files["test"][2]
        bad.write_bytes(b"not a numpy file at all")
    return bad


@pytest.mark.parametrize("dataset", sorted(MAKERS))
def test_corrupt_file_is_named(tmp_path, offline, dataset):
    bad = _corrupt(dataset, tmp_path)
    with pytest.raises(DatasetCorruptError, match=re.escape(str(bad))):
        prepare(cfg_for(dataset, tmp_path, time_steps=10), quiet)
    assert not list((tmp_path / "cache").glob("*.h5"))  # no entry from a failed build
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_out_of_sensor_coordinates_are_corrupt(tmp_path, offline):
    make_nmnist(tmp_path, per_class={"train": 1, "test": 1}, include_sample=False)
    bad = write_nmnist_bin(tmp_path / "NMNIST/Train/4/00000.bin", [40], [1], [5], [0])
    with pytest.raises(DatasetCorruptError, match=re.escape(str(bad)) + r".*x spans \[40, 40\]"):
        prepare(cfg_for("nmnist", tmp_path), quiet)


def test_check_files_needs_no_tonic_import_and_accepts_partial_copies(tmp_path):
    make_nmnist(tmp_path, per_class={"train": 1, "test": 1}, include_sample=False)
    lines = []
    paths = check_files(SOURCES["nmnist"], tmp_path, lines.append)
    assert paths["train"] == tmp_path / "NMNIST" / "Train"
    assert any("holds 10 recordings" in line and "60,000" in line for line in lines)


# ---------------------------------------------------------------- CLI group

def test_cli_prepare_and_bench_loader(tmp_path, monkeypatch):
    monkeypatch.delenv("SNN_RUNNER_CACHE_DIR", raising=False)
    make_shd(tmp_path)
    args = ["--dataset", "shd", "--data-dir", str(tmp_path), "--time-steps", "20", "--input-capacity", "4"]
    first = CliRunner().invoke(data, ["prepare", "--progress-every", "5", *args])
    assert first.exit_code == 0, first.output
    assert "prepare shd train: 5/12 samples" in first.output and "(built," in first.output
    assert "shd train: 12 samples" in first.output and "K_in 4" in first.output
    again = CliRunner().invoke(data, ["prepare", *args])
    assert again.exit_code == 0 and "(already cached," in again.output
    bench = CliRunner().invoke(data, ["bench-loader", "--repeats", "2", *args])
    assert bench.exit_code == 0, bench.output
    assert "samples/s" in bench.output and "load from cache" in bench.output
    assert [p.name for p in (tmp_path / ".snn-cache").glob(".bench-*")] == []


def test_cli_errors_exit_1_with_the_message(tmp_path):
    result = CliRunner().invoke(data, ["prepare", "--dataset", "nmnist", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "Missing:" in result.output and str(tmp_path) in result.output
    bad = CliRunner().invoke(data, ["prepare", "--dataset", "nmnist", "--downsample", "2"])
    assert bad.exit_code == 2 and "--downsample" in bad.output
    shd = make_shd(tmp_path)
    denoise_shd = CliRunner().invoke(data, ["prepare", "--dataset", "shd", "--data-dir", str(shd.root),
                                            "--denoise-ms", "1"])
    assert denoise_shd.exit_code == 1 and "camera datasets" in denoise_shd.output


_GUARDED = textwrap.dedent("""
    import socket, sys, urllib.request
    def refuse(*a, **k):
        print("NETWORK-CALL", file=sys.stderr, flush=True)
        raise OSError("network disabled")
    socket.socket.connect = socket.create_connection = urllib.request.urlopen = refuse
    from snn_runner.data.cli_commands import data
    data(prog_name="snn-runner data")
""")


@pytest.mark.parametrize("case", ["missing", "corrupt"])
def test_cli_subprocess_fails_fast_without_network(tmp_path, case):
    if case == "corrupt":
        _corrupt("nmnist", tmp_path)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", _GUARDED, "prepare", "--dataset", "nmnist", "--data-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=60, env=env)
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stderr
    assert "NETWORK-CALL" not in result.stderr
    assert elapsed < 20
    expected = "Missing:" if case == "missing" else "not a whole number of 5-byte events"
    assert expected in result.stderr and str(tmp_path) in result.stderr
