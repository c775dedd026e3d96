"""Tests of the SnnLifSequence op (snn_runner.sparse.ops.lif_sequence).

The op must equal the composition it replaces in sparse_ops,
``select_spikes(membrane_sequence(current, ...))``: the forward bit for bit
(ids, count, dropped, values, and the stored surrogate), the gradient with
respect to the current up to float rounding. A float64 NumPy reference
checks both against the equations, and runs with different thread-pool
sizes must agree bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from snn_runner.backend.cpu import CpuBackend
from snn_runner.neuron.lif import membrane_sequence, superspike_derivative
from snn_runner.sparse import library
from snn_runner.sparse.ops import lif_sequence, select_spikes
from snn_runner.sparse.spikes import SparseSpikes
from tests import reference

pytestmark = pytest.mark.skipif(not library.available(), reason="compiled ops not built (run scripts/build-ops)")

ROOT = Path(__file__).resolve().parents[1]
INF = np.float32(np.inf)


# ------------------------------------------------------------------ helpers


def composition(current, alpha, threshold, threshold2, capacity, input_scale, beta):
    """What sparse_ops ran before the op: the TF recursion, then the select op on all T*B rows.

    Returns the spikes reshaped to [T, B, ...], dropped [T, B] and the membranes [T, B, n].
    """
    steps, batch, n = current.shape
    u = membrane_sequence(current, alpha, threshold, input_scale)
    s, dropped = select_spikes(tf.reshape(u, [-1, n]), threshold, threshold2, capacity, beta)
    return (SparseSpikes(tf.reshape(s.ids, [steps, batch, capacity]), tf.reshape(s.count, [steps, batch]),
                         tf.reshape(s.values, [steps, batch, capacity])),
            tf.reshape(dropped, [steps, batch]), u)


def raw_op(current, alpha, threshold, threshold2, capacity, input_scale, beta):
    """The op's five outputs (ids, count, dropped, values, surrogate) as NumPy arrays."""
    out = library.load().snn_lif_sequence(current, alpha, threshold, threshold2, capacity=capacity,
                                          input_scale=input_scale, beta=beta)
    return [o.numpy() for o in out]


def make_case(seed, steps, batch, n, capacity, *, theta2="finite", silent_steps=(), drive=1.0,
              empty_batch_rows=()):
    """Random current [T, B, n] and per-neuron constants, as float32 NumPy arrays.

    ``drive`` scales the mean current (large: many spikes, so small K drops);
    ``silent_steps`` get zero current; ``empty_batch_rows`` samples get a
    strongly negative current (never spike, and no carriers for finite theta2).
    """
    rng = np.random.default_rng(seed)
    alpha = rng.uniform(0.7, 0.99, size=n).astype(np.float32)
    threshold = rng.uniform(0.5, 1.5, size=n).astype(np.float32)
    if theta2 == "-inf":
        threshold2 = np.full(n, -INF, np.float32)
    else:
        threshold2 = (threshold - rng.uniform(0.1, 1.0, size=n)).astype(np.float32)
        threshold2[rng.random(n) < 0.1] = -INF
    # per-sample drive from silent to saturated, so rows under and over capacity both occur
    rate = rng.uniform(0.0, 2.0, size=(1, batch, 1)) * drive
    current = (rng.normal(size=(steps, batch, n)) * 0.05 + 0.06 * rate).astype(np.float32)
    for t in silent_steps:
        current[t] = 0.0
    for b in empty_batch_rows:
        current[:, b] = -1.0
        threshold2[:] = np.where(np.isinf(threshold2), -1.0, threshold2)
    return current, alpha, threshold, threshold2


def gradients(fn, current, capacity, grad_values):
    """d <grad_values, values> / d current of fn's spikes."""
    current = tf.constant(current)
    with tf.GradientTape() as tape:
        tape.watch(current)
        spikes = fn(current)[0]
    return tape.gradient(spikes.values, current, output_gradients=tf.constant(grad_values)).numpy()


def assert_same_spikes(actual, expected, what=""):
    (s, d), (e, ed) = actual, expected
    for name, a, b in (("ids", s.ids, e.ids), ("count", s.count, e.count), ("dropped", d, ed),
                       ("values", s.values, e.values)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what} {name}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        np.testing.assert_array_equal(a, b, err_msg=f"{what} {name}")


def assert_grads_close(actual, expected):
    scale = max(1e-6, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * scale)


