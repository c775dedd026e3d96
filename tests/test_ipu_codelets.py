"""Host tests of the IPU kernels (ops/poplar) against the CPU TensorFlow ops.

No IPU or Poplar SDK is needed: the codelets are compiled with g++ against
the host shim (ops/poplar/host_shim) together with a harness
(ops/poplar/host_harness) that runs them in the dataflow of the Poplar graph
builders: one set of buffers per tile, explicit copies for the exchange, one
loop per compute set. Tile plans come from snn_runner.ipu.planner and reach
the harness as the same attribute string the builders parse.

The shim checks every element access and poisons Output edges before a
vertex runs, so reading unwritten outputs or out-of-range memory fails here
even where the IPU would carry on with garbage.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import shutil
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from snn_runner.ipu.planner import IpuTarget, NetworkPlan, plan_layer, plan_network
from snn_runner.sparse import library

ROOT = Path(__file__).resolve().parents[1]
POPLAR = ROOT / "ops" / "poplar"
F32 = np.float32

if not library.available():  # pragma: no cover - depends on the build
    pytest.skip(f"compiled CPU ops not found at {library.library_path()} (run scripts/build-ops)",
                allow_module_level=True)

import tensorflow as tf  # noqa: E402

from snn_runner.sparse.fused import sparse_lif_layer  # noqa: E402
from snn_runner.sparse.ops import SparseSpikes, select_spikes, sparse_binary_matmul  # noqa: E402

P = ctypes.c_void_p
I = ctypes.c_int
S = ctypes.c_char_p


class KernelError(RuntimeError):
    def __init__(self, code: int, message: str):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


class HostKernels:
    """ctypes front of libsnn_ipu_host.so."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        sig = {
            "snn_host_plan_format": [S, P, I, P, I],
            "snn_host_shim_selftest": [P, I],
            "snn_host_matmul_fwd": [S, P, I, I, P, P, P, I, I, P, P, I],
            "snn_host_matmul_grad": [S, P, I, I, P, P, P, I, I, P, P, P, P, I],
            "snn_host_select": [S, P, P, P, I, I, P, P, P, P, P, I],
            "snn_host_select_grad": [S, P, P, I, I, P, P, I, P, P, I],
            "snn_host_lif_fwd": [S, P, P, I, I, I, I, P, P, P, P, P, P, P, P, P, P, P, P, P, I],
            "snn_host_lif_grad": [S, P, P, P, I, I, I, I, P, P, P, P, P, P, P, P, P, I],
        }
        for name, args in sig.items():
            fn = getattr(self.lib, name)
            fn.argtypes = args
            fn.restype = I

    def _call(self, name, *args):
        err = ctypes.create_string_buffer(4096)
        code = getattr(self.lib, name)(*args, err, len(err))
        if code != 0:
            raise KernelError(code, err.value.decode())

    @staticmethod
    def _ptrs(arrays):
        return (P * len(arrays))(*[a.ctypes.data for a in arrays])

    def plan_format(self, attributes: str) -> str:
        out = ctypes.create_string_buffer(1 << 20)
        self._call("snn_host_plan_format", attributes.encode(), out, len(out))
        return out.value.decode()

    def shim_selftest(self):
        self._call("snn_host_shim_selftest")

    def matmul(self, attrs, w, ids, count, values):
        w, ids, count, values = _c(w, F32), _c(ids, np.int32), _c(count, np.int32), _c(values, F32)
        (n_in, n_out), (b, k) = w.shape, ids.shape
        y = np.empty((b, n_out), F32)
        self._call("snn_host_matmul_fwd", attrs.encode(), w.ctypes.data, n_in, n_out, ids.ctypes.data,
                   count.ctypes.data, values.ctypes.data, b, k, y.ctypes.data)
        return y

    def matmul_grad(self, attrs, w, ids, count, values, grad_y):
        w, ids, count, values = _c(w, F32), _c(ids, np.int32), _c(count, np.int32), _c(values, F32)
        grad_y = _c(grad_y, F32)
        (n_in, n_out), (b, k) = w.shape, ids.shape
        gw, gv = np.empty_like(w), np.empty((b, k), F32)
        self._call("snn_host_matmul_grad", attrs.encode(), w.ctypes.data, n_in, n_out, ids.ctypes.data,
                   count.ctypes.data, values.ctypes.data, b, k, grad_y.ctypes.data, gw.ctypes.data,
                   gv.ctypes.data)
        return gw, gv

    def select(self, attrs, u, theta, theta2, capacity):
        u, theta, theta2 = _c(u, F32), _c(theta, F32), _c(theta2, F32)
        b, n = u.shape
        ids, values = np.empty((b, capacity), np.int32), np.empty((b, capacity), F32)
        count, dropped = np.empty(b, np.int32), np.empty(b, np.int32)
        self._call("snn_host_select", attrs.encode(), u.ctypes.data, theta.ctypes.data, theta2.ctypes.data,
                   b, n, ids.ctypes.data, count.ctypes.data, dropped.ctypes.data, values.ctypes.data)
        return ids, count, dropped, values

    def select_grad(self, attrs, u, theta, ids, grad_values):
        u, theta, ids, grad_values = _c(u, F32), _c(theta, F32), _c(ids, np.int32), _c(grad_values, F32)
        b, n = u.shape
        gu = np.empty_like(u)
        self._call("snn_host_select_grad", attrs.encode(), u.ctypes.data, theta.ctypes.data, b, n,
                   ids.ctypes.data, grad_values.ctypes.data, ids.shape[1], gu.ctypes.data)
        return gu

    def lif(self, attrs, net: "Net"):
        b, t, k0 = net.in_ids.shape
        nl = len(net.caps)
        sizes = np.array(net.sizes, np.int32)
        caps = np.array(net.caps, np.int32)
        logits = np.empty((b, net.sizes[-1]), F32)
        ids = [np.empty((b, t, k), np.int32) for k in net.caps]
        count = [np.empty((b, t), np.int32) for _ in net.caps]
        dropped = [np.empty((b, t), np.int32) for _ in net.caps]
        sur = [np.empty((b, t, k), F32) for k in net.caps]
        margin = np.empty(1, F32)
        in_ids, in_count = _c(net.in_ids, np.int32), _c(net.in_count, np.int32)
        self._call("snn_host_lif_fwd", attrs.encode(), in_ids.ctypes.data, in_count.ctypes.data, b, t, k0, nl,
                   sizes.ctypes.data, caps.ctypes.data, self._ptrs(net.weights), self._ptrs(net.alpha),
                   self._ptrs(net.theta), self._ptrs(net.theta2), logits.ctypes.data, self._ptrs(ids),
                   self._ptrs(count), self._ptrs(dropped), self._ptrs(sur), margin.ctypes.data)
        return Forward(logits, ids, count, dropped, sur), float(margin[0])

    def lif_grad(self, attrs, net: "Net", fwd: "Forward"):
        b, t, k0 = net.in_ids.shape
        sizes = np.array(net.sizes, np.int32)
        caps = np.array(net.caps, np.int32)
        grads = [np.empty_like(w) for w in net.weights]
        in_ids, in_count = _c(net.in_ids, np.int32), _c(net.in_count, np.int32)
        g = _c(net.grad_logits, F32)
        ids = [_c(x, np.int32) for x in fwd.ids]
        count = [_c(x, np.int32) for x in fwd.count]
        sur = [_c(x, F32) for x in fwd.surrogate]
        self._call("snn_host_lif_grad", attrs.encode(), g.ctypes.data, in_ids.ctypes.data, in_count.ctypes.data,
                   b, t, k0, len(net.caps), sizes.ctypes.data, caps.ctypes.data, self._ptrs(net.weights),
                   self._ptrs(net.alpha), self._ptrs(ids), self._ptrs(count), self._ptrs(sur),
                   self._ptrs(grads))
        return grads


