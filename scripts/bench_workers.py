#!/usr/bin/env python3
"""Data-parallel cost on this machine: epoch time with 1 and N local workers, and the all-reduce per step.

1. Trains JOB (default jobs/multiworker.yaml, with --epochs) in one process
   and with `--workers N`, side by side, and prints the median epoch time of
   each (from the result files' /metrics/epoch_seconds).
2. Times the ring all-reduce of one step's gradients (the shapes of that
   network's trainable variables) between N local workers, with the same
   strategy the trainer uses, and prints the bytes and the time per step.

    .venv/bin/python scripts/bench_workers.py --workers 2 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(ROOT))


def train(job: Path, out: Path, epochs: int, workers: int) -> float:
    from snn_runner.results.store import read_result

    cmd = [sys.executable, "-m", "snn_runner.cli", "train", str(job), "--output-dir", str(out)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    run = subprocess.run(cmd, cwd=out.parent, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"training with {workers} worker(s) failed:\n{run.stderr[-3000:]}")
    result = read_result(next(out.glob("*.h5")))
    seconds = list(result["metrics"]["epoch_seconds"])
    return statistics.median(seconds[1:] or seconds)  # the first epoch includes tracing


def gradient_shapes(job: Path) -> list[list[int]]:
    """The trainable variables' shapes of the job's network (weights, then the per-neuron parameters)."""
    from snn_runner.data import load_splits
    from snn_runner.jobs import load_job
    from snn_runner.model import NetworkSpec, Parameters

    cfg = load_job(job).task(0).config
    train_set = load_splits(cfg.data, lambda _: None)["train"]
    spec = NetworkSpec.from_config(cfg.model, train_set.channels, train_set.classes, train_set.capacity)
    return [list(v.shape) for v in Parameters(spec, 0).trainable]


def allreduce_worker(shapes: list[list[int]], repeat: int) -> None:
    """One worker of the all-reduce timing (started by ``allreduce`` with the launcher's environment)."""
    import numpy as np
    import tensorflow as tf

    from snn_runner.distribute import workers_from_environment
    from snn_runner.distribute.strategy import make_strategy

    workers = workers_from_environment()
    strategy = make_strategy(workers)
    grads = [tf.constant(np.random.default_rng(workers.rank).normal(size=s).astype(np.float32)) for s in shapes]

    def replica(*g):
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, [tf.identity(x) for x in g])

    @tf.function
    def step():
        return strategy.run(replica, args=tuple(grads))

    for _ in range(3):
        step()[0].numpy()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()[0].numpy()
        times.append((time.perf_counter() - t0) * 1e3)
    if workers.rank == 0:
        print(json.dumps({"min_ms": min(times), "median_ms": statistics.median(times)}), flush=True)


def allreduce(shapes, workers: int, repeat: int) -> dict:
    from snn_runner.distribute.cluster import ENV, local_workers

    procs = []
    for w in local_workers(workers):
        env = {**os.environ, ENV: w.to_env(), "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_NUM_INTRAOP_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
        procs.append(subprocess.Popen([sys.executable, __file__, "--allreduce-worker", json.dumps(shapes),
                                       "--repeat", str(repeat)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate() for p in procs]
    if any(p.returncode for p in procs):
        sys.exit("the all-reduce timing failed:\n" + "\n".join(err[-2000:] for _, err in outs))
    outs = [out for out, _ in outs]
    return json.loads(outs[0].strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", type=Path, default=ROOT / "jobs" / "multiworker.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--allreduce-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.allreduce_worker is not None:
        allreduce_worker(json.loads(args.allreduce_worker), args.repeat)
        return

    shapes = gradient_shapes(args.job)
    n_bytes = 4 * sum(math.prod(s) for s in shapes)
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / args.job.name
        text = args.job.read_text()
        job.write_text(text.replace("epochs: 10", f"epochs: {args.epochs}") if "epochs: 10" in text else text)
        one = train(job, Path(tmp) / "one", args.epochs, 1)
        many = train(job, Path(tmp) / "many", args.epochs, args.workers)
    timing = allreduce(shapes, args.workers, args.repeat)
    print(f"job {args.job.name}: {args.epochs} epochs, {os.cpu_count()} cores")
    print(f"epoch time (median): 1 worker {one:.2f} s, {args.workers} workers {many:.2f} s "
          f"(ratio {one / many:.2f})")
    print(f"all-reduce of one step's gradients: {n_bytes / 1e6:.2f} MB in {len(shapes)} tensors, "
          f"{args.workers} workers: median {timing['median_ms']:.1f} ms, min {timing['min_ms']:.1f} ms")


if __name__ == "__main__":
    main()
