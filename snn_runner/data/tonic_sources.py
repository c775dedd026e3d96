"""Reading N-MNIST, SHD and DVS Gesture through tonic, without ever downloading.

tonic 1.7.0's dataset classes have no ``download=False``: their constructor
calls ``_check_exists()`` and, when that says no, ``download()``, which on a
cluster node without internet fails late or hangs. Their checks are also
heuristics that do not fit a user-provided folder:

- ``NMNIST`` wants ``NMNIST/train.zip`` (or ``test.zip``) *and* at least
  10,000 ``*.bin`` files under ``Train/`` (``Test/``);
- ``SHD`` wants ``SHD/shd_train.h5.zip`` (``shd_test.h5.zip``) and *any*
  ``*.h5`` file in ``SHD/`` -- the test file alone would pass the train check;
- ``DVSGesture`` wants ``DVSGesture/ibmGestureTrain.tar.gz`` (``...Test``)
  and at least 100 ``*.npy`` files under ``ibmGestureTrain/``.

So the runner reads through subclasses of tonic's own classes (same names, so
tonic looks in the same folder) in which ``download()`` raises
``DatasetMissingError`` and ``_check_exists()`` defers to ``check_files``,
which runs first and checks exactly what is read: the extracted recordings.
The archives are not needed (nothing is extracted here); keeping them next to
the extracted data makes the folder valid for stock tonic as well. Everything
else -- listing the recordings, labels from folder and file names, decoding
the files -- is tonic's code. The tests confirm that the unmodified tonic
classes accept the generated fixture layouts when padded to tonic's counts.

Layouts (``<root>`` is the data folder):

- nmnist: ``<root>/NMNIST/Train/<digit>/*.bin`` and ``<root>/NMNIST/Test/<digit>/*.bin``
- shd: ``<root>/SHD/shd_train.h5`` and ``<root>/SHD/shd_test.h5``
- dvsgesture: ``<root>/DVSGesture/ibmGestureTrain/user<NN>_<lighting>/<label>.npy``
  and the same under ``ibmGestureTest/``

A partial copy (fewer recordings than the full split) is accepted with a
logged note, so quick experiments can use a subset of the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snn_runner.compat import h5_unlocked
from snn_runner.data.errors import DatasetCorruptError, DatasetMissingError

SPLITS = ("train", "test")
# Python-level failures of tonic's readers on malformed files; anything else is a bug worth a traceback.
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, IndexError, TypeError)


@dataclass(frozen=True)
class SourceSpec:
    """What one dataset looks like on disk and how its events map to inputs."""

    name: str  # config name
    tonic_name: str  # tonic class, which is also the folder under the data root
    title: str
    sensor: tuple[int, int, int]  # (width, height, polarities) as tonic states it
    classes: int
    kind: str  # "camera": (x, y, p) pixels; "channels": x is the channel, no y/p
    clock_starts_at_zero: bool  # False: bins start at the first event of each sample
    split_paths: dict[str, str]  # relative to <root>/<tonic_name>
    recordings: str | None  # glob of one recording under a split folder; None: the split is one file
    full_samples: dict[str, int]
    archives: dict[str, str]  # what tonic downloads, for the instructions
    obtain: str


SOURCES = {
    "nmnist": SourceSpec(
        name="nmnist", tonic_name="NMNIST", title="N-MNIST", sensor=(34, 34, 2), classes=10, kind="camera",
        clock_starts_at_zero=True,
        split_paths={"train": "Train", "test": "Test"}, recordings="[0-9]/*.bin",
        full_samples={"train": 60000, "test": 10000},
        archives={"train": "train.zip", "test": "test.zip"},
        obtain=("download train.zip and test.zip from https://data.mendeley.com/datasets/468j46mzdv/1 "
                "(Orchard et al. 2015) and unzip both inside NMNIST/ (they hold Train/ and Test/)"),
    ),
    "shd": SourceSpec(
        name="shd", tonic_name="SHD", title="Spiking Heidelberg Digits", sensor=(700, 1, 1), classes=20,
        kind="channels", clock_starts_at_zero=True,
        split_paths={"train": "shd_train.h5", "test": "shd_test.h5"}, recordings=None,
        full_samples={"train": 8156, "test": 2264},
        archives={"train": "shd_train.h5.zip", "test": "shd_test.h5.zip"},
        obtain=("download shd_train.h5.zip and shd_test.h5.zip (what tonic fetches; the .h5.gz files there "
                "hold the same data) from https://zenkelab.org/datasets/ (Cramer et al. 2020) and unpack "
                "shd_train.h5 and shd_test.h5 into SHD/"),
    ),
    "dvsgesture": SourceSpec(
        name="dvsgesture", tonic_name="DVSGesture", title="IBM DVS Gesture (tonic's preprocessed .npy version)",
        sensor=(128, 128, 2), classes=11, kind="camera",
        # Samples are cut out of longer recordings, so their clock need not start at 0.
        clock_starts_at_zero=False,
        split_paths={"train": "ibmGestureTrain", "test": "ibmGestureTest"}, recordings="user*_*/*.npy",
        full_samples={"train": 1077, "test": 264},
        archives={"train": "ibmGestureTrain.tar.gz", "test": "ibmGestureTest.tar.gz"},
        obtain=("download ibmGestureTrain.tar.gz (https://figshare.com/ndownloader/files/38022171) and "
                "ibmGestureTest.tar.gz (https://figshare.com/ndownloader/files/38020584) and untar both "
                "inside DVSGesture/; the original IBM release (.aedat files) is a different format"),
    ),
}


def dataset_folder(spec: SourceSpec, root: Path) -> Path:
    return Path(root) / spec.tonic_name


def check_files(spec: SourceSpec, root: Path, log=None) -> dict[str, Path]:
    """The path of each split, after making sure its recordings are on disk.

    Raises ``DatasetMissingError`` naming every missing piece; never touches tonic.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetMissingError(_missing_message(spec, root, [f"the data folder {root} itself"]))
    folder = dataset_folder(spec, root)
    paths, missing = {}, []
    for split in SPLITS:
        path = folder / spec.split_paths[split]
        if spec.recordings is None:
            if not path.is_file():
                missing.append(str(path))
        elif not path.is_dir():
            missing.append(f"{path}/ (folder)")
        else:
            found = sum(1 for _ in path.glob(spec.recordings))
            if found == 0:
                missing.append(f"{path}/{spec.recordings} (the folder holds no recordings)")
            elif found < spec.full_samples[split] and log is not None:
                log(f"note: {path} holds {found} recordings; the full {spec.title} {split} split has "
                    f"{spec.full_samples[split]:,}")
        paths[split] = path
    if missing:
        raise DatasetMissingError(_missing_message(spec, root, missing))
    return paths