def _c(x, dtype):
    return np.ascontiguousarray(x, dtype=dtype)


@pytest.fixture(scope="session")
def host(tmp_path_factory) -> HostKernels:
    gxx = shutil.which("g++")
    if gxx is None:
        reason = "g++ not found: cannot build the host harness of the IPU codelets"
        print(reason)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("ipu_host") / "libsnn_ipu_host.so"
    cmd = [
        gxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
        # Keep a*b + c unfused so results do not depend on the host's FMA.
        "-ffp-contract=off",
        "-DSNN_SHIM_BOUNDS_CHECK", "-DSNN_SHIM_POISON_OUTPUTS",
        "-I", str(POPLAR / "host_shim"), str(POPLAR / "host_harness" / "harness.cpp"), "-o", str(out),
    ]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"host harness failed to compile:\n{proc.stderr}"
    print(f"built {out.name} in {time.monotonic() - start:.1f} s")
    return HostKernels(out)


def _relayout(plan: NetworkPlan, layer: int, widths) -> NetworkPlan:
    """The plan with layer `layer` cut into slices of the given widths (tiles renumbered)."""
    old = plan.layers[layer]
    assert sum(widths) == old.n_out and min(widths) >= 1
    starts = tuple(int(x) for x in np.concatenate([[0], np.cumsum(widths)]))
    first = max(max(lp.tiles + lp.selection_tiles) for lp in plan.layers) + 1
    tiles = tuple(range(first, first + len(widths)))
    layers = list(plan.layers)
    layers[layer] = dataclasses.replace(old, tiles=tiles, starts=starts)
    return dataclasses.replace(plan, layers=tuple(layers))


