import numpy as np

from snn_runner.data.events import PAD, events_to_sparse


def test_binning_dedup_and_padding_by_hand():
    # bins and ids of 6 events; (1, 3) appears twice, one event is out of range
    bins = np.array([0, 1, 1, 1, 3, 9])
    chan = np.array([2, 3, 0, 3, 4, 1])
    ev = events_to_sparse([(bins, chan)], [0], time_steps=4, channels=5, classes=2, capacity=3)
    np.testing.assert_array_equal(ev.count[0], [1, 2, 0, 1])
    np.testing.assert_array_equal(ev.ids[0], [[2, PAD, PAD], [0, 3, PAD], [PAD] * 3, [4, PAD, PAD]])
    assert ev.dropped_events == 0


def test_cap_keeps_a_seeded_subset_and_counts_the_rest():
    bins = np.zeros(6, int)
    chan = np.array([5, 1, 4, 2, 0, 3])
    a = events_to_sparse([(bins, chan)], [1], 1, 6, 2, capacity=4, rng=np.random.default_rng(7))
    b = events_to_sparse([(bins, chan)], [1], 1, 6, 2, capacity=4, rng=np.random.default_rng(7))
    assert a.dropped_events == 2 and a.count[0, 0] == 4
    kept = a.ids[0, 0]
    assert len(set(kept)) == 4 and set(kept) <= set(range(6))
    np.testing.assert_array_equal(kept, b.ids[0, 0])
