#!/usr/bin/env python3
"""Where a training step's time goes: per TensorFlow op, and inside the fused op per layer and phase.

Builds a bench case exactly as `snn-runner bench` times it (nmnist-base by
default: [1156, 1470, 1460, 10], T=100, B=48; model, data, fused Adam), then

1. runs --steps training steps with the fused op's phase timers on
   (SNN_OPS_PROFILE, common/profile.h; sparse_layer only) and prints, per
   layer and phase, the CPU time summed over threads per step, the work of
   the phase and its rate against the calibrated gather-add peak
   (snn_runner/bench/roofline.py) of one thread, since the timers count
   thread time;
2. traces --steps more with TensorFlow's profiler and prints the wall time
   per step of each op group (op wall times, summed over the executor's
   threads) and the step time in which no op ran ("TF overhead": function
   call, executor scheduling, Python).

    PYTHONPATH=. .venv/bin/python scripts/profile_step.py \\
        --implementation sparse_layer --implementation sparse_ops --max-activity 0.01 --max-activity 0.05

The timers add a clock read per phase and tile; the trace adds TensorFlow's
own per-op cost, so the step times printed here run a little above the
bench's.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["SNN_OPS_PROFILE"] = "1"  # read once by the library, so before it loads
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

# Phase order of ops/common/profile.h (ProfPhase).
PHASES = ["fwd pack", "fwd integrate", "fwd slots", "bwd bucket", "bwd setup", "bwd eps", "bwd events",
          "bwd store", "bwd reduce", "wall"]
MAX_LAYERS = 8

# Op groups of the trace: (label, test on (op name, op type)), first match wins.
GROUPS = [
    ("fused forward", lambda name, kind: kind == "SnnSparseLifLayer"),
    ("fused backward", lambda name, kind: kind.startswith("SnnSparseLifLayerGrad")),
    ("adam", lambda name, kind: "adam" in name.lower() or "Adam" in kind),
    ("loss", lambda name, kind: "Softmax" in kind or "sparse_softmax" in name.lower()),
]


def take_counters(lib_path: str) -> np.ndarray:
    """The fused op's phase timers [layer, phase] in ns since the last call (and clear them)."""
    lib = ctypes.CDLL(lib_path)
    buf = (ctypes.c_int64 * (MAX_LAYERS * len(PHASES)))()
    lib.snn_profile_take(buf, len(buf))
    return np.frombuffer(buf, np.int64).reshape(MAX_LAYERS, len(PHASES)).astype(np.float64)


def fused_work(case) -> tuple[list[float], list[float]]:
    """Per layer, events entering it and filled slots, over the batch and all steps."""
    from snn_runner.model import build_model

    data = case.data
    model = build_model("sparse_layer", case.spec, case.params, case.backend)
    out = model._fused(data.ids, data.count)
    events = [float(np.sum(data.count))] + [float(np.sum(c)) for c in out.count[:-1]]
    slots = [float(np.sum(i.numpy() >= 0)) for i in out.ids]
    return events, slots


def phase_table(case, counters: np.ndarray, steps: int, peak: float, threads: int) -> None:
    spec, data = case.spec, case.data
    sizes = spec.sizes
    T, B = data.time_steps, len(data.labels)
    events, slots = fused_work(case)
    per_thread = peak / threads
    ms = counters / steps / 1e6
    print(f"  fused op phases, CPU ms per step summed over {threads} threads; rate vs the calibrated "
          f"{peak:.1f} G/s ({per_thread:.1f} per thread)")
    print(f"  fused forward wall {ms[0, -1]:.2f} ms, backward wall {ms[1, -1]:.2f} ms per step")
    for layer in range(spec.spiking_layers):
        n = sizes[layer + 1]
        neurons = T * B * n
        work = {
            "fwd integrate": events[layer] * n + neurons,
            "bwd eps": neurons,
            "bwd events": events[layer] * n + (slots[layer - 1] * n if layer > 0 else 0.0),
        }
        for p, name in enumerate(PHASES[:-1]):
            if ms[layer, p] < 0.005:
                continue
            line = f"    layer {layer + 1} {name:14s} {ms[layer, p]:7.2f} ms"
            if name in work:
                rate = work[name] / (ms[layer, p] * 1e-3) / 1e9
                line += f"   {work[name] / 1e6:7.1f} M ops  {rate:5.1f} G/s/thread = {rate / per_thread:4.0%}"
            print(line)