# The cases: (T, B, n, K, options). Odd widths, K = 1 and K = n, theta2 = -inf,
# silent steps (zero current), empty samples, and dropped spikes.
CASES = {
    "n1_k1": (6, 3, 1, 1, {}),
    "n1_k1_inf": (9, 2, 1, 1, {"theta2": "-inf", "drive": 2.0}),
    "n17_k1_drops": (12, 4, 17, 1, {"drive": 3.0}),
    "n17_k_n_inf": (10, 3, 17, 17, {"theta2": "-inf"}),
    "n100_k10": (20, 5, 100, 10, {"silent_steps": (0, 7, 19)}),
    "n100_k_n_inf": (15, 2, 100, 100, {"theta2": "-inf", "silent_steps": (3,)}),
    "n100_drops_empty": (25, 6, 100, 4, {"drive": 4.0, "empty_batch_rows": (1,)}),
    "n300_k30": (30, 8, 300, 30, {}),
}


@pytest.fixture(params=sorted(CASES), name="case")
def _case(request):
    steps, batch, n, k, options = CASES[request.param]
    return (k, *make_case(sum(map(ord, request.param)), steps, batch, n, k, **options))


# ------------------------------------------------------- against the composition


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_forward_is_bit_identical_to_the_composition(case, graph):
    k, current, alpha, th, th2 = case
    c, beta = 10.0, 10.0
    args = [tf.constant(x) for x in (current, alpha, th, th2)]

    def op(cur, a, t, t2):
        return lif_sequence(cur, a, t, t2, k, c, beta)

    def comp(cur, a, t, t2):
        return composition(cur, a, t, t2, k, c, beta)

    if graph:
        op, comp = tf.function(op), tf.function(comp)
    spikes, dropped = op(*args)
    ref_spikes, ref_dropped, _ = comp(*args)
    assert_same_spikes((spikes, dropped), (ref_spikes, ref_dropped))


def test_surrogate_record_is_bit_identical_to_the_models_surrogate(case):
    # The surrogate the op stores is superspike_derivative(u - theta) at each
    # filled slot, computed from the composition's membranes: exact equality
    # here means the op's membranes equal membrane_sequence's bit for bit.
    k, current, alpha, th, th2 = case
    ids, count, _, _, sur = raw_op(current, alpha, th, th2, k, 10.0, 10.0)
    _, _, u = composition(*(tf.constant(x) for x in (current, alpha, th, th2)), k, 10.0, 10.0)
    u = u.numpy()
    filled = ids >= 0
    t, b, s = np.nonzero(filled)
    expected = np.zeros_like(sur)
    expected[t, b, s] = superspike_derivative(tf.constant(u[t, b, ids[t, b, s]] - th[ids[t, b, s]]), 10.0).numpy()
    np.testing.assert_array_equal(sur, expected)
    assert np.all(sur[~filled] == 0.0)


def test_gradient_matches_the_composition(case):
    k, current, alpha, th, th2 = case
    rng = np.random.default_rng(7)
    gv = rng.normal(size=current.shape[:2] + (k,)).astype(np.float32)
    consts = [tf.constant(x) for x in (alpha, th, th2)]
    got = gradients(lambda cur: lif_sequence(cur, *consts, k, 10.0, 10.0), current, k, gv)
    expected = gradients(lambda cur: composition(cur, *consts, k, 10.0, 10.0), current, k, gv)
    if np.any(lif_sequence(current, *consts, k, 10.0, 10.0)[0].ids.numpy() >= 0):
        assert np.abs(expected).max() > 0, "the case needs filled slots for a meaningful gradient check"
    assert_grads_close(got, expected)


@pytest.mark.parametrize("alpha_value,c,beta", [(0.5, 2.0, 10.0), (0.9, 10.0, 3.0), (0.95, 0.5, 0.0)])
def test_other_constants_match_the_composition(alpha_value, c, beta):
    current, _, th, th2 = make_case(11, 16, 4, 33, 5)
    alpha = np.full(33, alpha_value, np.float32)
    consts = [tf.constant(x) for x in (alpha, th, th2)]
    assert_same_spikes(lif_sequence(current, *consts, 5, c, beta),
                       composition(tf.constant(current), *consts, 5, c, beta)[:2])
    gv = np.random.default_rng(2).normal(size=(16, 4, 5)).astype(np.float32)
    assert_grads_close(gradients(lambda cur: lif_sequence(cur, *consts, 5, c, beta), current, 5, gv),
                       gradients(lambda cur: composition(cur, *consts, 5, c, beta), current, 5, gv))


