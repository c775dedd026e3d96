import numpy as np

from snn_runner.config import DataConfig
from snn_runner.data.randman import load_randman, spike_times


def test_same_config_gives_identical_data():
    cfg = DataConfig(channels=30, classes=3, time_steps=20, train_samples_per_class=10, test_samples_per_class=5)
    a_train, a_test = load_randman(cfg)
    b_train, b_test = load_randman(cfg)
    for a, b in ((a_train, b_train), (a_test, b_test)):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.count, b.count)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_seed_changes_data_and_splits_differ():
    cfg = DataConfig(channels=30, classes=3, time_steps=20, train_samples_per_class=10, test_samples_per_class=10)
    t0, _ = spike_times(cfg, 10, stream=0)
    t1, _ = spike_times(cfg, 10, stream=1)
    t2, _ = spike_times(DataConfig(**{**cfg.__dict__, "seed": 1}), 10, stream=0)
    assert not np.array_equal(t0, t1)
    assert not np.array_equal(t0, t2)


def test_shapes_and_one_spike_per_channel():
    cfg = DataConfig(channels=25, classes=4, time_steps=40, train_samples_per_class=6, test_samples_per_class=3,
                     spike_window=0.5)
    train, test = load_randman(cfg)
    assert train.ids.shape[:2] == (24, 40) and test.ids.shape[:2] == (12, 40)
    assert train.capacity == test.capacity
    assert sorted(np.bincount(train.labels)) == [6, 6, 6, 6]
    for s in range(len(train)):
        seen = np.concatenate([train.ids[s, t, :train.count[s, t]] for t in range(40)])
        assert sorted(seen) == list(range(25))  # every channel exactly once
        # spikes only inside the spike window
        assert train.count[s, 20:].sum() == 0
    assert train.dropped_events == 0
