#!/usr/bin/env python3
"""Times the fused sparse LIF op on the reference benchmark network.

Default setup: sizes 1156-1470-1460-10, T=100, B=48, 32 random input ids per
step, hidden capacities ceil(0.01 * n), output capacity n_L, weights uniform
in +-2*sqrt(6/fan_in) times --scale.

Prints the forward time, the training-step time (forward + weight gradient
through the registered gradient) and the spike statistics per layer.

    SNN_RUNNER_OPS_LIB=/tmp/opsB/libsnn_ops.so PYTHONPATH=. \\
        .venv/bin/python scripts/bench_fused_layer.py --capacity 0.01 0.05
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from snn_runner.sparse.fused import sparse_lif_layer  # noqa: E402


def build(args, capacity: float):
    rng = np.random.default_rng(args.seed)
    sizes = args.sizes
    weights = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        bound = 2.0 * math.sqrt(6.0 / n_in) * args.scale
        weights.append(tf.Variable(rng.uniform(-bound, bound, (n_in, n_out)).astype(np.float32)))
    n_hidden = sizes[1:]
    alpha = [np.full(n, args.alpha, np.float32) for n in n_hidden]
    theta = [np.full(n, args.theta, np.float32) for n in n_hidden]
    theta2 = [np.full(n, args.theta2, np.float32) for n in n_hidden]
    caps = [max(1, math.ceil(capacity * n)) for n in n_hidden[:-1]] + [n_hidden[-1]]
    in_ids = rng.integers(0, sizes[0], (args.batch, args.steps, args.k0)).astype(np.int32)
    in_count = np.full((args.batch, args.steps), args.k0, np.int32)
    return weights, alpha, theta, theta2, caps, tf.constant(in_ids), tf.constant(in_count)


def timed(fn, repeat: int, warmup: int = 2):
    """Min and median wall time, and min process CPU time, in ms.

    CPU time (all threads) is the steadier number when other work shares the
    machine; on an idle machine wall ~= CPU / number of cores used.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return min(wall), statistics.median(wall), min(cpu)


def run(args, capacity: float):
    weights, alpha, theta, theta2, caps, in_ids, in_count = build(args, capacity)
    grad_out = tf.constant(
        np.random.default_rng(args.seed + 1)
        .normal(size=(args.batch, args.sizes[-1]))
        .astype(np.float32)
    )

    @tf.function
    def forward():
        return sparse_lif_layer(in_ids, in_count, weights, alpha, theta, theta2, caps)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            out = sparse_lif_layer(in_ids, in_count, weights, alpha, theta, theta2, caps)
            loss = tf.reduce_sum(out.logits * grad_out)
        return tape.gradient(loss, weights)

    # .numpy() forces completion so the timing covers the whole op.
    fwd = timed(lambda: forward().logits.numpy(), args.repeat)
    step = timed(lambda: [g.numpy() for g in train_step()], args.repeat)

    out = forward()
    print(f"capacity {capacity:g}: K = {caps}")
    print(f"  forward     min {fwd[0]:7.1f} ms   median {fwd[1]:7.1f} ms   cpu {fwd[2]:7.1f} ms")
    print(
        f"  train step  min {step[0]:7.1f} ms   median {step[1]:7.1f} ms   cpu {step[2]:7.1f} ms"
        "  (forward + grad)"
    )
    cells = args.batch * args.steps
    for layer, (n, count, dropped, ids) in enumerate(
        zip(args.sizes[1:], out.count, out.dropped, out.ids, strict=True)
    ):
        sent = int(tf.reduce_sum(count))
        lost = int(tf.reduce_sum(dropped))
        filled = int(tf.reduce_sum(tf.cast(ids >= 0, tf.int32)))
        print(
            f"  layer {layer + 1}: rate {(sent + lost) / (cells * n):.4f} spikes/neuron/step, "
            f"transmitted {sent / cells:.2f}/step, dropped {lost} total "
            f"({lost / max(1, sent + lost):.1%}), filled slots {filled / cells:.2f}/step"
        )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1156, 1470, 1460, 10])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--k0", type=int, default=32, help="input ids per step")
    parser.add_argument(
        "--capacity",
        type=float,
        nargs="+",
        default=[0.01],
        help="hidden-layer capacity fraction(s); the output layer gets K = n_L",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="factor on the weight bound")
    parser.add_argument("--alpha", type=float, default=0.95)
    parser.add_argument("--theta", type=float, default=1.0)
    parser.add_argument(
        "--theta2",
        type=float,
        default=-math.inf,
        help="carrier threshold (-inf: every free slot carries a gradient)",
    )
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    threads = tf.config.threading.get_intra_op_parallelism_threads() or "default"
    print(
        f"TF {tf.__version__}, intra-op threads {threads}, "
        f"sizes {args.sizes}, T={args.steps}, B={args.batch}, K0={args.k0}, scale {args.scale}, "
        f"theta2 {args.theta2}"
    )
    for capacity in args.capacity:
        run(args, capacity)


if __name__ == "__main__":
    main()