def _missing_message(spec: SourceSpec, root: Path, missing: list[str]) -> str:
    folder = dataset_folder(spec, root)
    layout = "\n".join(f"  {folder / spec.split_paths[s]}{'/' + spec.recordings if spec.recordings else ''}"
                       for s in SPLITS)
    return (
        f"{spec.title} ({spec.name}) not found in the data folder {root}.\n"
        f"Missing:\n" + "\n".join(f"  {m}" for m in missing) + "\n"
        f"Expected layout:\n{layout}\n"
        f"To get it: {spec.obtain}. On a machine with internet, tonic can fetch and unpack it: "
        f"python -c \"import tonic; [tonic.datasets.{spec.tonic_name}('DATA', train=t) for t in (True, False)]\" "
        f"(then copy DATA/{spec.tonic_name} into the data folder).\n"
        f"Bind the data folder into the container and point the runner at it, e.g. "
        f"apptainer exec -B /path/to/data:/data --env SNN_RUNNER_DATA_DIR=/data IMAGE ... "
        f"(or set data.data_dir / --data-dir). Nothing is downloaded by the runner. See docs/datasets.md."
    )


def fingerprint(spec: SourceSpec, paths: dict[str, Path]) -> list:
    """Identity of the source files: per split, the number of files, their total size and a
    SHA-256 over every file's (relative path, size, mtime), so a recording rewritten in place,
    added or removed gets a new cache entry.

    One ``stat`` per file (N-MNIST: 70,000), no reading; hidden files are skipped.
    """
    import hashlib

    out = []
    for split in SPLITS:
        path = Path(paths[split])
        digest, files, size = hashlib.sha256(), 0, 0
        for rel, st in _walk_files(path):
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            files += 1
            size += st.st_size
        out.append([split, path.name, files, size, digest.hexdigest()])
    return out