def _tilings(kind, n_in, n_out, capacity, batch, rng):
    """Plans of one layer: planner default, one tile, one neuron per tile, ragged slices."""
    base = plan_layer(kind, n_in, n_out, capacity, batch_size=batch)
    widths = []
    left = n_out
    while left:
        w = int(min(left, rng.integers(1, max(2, n_out // 3) + 1)))
        widths.append(w)
        left -= w
    return {
        "planner": base,
        "one_tile": _relayout(base, 0, [n_out]),
        "one_neuron_per_tile": _relayout(base, 0, [1] * n_out),
        "ragged": _relayout(base, 0, widths),
    }


# ---------------------------------------------------------------------------
# Shim and plan hand-over
# ---------------------------------------------------------------------------


def test_shim_selftest(host):
    host.shim_selftest()


@pytest.mark.parametrize(
    "plan",
    [
        plan_network([40, 30, 20, 5], [6, 5, 5], batch_size=3, time_steps=7, input_capacity=4),
        plan_network([1156, 1470, 1460, 10], [147, 146, 10], batch_size=48, time_steps=100,
                     input_capacity=64, target=IpuTarget(num_ipus=2)),
        plan_layer("matmul", 17, 9, 4, batch_size=2),
        plan_layer("select", 0, 33, 7, batch_size=5),
    ],
    ids=["small", "nmnist_2ipu", "matmul", "select"],
)
def test_plan_round_trips_through_the_cpp_parser(host, plan):
    attrs = plan.to_attributes(input_scale=7.5, beta=0.1)
    assert host.plan_format(attrs) == attrs


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a.replace("version=1", "version=2"), "version 2 is not supported"),
        (lambda a: a.replace(";beta=10", ""), "missing key 'beta'"),
        (lambda a: a + ";colour=blue", "unknown key 'colour'"),
        (lambda a: a.replace("l0.starts=0,", "l0.starts=1,"), "slices must cover neurons"),
        (lambda a: a.replace("l0.row_tiles=", "l0.row_tiles=1,"), "one tile per batch row"),
        (lambda a: a.replace("batch=3", "batch=x"), "'batch' must be an integer"),
        (lambda a: a.replace("l1.n_in=12", "l1.n_in=11"), "differs from the previous layer"),
    ],
)
def test_cpp_parser_rejects_bad_plans(host, edit, message):
    attrs = plan_network([10, 12, 4], [3, 2], batch_size=3, time_steps=2, input_capacity=2).to_attributes()
    with pytest.raises(KernelError) as err:
        host.plan_format(edit(attrs))
    assert err.value.code == 2 and message in err.value.message


def test_plan_that_does_not_match_the_tensors_is_rejected(host):
    attrs = plan_layer("matmul", 10, 8, 3, batch_size=2).to_attributes()
    w = np.zeros((10, 9), F32)  # n_out 9, planned 8
    with pytest.raises(KernelError, match="planned for n_out = 8 but the tensors have 9") as err:
        host.matmul(attrs, w, np.zeros((2, 3), np.int32), np.zeros(2, np.int32), np.zeros((2, 3), F32))
    assert err.value.code == 2


# ---------------------------------------------------------------------------
# Sparse binary matmul
# ---------------------------------------------------------------------------


def random_slots(rng, batch, k, n, *, spike_fraction=0.6):
    """ids/count/values in the sparse format: spikes, then carriers, then -1 padding.

    Spike ids may repeat (the op must add them twice); values are arbitrary
    floats so that scaling by values is exercised, not only 1.0.
    """
    ids = np.full((batch, k), -1, np.int32)
    count = np.zeros(batch, np.int32)
    for b in range(batch):
        c = int(rng.integers(0, k + 1)) if rng.random() < spike_fraction else 0
        filled = int(rng.integers(c, k + 1))
        ids[b, :filled] = rng.integers(0, n, filled)
        count[b] = c
    count[0] = k  # one full row
    ids[0] = rng.integers(0, n, k)
    # Carrier and padding slots get values too: the op must ignore them.
    values = rng.normal(size=(batch, k)).astype(F32)
    return ids, count, values


MATMUL_CASES = {
    "small": dict(n_in=13, n_out=11, batch=4, k=5),
    "wide": dict(n_in=40, n_out=97, batch=3, k=9),
    "k_is_one": dict(n_in=7, n_out=5, batch=5, k=1),
    "narrow_out": dict(n_in=64, n_out=2, batch=6, k=16),
}


def _cpu_matmul(w, ids, count, values):
    return sparse_binary_matmul(w, SparseSpikes(ids, count, values)).numpy()


def _cpu_matmul_grad(w, ids, count, values, gy):
    gw, gv = library.load().snn_sparse_binary_matmul_grad(w, ids, count, values, gy)
    return gw.numpy(), gv.numpy()


@pytest.mark.parametrize("name", sorted(MATMUL_CASES))
def test_matmul_forward_matches_cpu(host, name):
    c = MATMUL_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    w = rng.normal(size=(c["n_in"], c["n_out"])).astype(F32)
    ids, count, values = random_slots(rng, c["batch"], c["k"], c["n_in"])
    expected = _cpu_matmul(w, ids, count, values)
    results = {}
    for label, plan in _tilings("matmul", c["n_in"], c["n_out"], c["k"], c["batch"], rng).items():
        y = host.matmul(plan.to_attributes(), w, ids, count, values)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5, err_msg=label)
        results[label] = y
    # Each neuron is computed whole on one tile: the tiling cannot change a bit.
    for label, y in results.items():
        np.testing.assert_array_equal(y, results["planner"], err_msg=label)


