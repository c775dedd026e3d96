"""Tests of the fused multi-layer sparse LIF op against a plain NumPy model.

The reference below follows the model description step by step (loops over
samples, steps, layers and slots) so that it can be read against the spec;
the op must reproduce its spikes exactly and its weight gradients closely.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from snn_runner.sparse import library

if not library.available():  # pragma: no cover - depends on the build
    pytest.skip(f"compiled ops not found at {library.library_path()}", allow_module_level=True)

from snn_runner.sparse.fused import sparse_lif_layer  # noqa: E402

F32 = np.float32


# ---------------------------------------------------------------------------
# NumPy reference
# ---------------------------------------------------------------------------


def reference_forward(in_ids, in_count, weights, alpha, theta, theta2, caps, c=10.0, beta=10.0):
    """Forward pass in float32, one sample / step / layer at a time.

    Every operation rounds to float32 in the order of the model's formulas,
    as the op does, so membranes (and hence spikes) agree bit for bit.
    """
    B, T, _ = in_ids.shape
    L = len(weights)
    sizes = [w.shape[1] for w in weights]
    ids = [np.full((B, T, k), -1, np.int32) for k in caps]
    count = [np.zeros((B, T), np.int32) for _ in range(L)]
    dropped = [np.zeros((B, T), np.int32) for _ in range(L)]
    surrogate = [np.zeros((B, T, k), F32) for k in caps]
    logits = np.zeros((B, sizes[-1]), F32)
    for b in range(B):
        u = [np.zeros(n, F32) for n in sizes]
        sent_before = [[] for _ in range(L)]  # transmitted ids of the previous step
        for t in range(T):
            sent_now = []
            for l in range(L):
                if l == 0:
                    presyn = in_ids[b, t, : in_count[b, t]]
                else:
                    presyn = sent_before[l - 1]
                current = np.zeros(sizes[l], F32)
                for j in presyn:
                    current += weights[l][j]
                v = u[l]
                v = v - v * (v >= theta[l]).astype(F32)  # reset who fired
                v = alpha[l] * v + (F32(1) - alpha[l]) * F32(c) * current
                u[l] = v

                spiking = [i for i in range(sizes[l]) if v[i] >= theta[l][i]]
                sent = spiking[: caps[l]]
                slots = list(sent)
                for i in range(sizes[l]):
                    if len(slots) == caps[l]:
                        break
                    if theta2[l][i] < v[i] and not v[i] >= theta[l][i]:
                        slots.append(i)
                for k, i in enumerate(slots):
                    ids[l][b, t, k] = i
                    surrogate[l][b, t, k] = 1.0 / (beta * abs(v[i] - theta[l][i]) + 1.0) ** 2
                count[l][b, t] = len(sent)
                dropped[l][b, t] = len(spiking) - len(sent)
                sent_now.append(sent)
            sent_before = sent_now
            for i in sent_now[-1]:
                logits[b, i] += 1
    return logits, ids, count, dropped, surrogate


def reference_grad(grad_logits, in_ids, in_count, weights, alpha, ids, count, surrogate, c=10.0,
                   grad_count=None):
    """BPTT of the weights in float64, given the forward's slots.

    ``grad_count`` (per layer [B, T], optional) is d loss / d spike count:
    a count is the sum of its slot values (1 per spike, 0 per carrier), so
    every filled slot of (b, t) receives it.
    """
    B, T, _ = in_ids.shape
    L = len(weights)
    w64 = [w.astype(np.float64) for w in weights]
    grads = [np.zeros_like(w) for w in w64]
    for b in range(B):
        eps = [np.zeros(w.shape[1]) for w in weights]
        # ds[l][t, k] = dL / d(slot k of layer l at step t)
        ds = [np.zeros((T, ids[l].shape[2])) for l in range(L)]
        if grad_count is not None:
            for l in range(L):
                ds[l] += np.where(ids[l][b] >= 0, grad_count[l][b][:, None].astype(np.float64), 0.0)
        for t in range(T):
            for k in range(ids[L - 1].shape[2]):
                if ids[L - 1][b, t, k] >= 0:
                    ds[L - 1][t, k] += grad_logits[b, ids[L - 1][b, t, k]]
        for t in range(T - 1, -1, -1):
            for l in range(L - 1, -1, -1):
                a = alpha[l].astype(np.float64)
                eps[l] = a * eps[l]
                for k in range(ids[l].shape[2]):
                    i = ids[l][b, t, k]
                    if i >= 0:
                        eps[l][i] += ds[l][t, k] * surrogate[l][b, t, k]
                g_current = (1.0 - a) * c * eps[l]
                if l == 0:
                    presyn = in_ids[b, t, : in_count[b, t]]
                elif t > 0:
                    presyn = ids[l - 1][b, t - 1, : count[l - 1][b, t - 1]]
                else:
                    presyn = []
                for j in presyn:
                    grads[l][j] += g_current
                if l > 0 and t > 0:
                    for k in range(ids[l - 1].shape[2]):
                        j = ids[l - 1][b, t - 1, k]
                        if j >= 0:
                            ds[l - 1][t - 1, k] += w64[l][j] @ g_current
    return grads


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------


class Case:
    def __init__(self, seed, sizes, caps, T, B, K0, gain, theta2="finite", c=10.0, beta=10.0):
        rng = np.random.default_rng(seed)
        self.sizes, self.caps, self.c, self.beta = sizes, caps, c, beta
        self.weights = [
            (rng.uniform(-1, 1, (n_in, n_out)) * gain / math.sqrt(n_in)).astype(F32)
            for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        ]
        self.alpha = [rng.uniform(0.6, 0.95, n).astype(F32) for n in sizes[1:]]
        self.theta = [rng.uniform(0.5, 1.5, n).astype(F32) for n in sizes[1:]]
        if theta2 == "-inf":
            self.theta2 = [np.full(n, -np.inf, F32) for n in sizes[1:]]
        else:
            self.theta2 = [(th - rng.uniform(0.1, 0.8, th.shape)).astype(F32) for th in self.theta]
        # Ids past in_count are garbage on purpose: the op must ignore them.
        self.in_ids = rng.integers(-5, sizes[0] + 5, (B, T, K0)).astype(np.int32)
        self.in_count = rng.integers(0, K0 + 1, (B, T)).astype(np.int32)
        for b in range(B):
            for t in range(T):
                n = self.in_count[b, t]
                self.in_ids[b, t, :n] = rng.integers(0, sizes[0], n)
        self.grad_logits = rng.normal(size=(B, sizes[-1])).astype(F32)

    def run_reference(self):
        out = reference_forward(
            self.in_ids,
            self.in_count,
            self.weights,
            self.alpha,
            self.theta,
            self.theta2,
            self.caps,
            self.c,
            self.beta,
        )
        logits, ids, count, dropped, surrogate = out
        grads = reference_grad(
            self.grad_logits,
            self.in_ids,
            self.in_count,
            self.weights,
            self.alpha,
            ids,
            count,
            surrogate,
            self.c,
        )
        return logits, ids, count, dropped, surrogate, grads

    def call(self, weights):
        return sparse_lif_layer(
            self.in_ids,
            self.in_count,
            weights,
            self.alpha,
            self.theta,
            self.theta2,
            self.caps,
            input_scale=self.c,
            beta=self.beta,
        )

    def run_op(self):
        weights = [tf.Variable(w) for w in self.weights]
        with tf.GradientTape() as tape:
            out = self.call(weights)
            loss = tf.reduce_sum(out.logits * self.grad_logits)
        grads = tape.gradient(loss, weights)
        return out, [g.numpy() for g in grads]

    def raw_surrogate(self):
        ops = library.load()
        res = ops.snn_sparse_lif_layer(
            self.in_ids,
            self.in_count,
            self.weights,
            self.alpha,
            self.theta,
            self.theta2,
            capacities=self.caps,
            input_scale=self.c,
            beta=self.beta,
        )
        assert len(res.surrogate) == len(self.caps)
        return [s.numpy() for s in res.surrogate]


# name -> (Case kwargs, what the case must exhibit)
CASES = {
    # Every neuron fits: nothing dropped, every free slot is a carrier.
    "full_capacity_inf_theta2": (
        dict(sizes=[30, 24, 20, 6], caps=[24, 20, 6], T=14, B=3, K0=8, gain=2.5, theta2="-inf"),
        {"carriers"},
    ),
    "finite_theta2_carriers": (
        dict(sizes=[40, 32, 28, 7], caps=[12, 10, 7], T=16, B=4, K0=10, gain=2.5, theta2="finite"),
        {"carriers", "padding"},
    ),
    "tiny_capacity_drops": (
        dict(sizes=[40, 36, 30, 8], caps=[2, 2, 3], T=15, B=3, K0=12, gain=3.5, theta2="finite"),
        {"drops"},
    ),
    "other_scale_and_beta": (
        dict(
            sizes=[25, 20, 16, 5],
            caps=[6, 5, 5],
            T=12,
            B=3,
            K0=6,
            gain=4.0,
            theta2="finite",
            c=5.0,
            beta=3.0,
        ),
        {"carriers"},
    ),
    # Wide layers: several column tiles and tile groups per layer.
    "wide_multi_tile": (
        dict(
            sizes=[300, 2000, 2000, 6],
            caps=[40, 40, 6],
            T=10,
            B=3,
            K0=30,
            gain=6.0,
            theta2="finite",
        ),
        {"carriers", "drops"},
    ),
    # K = n above 24 slots: the backward pass buckets the slots by column
    # tile (odd widths, several tiles in layer 1, every slot filled).
    "bucketed_slots_k_equals_n": (
        dict(sizes=[60, 403, 29, 5], caps=[403, 29, 5], T=10, B=3, K0=12, gain=3.0, theta2="-inf"),
        {"carriers"},
    ),
    # One slot per step, odd widths: most spikes dropped, events grouped by
    # fewer than four per neuron in the backward dot products.
    "k1_odd_widths": (
        dict(sizes=[33, 47, 19, 3], caps=[1, 1, 3], T=14, B=3, K0=9, gain=3.5, theta2="finite"),
        {"drops"},
    ),
    # Long, narrow-input layer: several sample blocks in the backward pass.
    "sample_blocks": (
        dict(sizes=[20, 1000, 30, 5], caps=[30, 10, 5], T=20, B=8, K0=6, gain=3.0, theta2="finite"),
        {"carriers"},
    ),
}


def _check_case(case, features):
    logits, ids, count, dropped, surrogate, ref_grads = case.run_reference()
    # The case must exercise what it is meant to.
    assert sum(int(c.sum()) for c in count) > 0
    assert count[-1].sum() > 0, "the last layer never spikes: gradients would be trivial"
    n_carriers = sum(int(((i >= 0).sum(-1) - c).sum()) for i, c in zip(ids, count, strict=True))
    if "carriers" in features:
        assert n_carriers > 0
    if "padding" in features:
        assert any((i < 0).any() for i in ids)
    if "drops" in features:
        assert sum(int(d.sum()) for d in dropped) > 0

    out, grads = case.run_op()
    np.testing.assert_array_equal(out.logits.numpy(), logits)
    for l in range(len(case.caps)):
        np.testing.assert_array_equal(out.ids[l].numpy(), ids[l], err_msg=f"ids[{l}]")
        np.testing.assert_array_equal(out.count[l].numpy(), count[l], err_msg=f"count[{l}]")
        np.testing.assert_array_equal(out.dropped[l].numpy(), dropped[l], err_msg=f"dropped[{l}]")
    for l, s in enumerate(case.raw_surrogate()):
        np.testing.assert_allclose(s, surrogate[l], rtol=1e-4, atol=1e-6, err_msg=f"surrogate[{l}]")
    for l, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        scale = np.abs(r).max()
        assert scale > 0, f"reference gradient of layer {l} is zero"
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * scale, err_msg=f"grad[{l}]")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name, seed):
    kwargs, features = CASES[name]
    _check_case(Case(seed=seed, **kwargs), features)


def test_silent_input_gives_zero_output_and_gradient():
    case = Case(seed=3, sizes=[10, 8, 4], caps=[3, 4], T=5, B=2, K0=4, gain=2.0)
    case.in_count[:] = 0
    out, grads = case.run_op()
    assert not out.logits.numpy().any()
    for l in range(2):
        assert not out.count[l].numpy().any()
        assert not out.dropped[l].numpy().any()
    for g in grads:
        assert not g.any()


def test_exact_threshold_ties():
    # alpha = 0.5 and c = 2 make the input coefficient exactly 1, so the
    # membranes below are exact and hit both thresholds on the nose.
    weights = [np.array([[1.0, 0.25, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]], F32)]
    alpha = [np.full(4, 0.5, F32)]
    theta = [np.full(4, 1.0, F32)]
    theta2 = [np.full(4, 0.25, F32)]
    in_ids = np.array([[[0], [1], [1]]], np.int32)
    in_count = np.array([[1, 0, 0]], np.int32)
    out = sparse_lif_layer(in_ids, in_count, weights, alpha, theta, theta2, [4], input_scale=2.0)
    # t=0: u = [1, .25, .5, 0]: neuron 0 fires (u >= theta), neuron 1 sits
    # exactly on theta2 and is no carrier (theta2 < u is strict), neuron 2 is.
    # t=1: neuron 0 was reset to 0; neuron 2 decays to exactly theta2.
    np.testing.assert_array_equal(
        out.ids[0].numpy(), [[[0, 2, -1, -1], [-1, -1, -1, -1], [-1, -1, -1, -1]]]
    )
    np.testing.assert_array_equal(out.count[0].numpy(), [[1, 0, 0]])
    np.testing.assert_array_equal(out.logits.numpy(), [[1, 0, 0, 0]])
    ref = reference_forward(in_ids, in_count, weights, alpha, theta, theta2, [4], c=2.0)
    np.testing.assert_array_equal(out.ids[0].numpy(), ref[1][0])


@pytest.mark.parametrize("B,T,K0", [(0, 4, 2), (2, 0, 2), (2, 4, 0)])
def test_empty_dimensions(B, T, K0):
    case = Case(seed=10, sizes=[6, 5, 3], caps=[2, 3], T=max(T, 1), B=max(B, 1), K0=2, gain=2.0)
    weights = [tf.Variable(w) for w in case.weights]
    in_ids = np.zeros((B, T, K0), np.int32)
    in_count = np.full((B, T), K0, np.int32)
    with tf.GradientTape() as tape:
        out = sparse_lif_layer(
            in_ids, in_count, weights, case.alpha, case.theta, case.theta2, case.caps
        )
        loss = tf.reduce_sum(out.logits)
    grads = tape.gradient(loss, weights)
    assert out.logits.shape == (B, 3)
    assert [i.shape for i in out.ids] == [(B, T, 2), (B, T, 3)]
    assert not out.logits.numpy().any()
    for g, w in zip(grads, case.weights, strict=True):
        assert g.shape == w.shape and not g.numpy().any()


def test_single_layer():
    case = Case(seed=4, sizes=[30, 12], caps=[5], T=12, B=3, K0=10, gain=4.0)
    _check_case(case, {"carriers"})


def test_tf_function_and_unknown_shapes():
    case = Case(seed=5, **CASES["finite_theta2_carriers"][0])
    logits, ids, _, _, _, ref_grads = case.run_reference()
    weights = [tf.Variable(w) for w in case.weights]

    # Unknown batch and time dimensions leave all checks to the kernel.
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None], tf.int32),
            tf.TensorSpec([None, None], tf.int32),
        ]
    )
    def step(in_ids, in_count):
        with tf.GradientTape() as tape:
            out = sparse_lif_layer(
                in_ids, in_count, weights, case.alpha, case.theta, case.theta2, case.caps
            )
            loss = tf.reduce_sum(out.logits * case.grad_logits)
        return out, tape.gradient(loss, weights)

    out, grads = step(case.in_ids, case.in_count)
    assert out.logits.shape.rank == 2
    np.testing.assert_array_equal(out.logits.numpy(), logits)
    np.testing.assert_array_equal(out.ids[1].numpy(), ids[1])
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-4, atol=1e-5 * np.abs(r).max())


def test_static_shapes_in_graph():
    case = Case(seed=6, sizes=[12, 9, 5], caps=[4, 5], T=7, B=2, K0=3, gain=2.0)

    @tf.function
    def fwd():
        return case.call(case.weights)

    out = fwd.get_concrete_function().structured_outputs
    assert out.logits.shape.as_list() == [2, 5]
    assert out.ids[0].shape.as_list() == [2, 7, 4]
    assert out.count[1].shape.as_list() == [2, 7]
    assert out.dropped[1].shape.as_list() == [2, 7]


def test_only_weights_receive_gradients():
    case = Case(seed=7, sizes=[12, 9, 5], caps=[4, 5], T=7, B=2, K0=3, gain=3.0)
    weights = [tf.Variable(w) for w in case.weights]
    alpha = [tf.Variable(a) for a in case.alpha]
    theta = [tf.Variable(t) for t in case.theta]
    with tf.GradientTape() as tape:
        out = sparse_lif_layer(
            case.in_ids, case.in_count, weights, alpha, theta, case.theta2, case.caps
        )
        loss = tf.reduce_sum(out.logits * case.grad_logits)
    grads = tape.gradient(loss, weights + alpha + theta)
    assert all(g is not None for g in grads[:2])
    assert all(g is None for g in grads[2:])


def test_repeatable():
    case = Case(seed=8, **CASES["wide_multi_tile"][0])
    _, first = case.run_op()
    _, second = case.run_op()
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# Gradients of the spike counts (activity regularisation)
# ---------------------------------------------------------------------------


def _count_loss_grads(case, weights, grad_count, with_logits=True):
    with tf.GradientTape() as tape:
        out = case.call(weights)
        loss = tf.add_n([tf.reduce_sum(c * g) for c, g in zip(out.spike_count, grad_count, strict=True)])
        if with_logits:
            loss += tf.reduce_sum(out.logits * case.grad_logits)
    return out, [g.numpy() for g in tape.gradient(loss, weights)]


@pytest.mark.parametrize(
    "name,with_logits",
    [("full_capacity_inf_theta2", True), ("finite_theta2_carriers", True), ("tiny_capacity_drops", True),
     ("sample_blocks", True), ("wide_multi_tile", True), ("finite_theta2_carriers", False)],
)
def test_spike_count_gradient_matches_reference(name, with_logits):
    case = Case(seed=11, **CASES[name][0])
    _, ids, count, _, surrogate, _ = case.run_reference()
    rng = np.random.default_rng(12)
    grad_count = [rng.normal(size=c.shape).astype(F32) for c in count]
    grad_logits = case.grad_logits if with_logits else np.zeros_like(case.grad_logits)
    ref_args = (case.in_ids, case.in_count, case.weights, case.alpha, ids, count, surrogate, case.c)
    ref = reference_grad(grad_logits, *ref_args, grad_count=grad_count)
    without = reference_grad(grad_logits, *ref_args)
    out, grads = _count_loss_grads(case, [tf.Variable(w) for w in case.weights], grad_count, with_logits)
    for l, c in enumerate(count):
        assert out.spike_count[l].dtype == tf.float32
        np.testing.assert_array_equal(out.spike_count[l].numpy(), c, err_msg=f"spike_count[{l}]")
    for l, (g, r, w) in enumerate(zip(grads, ref, without, strict=True)):
        scale = np.abs(r).max()
        assert scale > 0 and not np.allclose(r, w, rtol=1e-3), f"the count term must matter in layer {l}"
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * scale, err_msg=f"grad[{l}]")


def test_spike_count_gradient_of_one_layer_only():
    # The other layers' value gradients are filled with zeros.
    case = Case(seed=14, **CASES["finite_theta2_carriers"][0])
    _, ids, count, _, surrogate, _ = case.run_reference()
    grad_count = [np.zeros(c.shape, F32) for c in count]
    grad_count[1] = np.random.default_rng(15).normal(size=count[1].shape).astype(F32)
    weights = [tf.Variable(w) for w in case.weights]
    with tf.GradientTape() as tape:
        out = case.call(weights)
        loss = tf.reduce_sum(out.logits * case.grad_logits) + tf.reduce_sum(out.spike_count[1] * grad_count[1])
    grads = tape.gradient(loss, weights)
    ref = reference_grad(case.grad_logits, case.in_ids, case.in_count, case.weights, case.alpha, ids, count,
                         surrogate, case.c, grad_count=grad_count)
    for g, r in zip(grads, ref, strict=True):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-4, atol=1e-5 * np.abs(r).max())


def test_plain_gradient_op_unless_the_counts_are_in_the_loss():
    case = Case(seed=13, sizes=[12, 9, 5], caps=[4, 5], T=7, B=2, K0=3, gain=3.0)
    weights = [tf.Variable(w) for w in case.weights]

    @tf.function
    def step(with_counts):
        with tf.GradientTape() as tape:
            out = case.call(weights)
            loss = tf.reduce_sum(out.logits * case.grad_logits)
            if with_counts:
                loss += tf.reduce_sum(out.spike_count[0])
            # counts outside the loss do not count
            tf.reduce_sum(out.spike_count[1])
        return tape.gradient(loss, weights)

    def op_types(with_counts):
        return {op.type for op in step.get_concrete_function(with_counts).graph.get_operations()}

    plain, regularised = op_types(False), op_types(True)
    assert "SnnSparseLifLayerGrad" in plain and "SnnSparseLifLayerGradWithValues" not in plain
    assert "SnnSparseLifLayerGradWithValues" in regularised and "SnnSparseLifLayerGrad" not in regularised


def test_spike_count_gradient_can_be_refused():
    from snn_runner.sparse.fused import spike_count

    case = Case(seed=16, sizes=[12, 9, 5], caps=[4, 5], T=7, B=2, K0=3, gain=3.0)
    res = library.load().snn_sparse_lif_layer(case.in_ids, case.in_count, case.weights, case.alpha, case.theta,
                                              case.theta2, capacities=case.caps)
    surrogate = tf.Variable(res.surrogate[0])
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(spike_count(res.count[0], surrogate, unsupported="not on this backend"))
    assert total.numpy() == res.count[0].numpy().sum()
    with pytest.raises(NotImplementedError, match="not on this backend"):
        tape.gradient(total, surrogate)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


@pytest.fixture
def small():
    return Case(seed=9, sizes=[10, 8, 4], caps=[3, 4], T=5, B=2, K0=4, gain=2.0)


def _args(case, **over):
    args = dict(
        in_ids=case.in_ids,
        in_count=case.in_count,
        weights=case.weights,
        alpha=case.alpha,
        threshold=case.theta,
        threshold2=case.theta2,
        capacities=case.caps,
    )
    args.update(over)
    return args


def test_wrapper_rejects_wrong_dtypes(small):
    with pytest.raises(TypeError, match="in_ids must be int32"):
        sparse_lif_layer(**_args(small, in_ids=tf.constant(small.in_ids, tf.int64)))
    with pytest.raises(TypeError, match=r"weights\[1\] must be float32"):
        sparse_lif_layer(
            **_args(small, weights=[small.weights[0], tf.constant(small.weights[1], tf.float64)])
        )
    with pytest.raises(TypeError, match="in_count"):
        sparse_lif_layer(**_args(small, in_count=small.in_count.astype(np.float32) + 0.5))
    with pytest.raises(TypeError, match="capacities"):
        sparse_lif_layer(**_args(small, capacities=[3, 2.5]))
    with pytest.raises(TypeError, match="weights must be a list"):
        sparse_lif_layer(**_args(small, weights=tf.constant(small.weights[0])))


def test_wrapper_rejects_wrong_ranks_and_sizes(small):
    with pytest.raises(ValueError, match="in_ids must have rank 3"):
        sparse_lif_layer(**_args(small, in_ids=small.in_ids[0]))
    with pytest.raises(ValueError, match="in_count shape"):
        sparse_lif_layer(**_args(small, in_count=small.in_count[:, :3]))
    with pytest.raises(ValueError, match=r"weights\[1\] has 7 rows but layer 0 has 8 neurons"):
        sparse_lif_layer(**_args(small, weights=[small.weights[0], small.weights[1][:7]]))
    with pytest.raises(ValueError, match=r"alpha\[0\] has length 7"):
        sparse_lif_layer(**_args(small, alpha=[small.alpha[0][:7], small.alpha[1]]))
    with pytest.raises(ValueError, match="threshold2 has 1 entries but there are 2 layers"):
        sparse_lif_layer(**_args(small, threshold2=small.theta2[:1]))
    with pytest.raises(ValueError, match=r"capacities\[1\] = 5 exceeds the size of layer 1"):
        sparse_lif_layer(**_args(small, capacities=[3, 5]))
    with pytest.raises(ValueError, match=r"capacities\[0\] = 0 must be >= 1"):
        sparse_lif_layer(**_args(small, capacities=[0, 4]))
    with pytest.raises(ValueError, match="capacities has 1 entries"):
        sparse_lif_layer(**_args(small, capacities=[3]))


def test_kernel_rejects_bad_input_values(small):
    bad = small.in_ids.copy()
    bad[1, 2, 0] = 10  # n_0 = 10
    small.in_count[1, 2] = max(1, small.in_count[1, 2])
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"in_ids\[1,2,0\] = 10 is outside \[0, 10\)"
    ):
        sparse_lif_layer(**_args(small, in_ids=bad))
    bad[1, 2, 0] = -1
    with pytest.raises(tf.errors.InvalidArgumentError, match="is outside"):
        sparse_lif_layer(**_args(small, in_ids=bad))
    count = small.in_count.copy()
    count[0, 1] = 5  # K0 = 4
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"in_count\[0,1\] = 5 is outside \[0, 4\]"
    ):
        sparse_lif_layer(**_args(small, in_count=count))
    count[0, 1] = -1
    with pytest.raises(tf.errors.InvalidArgumentError, match="in_count"):
        sparse_lif_layer(**_args(small, in_count=count))


def test_kernel_checks_shapes_hidden_from_the_wrapper(small):
    # With unknown static shapes only the kernel can catch the mismatch.
    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
    def run(w1):
        return sparse_lif_layer(**_args(small, weights=[small.weights[0], w1])).logits

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"weights\[1\] has 7 rows"):
        run(small.weights[1][:7])
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"alpha\[1\] must be a vector of length 3"
    ):
        run(np.ascontiguousarray(small.weights[1][:, :3]))

    # Consistent sizes but a capacity larger than the (statically unknown) layer.
    narrow = dict(
        alpha=[small.alpha[0], small.alpha[1][:3]],
        threshold=[small.theta[0], small.theta[1][:3]],
        threshold2=[small.theta2[0], small.theta2[1][:3]],
    )

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
    def run_narrow(w1):
        return sparse_lif_layer(**_args(small, weights=[small.weights[0], w1], **narrow)).logits

    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"capacities\[1\] = 4 must be in \[1, 3\]"
    ):
        run_narrow(np.ascontiguousarray(small.weights[1][:, :3]))


def test_grad_op_rejects_inconsistent_slots(small):
    ops = library.load()
    res = ops.snn_sparse_lif_layer(
        small.in_ids,
        small.in_count,
        small.weights,
        small.alpha,
        small.theta,
        small.theta2,
        capacities=small.caps,
    )
    ids, count, sur = list(res.ids), list(res.count), list(res.surrogate)
    g = np.ones((2, 4), F32)

    def grad(ids_, count_):
        return ops.snn_sparse_lif_layer_grad(
            g,
            small.in_ids,
            small.in_count,
            small.weights,
            small.alpha,
            ids_,
            count_,
            sur,
            capacities=small.caps,
        )

    grad(ids, count)  # consistent slots are accepted
    bad = ids[0].numpy()
    bad[0, 0, 0] = 8  # layer 0 has 8 neurons
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"ids\[0\]\[0,0,0\] = 8 is outside"):
        grad([tf.constant(bad), ids[1]], count)
    bad = ids[1].numpy()
    bad[1, 1, :] = [-1, 2, -1, -1]
    with pytest.raises(tf.errors.InvalidArgumentError, match="after the first -1 must be -1"):
        grad([ids[0], tf.constant(bad)], count)
    bad = ids[0].numpy()
    bad[1, 0, :] = [5, 2, -1]  # two carriers out of order
    with pytest.raises(tf.errors.InvalidArgumentError, match="ascending order"):
        grad([tf.constant(bad), ids[1]], [tf.zeros_like(count[0]), count[1]])
    bad_count = count[0].numpy()
    bad_count[0, 0] = 4  # more than K
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"count\[0\]\[0,0\] = 4"):
        grad(ids, [tf.constant(bad_count), count[1]])


def test_grad_op_with_values_checks_their_shapes(small):
    ops = library.load()
    res = ops.snn_sparse_lif_layer(small.in_ids, small.in_count, small.weights, small.alpha, small.theta,
                                   small.theta2, capacities=small.caps)
    sur = list(res.surrogate)

    def grad(values):
        return ops.snn_sparse_lif_layer_grad_with_values(
            np.ones((2, 4), F32), small.in_ids, small.in_count, small.weights, small.alpha, list(res.ids),
            list(res.count), sur, values, capacities=small.caps)

    grad([tf.zeros_like(s) for s in sur])  # accepted
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="grad_values|Dimension|Shapes"):
        grad([tf.zeros_like(sur[0]), tf.zeros([2, 5, 3])])

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
    def hidden(v1):
        return grad([tf.zeros_like(sur[0]), v1])

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"grad_values\[1\] must be \[2,5,4\]"):
        hidden(np.zeros((2, 5, 3), F32))