def test_exact_threshold_hits_spike_and_reset_like_the_composition():
    # alpha = 0.5, c = 2 and quarter-step currents keep every membrane exact,
    # so u == theta happens often: such neurons spike (u >= theta) and are
    # reset to exactly 0 at the next step.
    steps, batch, n = 20, 3, 24
    rng = np.random.default_rng(3)
    current = (rng.integers(0, 6, size=(steps, batch, n)) * 0.25).astype(np.float32)
    alpha = np.full(n, 0.5, np.float32)
    th = np.full(n, 1.0, np.float32)
    th2 = np.full(n, 0.5, np.float32)
    _, _, u = composition(*(tf.constant(x) for x in (current, alpha, th, th2)), n, 2.0, 10.0)
    assert np.sum(u.numpy() == 1.0) > 10, "the test needs exact threshold hits"
    consts = [tf.constant(x) for x in (alpha, th, th2)]
    for k in (1, 5, n):
        assert_same_spikes(lif_sequence(current, *consts, k, 2.0, 10.0),
                           composition(tf.constant(current), *consts, k, 2.0, 10.0)[:2], f"K={k}")


def test_all_silent_and_empty_shapes():
    alpha, th, th2 = (np.full(7, v, np.float32) for v in (0.9, 1.0, 0.5))
    spikes, dropped = lif_sequence(np.zeros((5, 2, 7), np.float32), alpha, th, th2, 3, 10.0, 10.0)
    np.testing.assert_array_equal(spikes.ids.numpy(), -1)
    np.testing.assert_array_equal(spikes.count.numpy(), 0)
    np.testing.assert_array_equal(dropped.numpy(), 0)
    np.testing.assert_array_equal(spikes.values.numpy(), 0.0)
    for shape in ((0, 2, 7), (5, 0, 7)):
        current = tf.zeros(shape)
        with tf.GradientTape() as tape:
            tape.watch(current)
            spikes, dropped = lif_sequence(current, alpha, th, th2, 3, 10.0, 10.0)
        assert spikes.ids.shape == spikes.values.shape == shape[:2] + (3,)
        assert spikes.count.shape == dropped.shape == shape[:2]
        assert tape.gradient(spikes.values, current).shape == shape


def test_drops_are_counted():
    current, alpha, th, th2 = make_case(5, 10, 4, 50, 2, drive=4.0)
    spikes, dropped = lif_sequence(current, alpha, th, th2, 2, 10.0, 10.0)
    _, ref_dropped, u = composition(*(tf.constant(x) for x in (current, alpha, th, th2)), 2, 10.0, 10.0)
    spiking = (u.numpy() >= th).sum(axis=2)
    np.testing.assert_array_equal(dropped.numpy(), np.maximum(spiking - 2, 0))
    np.testing.assert_array_equal(spikes.count.numpy(), np.minimum(spiking, 2))
    assert dropped.numpy().sum() > 0


# ------------------------------------------------------------ NumPy reference


def numpy_reference(current, alpha, th, th2, capacity, c, beta, grad_values):
    """ids, count, dropped, values [T, B, ...] and d <grad_values, values> / d current (float64)."""
    steps, batch, n = current.shape
    u = np.zeros((batch, n), np.float32)
    membranes = np.zeros_like(current)
    for t in range(steps):
        u, _ = reference.lif_step(u, current[t], alpha, th, np.float32(c))
        membranes[t] = u
    ids = np.full((steps, batch, capacity), -1, np.int32)
    count = np.zeros((steps, batch), np.int32)
    dropped = np.zeros((steps, batch), np.int32)
    values = np.zeros((steps, batch, capacity), np.float32)
    grad_u = np.zeros(current.shape)
    for t in range(steps):
        for b in range(batch):
            m = membranes[t, b]
            spiking = np.flatnonzero(m >= th)
            carriers = np.flatnonzero((th2 < m) & (m < th))
            kept = spiking[:capacity]
            slots = np.concatenate([kept, carriers])[:capacity]
            ids[t, b, : len(slots)] = slots
            count[t, b], dropped[t, b] = len(kept), len(spiking) - len(kept)
            values[t, b, : len(kept)] = 1.0
            grad_u[t, b, slots] += grad_values[t, b, : len(slots)] * reference.surrogate(
                m[slots].astype(np.float64), th[slots].astype(np.float64), beta)
    delta = np.zeros((batch, n))
    grad_current = np.zeros(current.shape)
    for t in reversed(range(steps)):
        delta = grad_u[t] + alpha.astype(np.float64) * delta
        grad_current[t] = (1.0 - alpha.astype(np.float64)) * c * delta
    return (ids, count, dropped, values), grad_current