@pytest.mark.parametrize("name", sorted(MATMUL_CASES))
def test_matmul_gradients_match_cpu(host, name):
    c = MATMUL_CASES[name]
    rng = np.random.default_rng(1 + zlib.crc32(name.encode()))
    w = rng.normal(size=(c["n_in"], c["n_out"])).astype(F32)
    ids, count, values = random_slots(rng, c["batch"], c["k"], c["n_in"])
    gy = rng.normal(size=(c["batch"], c["n_out"])).astype(F32)
    exp_gw, exp_gv = _cpu_matmul_grad(w, ids, count, values, gy)
    assert np.any(exp_gw) and np.any(exp_gv)
    for label, plan in _tilings("matmul", c["n_in"], c["n_out"], c["k"], c["batch"], rng).items():
        gw, gv = host.matmul_grad(plan.to_attributes(), w, ids, count, values, gy)
        np.testing.assert_allclose(gw, exp_gw, rtol=1e-5, atol=1e-5, err_msg=f"{label}: grad_weights")
        np.testing.assert_allclose(gv, exp_gv, rtol=1e-5, atol=1e-5, err_msg=f"{label}: grad_values")
        # Padding slots get exactly zero, carriers a real dot product.
        np.testing.assert_array_equal(gv[ids < 0], 0.0)
    carriers = (np.arange(c["k"])[None, :] >= count[:, None]) & (ids >= 0)
    if carriers.any():
        assert np.any(exp_gv[carriers])


def test_matmul_gradient_matches_autodiff(host):
    rng = np.random.default_rng(5)
    w = rng.normal(size=(12, 9)).astype(F32)
    ids, count, values = random_slots(rng, 4, 6, 12)
    values = (np.arange(6)[None, :] < count[:, None]).astype(F32)  # spikes are 1.0 in the model
    gy = rng.normal(size=(4, 9)).astype(F32)
    wv, vv = tf.Variable(w), tf.Variable(values)
    with tf.GradientTape() as tape:
        y = sparse_binary_matmul(wv, SparseSpikes(ids, count, vv))
        loss = tf.reduce_sum(y * gy)
    tw, tv = tape.gradient(loss, [wv, vv])
    gw, gv = host.matmul_grad(plan_layer("matmul", 12, 9, 6, batch_size=4).to_attributes(), w, ids, count,
                              values, gy)
    np.testing.assert_allclose(gw, tw.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gv, tv.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "corrupt",
    ["spike_id_negative", "spike_id_too_large", "carrier_id_too_large", "carrier_id_below_minus_one",
     "count_above_k", "count_negative"],
)
def test_matmul_rejects_what_cpu_rejects(host, corrupt):
    rng = np.random.default_rng(11)
    n_in, n_out, batch, k = 10, 7, 3, 4
    w = rng.normal(size=(n_in, n_out)).astype(F32)
    ids = np.array([[1, 2, 3, -1], [4, 5, -1, -1], [0, 9, 8, 7]], np.int32)
    count = np.array([2, 1, 4], np.int32)
    values = np.ones((batch, k), F32)
    gy = np.ones((batch, n_out), F32)
    if corrupt == "spike_id_negative":
        ids[0, 1] = -1
    elif corrupt == "spike_id_too_large":
        ids[2, 0] = n_in
    elif corrupt == "carrier_id_too_large":
        ids[0, 2] = n_in + 3
    elif corrupt == "carrier_id_below_minus_one":
        ids[1, 3] = -2
    elif corrupt == "count_above_k":
        count[1] = k + 1
    else:
        count[0] = -1
    with pytest.raises(tf.errors.InvalidArgumentError):
        _cpu_matmul(w, ids, count, values)
    with pytest.raises(tf.errors.InvalidArgumentError):
        _cpu_matmul_grad(w, ids, count, values, gy)
    attrs = plan_layer("matmul", n_in, n_out, k, batch_size=batch).to_attributes()
    with pytest.raises(KernelError) as err:
        host.matmul(attrs, w, ids, count, values)
    assert err.value.code == 1 and "SnnMatmulFwd" in err.value.message
    with pytest.raises(KernelError) as err:
        host.matmul_grad(attrs, w, ids, count, values, gy)
    assert err.value.code == 1


