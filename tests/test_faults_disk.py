"""Full disks, killed writers and hand-edited checkpoints, on real file systems and real processes.

Each full-disk test mounts a real 3 MB tmpfs and fills it to many levels with
``fallocate``; a write either succeeds whole or raises ``DiskFullError`` with
the previous file byte-identical and no temporary left.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from snn_runner.data import cache as cache_mod
from snn_runner.files import DiskFullError, atomic_text, atomic_write, remove_dead_temporaries, stale_temporaries
from snn_runner.results.store import read_result, write_train_result
from snn_runner.runner import checkpoint
from tests.fault_helpers import PAGE, fill_to, leftovers, small_fs, unfill  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
ROWS = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5, "test_loss": 1.0, "test_accuracy": 0.4,
         "epoch_seconds": 0.1, "spike_rate": [0.1, 0.2], "dropped_spikes": [0, 1]} for e in (1, 2)]


def _result(path: Path, seed: int, spike_bytes: int) -> None:
    rng = np.random.default_rng(seed)
    spikes = {"layer0_ids": rng.integers(0, 60000, spike_bytes // 2, dtype=np.uint16)}  # incompressible
    write_train_result(path, {"seed": seed}, {"implementation": "dense"}, ROWS, [0.01] * 10, 0.5, "test", spikes)


def _levels(needed: int) -> list[int]:
    """Free-space levels from nothing to a little more than ``needed``, dense around the edge."""
    coarse = np.linspace(0, needed + 16 * PAGE, 14).astype(int).tolist()
    edge = [needed + k * PAGE for k in range(-3, 4)]
    return sorted({max(0, x) for x in coarse + edge})


def _sweep(folder: Path, target: Path, write, check_new, needed: int) -> dict:
    before = target.read_bytes()
    seen = {"cases": 0, "written": 0, "clear_errors": 0}
    for free in _levels(needed):
        fill_to(folder, free)
        seen["cases"] += 1
        try:
            write()
        except DiskFullError as err:
            message = str(err)
            assert "\n" not in message and message.startswith("no space left on ") and str(target) in message
            assert message.endswith("nothing was replaced")
            assert target.read_bytes() == before, f"previous file changed at {free} bytes free"
            seen["clear_errors"] += 1
        else:
            check_new()
            seen["written"] += 1
            before = target.read_bytes()
        gc.collect()  # any HDF5 object left over would be destroyed here
        assert leftovers(folder) == [], f"temporary left at {free} bytes free"
    unfill(folder)
    assert seen["clear_errors"] >= 3 and seen["written"] >= 1, seen
    print(f"\n{target.name}: {seen}")
    return seen


def test_result_writes_on_a_full_disk(small_fs):
    target = small_fs / "r.h5"
    _result(target, 0, 200_000)
    size = 600_000
    _sweep(small_fs, target, lambda: _result(target, 1, size),
           lambda: read_result(target)["config"] == {"seed": 1}, needed=size + 64 * 1024)
    assert read_result(target)["attrs"]["complete"]


def test_checkpoint_saves_on_a_full_disk_keep_the_old_state(small_fs):
    target = small_fs / ".r.h5.ckpt"
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(200, 300)), rng.normal(size=(300,))]
    slots = [np.int64(7), rng.normal(size=(200, 300)), rng.normal(size=(200, 300))]
    old = checkpoint.TrainState(epoch=2, batch=3, rng_state=np.random.default_rng(1).bit_generator.state,
                                rows=ROWS[:1], step_seconds=[0.1, 0.2])
    checkpoint.save(target, old, weights, slots, "{}")
    new = checkpoint.TrainState(epoch=3, rng_state=old.rng_state, rows=ROWS, step_seconds=[0.1] * 5)
    new_w = [w + 1 for w in weights]
    new_s = [slots[0] + 1] + [s * 2 for s in slots[1:]]

    def write():
        checkpoint.save(target, new, new_w, new_s, "{}")

    def check_new():
        state, w, s = checkpoint.load(target, "{}")
        assert state.epoch == 3 and all(np.array_equal(a, b) for a, b in zip(w + s, new_w + new_s))

    before = target.read_bytes()
    seen = _sweep(small_fs, target, write, check_new, needed=len(before) + 64 * 1024)
    assert seen["written"] >= 1


def test_cache_entries_on_a_full_disk(small_fs):
    target = small_fs / "shd-abc.h5"
    rng = np.random.default_rng(0)

    def build(key: str, samples: int):
        with cache_mod.EntryWriter(target, key, {"n": samples}) as w:
            for name in cache_mod.SPLIT_NAMES:
                split = w.split(name, samples, 10, 60000, 3)
                for i in range(samples):
                    ids = rng.integers(0, 60000, 2000, dtype=np.int32)
                    split.add(ids, np.full(10, 200), i % 3, i, **{s: 0 for s in cache_mod.STATS})
                split.close()
            w.finish(capacity=200)

    build("old", 20)
    _sweep(small_fs, target, lambda: build("new", 60), lambda: cache_mod.read_entry(target, "new"),
           needed=2 * 60 * 2000 * 2 + 64 * 1024)


def test_text_writes_on_a_full_disk(small_fs):
    target = small_fs / "bench.json"
    atomic_text(target, json.dumps({"old": 1}))
    text = json.dumps({"new": "x" * 300_000})
    _sweep(small_fs, target, lambda: atomic_text(target, text), lambda: target.read_text() == text,
           needed=len(text))


def _cli(*args: str, cwd: Path, prelude: str = "", **env: str) -> subprocess.CompletedProcess:
    code = prelude + "\nfrom snn_runner.cli import main\nsys.argv = ['snn-runner'] + sys.argv[1:]\nmain()\n"
    return subprocess.run([PYTHON, "-c", "import sys\n" + code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=_env(**env))


def _env(**extra: str) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


TRAIN = ["train", "--implementation", "dense", "--hidden", "16", "--time-steps", "20"]


def _assert_clean_failure(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "no space left on " in errors[0] and "nothing was replaced" in errors[0], done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_cli_train_on_a_full_disk_exits_1_and_keeps_the_previous_result(small_fs):
    earlier = small_fs / "earlier.h5"  # train refuses to overwrite a result: the earlier one is a sibling
    _result(earlier, 0, 20_000)
    before = earlier.read_bytes()
    fill_to(small_fs, 2 * PAGE)  # room for the run lock, not for a checkpoint
    done = _cli(*TRAIN, "--epochs", "2", "-o", str(small_fs / "r.h5"), cwd=small_fs)
    _assert_clean_failure(done)
    assert done.returncode != 139 and earlier.read_bytes() == before
    assert sorted(p.name for p in small_fs.iterdir()) == ["earlier.h5", "fill"]  # no temporary, no checkpoint


# After the first checkpoint is on disk, leave less free space than a second one needs: the
# save of epoch 2 fails for real on the tmpfs (the hook only chooses when the disk fills).
_FILL_AFTER_FIRST_SAVE = textwrap.dedent("""
    import os, subprocess
    from pathlib import Path
    from snn_runner.runner import checkpoint
    _save, _saves = checkpoint.save, []
    def save(path, *args, **kwargs):
        _save(path, *args, **kwargs)
        _saves.append(path)
        if len(_saves) == 1:
            Path(os.environ["SNAPSHOT"]).write_bytes(Path(path).read_bytes())
            st = os.statvfs(path.parent)
            free = st.f_bavail * st.f_frsize
            take = free - os.path.getsize(path) // 2
            take -= take % 4096
            subprocess.run(["fallocate", "-l", str(take), str(path.parent / "fill")], check=True)
    checkpoint.save = save
