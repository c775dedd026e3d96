import numpy as np
import pytest
import tensorflow as tf

from snn_runner.config import ModelConfig
from snn_runner.model import NetworkSpec, Parameters
from snn_runner.neuron.lif import LIFParameters, make_spike_fn, membrane_sequence, reset
from tests import reference


def test_membrane_sequence_and_firing_match_numpy_over_many_steps(rng):
    alpha, theta, c, beta = 0.9, 1.0, 10.0, 10.0
    current = rng.uniform(-0.1, 0.4, size=(30, 4, 50)).astype(np.float32)  # [T, B, n]
    u_tf = membrane_sequence(tf.constant(current), alpha, theta, c)
    s_tf = make_spike_fn(beta)(u_tf - theta)
    u_np = np.zeros((4, 50), np.float32)
    fired = 0
    for t in range(30):
        u_np, s_np = reference.lif_step(u_np, current[t], alpha, theta, c)
        np.testing.assert_allclose(u_tf[t].numpy(), u_np, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(s_tf[t].numpy(), s_np)
        fired += s_np.sum()
    assert fired > 0  # the check exercised the reset path


def test_reset_restarts_from_zero():
    # step 0 drives neuron 0 above threshold and neuron 1 below; step 1 has no input:
    # neuron 0 restarts from 0, neuron 1 only decays
    current = tf.constant([[[0.3, 0.1]], [[0.0, 0.0]]])
    u = membrane_sequence(current, 0.5, 1.0, 10.0).numpy()
    np.testing.assert_allclose(u[0], [[1.5, 0.5]])
    np.testing.assert_allclose(u[1], [[0.0, 0.25]])


def test_surrogate_gradient_matches_superspike_formula(rng):
    beta, theta = 10.0, 1.0
    spike = make_spike_fn(beta)
    u = tf.constant(rng.uniform(0.0, 2.0, size=(3, 20)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(3, 20)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(u)
        s = spike(u - theta)
        loss = tf.reduce_sum(s * upstream)
    grad = tape.gradient(loss, u).numpy()
    expected = upstream.numpy() * reference.surrogate(u.numpy(), theta, beta)
    np.testing.assert_allclose(grad, expected, rtol=1e-6)
    np.testing.assert_array_equal(s.numpy(), (u.numpy() >= theta).astype(np.float32))


def test_gradient_through_reset_is_stopped():
    # d u_t / d u_{t-1} must be alpha even for a neuron that was reset
    u0 = tf.constant([[1.5, 0.5]])
    with tf.GradientTape() as tape:
        tape.watch(u0)
        total = tf.reduce_sum(0.8 * reset(u0, 1.0))
    np.testing.assert_allclose(tape.gradient(total, u0).numpy(), [[0.8, 0.8]], rtol=1e-6)
    # and through the sequence: d u_1 / d current_0 = alpha * (1 - alpha) * c for both neurons
    current = tf.constant([[[0.3, 0.1]], [[0.0, 0.0]]])
    with tf.GradientTape() as tape:
        tape.watch(current)
        u = membrane_sequence(current, 0.5, 1.0, 10.0)
        total = tf.reduce_sum(u[1])
    np.testing.assert_allclose(tape.gradient(total, current).numpy()[0], [[2.5, 2.5]], rtol=1e-6)


def test_network_spec_holds_the_lif_parameters_and_parameters_expand_them():
    cfg = ModelConfig(hidden=(6,), alpha=0.8, threshold=2.0, threshold2_fraction=0.5, input_scale=3.0, beta=4.0)
    spec = NetworkSpec.from_config(cfg, n_in=5, n_out=3, input_capacity=2)
    assert spec.lif == LIFParameters(alpha=0.8, threshold=2.0, threshold2=1.0, input_scale=3.0, beta=4.0)
    params = Parameters(spec, seed=0)
    np.testing.assert_array_equal(params.alpha[0].numpy(), np.full(6, 0.8, np.float32))
    np.testing.assert_array_equal(params.threshold[1].numpy(), np.full(3, 2.0, np.float32))
    np.testing.assert_array_equal(params.threshold2[0].numpy(), np.full(6, 1.0, np.float32))
    assert np.all(np.isneginf(params.threshold2[1].numpy()))  # readout: every neuron carries gradients


@pytest.mark.parametrize("readout", ["membrane_max", "membrane_mean"])
def test_leaky_readout_equals_the_step_by_step_integrator(readout):
    from snn_runner.neuron.lif import leaky_readout

    rng = np.random.default_rng(3)
    steps, batch, n = 17, 3, 5
    current = rng.normal(size=(steps, batch, n)).astype(np.float32)
    alpha = np.array([0.0, 0.5, 0.9, 0.95, 0.99], np.float32)
    u, trace = np.zeros((batch, n), np.float64), []
    for t in range(steps):  # the LIF integrate step with no reset and no firing
        u = alpha * u + (1 - alpha) * 10.0 * current[t]
        trace.append(u)
    trace = np.stack(trace)
    expected = trace.max(axis=0) if readout == "membrane_max" else trace.mean(axis=0)
    got = leaky_readout(tf.constant(current), tf.constant(alpha), 10.0, readout).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