# ---------------------------------------------------------------------------
# Spike selection
# ---------------------------------------------------------------------------


def _cpu_select(u, theta, theta2, k, beta=10.0):
    ids, count, dropped, values = library.load().snn_select_spikes(u, theta, theta2, capacity=k, beta=beta)
    return ids.numpy(), count.numpy(), dropped.numpy(), values.numpy()


def _cpu_select_grad(u, theta, ids, gv, beta):
    return library.load().snn_select_spikes_grad(u, theta, ids, gv, beta=beta).numpy()


def _select_case(name, rng):
    n, batch, k = {"few": (23, 5, 6), "many": (40, 4, 5), "all_slots": (9, 3, 9), "one_slot": (15, 4, 1),
                   "wide": (150, 3, 20)}[name]
    theta = rng.uniform(0.5, 1.5, n).astype(F32)
    theta2 = (theta - rng.uniform(0.1, 0.6, n)).astype(F32)
    spread = {"few": 0.5, "many": 2.0}.get(name, 1.0)
    u = (theta[None, :] + rng.normal(0, spread, (batch, n)) - (0.9 if name == "few" else 0.0)).astype(F32)
    # Exact ties: u == theta spikes, u == theta2 is not a carrier.
    u[0, 0] = theta[0]
    u[0, 1] = theta2[1]
    if name == "all_slots":
        theta2[:] = -np.inf  # every neuron below threshold is a carrier
    if name == "wide":
        u[1, :] = np.nan  # compares false: neither spike nor carrier
    return u, theta, theta2, k


SELECT_CASES = ["few", "many", "all_slots", "one_slot", "wide"]


@pytest.mark.parametrize("name", SELECT_CASES)
def test_select_matches_cpu(host, name):
    rng = np.random.default_rng(len(name))
    u, theta, theta2, k = _select_case(name, rng)
    expected = _cpu_select(u, theta, theta2, k)
    if name == "many":
        assert expected[2].sum() > 0, "case must drop spikes"
    if name in ("few", "all_slots"):
        assert ((expected[0] >= 0).sum(1) > expected[1]).any(), "case must have carriers"
    if name == "few":
        assert (expected[0] < 0).any(), "case must have padding"
    for label, plan in _tilings("select", 0, u.shape[1], k, u.shape[0], rng).items():
        got = host.select(plan.to_attributes(), u, theta, theta2, k)
        for part, g, e in zip(("ids", "count", "dropped", "values"), got, expected):
            np.testing.assert_array_equal(g, e, err_msg=f"{label}: {part}")


@pytest.mark.parametrize("name", SELECT_CASES)
@pytest.mark.parametrize("beta", [10.0, 2.5])
def test_select_gradient_matches_cpu(host, name, beta):
    rng = np.random.default_rng(100 + len(name))
    u, theta, theta2, k = _select_case(name, rng)
    u = np.nan_to_num(u, nan=0.25)
    ids = _cpu_select(u, theta, theta2, k)[0]
    gv = rng.normal(size=ids.shape).astype(F32)
    expected = _cpu_select_grad(u, theta, ids, gv, beta)
    assert np.any(expected)
    for label, plan in _tilings("select", 0, u.shape[1], k, u.shape[0], rng).items():
        got = host.select_grad(plan.to_attributes(beta=beta), u, theta, ids, gv)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=label)
        np.testing.assert_array_equal(got[~_selected_mask(ids, u.shape[1])], 0.0)


def test_select_and_gradient_match_the_python_wrapper_with_autodiff(host):
    rng = np.random.default_rng(21)
    u, theta, theta2, k = _select_case("few", rng)
    gv = rng.normal(size=(u.shape[0], k)).astype(F32)
    uv = tf.Variable(u)
    with tf.GradientTape() as tape:
        spikes, dropped = select_spikes(uv, theta, theta2, k, beta=4.0)
        loss = tf.reduce_sum(spikes.values * gv)
    grad_u = tape.gradient(loss, uv).numpy()
    attrs = plan_layer("select", 0, u.shape[1], k, batch_size=u.shape[0]).to_attributes(beta=4.0)
    ids, count, got_dropped, values = host.select(attrs, u, theta, theta2, k)
    np.testing.assert_array_equal(ids, spikes.ids.numpy())
    np.testing.assert_array_equal(count, spikes.count.numpy())
    np.testing.assert_array_equal(got_dropped, dropped.numpy())
    np.testing.assert_array_equal(values, spikes.values.numpy())
    np.testing.assert_allclose(host.select_grad(attrs, u, theta, ids, gv), grad_u, rtol=1e-6, atol=1e-7)


def _selected_mask(ids, n):
    mask = np.zeros((ids.shape[0], n), bool)
    for b, row in enumerate(ids):
        mask[b, row[row >= 0]] = True
    return mask