def trace_table(step, data, steps: int) -> None:
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = tempfile.mkdtemp(prefix="snn-profile-")
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        step.train(data.ids, data.count, data.labels)[0].numpy()
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1], "rb") as f:
        space.ParseFromString(f.read())
    plane = next(p for p in space.planes if p.name == "/host:CPU")
    groups: dict[str, float] = defaultdict(float)
    kinds: dict[str, float] = defaultdict(float)
    busy, calls = [], []
    for line in plane.lines:
        base = line.timestamp_ns * 1000
        for ev in line.events:
            name = plane.event_metadata[ev.metadata_id].name
            if line.name == "python" and name == "_train":
                calls.append((base + ev.offset_ps, ev.duration_ps))
            if not line.name.startswith("tf_Compute") or ":" not in name or "::" in name:
                continue
            op, kind = name.rsplit(":", 1)
            label = next((g for g, test in GROUPS if test(op, kind)), "other ops")
            groups[label] += ev.duration_ps
            if label == "other ops":
                kinds[kind] += ev.duration_ps
            busy.append((base + ev.offset_ps, base + ev.offset_ps + ev.duration_ps))
    # time in which no op ran on any executor thread, inside the step calls
    busy.sort()
    covered, end = 0, -1
    for a, b in busy:
        if b > end:
            covered += b - max(a, end)
            end = b
    wall = sum(d for _, d in calls)
    n = max(1, len(calls))
    print(f"  traced step {wall / n / 1e9:.2f} ms (wall, {len(calls)} steps); op wall time per step:")
    for label in [g for g, _ in GROUPS] + ["other ops"]:
        if groups.get(label):
            print(f"    {label:16s} {groups[label] / n / 1e9:7.2f} ms  {groups[label] / wall:4.0%}")
    print(f"    {'TF overhead':16s} {(wall - covered) / n / 1e9:7.2f} ms  {(wall - covered) / wall:4.0%}"
          "  (no op running)")
    top = sorted(kinds.items(), key=lambda kv: -kv[1])[:12]
    print("  other ops by type: " + ", ".join(f"{k} {v / n / 1e9:.2f}" for k, v in top))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--implementation", action="append", choices=["sparse_layer", "sparse_ops", "dense"])
    parser.add_argument("--max-activity", type=float, action="append")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no-trace", action="store_true", help="only the fused op's phase timers")
    args = parser.parse_args()

    from snn_runner.bench.measure import prepare_case
    from snn_runner.bench.roofline import calibrate
    from snn_runner.bench.suite import case_config
    from snn_runner.config import BenchConfig
    from snn_runner.sparse import library

    bench = BenchConfig(threads=args.threads)
    for impl in args.implementation or ["sparse_layer"]:
        for activity in args.max_activity or [0.01]:
            case = prepare_case(case_config(bench, impl, activity), bench)
            step, data = case.step, case.data
            for _ in range(3):  # compile and warm up
                step.train(data.ids, data.count, data.labels)[0].numpy()
            print(f"{impl} max_activity {activity:g}: sizes {case.spec.sizes}, K {list(case.spec.capacities)}")
            take_counters(str(library.library_path()))
            wall, cpu = [], []
            for _ in range(args.steps):
                c0, w0 = time.process_time(), time.perf_counter()
                step.train(data.ids, data.count, data.labels)[0].numpy()
                wall.append((time.perf_counter() - w0) * 1e3)
                cpu.append((time.process_time() - c0) * 1e3)
            counters = take_counters(str(library.library_path()))
            print(f"  step wall min {min(wall):.2f} median {statistics.median(wall):.2f} ms, "
                  f"process CPU min {min(cpu):.2f} ms")
            peak = calibrate()["gops"]
            if impl == "sparse_layer":
                phase_table(case, counters, args.steps, peak, case.threads)
            if not args.no_trace:
                trace_table(step, data, args.steps)


if __name__ == "__main__":
    main()