""")


@pytest.mark.slow
def test_failed_checkpoint_save_keeps_the_old_one_and_resume_reproduces_the_run(small_fs, tmp_path):
    straight = _cli(*TRAIN, "--epochs", "3", "-o", str(tmp_path / "r.h5"), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    target = small_fs / "r.h5"
    snapshot = tmp_path / "first.ckpt"
    done = _cli(*TRAIN, "--epochs", "3", "-o", str(target), cwd=small_fs, prelude=_FILL_AFTER_FIRST_SAVE,
                SNAPSHOT=str(snapshot))
    _assert_clean_failure(done)
    assert "epoch 1/3" in done.stdout and "epoch 2/3" not in done.stdout, done.stdout
    ckpt = small_fs / ".r.h5.ckpt"
    assert ckpt.read_bytes() == snapshot.read_bytes()  # the committed checkpoint, untouched
    assert not target.exists() and leftovers(small_fs) == []
    with h5py.File(ckpt, "r") as f:
        assert json.loads(f.attrs["state_json"])["epoch"] == 2  # the state after epoch 1, whole
    unfill(small_fs)
    resumed = _cli(*TRAIN, "--epochs", "3", "-o", str(target), cwd=small_fs)
    assert resumed.returncode == 0, resumed.stderr
    assert "resume: from" in resumed.stdout
    a, b = read_result(tmp_path / "r.h5"), read_result(target)
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "spike_rate"):
        np.testing.assert_array_equal(a["metrics"][key], b["metrics"][key])
    assert not ckpt.exists()


# --- leftovers of killed writers -------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys, time
    from snn_runner.files import atomic_write
    with atomic_write(sys.argv[1]) as tmp:
        tmp.write_text("partial")
        print(tmp, flush=True)
        time.sleep(120)
""")