def test_select_gradient_adds_duplicate_ids(host):
    u = np.array([[0.9, 1.2, 0.3]], F32)
    theta = np.ones(3, F32)
    ids = np.array([[1, 1, -1]], np.int32)
    gv = np.array([[1.0, 2.0, 7.0]], F32)
    expected = _cpu_select_grad(u, theta, ids, gv, 10.0)
    got = host.select_grad(plan_layer("select", 0, 3, 3, batch_size=1).to_attributes(), u, theta, ids, gv)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[0, 1] == pytest.approx(3.0 / (10 * 0.2 + 1) ** 2, rel=1e-5)


@pytest.mark.parametrize("bad_id", [-2, 3])
def test_select_gradient_rejects_what_cpu_rejects(host, bad_id):
    u, theta = np.zeros((1, 3), F32), np.ones(3, F32)
    ids = np.array([[0, bad_id]], np.int32)
    gv = np.ones((1, 2), F32)
    with pytest.raises(tf.errors.InvalidArgumentError):
        _cpu_select_grad(u, theta, ids, gv, 10.0)
    with pytest.raises(KernelError) as err:
        host.select_grad(plan_layer("select", 0, 3, 2, batch_size=1).to_attributes(), u, theta, ids, gv)
    assert err.value.code == 1 and "SnnSelectGrad" in err.value.message


# ---------------------------------------------------------------------------
# Fused multi-layer LIF network
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Forward:
    logits: np.ndarray
    ids: list
    count: list
    dropped: list
    surrogate: list


@dataclasses.dataclass
class Net:
    sizes: list
    caps: list
    weights: list
    alpha: list
    theta: list
    theta2: list
    in_ids: np.ndarray
    in_count: np.ndarray
    grad_logits: np.ndarray
    c: float = 10.0
    beta: float = 10.0

    @classmethod
    def random(cls, seed, sizes, caps, T, B, K0, gain, theta2="finite", c=10.0, beta=10.0):
        rng = np.random.default_rng(seed)
        weights = [(rng.uniform(-1, 1, (a, b)) * gain / math.sqrt(a)).astype(F32)
                   for a, b in zip(sizes[:-1], sizes[1:])]
        alpha = [rng.uniform(0.6, 0.95, n).astype(F32) for n in sizes[1:]]
        theta = [rng.uniform(0.5, 1.5, n).astype(F32) for n in sizes[1:]]
        if theta2 == "-inf":
            theta2 = [np.full(n, -np.inf, F32) for n in sizes[1:]]
        else:
            theta2 = [(th - rng.uniform(0.1, 0.8, th.shape)).astype(F32) for th in theta]
        # Slots past in_count hold garbage on purpose: both sides must ignore them.
        in_ids = rng.integers(-5, sizes[0] + 5, (B, T, K0)).astype(np.int32)
        in_count = rng.integers(0, K0 + 1, (B, T)).astype(np.int32)
        for b in range(B):
            for t in range(T):
                in_ids[b, t, : in_count[b, t]] = rng.integers(0, sizes[0], in_count[b, t])
        grad_logits = rng.normal(size=(B, sizes[-1])).astype(F32)
        return cls(list(sizes), list(caps), weights, alpha, theta, theta2, in_ids, in_count, grad_logits, c, beta)

    def plan(self, **kw) -> NetworkPlan:
        b, t, k0 = self.in_ids.shape
        return plan_network(self.sizes, self.caps, batch_size=b, time_steps=t, input_capacity=k0, **kw)

    def attrs(self, plan: NetworkPlan) -> str:
        return plan.to_attributes(input_scale=self.c, beta=self.beta)

    def cpu_forward(self) -> Forward:
        out = library.load().snn_sparse_lif_layer(
            self.in_ids, self.in_count, self.weights, self.alpha, self.theta, self.theta2,
            capacities=self.caps, input_scale=self.c, beta=self.beta,
        )
        logits, *per_layer = out  # ids, count, dropped, surrogate: one list each
        return Forward(logits.numpy(), *[[x.numpy() for x in part] for part in per_layer])

    def cpu_grad(self, fwd: Forward):
        grads = library.load().snn_sparse_lif_layer_grad(
            grad_logits=self.grad_logits, in_ids=self.in_ids, in_count=self.in_count, weights=self.weights,
            alpha=self.alpha, ids=fwd.ids, count=fwd.count, surrogate=fwd.surrogate, capacities=self.caps,
            input_scale=self.c,
        )
        return [g.numpy() for g in grads]


