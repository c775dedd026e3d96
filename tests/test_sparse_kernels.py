"""Tests of the SnnSparseBinaryMatmul and SnnSelectSpikes custom ops.

Every kernel result is compared against a plain NumPy (float64) reference
written straight from the op specification, so a wrong formula, a wrong slot
rule or a threading race shows up as a numeric mismatch.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from snn_runner.sparse import library
from snn_runner.sparse.ops import select_spikes, sparse_binary_matmul
from snn_runner.sparse.spikes import SparseSpikes


@pytest.fixture(scope="module")
def lib():
    return library.load()


# ---------------------------------------------------------------- references


def ref_matmul(w, ids, count, values):
    w = w.astype(np.float64)
    y = np.zeros((ids.shape[0], w.shape[1]))
    for b in range(ids.shape[0]):
        for k in range(count[b]):
            y[b] += values[b, k] * w[ids[b, k]]
    return y


def ref_matmul_grad(w, ids, count, values, gy):
    w = w.astype(np.float64)
    gy = gy.astype(np.float64)
    gw = np.zeros_like(w)
    gv = np.zeros(ids.shape)
    for b in range(ids.shape[0]):
        for k in range(ids.shape[1]):
            if k < count[b]:
                gw[ids[b, k]] += values[b, k] * gy[b]
            if ids[b, k] >= 0:
                gv[b, k] = w[ids[b, k]] @ gy[b]
    return gw, gv


def ref_select(u, th, th2, capacity):
    batch, n = u.shape
    ids = np.full((batch, capacity), -1, np.int32)
    count = np.zeros(batch, np.int32)
    dropped = np.zeros(batch, np.int32)
    values = np.zeros((batch, capacity), np.float32)
    for b in range(batch):
        spiking = np.flatnonzero(u[b] >= th)
        carriers = np.flatnonzero((th2 < u[b]) & (u[b] < th))
        kept = spiking[:capacity]
        count[b] = len(kept)
        dropped[b] = len(spiking) - len(kept)
        slots = np.concatenate([kept, carriers])[:capacity]
        ids[b, : len(slots)] = slots
        values[b, : len(kept)] = 1.0
    return ids, count, dropped, values


def surrogate(u, th, beta):
    return 1.0 / (beta * np.abs(u.astype(np.float64) - th) + 1.0) ** 2


def ref_select_grad(u, th, ids, gv, beta):
    gu = np.zeros(u.shape)
    b, k = np.nonzero(ids >= 0)
    i = ids[b, k]
    np.add.at(gu, (b, i), gv[b, k] * surrogate(u[b, i], th[i], beta))
    return gu


def random_spikes(rng, batch, capacity, n_in, spike_values="random"):
    """Spikes + carriers + padding in the documented layout.

    Each row gets a random number of spikes (0..K) and of carriers, so rows
    with count = 0, count = K, and with padding all occur.
    """
    ids = np.full((batch, capacity), -1, np.int32)
    count = rng.integers(0, capacity + 1, size=batch).astype(np.int32)
    count[0] = capacity  # always one full row
    if batch > 1:
        count[1] = 0  # and one empty row
    values = np.zeros((batch, capacity), np.float32)
    for b in range(batch):
        n_carriers = rng.integers(0, capacity - count[b] + 1)
        used = min(n_in, count[b] + n_carriers)
        chosen = rng.choice(n_in, size=used, replace=False)
        spikes = np.sort(chosen[: min(count[b], used)])
        carriers = np.sort(chosen[len(spikes) :])
        count[b] = len(spikes)
        ids[b, : len(spikes)] = spikes
        ids[b, len(spikes) : used] = carriers
        if spike_values == "random":
            values[b, : count[b]] = rng.uniform(0.5, 1.5, size=count[b])
        else:
            values[b, : count[b]] = 1.0
    return ids, count, values


MATMUL_SIZES = [
    # (B, K, n_in, n_out): tiny, non-multiple-of-16 widths, a width below one
    # cache-line block, and the reference layer size (multi-shard paths).
    (1, 1, 1, 1),
    (3, 5, 7, 4),
    (8, 16, 40, 33),
    (5, 9, 20, 200),
    (48, 146, 1470, 1460),
]


# ------------------------------------------------------ sparse_binary_matmul


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("size", MATMUL_SIZES)
def test_matmul_forward_matches_numpy(seed, size):
    batch, capacity, n_in, n_out = size
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_in, n_out)).astype(np.float32)
    ids, count, values = random_spikes(rng, batch, capacity, n_in)
    y = sparse_binary_matmul(w, SparseSpikes(ids, count, values)).numpy()
    assert y.shape == (batch, n_out)
    np.testing.assert_allclose(y, ref_matmul(w, ids, count, values), rtol=1e-5, atol=1e-4)


def test_matmul_ignores_carriers_and_padding():
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    # Slot 1 is a carrier (id 3) and slot 2 padding; only row 1 may be summed,
    # even though the carrier has a (bogus) non-zero value.
    y = sparse_binary_matmul(w, SparseSpikes([[1, 3, -1]], [1], [[2.0, 5.0, 0.0]]))
    np.testing.assert_array_equal(y.numpy(), [[6.0, 8.0, 10.0]])


def test_matmul_repeated_ids_accumulate():
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    y = sparse_binary_matmul(w, SparseSpikes([[2, 2, 0]], [3], [[1.0, 1.0, 1.0]]))
    np.testing.assert_array_equal(y.numpy(), [[8.0, 11.0]])


def test_matmul_empty_batch():
    w = np.ones((4, 3), np.float32)
    spikes = SparseSpikes(np.zeros((0, 2), np.int32), np.zeros(0, np.int32), np.zeros((0, 2), np.float32))
    assert sparse_binary_matmul(w, spikes).shape == (0, 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("size", MATMUL_SIZES)
def test_matmul_grad_matches_numpy(seed, size):
    batch, capacity, n_in, n_out = size
    rng = np.random.default_rng(100 + seed)
    w = rng.normal(size=(n_in, n_out)).astype(np.float32)
    ids, count, values = random_spikes(rng, batch, capacity, n_in)
    gy = rng.normal(size=(batch, n_out)).astype(np.float32)
    w_t = tf.constant(w)
    v_t = tf.constant(values)
    with tf.GradientTape() as tape:
        tape.watch([w_t, v_t])
        y = sparse_binary_matmul(w_t, SparseSpikes(ids, count, v_t))
    gw, gv = tape.gradient(y, [w_t, v_t], output_gradients=tf.constant(gy))
    ref_gw, ref_gv = ref_matmul_grad(w, ids, count, values, gy)
    np.testing.assert_allclose(gw.numpy(), ref_gw, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gv.numpy(), ref_gv, rtol=1e-4, atol=1e-4)
    # Rows never named by a spike must be exactly zero (including rows that
    # only appear as carriers), and padding slots get exactly zero.
    spiked = np.zeros(n_in, bool)
    for b in range(batch):
        spiked[ids[b, : count[b]]] = True
    assert np.all(gw.numpy()[~spiked] == 0.0)
    assert np.all(gv.numpy()[ids < 0] == 0.0)


MATMUL_GRAD_EDGE_SIZES = [
    # (B, K, n_in, n_out) for the tiled gradient kernel: an empty batch (a
    # worker's share can be empty), K = 1, K = n_in, widths below, at and
    # just past one 16-lane chunk, a width of 0, and a batch of several
    # blocks of rows (8 column tiles of 48 lanes: 2730 rows per block).
    (0, 3, 5, 7),
    (7, 1, 9, 5),
    (6, 12, 12, 17),
    (4, 4, 3, 16),
    (5, 3, 6, 0),
    (3000, 2, 20, 300),
]


@pytest.mark.parametrize("size", MATMUL_GRAD_EDGE_SIZES)
def test_matmul_grad_edge_shapes(lib, size):
    batch, capacity, n_in, n_out = size
    rng = np.random.default_rng(5)
    w = rng.normal(size=(n_in, n_out)).astype(np.float32)
    if batch:
        ids, count, values = random_spikes(rng, batch, capacity, n_in)
    else:
        ids, count, values = (np.zeros((0, capacity), np.int32), np.zeros(0, np.int32),
                              np.zeros((0, capacity), np.float32))
    gy = rng.normal(size=(batch, n_out)).astype(np.float32)
    gw, gv = lib.snn_sparse_binary_matmul_grad(w, ids, count, values, gy)
    assert gw.shape == (n_in, n_out) and gv.shape == (batch, capacity)
    ref_gw, ref_gv = ref_matmul_grad(w, ids, count, values, gy)
    np.testing.assert_allclose(gw.numpy(), ref_gw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gv.numpy(), ref_gv, rtol=1e-5, atol=1e-5)


def test_matmul_grad_steps_without_spikes(lib):
    # Rows with only carriers and padding: no weight gradient at all, but
    # the carriers still get their dot products.
    rng = np.random.default_rng(3)
    w = rng.normal(size=(25, 40)).astype(np.float32)
    ids = np.stack([rng.permutation(25)[:6] for _ in range(10)]).astype(np.int32)
    ids[:, 4:] = -1
    count = np.zeros(10, np.int32)
    values = np.zeros((10, 6), np.float32)
    gy = rng.normal(size=(10, 40)).astype(np.float32)
    gw, gv = lib.snn_sparse_binary_matmul_grad(w, ids, count, values, gy)
    assert np.all(gw.numpy() == 0.0)
    _, ref_gv = ref_matmul_grad(w, ids, count, values, gy)
    np.testing.assert_allclose(gv.numpy(), ref_gv, rtol=1e-5, atol=1e-5)


def test_matmul_grad_carriers_and_padding_hand_example(lib):
    w = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], np.float32)
    ids = np.array([[1, 3, -1], [2, 0, 3]], np.int32)  # row 0: 1 spike, 1 carrier, pad
    count = np.array([1, 2], np.int32)
    values = np.array([[1.0, 0.0, 0.0], [1.0, 2.0, 0.0]], np.float32)
    gy = np.array([[1.0, -1.0], [0.5, 2.0]], np.float32)
    gw, gv = lib.snn_sparse_binary_matmul_grad(w, ids, count, values, gy)
    np.testing.assert_allclose(
        gv.numpy(),
        [[3 - 4, 7 - 8, 0.0], [2.5 + 12, 0.5 + 4, 3.5 + 16]],  # carriers get w[id] . gy[b]
    )
    np.testing.assert_allclose(
        gw.numpy(),
        [[1.0, 4.0], [1.0, -1.0], [0.5, 2.0], [0.0, 0.0]],  # row 3 only a carrier -> 0
    )


def test_matmul_grad_weights_use_only_spike_slots(lib):
    # Carriers normally carry value 0, which would hide a kernel that lets
    # them into grad_weights; give them non-zero values to expose that.
    rng = np.random.default_rng(11)
    w = rng.normal(size=(30, 20)).astype(np.float32)
    ids, count, values = random_spikes(rng, 6, 8, 30)
    values = np.where(ids >= 0, rng.uniform(0.5, 1.5, size=ids.shape), 0.0).astype(np.float32)
    assert np.any((np.arange(8)[None, :] >= count[:, None]) & (ids >= 0))
    gy = rng.normal(size=(6, 20)).astype(np.float32)
    gw, gv = lib.snn_sparse_binary_matmul_grad(w, ids, count, values, gy)
    ref_gw, ref_gv = ref_matmul_grad(w, ids, count, values, gy)
    np.testing.assert_allclose(gw.numpy(), ref_gw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gv.numpy(), ref_gv, rtol=1e-5, atol=1e-5)


def test_matmul_grad_is_not_stale_between_calls(lib):
    # The grad output is written into freshly allocated memory each call; a
    # missing zero-fill would leak the previous call's contributions.
    rng = np.random.default_rng(7)
    w = rng.normal(size=(50, 70)).astype(np.float32)
    gy = rng.normal(size=(4, 70)).astype(np.float32)
    ids = np.array([[3, 9], [3, -1], [49, 0], [1, 2]], np.int32)
    count = np.array([2, 1, 2, 0], np.int32)
    values = np.ones((4, 2), np.float32)
    for _ in range(5):
        big, _ = lib.snn_sparse_binary_matmul_grad(w, np.array([[5, 6]] * 4, np.int32), [2] * 4, values, gy)
        gw, _ = lib.snn_sparse_binary_matmul_grad(w, ids, count, values, gy)
        ref_gw, _ = ref_matmul_grad(w, ids, count, values, gy)
        np.testing.assert_allclose(gw.numpy(), ref_gw, rtol=1e-6, atol=1e-6)
        del big


@pytest.mark.parametrize("seed", [0, 1])
def test_matmul_finite_difference_gradient(seed):
    rng = np.random.default_rng(seed)
    batch, capacity, n_in, n_out = 3, 4, 6, 5
    w = rng.normal(size=(n_in, n_out)).astype(np.float32)
    # count = K: the forward pass only reads slots < count, so this is the
    # setting in which grad_values is the true derivative of y.
    ids = np.stack([rng.choice(n_in, capacity, replace=False) for _ in range(batch)]).astype(np.int32)
    ids[1, 1] = ids[1, 0]  # a repeated row must still differentiate correctly
    count = np.full(batch, capacity, np.int32)
    values = rng.uniform(0.5, 1.5, size=(batch, capacity)).astype(np.float32)

    def f_w(w_):
        return sparse_binary_matmul(w_, SparseSpikes(ids, count, values))

    def f_v(v_):
        return sparse_binary_matmul(w, SparseSpikes(ids, count, v_))

    for f, x in ((f_w, w), (f_v, values)):
        theoretical, numerical = tf.test.compute_gradient(f, [tf.constant(x)])
        assert np.abs(theoretical[0]).max() > 0
        np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3, rtol=1e-3)


# ------------------------------------------------------------ select_spikes


def test_select_hand_built_example():
    th = np.ones(8, np.float32)
    th2 = np.full(8, 0.5, np.float32)
    #              spike carrier =th2  spike carrier none spike carrier
    u = np.array([[1.0, 0.6, 0.5, 2.0, 0.99, -1.0, 1.5, 0.7]], np.float32)

    spikes, dropped = select_spikes(u, th, th2, capacity=5)
    np.testing.assert_array_equal(spikes.ids.numpy(), [[0, 3, 6, 1, 4]])
    np.testing.assert_array_equal(spikes.count.numpy(), [3])
    np.testing.assert_array_equal(dropped.numpy(), [0])
    np.testing.assert_array_equal(spikes.values.numpy(), [[1, 1, 1, 0, 0]])

    spikes, dropped = select_spikes(u, th, th2, capacity=7)
    np.testing.assert_array_equal(spikes.ids.numpy(), [[0, 3, 6, 1, 4, 7, -1]])
    np.testing.assert_array_equal(spikes.count.numpy(), [3])
    np.testing.assert_array_equal(spikes.values.numpy(), [[1, 1, 1, 0, 0, 0, 0]])

    # Over capacity: the two lowest-index spikes are kept, one is dropped and
    # no slot is left for carriers.
    spikes, dropped = select_spikes(u, th, th2, capacity=2)
    np.testing.assert_array_equal(spikes.ids.numpy(), [[0, 3]])
    np.testing.assert_array_equal(spikes.count.numpy(), [2])
    np.testing.assert_array_equal(dropped.numpy(), [1])
    np.testing.assert_array_equal(spikes.values.numpy(), [[1, 1]])

    spikes, dropped = select_spikes(u, th, th2, capacity=3)
    np.testing.assert_array_equal(spikes.ids.numpy(), [[0, 3, 6]])
    np.testing.assert_array_equal(dropped.numpy(), [0])


def test_select_per_neuron_thresholds_and_rows():
    th = np.array([0.0, 2.0, 1.0, 5.0], np.float32)
    th2 = np.array([-1.0, 1.0, -np.inf, 4.0], np.float32)
    u = np.array(
        [
            [0.0, 1.5, 0.5, 4.5],  # 0 spikes (u == th); 1,2,3 carriers
            [-2.0, 0.9, -100.0, 3.9],  # nothing spikes; only 2 (th2=-inf) carries
            [5.0, 9.0, 1.0, 5.0],  # all four spike
        ],
        np.float32,
    )
    spikes, dropped = select_spikes(u, th, th2, capacity=3)
    np.testing.assert_array_equal(spikes.ids.numpy(), [[0, 1, 2], [2, -1, -1], [0, 1, 2]])
    np.testing.assert_array_equal(spikes.count.numpy(), [1, 0, 3])
    np.testing.assert_array_equal(dropped.numpy(), [0, 0, 1])
    np.testing.assert_array_equal(spikes.values.numpy(), [[1, 0, 0], [0, 0, 0], [1, 1, 1]])


def test_select_minus_inf_threshold2_makes_every_neuron_a_carrier():
    n = 6
    u = np.array([[-1e30, 0.0, 3.0, -5.0, 0.2, 1.0]], np.float32)
    th = np.full(n, 1.0, np.float32)
    th2 = np.full(n, -np.inf, np.float32)
    spikes, _ = select_spikes(u, th, th2, capacity=6)
    np.testing.assert_array_equal(spikes.ids.numpy(), [[2, 5, 0, 1, 3, 4]])
    np.testing.assert_array_equal(spikes.count.numpy(), [2])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(
    "batch,n,capacity",
    # The last size (T*B rows at once) is large enough for the kernel to
    # split the batch across threads.
    [(1, 1, 1), (4, 10, 3), (7, 33, 33), (16, 300, 15), (48, 1470, 146), (960, 1470, 146)],
)
def test_select_matches_numpy(seed, batch, n, capacity):
    rng = np.random.default_rng(seed)
    th = rng.uniform(0.5, 1.5, size=n).astype(np.float32)
    th2 = (th - rng.uniform(0.1, 1.0, size=n)).astype(np.float32)
    th2[rng.random(n) < 0.1] = -np.inf
    # A per-row spike rate from silent to saturated, so under- and
    # over-capacity rows both occur.
    rate = rng.uniform(0.0, 1.0, size=(batch, 1))
    u = (rng.normal(size=(batch, n)) * 0.3 + th[None, :] - 0.3 + rate).astype(np.float32)
    u[0, : min(n, 3)] = th[: min(n, 3)]  # exact threshold hits count as spikes
    spikes, dropped = select_spikes(u, th, th2, capacity)
    ref_ids, ref_count, ref_dropped, ref_values = ref_select(u, th, th2, capacity)
    np.testing.assert_array_equal(spikes.ids.numpy(), ref_ids)
    np.testing.assert_array_equal(spikes.count.numpy(), ref_count)
    np.testing.assert_array_equal(dropped.numpy(), ref_dropped)
    np.testing.assert_array_equal(spikes.values.numpy(), ref_values)


@pytest.mark.parametrize("beta", [10.0, 3.0, 0.0])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("batch,n,capacity", [(6, 40, 12), (960, 1470, 146)])
def test_select_surrogate_gradient_matches_numpy(seed, beta, batch, n, capacity):
    rng = np.random.default_rng(seed)
    th = rng.uniform(0.5, 1.5, size=n).astype(np.float32)
    th2 = (th - 0.4).astype(np.float32)
    u = (th[None, :] - 0.5 + rng.normal(size=(batch, n)) * 0.3).astype(np.float32)
    gv = rng.normal(size=(batch, capacity)).astype(np.float32)
    u_t = tf.constant(u)
    with tf.GradientTape() as tape:
        tape.watch(u_t)
        spikes, _ = select_spikes(u_t, th, th2, capacity, beta=beta)
    gu = tape.gradient(spikes.values, u_t, output_gradients=tf.constant(gv)).numpy()
    ids = spikes.ids.numpy()
    assert (ids >= 0).sum() > (spikes.count.numpy()).sum(), "test needs carriers"
    np.testing.assert_allclose(gu, ref_select_grad(u, th, ids, gv, beta), rtol=1e-6, atol=1e-7)
    selected = np.zeros(u.shape, bool)
    for b in range(batch):
        selected[b, ids[b][ids[b] >= 0]] = True
    assert np.all(gu[~selected] == 0.0)


def test_select_grad_op_hand_example(lib):
    u = np.array([[1.2, 0.0, 0.9]], np.float32)
    th = np.array([1.0, 1.0, 1.0], np.float32)
    ids = np.array([[0, 2, -1]], np.int32)
    gv = np.array([[2.0, 3.0, 100.0]], np.float32)  # padding value must be ignored
    gu = lib.snn_select_spikes_grad(u, th, ids, gv, beta=10.0).numpy()
    np.testing.assert_allclose(gu, [[2.0 / 9.0, 0.0, 3.0 / 4.0]], rtol=1e-6)


def test_end_to_end_gradient_through_carriers():
    # u -> select -> matmul: d(sum y)/du reaches carriers through values.
    rng = np.random.default_rng(3)
    batch, n, n_out, capacity, beta = 4, 20, 7, 8, 5.0
    th = np.full(n, 1.0, np.float32)
    th2 = np.full(n, 0.0, np.float32)
    u = rng.uniform(-0.5, 1.5, size=(batch, n)).astype(np.float32)
    w = rng.normal(size=(n, n_out)).astype(np.float32)
    gy = rng.normal(size=(batch, n_out)).astype(np.float32)
    u_t, w_t = tf.constant(u), tf.constant(w)
    with tf.GradientTape() as tape:
        tape.watch([u_t, w_t])
        spikes, _ = select_spikes(u_t, th, th2, capacity, beta=beta)
        y = sparse_binary_matmul(w_t, spikes)
    gu, gw = tape.gradient(y, [u_t, w_t], output_gradients=tf.constant(gy))
    ids, count = spikes.ids.numpy(), spikes.count.numpy()
    ref_gw, ref_gv = ref_matmul_grad(w, ids, count, spikes.values.numpy(), gy)
    np.testing.assert_allclose(gw.numpy(), ref_gw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gu.numpy(), ref_select_grad(u, th, ids, ref_gv, beta), rtol=1e-4, atol=1e-5)
    carrier_mask = np.zeros(u.shape, bool)
    for b in range(batch):
        carrier_mask[b, ids[b, count[b] :][ids[b, count[b] :] >= 0]] = True
    assert carrier_mask.any() and np.any(gu.numpy()[carrier_mask] != 0.0)


# -------------------------------------------------------------- tf.function


def test_ops_inside_tf_function_keep_static_shapes():
    n_in, n_out, capacity = 30, 11, 6
    rng = np.random.default_rng(0)
    w = tf.Variable(rng.normal(size=(n_in, n_out)).astype(np.float32))
    th = tf.constant(np.full(n_in, 1.0, np.float32))
    th2 = tf.constant(np.full(n_in, 0.2, np.float32))
    seen = {}

    @tf.function(input_signature=[tf.TensorSpec([None, n_in], tf.float32)])
    def step(u):
        with tf.GradientTape() as tape:
            tape.watch(u)
            spikes, dropped = select_spikes(u, th, th2, capacity)
            y = sparse_binary_matmul(w, spikes)
            loss = tf.reduce_sum(y * y)
        seen["ids"] = spikes.ids.shape
        seen["count"] = spikes.count.shape
        seen["dropped"] = dropped.shape
        seen["values"] = spikes.values.shape
        seen["y"] = y.shape
        gu, gw = tape.gradient(loss, [u, w])
        seen["gu"] = gu.shape
        seen["gw"] = gw.shape
        return y, gu, gw

    u = rng.uniform(0.0, 1.5, size=(5, n_in)).astype(np.float32)
    y, gu, gw = step(tf.constant(u))
    assert seen["ids"].as_list() == [None, capacity]
    assert seen["count"].as_list() == [None]
    assert seen["dropped"].as_list() == [None]
    assert seen["values"].as_list() == [None, capacity]
    assert seen["y"].as_list() == [None, n_out]
    assert seen["gu"].as_list() == [None, n_in]
    assert seen["gw"].as_list() == [n_in, n_out]

    with tf.GradientTape() as tape:
        u_t = tf.constant(u)
        tape.watch(u_t)
        spikes, _ = select_spikes(u_t, th, th2, capacity)
        y_e = sparse_binary_matmul(w, spikes)
        loss = tf.reduce_sum(y_e * y_e)
    gu_e, gw_e = tape.gradient(loss, [u_t, w])
    np.testing.assert_allclose(y.numpy(), y_e.numpy(), rtol=1e-6)
    np.testing.assert_allclose(gu.numpy(), gu_e.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gw.numpy(), gw_e.numpy(), rtol=1e-5, atol=1e-6)


def test_static_shape_functions(lib):
    @tf.function
    def graph():
        w = tf.zeros([9, 4])
        ids = tf.zeros([3, 5], tf.int32)
        count = tf.zeros([3], tf.int32)
        values = tf.zeros([3, 5])
        gw, gv = lib.snn_sparse_binary_matmul_grad(w, ids, count, values, tf.zeros([3, 4]))
        gu = lib.snn_select_spikes_grad(tf.zeros([3, 9]), tf.zeros([9]), ids, values)
        assert lib.snn_sparse_binary_matmul(w, ids, count, values).shape == [3, 4]
        assert gw.shape == [9, 4] and gv.shape == [3, 5] and gu.shape == [3, 9]
        out = lib.snn_select_spikes(tf.zeros([3, 9]), tf.zeros([9]), tf.zeros([9]), capacity=5)
        assert [t.shape.as_list() for t in out] == [[3, 5], [3], [3], [3, 5]]
        return gw

    graph()


def test_from_ids_any_leading_shape():
    ids = tf.constant(np.arange(2 * 3 * 4).reshape(2, 3, 4), tf.int32)
    count = tf.constant([[0, 4, 2], [1, 3, 0]], tf.int32)
    spikes = SparseSpikes.from_ids(ids, count)
    assert spikes.values.dtype == tf.float32
    expected = (np.arange(4)[None, None, :] < count.numpy()[..., None]).astype(np.float32)
    np.testing.assert_array_equal(spikes.values.numpy(), expected)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 4], tf.int32), tf.TensorSpec([None, None], tf.int32)])
    def build(i, c):
        s = SparseSpikes.from_ids(i, c)
        assert s.values.shape.as_list() == [None, None, 4]
        return s.values

    np.testing.assert_array_equal(build(ids, count).numpy(), expected)


# ------------------------------------------------------------- error paths


def _valid_matmul_inputs():
    w = np.ones((5, 3), np.float32)
    ids = np.array([[0, 1, -1], [4, 2, 3]], np.int32)
    count = np.array([2, 1], np.int32)
    values = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    return w, ids, count, values


@pytest.mark.parametrize(
    "mutate,pattern",
    [
        (lambda ids, count: ids.__setitem__((0, 1), 5), r"ids\[0, 1\] = 5 .*\[0, n_in\).*n_in = 5"),
        (lambda ids, count: ids.__setitem__((0, 0), -1), r"ids\[0, 0\] = -1 .*spike slot"),
        (lambda ids, count: ids.__setitem__((1, 2), 99), r"ids\[1, 2\] = 99 .*\[-1, n_in\)"),
        (lambda ids, count: ids.__setitem__((1, 2), -2), r"ids\[1, 2\] = -2 .*\[-1, n_in\)"),
        (lambda ids, count: count.__setitem__(1, -1), r"count\[1\] = -1 is outside \[0, K\]"),
        (lambda ids, count: count.__setitem__(0, 4), r"count\[0\] = 4 is outside \[0, K\] with K = 3"),
    ],
    ids=["id>=n_in", "-1 in spike slot", "carrier id>=n_in", "carrier id<-1", "negative count", "count>K"],
)
def test_matmul_invalid_values_raise(lib, mutate, pattern):
    w, ids, count, values = _valid_matmul_inputs()
    mutate(ids, count)
    spikes = SparseSpikes(ids, count, values)
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        sparse_binary_matmul(w, spikes)
    # The grad op validates identically (it gathers the same rows).
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        lib.snn_sparse_binary_matmul_grad(w, ids, count, values, np.ones((2, 3), np.float32))
    # And the run-time check also fires inside a graph.
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        tf.function(lambda: sparse_binary_matmul(w, spikes))()


def test_matmul_wrong_dtype_raises_type_error():
    w, ids, count, values = _valid_matmul_inputs()
    with pytest.raises(TypeError, match="weights must have dtype float32, got float64"):
        sparse_binary_matmul(w.astype(np.float64), SparseSpikes(ids, count, values))
    with pytest.raises(TypeError, match="spikes.ids must have dtype int32, got int64"):
        sparse_binary_matmul(w, SparseSpikes(ids.astype(np.int64), count, values))
    with pytest.raises(TypeError, match="spikes.count must have dtype int32"):
        sparse_binary_matmul(w, SparseSpikes(ids, count.astype(np.float32), values))
    with pytest.raises(TypeError, match="spikes.values must have dtype float32"):
        sparse_binary_matmul(w, SparseSpikes(ids, count, values.astype(np.float64)))
    with pytest.raises(TypeError, match="spikes must be a SparseSpikes"):
        sparse_binary_matmul(w, ids)


def test_matmul_wrong_rank_or_shape_raises_value_error():
    w, ids, count, values = _valid_matmul_inputs()
    with pytest.raises(ValueError, match="weights must have rank 2"):
        sparse_binary_matmul(w[0], SparseSpikes(ids, count, values))
    with pytest.raises(ValueError, match="spikes.ids must have rank 2"):
        sparse_binary_matmul(w, SparseSpikes(ids[0], count, values))
    with pytest.raises(ValueError, match="spikes.count must have rank 1"):
        sparse_binary_matmul(w, SparseSpikes(ids, count[:, None], values))
    with pytest.raises(ValueError, match="spikes.values must have rank 2"):
        sparse_binary_matmul(w, SparseSpikes(ids, count, values[None]))
    with pytest.raises(ValueError, match="shape mismatch: spikes.ids and spikes.values capacity"):
        sparse_binary_matmul(w, SparseSpikes(ids, count, values[:, :2]))
    with pytest.raises(ValueError, match="shape mismatch: spikes.ids and spikes.count batch"):
        sparse_binary_matmul(w, SparseSpikes(ids, count[:1], values))


def test_matmul_kernel_shape_errors_without_wrapper(lib):
    # Calling the raw op eagerly skips the wrapper; the kernel must still
    # reject inconsistent shapes instead of reading out of bounds.
    w, ids, count, values = _valid_matmul_inputs()
    with pytest.raises(tf.errors.InvalidArgumentError, match="values shape .* must equal ids shape"):
        lib.snn_sparse_binary_matmul(w, ids, count, values[:, :2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="count has 1 entries but ids has batch size 2"):
        lib.snn_sparse_binary_matmul(w, ids, count[:1], values)
    with pytest.raises(tf.errors.InvalidArgumentError, match="weights must be a matrix"):
        lib.snn_sparse_binary_matmul(w[0], ids, count, values)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"grad_y must have shape \[B, n_out\] = \[2, 3\]"):
        lib.snn_sparse_binary_matmul_grad(w, ids, count, values, np.ones((2, 4), np.float32))


def test_select_capacity_errors(lib):
    u = np.zeros((2, 4), np.float32)
    th = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="capacity K=5 exceeds the number of neurons n=4"):
        select_spikes(u, th, th, capacity=5)
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        select_spikes(u, th, th, capacity=0)
    with pytest.raises(TypeError, match="capacity must be an int"):
        select_spikes(u, th, th, capacity=2.0)
    # Kernel check (n unknown to the wrapper and the shape function at trace
    # time).
    fn = tf.function(
        lambda u_, th_: select_spikes(u_, th_, th_, capacity=5),
        input_signature=[tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None], tf.float32)],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="capacity K=5 exceeds the number of neurons n=4"):
        fn(u, th)
    with pytest.raises(tf.errors.InvalidArgumentError, match="capacity K=5 exceeds the number of neurons n=4"):
        lib.snn_select_spikes(u, th, th, capacity=5)
    # Shape function check when n is static in a graph.
    with pytest.raises(ValueError, match="capacity K=5 exceeds the number of neurons n=4"):
        tf.function(lambda: lib.snn_select_spikes(u, th, th, capacity=5))()


def test_select_dtype_rank_shape_errors(lib):
    u = np.zeros((2, 4), np.float32)
    th = np.ones(4, np.float32)
    with pytest.raises(TypeError, match="u must have dtype float32, got float64"):
        select_spikes(u.astype(np.float64), th, th, 2)
    with pytest.raises(TypeError, match="threshold2 must have dtype float32"):
        select_spikes(u, th, th.astype(np.float64), 2)
    with pytest.raises(ValueError, match="u must have rank 2"):
        select_spikes(u[0], th, th, 2)
    with pytest.raises(ValueError, match="threshold must have rank 1"):
        select_spikes(u, th[None], th, 2)
    with pytest.raises(ValueError, match="shape mismatch: threshold length"):
        select_spikes(u, th[:3], th, 2)
    with pytest.raises(ValueError, match="shape mismatch: threshold2 length"):
        select_spikes(u, th, th[:3], 2)
    with pytest.raises(ValueError, match="beta must be finite and >= 0"):
        select_spikes(u, th, th, 2, beta=-1.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="threshold2 must be a vector of length n = 4"):
        lib.snn_select_spikes(u, th, th[:3], capacity=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="u must be a matrix"):
        lib.snn_select_spikes(u[0], th, th, capacity=2)


def test_select_grad_kernel_errors(lib):
    u = np.zeros((2, 4), np.float32)
    th = np.ones(4, np.float32)
    gv = np.ones((2, 3), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"ids\[1, 0\] = 4 must be in \[-1, n\) with n = 4"):
        lib.snn_select_spikes_grad(u, th, np.array([[0, 1, -1], [4, -1, -1]], np.int32), gv)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"ids\[0, 2\] = -3"):
        lib.snn_select_spikes_grad(u, th, np.array([[0, 1, -3], [0, -1, -1]], np.int32), gv)
    with pytest.raises(tf.errors.InvalidArgumentError, match="grad_values shape .* must equal ids shape"):
        lib.snn_select_spikes_grad(u, th, np.zeros((2, 3), np.int32), gv[:, :2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="beta must be finite and >= 0"):
        lib.snn_select_spikes_grad(u, th, np.zeros((2, 3), np.int32), gv, beta=-2.0)