def _writer(target: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([PYTHON, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=_env())
    return proc, Path(proc.stdout.readline().strip())


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "c.h5"
    killed, dead_tmp = _writer(target)
    alive, live_tmp = _writer(tmp_path / "d.h5")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert dead_tmp.is_file() and live_tmp.is_file()
        legacy = tmp_path / ".e.h5.123.tmp"  # an older writer's name, fresh: may be another host's
        legacy.write_text("x")
        removed = remove_dead_temporaries(tmp_path)
        assert removed == [dead_tmp]
        assert live_tmp.is_file() and legacy.is_file() and not dead_tmp.exists()
        old = time.time() - 2 * 3600
        os.utime(legacy, (old, old))
        assert remove_dead_temporaries(tmp_path) == [legacy]
        # A writer sweeps its own target's dead temporaries.
        killed2, dead2 = _writer(target)
        killed2.send_signal(signal.SIGKILL)
        killed2.wait(timeout=30)
        assert stale_temporaries(target) == [dead2]
        atomic_text(target, "whole")
        assert stale_temporaries(target) == [] and target.read_text() == "whole"
        assert live_tmp.is_file()
    finally:
        alive.kill()
        alive.wait(timeout=30)
        killed.stdout.close()
        alive.stdout.close()


def test_atomic_write_block_error_leaves_nothing(tmp_path):
    target = tmp_path / "t.csv"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with atomic_write(target) as tmp:
            tmp.write_text("new")
            1 / 0
    assert target.read_text() == "old" and leftovers(tmp_path) == []


# --- hand-edited checkpoints -------------------------------------------------------------------

def _good_checkpoint(path: Path) -> None:
    rng = np.random.default_rng(0)
    state = checkpoint.TrainState(epoch=2, batch=1, rng_state=np.random.default_rng(1).bit_generator.state,
                                  tally={"loss": 1.0, "correct": 1, "samples": 2, "spikes": [1.0], "dropped": [0]},
                                  rows=ROWS[:1], step_seconds=[0.1])
    checkpoint.save(path, state, [rng.normal(size=(4, 3))], [np.int64(3), rng.normal(size=(4, 3))], "{}")


def _edit_state(**changes):
    def edit(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            raw = json.loads(f.attrs["state_json"])
            raw.update(changes)
            f.attrs["state_json"] = json.dumps(raw)
    return edit


def _edit_h5(action):
    def edit(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            action(f)
    return edit


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _set_weights_text(f):
    del f["weights/0"]
    f["weights/0"] = "not numbers"


EDITS = {
    "epoch as text": _edit_state(epoch="two"),
    "negative batch": _edit_state(batch=-1),
    "rows not a list": _edit_state(rows="abc"),
    "row value as text": _edit_state(rows=[{"epoch": 1, "train_loss": "low"}]),
    "tally value as text": _edit_state(tally={"loss": "x"}),
    "rng state emptied": _edit_state(rng_state={}),
    "missing epoch": _edit_h5(lambda f: f.attrs.__setitem__(
        "state_json", json.dumps({k: v for k, v in json.loads(f.attrs["state_json"]).items() if k != "epoch"}))),
    "state not JSON": _edit_h5(lambda f: f.attrs.__setitem__("state_json", "{epoch: 2,")),
    "state a JSON list": _edit_h5(lambda f: f.attrs.__setitem__("state_json", "[1, 2]")),
    "state a number attr": _edit_h5(lambda f: f.attrs.__setitem__("state_json", 5)),
    "no state": _edit_h5(lambda f: f.attrs.__delitem__("state_json")),
    "weights dataset missing": _edit_h5(lambda f: f.__delitem__("weights/0")),
    "optimizer group missing": _edit_h5(lambda f: f.__delitem__("optimizer")),
    "step_seconds missing": _edit_h5(lambda f: f.__delitem__("step_seconds")),
    "weights as text": _edit_h5(_set_weights_text),
    "truncated": _truncate,
    "empty file": lambda p: p.write_bytes(b""),
    "not HDF5": lambda p: p.write_text("hello"),
    "a result file": lambda p: _result(p, 0, 100),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_checkpoint_is_reported_in_one_line(tmp_path, edit):
    path = tmp_path / ".r.h5.ckpt"
    _good_checkpoint(path)
    assert checkpoint.load(path, "{}")[0].epoch == 2
    if edit == "a result file":
        path.unlink()
    EDITS[edit](path)
    with pytest.raises(checkpoint.CheckpointCorrupt) as info:
        checkpoint.load(path, "{}")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "delete it to start afresh" in message


def test_checkpoint_of_another_config_is_a_mismatch(tmp_path):
    path = tmp_path / ".r.h5.ckpt"
    _good_checkpoint(path)
    with pytest.raises(checkpoint.CheckpointMismatch):
        checkpoint.load(path, '{"other": 1}')
