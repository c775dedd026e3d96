import numpy as np
import pytest
import tensorflow as tf

from snn_runner.backend import get_backend
from snn_runner.config import ModelConfig
from snn_runner.model import NetworkSpec, Parameters
from snn_runner.model.dense import DenseModel
from snn_runner.sparse.spikes import frames_from_sparse
from tests import reference


def random_input(rng, batch, steps, n_in, capacity):
    ids = np.full((batch, steps, capacity), -1, np.int32)
    count = rng.integers(0, capacity + 1, size=(batch, steps)).astype(np.int32)
    for b in range(batch):
        for t in range(steps):
            ids[b, t, :count[b, t]] = rng.choice(n_in, count[b, t], replace=False)
    return ids, count


def test_frames_hold_exactly_the_sparse_spikes(rng):
    ids, count = random_input(rng, 3, 7, 20, 5)
    frames = frames_from_sparse(tf.constant(ids), tf.constant(count), 20).numpy()
    expected = np.zeros((3, 7, 20), np.float32)
    for b in range(3):
        for t in range(7):
            expected[b, t, ids[b, t, :count[b, t]]] = 1.0
    np.testing.assert_array_equal(frames, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_model_matches_stepwise_numpy_network(seed):
    rng = np.random.default_rng(seed)
    cfg = ModelConfig(hidden=(30, 25), weight_scale=2.0, alpha=0.9)
    spec = NetworkSpec.from_config(cfg, n_in=40, n_out=5, input_capacity=8)
    params = Parameters(spec, seed)
    ids, count = random_input(rng, 4, 25, 40, 8)
    out = DenseModel(spec, params, get_backend("cpu"))(tf.constant(ids), tf.constant(count))
    frames = frames_from_sparse(tf.constant(ids), tf.constant(count), 40).numpy()
    logits, record = reference.network_forward(
        frames, [w.numpy() for w in params.weights], cfg.alpha, cfg.threshold, cfg.input_scale
    )
    np.testing.assert_array_equal(out.logits.numpy(), logits)
    np.testing.assert_array_equal(out.spikes.numpy(), [r.sum() for r in record])
    assert all(r.sum() > 0 for r in record), "every layer should spike for the comparison to mean something"