def _walk_files(path: Path):
    """(path relative to ``path``, stat) of every regular file under ``path`` (or of ``path`` itself), sorted."""
    if path.is_file():
        yield path.name, path.stat()
        return
    stack = [(path, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    subdirs.append((Path(entry.path), prefix + entry.name + "/"))
                elif entry.is_file(follow_symlinks=True):
                    yield prefix + entry.name, entry.stat(follow_symlinks=True)
            except OSError:
                continue
        stack.extend(reversed(subdirs))


def _offline(base: type) -> type:
    def download(self):
        raise DatasetMissingError(
            f"tonic wanted to download {getattr(self, 'filename', '?')} into {self.location_on_system}; "
            f"snn-runner never downloads. Place the extracted files there (see docs/datasets.md).")

    def _check_exists(self):
        # open_split() ran check_files() for this split already.
        return True

    # Same class name: tonic derives the folder under the root from it.
    return type(base.__name__, (base,), {"download": download, "_check_exists": _check_exists,
                                         "__module__": __name__, "__doc__": base.__doc__})


_OFFLINE_CLASSES: dict[str, type] = {}


def offline_class(spec: SourceSpec) -> type:
    """tonic's dataset class for ``spec`` with downloading replaced by an error."""
    if spec.name not in _OFFLINE_CLASSES:
        import tonic.datasets

        _OFFLINE_CLASSES[spec.name] = _offline(getattr(tonic.datasets, spec.tonic_name))
    return _OFFLINE_CLASSES[spec.name]


_REMEDY = "replace it with an intact copy of the original file (see docs/datasets.md)"
# Longest plausible span of one recording's spike times: they last seconds (N-MNIST 0.3 s, SHD ~1.4 s,
# DVS Gesture ~6 s); anything beyond an hour is a damaged value (NaN, inf, a flipped exponent bit).
MAX_SPAN_US = 3_600 * 1_000_000
# The datasets of an SHD file, its HDF5 layout: (key, what it must hold).
SHD_DATASETS = (("spikes/times", "float"), ("spikes/units", "integer"), ("labels", "integer"),
                ("extra/keys", "any"), ("extra/speaker", "any"))


def corrupt(spec: SourceSpec, where, problem: str, key: str | None = None) -> DatasetCorruptError:
    """The one-line error for a malformed file: the file, the dataset (and HDF5 key), the problem, the fix."""
    inside = f", HDF5 dataset '{key}'" if key else ""
    return DatasetCorruptError(f"corrupt {spec.title} file {where} (dataset {spec.name}{inside}): {problem}; "
                               f"{_REMEDY}")


def check_shd_file(spec: SourceSpec, path: Path) -> int:
    """Check the structure of one SHD file before tonic reads it; returns its sample count.

    Missing or retyped datasets, mismatched lengths and labels outside the
    classes raise ``DatasetCorruptError`` naming the file and the HDF5 key.
    """
    import h5py

    try:
        f = h5py.File(path, "r", **h5_unlocked())
    except (OSError, ValueError) as err:
        raise corrupt(spec, path, f"not a readable HDF5 file ({_short(err)})") from err
    with f:
        lengths = {}
        for key, kind in SHD_DATASETS:
            try:
                node = f.get(key)
            except (OSError, ValueError, KeyError, RuntimeError) as err:
                raise corrupt(spec, path, f"cannot be read ({_short(err)})", key) from err
            if node is None:
                raise corrupt(spec, path, "missing (an SHD file holds " +
                              ", ".join(k for k, _ in SHD_DATASETS) + ")", key)
            if not isinstance(node, h5py.Dataset):
                raise corrupt(spec, path, "is a group, not a dataset", key)
            if node.ndim != 1:
                raise corrupt(spec, path, f"has shape {node.shape}, expected one entry per sample", key)
            if kind != "any":
                base = h5py.check_vlen_dtype(node.dtype) if key.startswith("spikes/") else node.dtype
                if base is None:
                    raise corrupt(spec, path, f"has dtype {node.dtype}, expected variable-length {kind} "
                                              f"arrays (one per sample)", key)
                wanted = "f" if kind == "float" else "iu"
                if np.dtype(base).kind not in wanted:
                    raise corrupt(spec, path, f"holds {np.dtype(base)} values, expected {kind}s", key)
            lengths[key] = node.shape[0]
        n = lengths["spikes/times"]
        for key in ("labels", "spikes/units"):
            if lengths[key] != n:
                raise corrupt(spec, path, f"{lengths[key]} entries, but 'spikes/times' has {n} (one per sample "
                                          f"in each)", key)
        try:
            labels = f["labels"][()]
        except (OSError, ValueError, RuntimeError) as err:
            raise corrupt(spec, path, f"cannot be read ({_short(err)})", "labels") from err
        if n and (labels.min() < 0 or labels.max() >= spec.classes):
            bad = int(np.flatnonzero((labels < 0) | (labels >= spec.classes))[0])
            raise corrupt(spec, path, f"label {int(labels[bad])} of sample {bad} outside [0, {spec.classes})",
                          "labels")
    return n


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def open_split(spec: SourceSpec, root: Path, split: str, log=None):
    """tonic's dataset object for one split, recordings in a stable (sorted) order."""
    paths = check_files(spec, root, log)
    if spec.name == "shd":
        check_shd_file(spec, paths[split])
    try:
        with np.errstate(all="ignore"):
            ds = offline_class(spec)(str(root), train=(split == "train"))
    except DatasetMissingError:
        raise
    except _READ_ERRORS + (RuntimeError,) as err:
        raise corrupt(spec, paths[split], f"tonic cannot open it: {type(err).__name__}: {_short(err)}") from err
    if isinstance(ds.data, list) and ds.data:
        # os.walk yields files in directory order, which differs between file
        # systems; the sample order must not, since the seeded subset and the
        # per-sample cap randomness are keyed by it.
        order = sorted(range(len(ds.data)), key=ds.data.__getitem__)
        for attr in ("data", "targets", "users", "lighting"):
            if isinstance(getattr(ds, attr, None), list):
                setattr(ds, attr, [getattr(ds, attr)[i] for i in order])
    return ds


def close_split(ds) -> None:
    """Close what ``read_sample`` opened for ``ds`` (the SHD file handle)."""
    handle = getattr(ds, "_snn_h5", None)
    if handle is not None:
        ds._snn_h5 = None
        try:
            handle.close()
        except Exception:  # noqa: BLE001 - closing a damaged file must not mask the real error
            pass


def sample_origin(spec: SourceSpec, ds, index: int) -> str:
    """Where sample ``index`` comes from, for error messages."""
    if spec.recordings is None:
        return f"{Path(ds.location_on_system) / ds.data_filename} (sample {index})"
    return str(ds.data[index])


def read_sample(spec: SourceSpec, ds, index: int) -> tuple[np.ndarray, int]:
    """Events (tonic's structured array) and label of one recording; malformed files raise.

    An empty recording is returned as it is (no events); the caller counts it.
    """
    where = sample_origin(spec, ds, index)
    try:
        if spec.name == "nmnist":
            # tonic's reader would silently misalign (or fail obscurely on) a cut-off file.
            size = os.path.getsize(where)
            if size % 5:
                raise corrupt(spec, where, f"{size} bytes is not a whole number of 5-byte events "
                                           f"(the file is cut inside an event)")
        with np.errstate(all="ignore"):  # NaN times cast to int: caught below, not as a warning
            events, label = ds[index]
    except DatasetCorruptError:
        raise
    except _READ_ERRORS + (RuntimeError,) as err:
        problem = f"{type(err).__name__}: {_short(err)}"
        key = None
        if spec.name == "shd":
            problem, key = _shd_problem(ds, index, problem)
        raise corrupt(spec, where, f"tonic cannot read it: {problem}", key) from err
    if getattr(events, "dtype", None) is None or events.dtype.names is None or events.ndim != 1:
        raise corrupt(spec, where, f"tonic returned {type(events).__name__} "
                                   f"{getattr(events, 'shape', '')}, not a list of events")
    try:
        label = int(label)
    except (TypeError, ValueError) as err:
        raise corrupt(spec, where, f"label {label!r} is not a class number") from err
    if not 0 <= label < spec.classes:
        raise corrupt(spec, where, f"label {label} outside [0, {spec.classes})",
                      "labels" if spec.name == "shd" else None)
    if spec.name == "shd":
        _check_shd_lengths(spec, ds, index, events, where)
    _check_coordinates(spec, events, where)
    _check_times(spec, events, where)
    return events, label


def _check_shd_lengths(spec: SourceSpec, ds, index: int, events: np.ndarray, where: str) -> None:
    """tonic broadcasts a sample's one unit over all its spike times; refuse unequal lengths instead."""
    import h5py

    handle = getattr(ds, "_snn_h5", None)
    if handle is None:
        try:  # default locking flags: the file is open in tonic too, and HDF5 wants them to match
            handle = h5py.File(Path(ds.location_on_system) / ds.data_filename, "r")
        except (OSError, ValueError) as err:
            raise corrupt(spec, where, f"not a readable HDF5 file ({_short(err)})") from err
        ds._snn_h5 = handle  # closed by close_split
    try:
        units = len(handle["spikes/units"][index])
    except _READ_ERRORS + (RuntimeError,) as err:
        raise corrupt(spec, where, f"cannot be read ({_short(err)})", "spikes/units") from err
    if units != len(events):
        raise corrupt(spec, where, f"{len(events)} spike times but {units} units for this sample", "spikes/units")


def _shd_problem(ds, index: int, problem: str) -> tuple[str, str | None]:
    """A plainer account of why tonic failed on one SHD sample (times and units of unequal length)."""
    import h5py

    try:
        with h5py.File(Path(ds.location_on_system) / ds.data_filename, "r", **h5_unlocked()) as f:
            n_t, n_u = len(f["spikes/times"][index]), len(f["spikes/units"][index])
    except Exception:  # the original error stands  # noqa: BLE001
        return problem, None
    if n_t != n_u:
        return f"{n_t} spike times but {n_u} units for this sample", "spikes/units"
    return problem, None


def _check_times(spec: SourceSpec, events: np.ndarray, where: str) -> None:
    if not len(events):
        return
    t = events["t"]
    lo, hi = float(t.min()), float(t.max())
    key = "spikes/times" if spec.name == "shd" else None
    if lo < 0:
        raise corrupt(spec, where, f"spike times reach {lo / 1e6:.6g} s: negative, NaN or infinite times", key)
    start = 0.0 if spec.clock_starts_at_zero else lo
    if hi - start > MAX_SPAN_US:
        raise corrupt(spec, where, f"spike times span {(hi - start) / 1e6:.6g} s, more than the "
                                   f"{MAX_SPAN_US // 1_000_000} s any recording lasts (damaged or infinite "
                                   f"values)", key)


def _check_coordinates(spec: SourceSpec, events: np.ndarray, where: str) -> None:
    if not len(events):
        return
    width, height, polarities = spec.sensor
    limits = [("x", width)] + ([("y", height), ("p", polarities)] if spec.kind == "camera" else [])
    for name, limit in limits:
        lo, hi = int(events[name].min()), int(events[name].max())
        if lo < 0 or hi >= limit:
            key = "spikes/units" if spec.name == "shd" else None
            raise corrupt(spec, where, f"{name} spans [{lo}, {hi}], outside the sensor's [0, {limit})", key)
