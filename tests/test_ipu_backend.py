"""The IPU backend and the IPU build entry points, on a machine without IPUs.

What can be checked here: the failure path (no tensorflow-ipu, no Poplar
SDK), the build skipping cleanly, and the wiring of every implementation to
the Poplar ops against a stand-in for ``tensorflow.python.ipu`` that records
what the model asks for. The real tensorflow-ipu path is not exercised (see
docs/ipu.md).
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

import snn_runner.backend
from snn_runner.backend import get_backend
from snn_runner.ipu import backend
from snn_runner.ipu.backend import CODELETS, OP_LIBRARIES, IpuUnavailableError, require_ipu
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
# The models on the IPU backend, against a stand-in for tensorflow.python.ipu
# (UNTESTED for real)
# ---------------------------------------------------------------------------


class FakeIpu:
    """Records what the IPU backend asks of tensorflow.python.ipu.

    ``precompiled_user_op`` returns zeros of the declared types and shapes,
    differentiable (with zero gradient) in the inputs it is told have
    gradients, so whole train steps can be traced and run.
    """

    def __init__(self):
        import tensorflow as tf

        self.configs = []
        self.user_ops = []
        self.runs = []
        self.scopes = 0
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
            tie = tf.add_n([0.0 * tf.reduce_sum(inputs[i]) for i in inputs_with_gradients])
            return [tf.zeros(shape, dtype) + (tf.cast(tie, dtype) if dtype.is_floating else 0)
                    for dtype, shape in zip(outs["output_types"], outs["output_shapes"])]

        class IPUStrategy:
            def scope(self):
                import contextlib

                fake.scopes += 1
                return contextlib.nullcontext()

            def run(self, fn, args=(), kwargs=None):
                fake.runs.append(getattr(fn, "__name__", repr(fn)))
                return fn(*args, **(kwargs or {}))

        self.config = types.SimpleNamespace(IPUConfig=IPUConfig)
        self.custom_ops = types.SimpleNamespace(precompiled_user_op=precompiled_user_op)
        self.ipu_strategy = types.SimpleNamespace(IPUStrategy=IPUStrategy)

    def calls(self, op: str) -> list[dict]:
        return [c for c in self.user_ops if c["library_path"].endswith(OP_LIBRARIES[op])]


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

    def no_cpu_ops():
        raise AssertionError("the IPU backend must not run the CPU ops")

    # a model on the IPU backend that reached for the compiled CPU ops would fail here
    from snn_runner.sparse import library

    monkeypatch.setattr(library, "load", no_cpu_ops)
    return fake


def test_get_backend_ipu_configures_the_ipu_system(fake_stack):
    ipu = get_backend("ipu")
    assert ipu.name == "ipu" and "IPUStrategy" in ipu.mode
    [config] = fake_stack.configs
    assert config.auto_select_ipus == 1 and config.configured
    with ipu.scope():
        pass
    assert fake_stack.scopes == 1


@needs_no_ipu
def test_get_backend_ipu_without_the_stack_raises_the_one_line_error(monkeypatch):
    monkeypatch.setattr(backend.shutil, "which", lambda name: None)
    with pytest.raises(snn_runner.backend.IpuUnavailableError, match="tensorflow-ipu"):
        get_backend("ipu")


def test_get_backend_cpu_and_unknown_names():
    from snn_runner.model.steps import GRAPH_MODE

    cpu = get_backend("cpu")
    assert cpu.name == "cpu" and cpu.mode == GRAPH_MODE
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        get_backend("gpu")


B, T, N_IN, K_IN, HIDDEN, N_OUT = 2, 5, 10, 3, (12, 8), 4


def _run_steps(implementation: str, backend_):
    """Build ``implementation`` on ``backend_`` as the trainer does, and run one train and evaluate step."""
    import keras
    import numpy as np

    from snn_runner.config import ModelConfig
    from snn_runner.model import NetworkSpec, Parameters, build_model
    from snn_runner.model.steps import Steps

    spec = NetworkSpec.from_config(ModelConfig(hidden=HIDDEN, max_activity=0.25), N_IN, N_OUT, K_IN)
    with backend_.scope():
        params = Parameters(spec, seed=0)
        model = build_model(implementation, spec, params, backend_)
        optimizer = keras.optimizers.Adam(1e-3)
        optimizer.build(params.trainable)
    steps = Steps(model, params, optimizer, T, K_IN, None, backend_)
    ids = np.full((B, T, K_IN), -1, np.int32)
    ids[:, :, 0] = 1
    count = np.ones((B, T), np.int32)
    labels = np.zeros(B, np.int64)
    loss, correct, spikes, dropped = steps.train(ids, count, labels)
    assert spikes.shape == dropped.shape == (spec.layers,)
    steps.evaluate(ids, count, labels)
    return spec, steps, (ids, count)


def test_sparse_ops_asks_for_matmul_and_select_with_each_layers_plan(fake_stack, built_ops):
    import tensorflow as tf

    spec, _, _ = _run_steps("sparse_ops", get_backend("ipu"))
    rows = T * B  # every op runs once per layer on all steps at once
    matmuls, selects = fake_stack.calls("sparse_binary_matmul"), fake_stack.calls("select_spikes")
    assert not fake_stack.calls("sparse_lif_layer")
    # traced twice: the train step and the evaluate step
    assert len(matmuls) == len(selects) == 2 * spec.layers
    pre_capacity = (spec.input_capacity, *spec.capacities[:-1])
    for l in range(spec.layers):
        n_in, n_out, k = spec.sizes[l], spec.sizes[l + 1], spec.capacities[l]
        matmul, select = matmuls[l], selects[l]
        attrs = plan_layer("matmul", n_in, n_out, pre_capacity[l], batch_size=rows).to_attributes()
        assert matmul["attributes"] == matmul["gradient_attributes"] == attrs
        assert matmul["gp_path"] == str(built_ops / CODELETS)
        assert matmul["op_name"] == "Build" and not matmul["separate_gradients"]
        assert matmul["inputs_with_gradients"] == [0, 3]  # weights and values
        assert matmul["outs"] == {"output_types": [tf.float32], "output_shapes": [tf.TensorShape([rows, n_out])]}
        assert [tuple(x.shape) for x in matmul["inputs"]] == [(n_in, n_out), (rows, pre_capacity[l]), (rows,),
                                                              (rows, pre_capacity[l])]
        attrs = plan_layer("select", 0, n_out, k, batch_size=rows).to_attributes(beta=spec.lif.beta)
        assert select["attributes"] == select["gradient_attributes"] == attrs
        assert select["inputs_with_gradients"] == [0]
        assert select["outs"]["output_types"] == [tf.int32, tf.int32, tf.int32, tf.float32]
        assert select["outs"]["output_shapes"] == [tf.TensorShape(s) for s in ([rows, k], [rows], [rows], [rows, k])]
    assert fake_stack.runs == ["_train", "_evaluate"]


def test_sparse_layer_asks_for_the_fused_op_in_the_fused_layout(fake_stack, built_ops):
    import tensorflow as tf

    from snn_runner.sparse.fused import FusedLayout

    spec, _, _ = _run_steps("sparse_layer", get_backend("ipu"))
    calls = fake_stack.calls("sparse_lif_layer")
    assert len(calls) == 2 and len(fake_stack.user_ops) == 2  # train and evaluate, nothing else
    call = calls[0]
    n = spec.layers
    plan = plan_network(spec.sizes, spec.capacities, batch_size=B, time_steps=T, input_capacity=K_IN)
    assert call["attributes"] == call["gradient_attributes"] == plan.to_attributes(spec.lif.input_scale,
                                                                                    spec.lif.beta)
    assert call["inputs_with_gradients"] == [2, 3, 4]  # the weights only
    # inputs: in_ids, in_count, then weights, alpha, threshold, threshold2 of each layer
    shapes = [tuple(x.shape) for x in call["inputs"]]
    weights = [(spec.sizes[l], spec.sizes[l + 1]) for l in range(n)]
    vectors = [(m,) for m in spec.sizes[1:]]
    assert shapes == [(B, T, K_IN), (B, T), *weights, *vectors, *vectors, *vectors]
    # outputs: logits, then ids, count, dropped, surrogate of each layer
    k = spec.capacities
    expected = [[B, N_OUT]] + [[B, T, k[l]] for l in range(n)] + [[B, T]] * (2 * n) + [[B, T, k[l]] for l in range(n)]
    assert call["outs"]["output_shapes"] == [tf.TensorShape(s) for s in expected]
    assert call["outs"]["output_types"] == [tf.float32] + [tf.int32] * (3 * n) + [tf.float32] * n
    assert call["outs"]["output_shapes"] == FusedLayout(n).output_shapes(B, T, N_OUT, k)
    assert fake_stack.runs == ["_train", "_evaluate"]


def test_dense_runs_plain_ops_inside_the_ipu_strategy(fake_stack):
    _run_steps("dense", get_backend("ipu"))
    assert fake_stack.user_ops == []
    assert fake_stack.runs == ["_train", "_evaluate"]
    assert fake_stack.scopes == 1  # variables and optimizer created in the strategy's scope


def test_recording_spike_trains_is_planned_for_its_own_batch(fake_stack):
    spec, steps, (ids, count) = _run_steps("sparse_layer", get_backend("ipu"))
    trains = steps.spike_trains(ids[:1], count[:1])
    assert [tuple(t.shape) for t in trains] == [(1, T, n) for n in spec.sizes[1:]]
    recorded = fake_stack.calls("sparse_lif_layer")[-1]
    assert recorded["attributes"] == plan_network(spec.sizes, spec.capacities, batch_size=1, time_steps=T,
                                                  input_capacity=K_IN).to_attributes(spec.lif.input_scale,
                                                                                      spec.lif.beta)
    assert fake_stack.runs[-1] == "spike_trains"


def test_steps_refuse_a_model_built_for_another_backend(fake_stack):
    import keras

    from snn_runner.config import ModelConfig
    from snn_runner.model import NetworkSpec, Parameters, build_model
    from snn_runner.model.steps import Steps

    spec = NetworkSpec.from_config(ModelConfig(hidden=(6,)), 5, 3, 2)
    params = Parameters(spec, 0)
    model = build_model("dense", spec, params, get_backend("cpu"))
    with pytest.raises(ValueError, match="built for backend 'cpu', not 'ipu'"):
        Steps(model, params, keras.optimizers.Adam(), 4, 2, None, get_backend("ipu"))


def test_ipu_ops_need_a_static_batch(fake_stack):
    import tensorflow as tf

    ipu = get_backend("ipu")

    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32)])
    def select(u):
        return ipu.select_spikes(u, tf.ones([5]), tf.zeros([5]), 2, 10.0)

    with pytest.raises(ValueError, match="the IPU ops need static shapes"):
        select.get_concrete_function()


def test_build_model_takes_a_resolved_implementation():
    from snn_runner.config import ModelConfig
    from snn_runner.model import NetworkSpec, Parameters, build_model

    spec = NetworkSpec.from_config(ModelConfig(hidden=(6,)), 5, 3, 2)
    params = Parameters(spec, 0)
    with pytest.raises(ValueError, match="resolve_implementation"):
        build_model("auto", spec, params, get_backend("cpu"))
    with pytest.raises(ValueError, match="unknown implementation 'fast'"):
        build_model("fast", spec, params, get_backend("cpu"))


def test_fused_layout_splits_what_it_joins():
    from snn_runner.sparse.fused import FusedLayout

    layout = FusedLayout(2)
    inputs = layout.inputs("i", "c", ["w1", "w2"], ["a1", "a2"], ["t1", "t2"], ["s1", "s2"])
    assert inputs == ["i", "c", "w1", "w2", "a1", "a2", "t1", "t2", "s1", "s2"]
    assert layout.split_inputs(inputs) == {"in_ids": "i", "in_count": "c", "weights": ["w1", "w2"],
                                           "alpha": ["a1", "a2"], "threshold": ["t1", "t2"],
                                           "threshold2": ["s1", "s2"]}
    assert [inputs[i] for i in layout.weight_inputs] == ["w1", "w2"]
    assert layout.input_gradients(["g1", "g2"]) == [None, None, "g1", "g2"] + [None] * 6
    outputs = ["logits", "i1", "i2", "c1", "c2", "d1", "d2", "s1", "s2"]
    assert layout.split_outputs(outputs) == ("logits", ["i1", "i2"], ["c1", "c2"], ["d1", "d2"], ["s1", "s2"])
    assert len(layout.output_types()) == len(outputs)


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