LIF_CASES = {
    # K = n and theta2 = -inf: every free slot is a carrier, nothing dropped.
    "full_capacity": (dict(sizes=[30, 24, 20, 6], caps=[24, 20, 6], T=12, B=3, K0=8, gain=2.5,
                           theta2="-inf"), {"carriers"}),
    "carriers_and_padding": (dict(sizes=[40, 32, 28, 7], caps=[12, 10, 7], T=14, B=4, K0=10, gain=2.5),
                             {"carriers", "padding"}),
    "drops": (dict(sizes=[40, 36, 30, 8], caps=[2, 2, 3], T=12, B=3, K0=12, gain=3.5), {"drops"}),
    "other_scale_and_beta": (dict(sizes=[25, 20, 16, 5], caps=[6, 5, 5], T=10, B=3, K0=6, gain=4.0, c=5.0,
                                  beta=3.0), {"carriers"}),
    "single_layer": (dict(sizes=[30, 12], caps=[5], T=12, B=3, K0=10, gain=4.0), {"carriers"}),
    "four_layers": (dict(sizes=[20, 18, 16, 14, 6], caps=[6, 6, 5, 4], T=10, B=2, K0=6, gain=3.5),
                    {"carriers"}),
}


def _lif_plans(net: Net, rng):
    """The planner's plan, a spread-out one, and hand-cut ragged / 1-neuron slices."""
    base = net.plan(spread=False)
    plans = {"planner_min": base, "planner_spread": net.plan(target=IpuTarget(tiles_per_ipu=64))}
    ragged = base
    for l, n in enumerate(net.sizes[1:]):
        cuts = np.sort(rng.choice(np.arange(1, n), size=min(n - 1, 3), replace=False))
        ragged = _relayout(ragged, l, np.diff(np.concatenate([[0], cuts, [n]])).tolist())
    plans["ragged"] = ragged
    plans["one_neuron_per_tile"] = base
    for l, n in enumerate(net.sizes[1:]):
        plans["one_neuron_per_tile"] = _relayout(plans["one_neuron_per_tile"], l, [1] * n)
    return plans


def _check_features(fwd: Forward, features):
    assert fwd.count[-1].sum() > 0, "the last layer never spikes: gradients would be trivial"
    carriers = sum(int(((i >= 0).sum(-1) - c).sum()) for i, c in zip(fwd.ids, fwd.count))
    if "carriers" in features:
        assert carriers > 0
    if "padding" in features:
        assert any((i < 0).any() for i in fwd.ids)
    if "drops" in features:
        assert sum(int(d.sum()) for d in fwd.dropped) > 0


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", sorted(LIF_CASES))
def test_fused_layer_matches_cpu(host, name, seed):
    kwargs, features = LIF_CASES[name]
    net = Net.random(seed, **kwargs)
    cpu = net.cpu_forward()
    _check_features(cpu, features)
    cpu_grads = net.cpu_grad(cpu)
    rng = np.random.default_rng(seed)
    first_grads = None
    for label, plan in _lif_plans(net, rng).items():
        attrs = net.attrs(plan)
        got, margin = host.lif(attrs, net)
        # A membrane within rounding distance of a threshold could flip a
        # spike between two correct float32 implementations.
        assert margin > 1e-5, f"case too close to a threshold (margin {margin})"
        np.testing.assert_array_equal(got.logits, cpu.logits, err_msg=f"{label}: logits")
        for l in range(len(net.caps)):
            np.testing.assert_array_equal(got.ids[l], cpu.ids[l], err_msg=f"{label}: ids[{l}]")
            np.testing.assert_array_equal(got.count[l], cpu.count[l], err_msg=f"{label}: count[{l}]")
            np.testing.assert_array_equal(got.dropped[l], cpu.dropped[l], err_msg=f"{label}: dropped[{l}]")
            np.testing.assert_allclose(got.surrogate[l], cpu.surrogate[l], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{label}: surrogate[{l}]")
        grads = host.lif_grad(attrs, net, got)
        for l, (g, r) in enumerate(zip(grads, cpu_grads)):
            scale = np.abs(r).max()
            assert scale > 0, f"reference gradient of layer {l} is zero"
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{label}: grad[{l}]")
        if first_grads is None:
            first_grads = grads
        else:  # tilings change only the order of float sums
            for g, f in zip(grads, first_grads):
                np.testing.assert_allclose(g, f, rtol=1e-5, atol=1e-6 * np.abs(f).max())


def test_fused_layer_exact_ties(host):
    """u == theta spikes (and resets), u == theta2 is no carrier: decided exactly like the CPU op.

    With alpha = 0.5 and c = 4 every membrane below is a sum of powers of two,
    so both implementations compute it without rounding.
    """
    n_in, n = 2, 6
    w = np.zeros((n_in, n), F32)
    w[0] = [0.25, 0.5, 0.125, 0.375, 0.5, 0.0]  # input 0 drives u to 0.5, 1.0, 0.25, 0.75, 1.0, 0
    theta = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], F32)
    theta2 = np.array([0.5, 0.5, 0.25, 0.5, 0.75, -np.inf], F32)
    net = Net(
        sizes=[n_in, n], caps=[4], weights=[w], alpha=[np.full(n, 0.5, F32)], theta=[theta], theta2=[theta2],
        in_ids=np.zeros((1, 3, 1), np.int32), in_count=np.array([[1, 1, 0]], np.int32),
        grad_logits=np.arange(1, n + 1, dtype=F32)[None, :], c=4.0, beta=10.0,
    )
    cpu = net.cpu_forward()
    assert cpu.count[0][0, 0] == 2 and cpu.ids[0][0, 0, :2].tolist() == [1, 4]  # the ties spiked
    assert 0 not in cpu.ids[0][0, 0] and 2 not in cpu.ids[0][0, 0]  # u == theta2: no carrier
    got, _ = host.lif(net.attrs(net.plan()), net)
    for part in ("ids", "count", "dropped", "surrogate"):
        np.testing.assert_array_equal(getattr(got, part)[0], getattr(cpu, part)[0], err_msg=part)
    np.testing.assert_array_equal(got.logits, cpu.logits)
    grads = host.lif_grad(net.attrs(net.plan()), net, got)
    np.testing.assert_allclose(grads[0], net.cpu_grad(cpu)[0], rtol=1e-6)


