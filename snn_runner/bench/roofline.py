"""The work a sparse training step cannot avoid, and what these cores can do of it.

Work per training step of the fused model (forward and BPTT), counted from
the step's own spikes and slots, in float operations on weight rows and
membranes:

- forward gather-adds: every event entering layer l (input events for l = 1,
  transmitted spikes of layer l-1 otherwise) adds one row of n_l weights;
- weight-gradient scatter-adds: the same events add one row of n_l to dW;
- slot dot products: every filled slot (spike or carrier) of layer l-1 takes
  a dot product with one row of n_l (its d loss / d value), l >= 2;
- neuron updates: each of the n_l neurons of each layer, at each step of
  each sample, is integrated forward and has its eps recursion backward.

The machine's own rate is measured in the same run by the calibration op
(SnnGatherAddCalibration: groups of L2-resident rows summed into vector
accumulators on every pool thread), and the bench reports the fraction of it
that a case achieves. One row element or one neuron update counts as one
operation, so the fraction says how close a step is to streaming its work
at the gather-add rate.
"""

from __future__ import annotations

import time

import numpy as np

# A 256 KB table: resident in the L2 of one core of this machine (1 MB), as a
# fused-op weight tile is.
CALIBRATION_ROWS = 256
CALIBRATION_WIDTH = 256
CALIBRATION_GROUP = 32  # rows per sum: the bench network's input events per step


def step_work(sizes, time_steps: int, batch: int, events, slots) -> dict[str, float]:
    """Operations of one training step; ``events`` [L] entering each layer and ``slots`` [L] filled, per step.

    ``events[l]`` counts what enters layer l+1 over the whole batch and all
    steps (input events for l = 0), ``slots[l]`` the filled slots of layer l+1.
    """
    n = np.asarray(sizes[1:], np.float64)
    events = np.asarray(events, np.float64)
    slots = np.asarray(slots, np.float64)
    gather = float(np.sum(events * n))
    dots = float(np.sum(slots[:-1] * n[1:]))
    neurons = float(2 * time_steps * batch * np.sum(n))
    return {"row_ops": 2 * gather + dots, "neuron_updates": neurons, "total": 2 * gather + dots + neurons}


def calibrate(seconds: float = 0.5) -> dict[str, float]:
    """The gather-add rate of this process's op pool: {"gops": 1e9 adds/s, "threads": pool threads}."""
    import tensorflow as tf

    from snn_runner.sparse import library

    rng = np.random.default_rng(0)
    table = tf.constant(rng.standard_normal((CALIBRATION_ROWS, CALIBRATION_WIDTH)).astype(np.float32))
    ids = tf.constant(rng.integers(0, CALIBRATION_ROWS, 4096).astype(np.int32))
    op = library.load().snn_gather_add_calibration

    def run(repeats: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        sums = op(table, ids, group=CALIBRATION_GROUP, repeats=repeats).numpy()
        return time.perf_counter() - t0, sums.shape[0]

    run(1)  # first call: kernel construction, pool start-up
    repeats = 1
    while True:  # grow until one call lasts long enough that its overhead does not count
        elapsed, workers = run(repeats)
        if elapsed >= seconds / 4 or repeats >= 1 << 16:
            break
        repeats *= 2
    best = min(run(repeats)[0] for _ in range(3))
    adds = workers * repeats * (ids.shape[0] // CALIBRATION_GROUP) * CALIBRATION_GROUP * CALIBRATION_WIDTH
    return {"gops": adds / best / 1e9, "threads": float(workers)}
