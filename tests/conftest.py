import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from snn_runner.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402


@pytest.fixture
def easy_config() -> RunConfig:
    """A small randman task that a dense network learns in seconds."""
    return RunConfig(
        model=ModelConfig(hidden=(64,), implementation="dense"),
        data=DataConfig(channels=40, classes=4, time_steps=30, train_samples_per_class=100,
                        test_samples_per_class=50, seed=3),
        train=TrainConfig(epochs=6, batch_size=25, learning_rate=5e-3, seed=1),
    ).validate()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
