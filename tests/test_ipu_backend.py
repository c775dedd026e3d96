"""The IPU runner hook and the IPU build entry points, on a machine without IPUs.

What can be checked here: the failure path (no tensorflow-ipu, no Poplar
SDK), the build skipping cleanly, and the glue of IpuBackend against a
stand-in for ``tensorflow.python.ipu``. The real tensorflow-ipu path is not
exercised (see docs/ipu.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from snn_runner.ipu import backend
from snn_runner.ipu.backend import CODELETS, OP_LIBRARIES, IpuBackend, IpuUnavailableError, require_ipu
from snn_runner.ipu.planner import plan_layer, plan_network

ROOT = Path(__file__).resolve().parents[1]
SKIP_LINE = "Poplar SDK not found: IPU ops skipped"


def _has_real_ipu_stack() -> bool:
    return backend._import_tensorflow_ipu() is not None


needs_no_ipu = pytest.mark.skipif(_has_real_ipu_stack(), reason="tensorflow-ipu is installed here")


# ---------------------------------------------------------------------------
# require_ipu without the stack
# ---------------------------------------------------------------------------


@needs_no_ipu
def test_cli_train_backend_ipu_fails_fast_with_clear_message(tmp_path):
    exe = Path(sys.executable).parent / "snn-runner"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not (Path(p) / "popc").exists())
    start = time.monotonic()
    proc = subprocess.run([str(exe), "train", "--backend", "ipu"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "tensorflow-ipu" in proc.stderr
    assert "Poplar SDK" in proc.stderr
    assert "--backend cpu" in proc.stderr
    # It fails before any data or model work: within seconds, not after loading data.
    assert elapsed < 60, f"took {elapsed:.0f} s"


@needs_no_ipu
def test_require_ipu_names_what_is_missing_and_where_it_comes_from(monkeypatch):
    monkeypatch.setattr(backend.shutil, "which", lambda name: None)
    with pytest.raises(IpuUnavailableError) as err:
        require_ipu()
    message = str(err.value)
    assert "tensorflow-ipu cannot be imported" in message
    assert "Poplar SDK is not enabled (popc is not on PATH)" in message
    assert "Graphcore" in message and "not on public package registries" in message
    assert "scripts/build-ipu-ops" in message
    assert "--backend cpu" in message
    assert isinstance(err.value, RuntimeError)


def test_require_ipu_reports_only_popc_when_tensorflow_ipu_is_there(monkeypatch):
    monkeypatch.setattr(backend, "_import_tensorflow_ipu", lambda: types.SimpleNamespace())
    monkeypatch.setattr(backend.shutil, "which", lambda name: None)
    with pytest.raises(IpuUnavailableError) as err:
        require_ipu()
    assert "cannot be imported" not in str(err.value)
    assert "popc is not on PATH" in str(err.value)


@needs_no_ipu
def test_require_ipu_reports_only_tensorflow_ipu_when_popc_is_there(monkeypatch):
    monkeypatch.setattr(backend.shutil, "which", lambda name: "/opt/poplar/bin/popc")
    with pytest.raises(IpuUnavailableError) as err:
        require_ipu()
    assert "tensorflow-ipu cannot be imported" in str(err.value)
    assert "popc is not on PATH" not in str(err.value)


@needs_no_ipu
def test_stock_tensorflow_is_recognised_without_importing_it():
    code = (
        "import sys\n"
        "from snn_runner.ipu import backend\n"
        "assert backend._import_tensorflow_ipu() is None\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------------
# IpuBackend against a stand-in for tensorflow.python.ipu (UNTESTED for real)
# ---------------------------------------------------------------------------


class FakeIpu:
    """Records what IpuBackend asks of tensorflow.python.ipu."""

    def __init__(self):
        self.configs = []
        self.user_ops = []
        fake = self

        class IPUConfig:
            def __init__(self):
                self.auto_select_ipus = None
                self.configured = False
                fake.configs.append(self)

            def configure_ipu_system(self):
                self.configured = True

        def precompiled_user_op(inputs, library_path, gp_path="", outs=None, name="UserOp", op_name="Build",
                                separate_gradients=False, inputs_with_gradients=None, attributes=None,
                                gradient_attributes=None):
            fake.user_ops.append(dict(inputs=inputs, library_path=library_path, gp_path=gp_path, outs=outs,
                                      name=name, op_name=op_name, separate_gradients=separate_gradients,
                                      inputs_with_gradients=inputs_with_gradients, attributes=attributes,
                                      gradient_attributes=gradient_attributes))
            return [f"out{i}" for i in range(len(outs["output_types"]))]

        self.config = types.SimpleNamespace(IPUConfig=IPUConfig)
        self.custom_ops = types.SimpleNamespace(precompiled_user_op=precompiled_user_op)
        self.ipu_strategy = types.SimpleNamespace(IPUStrategy=lambda: "strategy")


@pytest.fixture
def built_ops(tmp_path, monkeypatch):
    for name in (*OP_LIBRARIES.values(), CODELETS):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv("SNN_RUNNER_IPU_OPS_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def fake_stack(monkeypatch, built_ops):
    fake = FakeIpu()
    monkeypatch.setattr(backend, "_import_tensorflow_ipu", lambda: fake)
    monkeypatch.setattr(backend.shutil, "which", lambda name: "/opt/poplar/bin/popc")
    return fake


def test_backend_configures_the_ipu_system(fake_stack):
    ipu = require_ipu()
    assert isinstance(ipu, IpuBackend)
    config = ipu.configure(num_ipus=2)
    assert config.auto_select_ipus == 2 and config.configured
    assert ipu.strategy() == "strategy"


def test_backend_calls_the_poplar_ops_with_library_codelets_and_plan(fake_stack, built_ops):
    import tensorflow as tf

    ipu = require_ipu()
    attrs = plan_layer("matmul", 6, 5, 3, batch_size=2).to_attributes()
    w = tf.zeros([6, 5])
    spikes = (tf.zeros([2, 3], tf.int32), tf.zeros([2], tf.int32), tf.zeros([2, 3]))
    assert ipu.sparse_binary_matmul(w, spikes, attrs) == "out0"
    call = fake_stack.user_ops[-1]
    assert call["library_path"] == str(built_ops / OP_LIBRARIES["sparse_binary_matmul"])
    assert call["gp_path"] == str(built_ops / CODELETS)
    assert call["op_name"] == "Build" and not call["separate_gradients"]
    assert call["inputs_with_gradients"] == [0, 3]  # weights and values
    assert call["attributes"] == call["gradient_attributes"] == attrs
    assert call["outs"]["output_shapes"] == [tf.TensorShape([2, 5])]

    ipu.select_spikes(tf.zeros([2, 5]), tf.ones([5]), tf.zeros([5]), 3,
                      plan_layer("select", 0, 5, 3, batch_size=2).to_attributes())
    call = fake_stack.user_ops[-1]
    assert call["inputs_with_gradients"] == [0]
    assert call["outs"]["output_types"] == [tf.int32, tf.int32, tf.int32, tf.float32]

    caps = [4, 2]
    plan = plan_network([6, 5, 3], caps, batch_size=2, time_steps=7, input_capacity=3)
    weights = [tf.zeros([6, 5]), tf.zeros([5, 3])]
    vec = [tf.zeros([5]), tf.zeros([3])]
    logits, ids, count, dropped, sur = ipu.sparse_lif_layer(
        tf.zeros([2, 7, 3], tf.int32), tf.zeros([2, 7], tf.int32), weights, vec, vec, vec, caps,
        plan.to_attributes(),
    )
    call = fake_stack.user_ops[-1]
    assert call["library_path"].endswith(OP_LIBRARIES["sparse_lif_layer"])
    assert call["inputs_with_gradients"] == [2, 3]  # the weights only
    assert len(call["inputs"]) == 2 + 4 * 2
    assert call["outs"]["output_shapes"][:3] == [tf.TensorShape([2, 3]), tf.TensorShape([2, 7, 4]),
                                                 tf.TensorShape([2, 7, 2])]
    assert len(ids) == len(count) == len(dropped) == len(sur) == 2


def test_backend_without_built_ops_says_how_to_build(fake_stack, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("SNN_RUNNER_IPU_OPS_DIR", str(empty))
    with pytest.raises(IpuUnavailableError, match="scripts/build-ipu-ops") as err:
        require_ipu()
    assert OP_LIBRARIES["sparse_lif_layer"] in str(err.value)


# ---------------------------------------------------------------------------
# The IPU build skips cleanly without the Poplar SDK
# ---------------------------------------------------------------------------


def _path_without_popc() -> str:
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if not (Path(p) / "popc").exists())


@needs_no_ipu
def test_build_script_skips_with_one_line(tmp_path):
    env = dict(os.environ, PATH=_path_without_popc(), SNN_IPU_OPS_BUILD_DIR=str(tmp_path / "build"))
    proc = subprocess.run([str(ROOT / "scripts" / "build-ipu-ops")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == SKIP_LINE
    assert proc.stderr == ""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not found")
def test_build_script_skips_when_popc_is_there_but_the_sdk_is_not(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    popc = fake_bin / "popc"
    popc.write_text("#!/bin/sh\nexit 0\n")
    popc.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}{_path_without_popc()}",
               SNN_IPU_OPS_BUILD_DIR=str(tmp_path / "build"))
    env.pop("POPLAR_SDK_ENABLED", None)
    env.pop("CPATH", None)
    proc = subprocess.run([str(ROOT / "scripts" / "build-ipu-ops")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == SKIP_LINE
    # Configuring the CMake project directly behaves the same.
    out = tmp_path / "out"
    proc = subprocess.run(["cmake", "-S", str(ROOT / "ops" / "poplar"), "-B", str(tmp_path / "direct"),
                           f"-DSNN_IPU_OPS_OUTPUT_DIR={out}"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert SKIP_LINE in proc.stdout
    proc = subprocess.run(["cmake", "--build", str(tmp_path / "direct")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not out.exists()