@pytest.mark.parametrize("name", ["n17_k1_drops", "n100_k10", "n100_drops_empty", "n17_k_n_inf"])
def test_matches_numpy_reference(name):
    steps, batch, n, k, options = CASES[name]
    current, alpha, th, th2 = make_case(42, steps, batch, n, k, **options)
    gv = np.random.default_rng(1).normal(size=(steps, batch, k)).astype(np.float32)
    (ids, count, dropped, values), grad = numpy_reference(current, alpha, th, th2, k, 10.0, 10.0, gv)
    spikes, got_dropped = lif_sequence(current, alpha, th, th2, k, 10.0, 10.0)
    np.testing.assert_array_equal(spikes.ids.numpy(), ids)
    np.testing.assert_array_equal(spikes.count.numpy(), count)
    np.testing.assert_array_equal(got_dropped.numpy(), dropped)
    np.testing.assert_array_equal(spikes.values.numpy(), values)
    got = gradients(lambda cur: lif_sequence(cur, alpha, th, th2, k, 10.0, 10.0), current, k, gv)
    assert np.abs(grad).max() > 0
    assert_grads_close(got, grad)


# ------------------------------------------------------------ thread counts

THREAD_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
threads = int(sys.argv[1])
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
from snn_runner.sparse.ops import lif_sequence
cases = json.loads(sys.argv[2])
out = {}
for i, (steps, batch, n, k) in enumerate(cases):
    rng = np.random.default_rng(i)
    alpha = rng.uniform(0.8, 0.99, n).astype(np.float32)
    th = rng.uniform(0.5, 1.5, n).astype(np.float32)
    th2 = (th - 0.4).astype(np.float32)
    current = tf.constant((rng.normal(size=(steps, batch, n)) * 0.05 + 0.03).astype(np.float32))
    gv = tf.constant(rng.normal(size=(steps, batch, k)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(current)
        spikes, dropped = lif_sequence(current, alpha, th, th2, k, 10.0, 10.0)
    grad = tape.gradient(spikes.values, current, output_gradients=gv)
    for name, x in (("ids", spikes.ids), ("count", spikes.count), ("dropped", dropped),
                    ("values", spikes.values), ("grad", grad)):
        out[f"{i}_{name}"] = x.numpy()
assert tf.config.threading.get_intra_op_parallelism_threads() == threads
np.savez(sys.argv[3], **out)
"""

# Large enough for the kernels to go parallel (above threading.h's
# kMinParallelCycles); B = 3 is split into neuron blocks once there are two
# or more threads, B = 16 into samples.
THREAD_CASES = [(100, 3, 2000, 60), (50, 16, 1000, 50), (40, 1, 257, 9)]


def test_results_do_not_depend_on_the_thread_count(tmp_path):
    results = {}
    for threads in (1, 2, 5):
        path = tmp_path / f"threads{threads}.npz"
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, "-c", THREAD_SCRIPT, str(threads), json.dumps(THREAD_CASES), str(path)],
                       check=True, cwd=ROOT, env=env, timeout=300)
        results[threads] = dict(np.load(path))
    assert results[1]["0_count"].sum() > 0 and np.abs(results[1]["0_grad"]).max() > 0
    for threads in (2, 5):
        for key, value in results[1].items():
            np.testing.assert_array_equal(results[threads][key], value, err_msg=f"{threads} threads, {key}")


# ----------------------------------------------------------- the model uses it


class CompositionBackend(CpuBackend):
    """The CPU backend with the LIF sequence as sparse_ops ran it before the op."""

    def lif_sequence(self, current, alpha, threshold, threshold2, capacity, input_scale, beta):
        spikes, dropped, _ = composition(current, alpha, threshold, threshold2, capacity, input_scale, beta)
        return spikes, dropped


class RecordingBackend(CpuBackend):
    def __init__(self):
        self.calls = []

    def lif_sequence(self, *args):
        self.calls.append(args[0].shape.as_list())
        return super().lif_sequence(*args)

    def select_spikes(self, *args):
        raise AssertionError("sparse_ops must select through lif_sequence")


@pytest.mark.parametrize("readout", ["spike_count", "membrane_max"])
def test_sparse_ops_model_equals_the_composition(readout):
    from snn_runner.config import ModelConfig
    from snn_runner.model import NetworkSpec, Parameters, build_model
    from tests.test_dense import random_input

    cfg = ModelConfig(hidden=(40, 35), weight_scale=2.5, alpha=0.85, max_activity=0.1, readout=readout)
    spec = NetworkSpec.from_config(cfg, 30, 6, 10)
    params = Parameters(spec, 0)
    ids, count = (tf.constant(x) for x in random_input(np.random.default_rng(0), 4, 24, 30, 10))
    recording = RecordingBackend()
    results = []
    for backend in (recording, CompositionBackend()):
        model = build_model("sparse_ops", spec, params, backend)
        with tf.GradientTape() as tape:
            out = model(ids, count)
            loss = tf.reduce_sum(out.logits * np.arange(6, dtype=np.float32)) + tf.reduce_sum(out.step_spikes)
        results.append((out, tape.gradient(loss, params.trainable)))
    assert recording.calls == [[24, 4, n] for n in spec.sizes[1:1 + spec.spiking_layers]]
    (out, grads), (ref, ref_grads) = results
    for field in out._fields:
        np.testing.assert_array_equal(getattr(out, field).numpy(), getattr(ref, field).numpy(), err_msg=field)
    assert ref.dropped.numpy().sum() > 0 and ref.spikes.numpy()[0] > 0
    for g, e in zip(grads, ref_grads):
        assert_grads_close(g.numpy(), e.numpy())


# -------------------------------------------------------------- validation


def _valid():
    return [np.zeros((3, 2, 5), np.float32)] + [np.full(5, v, np.float32) for v in (0.9, 1.0, 0.5)]


@pytest.mark.parametrize(
    "change,kwargs,error,match",
    [
        (lambda a: [a[0][0]] + a[1:], {}, ValueError, r"current must have rank 3"),
        (lambda a: [a[0].astype(np.float64)] + a[1:], {}, TypeError, r"current must have dtype float32"),
        (lambda a: a[:1] + [a[1][:4]] + a[2:], {}, ValueError, r"alpha length and n = current.shape\[2\]"),
        (lambda a: a[:3] + [a[3][:, None]], {}, ValueError, r"threshold2 must have rank 1"),
        (lambda a: a, {"capacity": 6}, ValueError, r"capacity K=6 exceeds the number of neurons n=5"),
        (lambda a: a, {"capacity": 0}, ValueError, r"capacity must be >= 1"),
        (lambda a: a, {"capacity": True}, TypeError, r"capacity must be an int"),
        (lambda a: a, {"input_scale": float("nan")}, ValueError, r"input_scale must be finite"),
        (lambda a: a, {"beta": -1.0}, ValueError, r"beta must be finite and >= 0"),
    ],
)
def test_wrapper_rejects_bad_arguments(change, kwargs, error, match):
    args = dict(capacity=2, input_scale=10.0, beta=10.0) | kwargs
    with pytest.raises(error, match=match):
        lif_sequence(*change(_valid()), **args)


def test_kernels_reject_bad_inputs_with_clear_errors():
    lib = library.load()
    current, alpha, th, th2 = _valid()
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=r"threshold.*(length|5)"):
        lib.snn_lif_sequence(current, alpha, th[:4], th2, capacity=2)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=r"capacity K=6 exceeds"):
        lib.snn_lif_sequence(current, alpha, th, th2, capacity=6)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"input_scale must be finite"):
        lib.snn_lif_sequence(current, alpha, th, th2, capacity=2, input_scale=float("inf"))
    ids = np.full((3, 2, 2), -1, np.int32)
    ids[1, 0, 1] = 5
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"ids\[1, 0, 1\] = 5 must be in \[-1, n\) with n = 5"):
        lib.snn_lif_sequence_grad(alpha, ids, np.zeros((3, 2, 2), np.float32), np.zeros((3, 2, 2), np.float32))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=r"surrogate|Dimension"):
        lib.snn_lif_sequence_grad(alpha, ids * 0, np.zeros((3, 2, 1), np.float32), np.zeros((3, 2, 2), np.float32))


def test_kernel_checks_run_in_graphs_with_unknown_shapes():
    # With unknown static shapes only the kernel can catch a length mismatch.
    lib = library.load()
    fn = tf.function(lambda cur, a, t, t2: lib.snn_lif_sequence(cur, a, t, t2, capacity=2),
                     input_signature=[tf.TensorSpec(None, tf.float32)] * 4)
    current, alpha, th, th2 = _valid()
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"threshold2 must be a vector of length n = 5 \(current is \[T, B, n\]\), got shape \[4\]"):
        fn(current, alpha, th, th2[:4])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"current must be \[T, B, n\], got shape \[3,10\]"):
        fn(current.reshape(3, 10), alpha, th, th2)