def test_fused_layer_matches_the_python_wrapper_with_autodiff(host):
    net = Net.random(4, sizes=[30, 20, 16, 5], caps=[6, 5, 5], T=12, B=3, K0=8, gain=4.0)
    weights = [tf.Variable(w) for w in net.weights]
    with tf.GradientTape() as tape:
        out = sparse_lif_layer(net.in_ids, net.in_count, weights, net.alpha, net.theta, net.theta2, net.caps,
                               input_scale=net.c, beta=net.beta)
        loss = tf.reduce_sum(out.logits * net.grad_logits)
    expected = [g.numpy() for g in tape.gradient(loss, weights)]
    attrs = net.attrs(net.plan(target=IpuTarget(tiles_per_ipu=32)))
    got, margin = host.lif(attrs, net)
    assert margin > 1e-5
    np.testing.assert_array_equal(got.logits, out.logits.numpy())
    for l in range(len(net.caps)):
        np.testing.assert_array_equal(got.ids[l], out.ids[l].numpy())
        np.testing.assert_array_equal(got.dropped[l], out.dropped[l].numpy())
    for g, r in zip(host.lif_grad(attrs, net, got), expected):
        assert np.abs(r).max() > 0
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * np.abs(r).max())


def test_fused_layer_silent_input(host):
    net = Net.random(3, sizes=[10, 8, 4], caps=[3, 4], T=5, B=2, K0=4, gain=2.0)
    net.in_count[:] = 0
    attrs = net.attrs(net.plan())
    got, _ = host.lif(attrs, net)
    assert not got.logits.any()
    assert not any(c.any() for c in got.count) and not any(d.any() for d in got.dropped)
    for g in host.lif_grad(attrs, net, got):
        assert not g.any()


def test_fused_layer_gradient_of_cpu_records(host):
    """The backward kernels alone: fed the CPU forward's records, they give the CPU gradient."""
    net = Net.random(7, sizes=[30, 25, 6], caps=[7, 4], T=15, B=4, K0=9, gain=3.5)
    cpu = net.cpu_forward()
    expected = net.cpu_grad(cpu)
    grads = host.lif_grad(net.attrs(net.plan(target=IpuTarget(tiles_per_ipu=20))), net, cpu)
    for g, r in zip(grads, expected):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * np.abs(r).max())


@pytest.mark.parametrize("corrupt", ["count_above_k0", "count_negative", "id_out_of_range", "id_negative"])
def test_fused_layer_rejects_what_cpu_rejects(host, corrupt):
    net = Net.random(9, sizes=[10, 8, 4], caps=[3, 4], T=5, B=2, K0=4, gain=2.0)
    net.in_count[1, 2] = 2
    if corrupt == "count_above_k0":
        net.in_count[0, 3] = 5
    elif corrupt == "count_negative":
        net.in_count[1, 0] = -1
    elif corrupt == "id_out_of_range":
        net.in_ids[1, 2, 1] = 10
    else:
        net.in_ids[1, 2, 0] = -1
    with pytest.raises(tf.errors.InvalidArgumentError):
        net.cpu_forward()
    with pytest.raises(KernelError) as err:
        host.lif(net.attrs(net.plan()), net)
    assert err.value.code == 1 and "SnnInputStep" in err.value.message


def test_fused_layer_plan_must_match_network(host):
    net = Net.random(9, sizes=[10, 8, 4], caps=[3, 4], T=5, B=2, K0=4, gain=2.0)
    other = Net.random(9, sizes=[10, 8, 4], caps=[3, 4], T=6, B=2, K0=4, gain=2.0)
    with pytest.raises(KernelError, match="time_steps") as err:
        host.lif(net.attrs(other.plan()), net)
    assert err.value.code == 2
