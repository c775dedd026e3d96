"""The correctness anchor: the sparse implementations equal the dense one.

With K = n and theta2 = -inf the sparse implementations are the dense model:
same spikes, same logits, same gradients. With a finite theta2 (and no
drops) the forward pass is the same and the gradients are the dense ones with
the surrogate of hidden neurons masked to u > theta2 (readout neurons always
carry gradients). With drops, the count is exact.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from snn_runner.backend import get_backend
from snn_runner.config import ModelConfig
from snn_runner.model import NetworkSpec, Parameters
from snn_runner.model import build_model as build_on_backend
from snn_runner.model.steps import capacity_penalty, rate_penalty
from snn_runner.sparse.spikes import frames_from_sparse
from snn_runner.neuron.lif import heaviside, superspike_derivative
from snn_runner.sparse import library
from tests import reference
from tests.test_dense import random_input

pytestmark = pytest.mark.skipif(not library.available(), reason="compiled ops not built (run scripts/build-ops)")

SPARSE = ("sparse_ops", "sparse_layer")
N_IN, N_OUT, STEPS, BATCH, K_IN = 30, 6, 24, 4, 10


def build_model(implementation, spec, params):
    return build_on_backend(implementation, spec, params, get_backend("cpu"))


def setup(seed, hidden=(40, 35), **model):
    cfg = ModelConfig(hidden=hidden, weight_scale=2.5, alpha=0.9, **model)
    spec = NetworkSpec.from_config(cfg, N_IN, N_OUT, K_IN)
    params = Parameters(spec, seed)
    rng = np.random.default_rng(100 + seed)
    ids, count = random_input(rng, BATCH, STEPS, N_IN, K_IN)
    labels_weight = tf.constant(rng.normal(size=(BATCH, N_OUT)).astype(np.float32))
    return spec, params, tf.constant(ids), tf.constant(count), labels_weight


def run(model, params, ids, count, weight):
    with tf.GradientTape() as tape:
        out = model(ids, count)
        # A loss touching every logit with a different weight, plus the
        # softmax cross-entropy used in training.
        loss = tf.reduce_sum(out.logits * weight) + tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(tf.zeros([BATCH], tf.int64), out.logits))
    grads = tape.gradient(loss, params.trainable)
    return out, [g.numpy() for g in grads]


def masked_spike_fn(beta, offset):
    """Heaviside with the surrogate zeroed where v = u - theta <= offset (= theta2 - theta)."""

    @tf.custom_gradient
    def spike(v):
        def grad(dy):
            return dy * superspike_derivative(v, beta) * tf.cast(v > offset, v.dtype)

        return heaviside(v), grad

    return spike


def assert_grads_close(actual, expected):
    for l, (a, e) in enumerate(zip(actual, expected)):
        scale = max(1e-3, np.abs(e).max())
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5 * scale, err_msg=f"layer {l + 1} weight gradient")


@pytest.mark.parametrize("implementation", SPARSE)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_capacity_all_carriers_equals_dense(implementation, seed):
    spec, params, ids, count, weight = setup(seed, max_activity=1.0, threshold2_fraction=-math.inf)
    assert spec.capacities == spec.sizes[1:]
    dense_out, dense_grads = run(build_model("dense", spec, params), params, ids, count, weight)
    out, grads = run(build_model(implementation, spec, params), params, ids, count, weight)
    assert np.all(dense_out.spikes.numpy() > 0), "every layer must spike for a meaningful comparison"
    np.testing.assert_array_equal(out.logits.numpy(), dense_out.logits.numpy())
    np.testing.assert_array_equal(out.spikes.numpy(), dense_out.spikes.numpy())
    assert out.dropped.numpy().sum() == 0
    assert all(np.abs(g).sum() > 0 for g in dense_grads)
    assert_grads_close(grads, dense_grads)


@pytest.mark.parametrize("implementation", SPARSE)
@pytest.mark.parametrize("seed", [0, 3])
def test_finite_theta2_matches_dense_with_masked_surrogate(implementation, seed):
    spec, params, ids, count, weight = setup(seed, max_activity=1.0, threshold2_fraction=0.5)
    dense = build_model("dense", spec, params)
    dense_out, plain_grads = run(dense, params, ids, count, weight)
    # hidden layers: surrogate only above theta2; the readout layer carries every neuron
    for l in range(spec.layers - 1):
        dense.spike_fns[l] = masked_spike_fn(spec.lif.beta, spec.lif.threshold2 - spec.lif.threshold)
    _, masked_grads = run(dense, params, ids, count, weight)
    out, grads = run(build_model(implementation, spec, params), params, ids, count, weight)
    np.testing.assert_array_equal(out.logits.numpy(), dense_out.logits.numpy())
    np.testing.assert_array_equal(out.spikes.numpy(), dense_out.spikes.numpy())
    assert_grads_close(grads, masked_grads)
    # the mask matters: otherwise this test could not tell the two apart
    assert any(not np.allclose(m, p, rtol=1e-3) for m, p in zip(masked_grads, plain_grads))


@pytest.mark.parametrize("implementation", SPARSE)
def test_dropped_spikes_are_counted_exactly(implementation):
    spec, params, ids, count, weight = setup(5, hidden=(40, 35), max_activity=0.05)  # K = 2 per hidden layer
    out = build_model(implementation, spec, params)(ids, count)
    # Layer 1 sees the same input as the dense reference, so its drops are known exactly.
    frames = frames_from_sparse(ids, count, N_IN).numpy()
    _, record = reference.network_forward(
        frames, [w.numpy() for w in params.weights], spec.lif.alpha, spec.lif.threshold, spec.lif.input_scale)
    per_step = record[0].sum(axis=2)  # spikes of layer 1 per (b, t)
    expected = np.maximum(per_step - spec.capacities[0], 0).sum()
    assert expected > 0, "the test needs drops"
    assert out.dropped.numpy()[0] == expected
    assert out.spikes.numpy()[0] == np.minimum(per_step, spec.capacities[0]).sum()


def test_implementations_agree_with_each_other_at_low_capacity():
    spec, params, ids, count, weight = setup(7, max_activity=0.1)
    a, ga = run(build_model("sparse_ops", spec, params), params, ids, count, weight)
    b, gb = run(build_model("sparse_layer", spec, params), params, ids, count, weight)
    assert a.dropped.numpy().sum() > 0
    np.testing.assert_array_equal(a.logits.numpy(), b.logits.numpy())
    np.testing.assert_array_equal(a.dropped.numpy(), b.dropped.numpy())
    assert_grads_close(gb, ga)


@pytest.mark.parametrize("implementation", SPARSE)
def test_rate_penalty_gradient_equals_dense(implementation):
    # Both sparse implementations count spikes as a sum of differentiable
    # slot values, so activity regularisation trains them exactly like the
    # dense model (K = n, theta2 = -inf).
    spec, params, ids, count, _ = setup(4, max_activity=1.0, threshold2_fraction=-math.inf)
    penalty = rate_penalty(0.2, 0.3, 50.0, STEPS, spec.sizes[1:])  # rates are ~0.05-0.2: the low hinge acts

    def grads(name):
        with tf.GradientTape() as tape:
            out = build_model(name, spec, params)(ids, count)
            loss = penalty(out.spikes, BATCH)
        return loss.numpy(), [g.numpy() for g in tape.gradient(loss, params.trainable)]

    dense_loss, dense_grads = grads("dense")
    sparse_loss, sparse_grads = grads(implementation)
    assert dense_loss > 0
    np.testing.assert_allclose(sparse_loss, dense_loss, rtol=1e-6)
    assert all(np.abs(g).sum() > 0 for g in dense_grads)
    assert_grads_close(sparse_grads, dense_grads)


def regularised_grads(model, params, ids, count, penalty):
    """Weight gradients of the training loss with the activity regulariser: cross-entropy + rate penalty."""
    labels = tf.constant(np.arange(BATCH) % N_OUT, tf.int64)
    with tf.GradientTape() as tape:
        out = model(ids, count)
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, out.logits))
        loss = ce + penalty(out.spikes, BATCH)
    return out, [g.numpy() for g in tape.gradient(loss, params.trainable)]


def assert_penalty_matters(params, ids, count, model, penalty, regularised):
    _, plain = regularised_grads(model, params, ids, count, lambda spikes, batch: 0.0)
    assert any(not np.allclose(r, p, rtol=1e-3) for r, p in zip(regularised, plain)), \
        "the rate penalty must change the gradient for a meaningful comparison"


@pytest.mark.parametrize("seed", [4, 5])
def test_sparse_layer_cross_entropy_and_rate_penalty_gradient_equals_dense(seed):
    spec, params, ids, count, _ = setup(seed, max_activity=1.0, threshold2_fraction=-math.inf)
    penalty = rate_penalty(0.2, 0.3, 5.0, STEPS, spec.sizes[1:])
    dense_out, dense_grads = regularised_grads(build_model("dense", spec, params), params, ids, count, penalty)
    model = build_model("sparse_layer", spec, params)
    out, grads = regularised_grads(model, params, ids, count, penalty)
    np.testing.assert_array_equal(out.spikes.numpy(), dense_out.spikes.numpy())
    assert_penalty_matters(params, ids, count, model, penalty, grads)
    assert_grads_close(grads, dense_grads)


@pytest.mark.parametrize("max_activity,seed", [(1.0, 3), (0.1, 7)])
def test_sparse_layer_rate_penalty_gradient_equals_sparse_ops_with_finite_theta2(max_activity, seed):
    # finite theta2: carriers only above it; max_activity 0.1: spikes dropped too
    spec, params, ids, count, _ = setup(seed, max_activity=max_activity, threshold2_fraction=0.5)
    penalty = rate_penalty(0.2, 0.3, 5.0, STEPS, spec.sizes[1:])
    ops_out, ops_grads = regularised_grads(build_model("sparse_ops", spec, params), params, ids, count, penalty)
    model = build_model("sparse_layer", spec, params)
    out, grads = regularised_grads(model, params, ids, count, penalty)
    np.testing.assert_array_equal(out.spikes.numpy(), ops_out.spikes.numpy())
    np.testing.assert_array_equal(out.dropped.numpy(), ops_out.dropped.numpy())
    if max_activity < 1:
        assert out.dropped.numpy().sum() > 0
    assert_penalty_matters(params, ids, count, model, penalty, grads)
    assert_grads_close(grads, ops_grads)


MEMBRANE = ("membrane_max", "membrane_mean")


def assert_logits_close(actual, expected):
    # membrane logits are float sums whose order differs between the dense
    # matmul and the sparse gathers
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("implementation", SPARSE)
@pytest.mark.parametrize("readout", MEMBRANE)
@pytest.mark.parametrize("seed", [0, 1])
def test_membrane_readout_full_capacity_all_carriers_equals_dense(implementation, readout, seed):
    spec, params, ids, count, weight = setup(seed, max_activity=1.0, threshold2_fraction=-math.inf, readout=readout)
    assert spec.membrane_readout and spec.spiking_layers == spec.layers - 1
    dense_out, dense_grads = run(build_model("dense", spec, params), params, ids, count, weight)
    out, grads = run(build_model(implementation, spec, params), params, ids, count, weight)
    logits = dense_out.logits.numpy()
    assert np.ptp(logits) > 0.1, "the readout membranes must differ for a meaningful comparison"
    assert_logits_close(out.logits.numpy(), logits)
    spikes = dense_out.spikes.numpy()
    assert np.all(spikes[:-1] > 0) and spikes[-1] == 0, "hidden layers spike, the readout never does"
    np.testing.assert_array_equal(out.spikes.numpy(), spikes)
    assert out.dropped.numpy().sum() == 0
    assert all(np.abs(g).sum() > 0 for g in dense_grads)
    assert_grads_close(grads, dense_grads)


@pytest.mark.parametrize("implementation", SPARSE)
@pytest.mark.parametrize("readout", MEMBRANE)
def test_membrane_readout_finite_theta2_matches_dense_with_masked_surrogate(implementation, readout):
    spec, params, ids, count, weight = setup(3, max_activity=1.0, threshold2_fraction=0.5, readout=readout)
    dense = build_model("dense", spec, params)
    dense_out, plain_grads = run(dense, params, ids, count, weight)
    for l in range(spec.spiking_layers):  # every spiking layer is hidden: all are masked
        dense.spike_fns[l] = masked_spike_fn(spec.lif.beta, spec.lif.threshold2 - spec.lif.threshold)
    _, masked_grads = run(dense, params, ids, count, weight)
    out, grads = run(build_model(implementation, spec, params), params, ids, count, weight)
    assert_logits_close(out.logits.numpy(), dense_out.logits.numpy())
    assert_grads_close(grads, masked_grads)
    assert any(not np.allclose(m, p, rtol=1e-3) for m, p in zip(masked_grads, plain_grads))


@pytest.mark.parametrize("readout", MEMBRANE)
def test_membrane_readout_implementations_agree_at_low_capacity(readout):
    spec, params, ids, count, weight = setup(7, max_activity=0.1, readout=readout)
    a, ga = run(build_model("sparse_ops", spec, params), params, ids, count, weight)
    b, gb = run(build_model("sparse_layer", spec, params), params, ids, count, weight)
    assert a.dropped.numpy().sum() > 0
    np.testing.assert_allclose(b.logits.numpy(), a.logits.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(a.dropped.numpy(), b.dropped.numpy())
    assert_grads_close(gb, ga)


@pytest.mark.parametrize("implementation", SPARSE)
def test_membrane_readout_with_rate_penalty_gradient_equals_dense(implementation):
    # both value-gradient paths of the fused op at once: the readout's and the regulariser's
    spec, params, ids, count, _ = setup(4, max_activity=1.0, threshold2_fraction=-math.inf, readout="membrane_max")
    penalty = rate_penalty(0.2, 0.3, 5.0, STEPS, spec.sizes[1:-1])
    dense_out, dense_grads = regularised_grads(build_model("dense", spec, params), params, ids, count, penalty)
    model = build_model(implementation, spec, params)
    out, grads = regularised_grads(model, params, ids, count, penalty)
    assert_logits_close(out.logits.numpy(), dense_out.logits.numpy())
    assert_penalty_matters(params, ids, count, model, penalty, grads)
    assert_grads_close(grads, dense_grads)


@pytest.mark.parametrize("implementation", SPARSE)
@pytest.mark.parametrize("readout", ["spike_count", "membrane_max"])
def test_capacity_penalty_gradient_equals_dense(implementation, readout):
    spec, params, ids, count, _ = setup(6, max_activity=1.0, threshold2_fraction=-math.inf, readout=readout)
    # with K = n the fill of a step is the layer's rate in that step; 0.05 makes the hinge act on busy steps
    penalty = capacity_penalty(50.0, 0.05, spec.capacities[:-1])
    model = build_model(implementation, spec, params)

    def grads(m):
        with tf.GradientTape() as tape:
            out = m(ids, count)
            loss = penalty(out, ids.shape[0])
        return loss.numpy(), [g.numpy() for g in tape.gradient(loss, params.trainable)[:-1]]

    dense_loss, dense_grads = grads(build_model("dense", spec, params))
    sparse_loss, sparse_grads = grads(model)
    assert dense_loss > 0
    np.testing.assert_allclose(sparse_loss, dense_loss, rtol=1e-6)
    assert all(np.abs(g).sum() > 0 for g in dense_grads)
    assert_grads_close(sparse_grads, dense_grads)


def test_capacity_penalty_counts_dropped_spikes_and_implementations_agree():
    spec, params, ids, count, _ = setup(7, max_activity=0.1, threshold2_fraction=0.5)
    penalty = capacity_penalty(50.0, 0.5, spec.capacities[:-1])

    def grads(name):
        with tf.GradientTape() as tape:
            out = build_model(name, spec, params)(ids, count)
            loss = penalty(out, ids.shape[0])
        return out, loss.numpy(), [g.numpy() for g in tape.gradient(loss, params.trainable)[:-1]]

    a, loss_a, ga = grads("sparse_ops")
    b, loss_b, gb = grads("sparse_layer")
    assert a.dropped.numpy().sum() > 0
    np.testing.assert_array_equal(a.step_dropped.numpy(), b.step_dropped.numpy())
    assert a.step_dropped.numpy().sum() == a.dropped.numpy()[:-1].sum()
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
    # the value counts the dropped spikes: without them it would be smaller
    fill = a.step_spikes.numpy() / np.array(spec.capacities[:-1], np.float32)[:, None, None]
    without = 50.0 * np.sum(np.mean(np.maximum(fill - 0.5, 0) ** 2, axis=(1, 2)))
    assert loss_a > without * 1.01
    assert_grads_close(gb, ga)
