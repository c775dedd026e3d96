"""The bench's work counts, its calibration op, and the kernels' independence of the thread count."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from snn_runner.bench.roofline import step_work
from snn_runner.sparse import library

needs_ops = pytest.mark.skipif(not library.available(), reason="compiled ops not built (run scripts/build-ops)")


def test_step_work_counts_rows_slots_and_neurons():
    # sizes [10, 4, 3, 2], T = 5, B = 2: 7 input events, 6 and 5 transmitted spikes, 9, 8 and 4 filled slots
    work = step_work((10, 4, 3, 2), 5, 2, events=[7, 6, 5], slots=[9, 8, 4])
    gather = 7 * 4 + 6 * 3 + 5 * 2  # one row of the next layer per event, forward and again for dW
    dots = 9 * 3 + 8 * 2  # one dot product per filled slot with the next layer's row (not the readout's)
    neurons = 2 * 5 * 2 * (4 + 3 + 2)
    assert work == {"row_ops": 2 * gather + dots, "neuron_updates": neurons, "total": 2 * gather + dots + neurons}


@needs_ops
def test_calibration_op_sums_the_chosen_rows_and_checks_its_input():
    import tensorflow as tf

    op = library.load().snn_gather_add_calibration
    rng = np.random.default_rng(0)
    table = rng.standard_normal((8, 32)).astype(np.float32)
    ids = np.array([1, 5, 2, 2, 7, 0], np.int32)
    sums = op(table, ids, group=3, repeats=2).numpy()
    # every worker ends with the last group's sum
    np.testing.assert_allclose(sums, np.broadcast_to(table[[2, 7, 0]].sum(axis=0), sums.shape), rtol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the table"):
        op(table, np.array([8], np.int32), group=1, repeats=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiple of 16"):
        op(table[:, :20], ids, group=1, repeats=1)


# Runs in a fresh interpreter with the op pool at a given size: the fused op's
# forward and gradients, and the per-step ops, on a network with odd widths.
THREAD_PROBE = textwrap.dedent("""
    import sys, json
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
    from snn_runner.backend import get_backend
    from snn_runner.config import ModelConfig
    from snn_runner.model import NetworkSpec, Parameters, build_model
    from tests.test_dense import random_input
    cfg = ModelConfig(hidden=(173, 67), weight_scale=2.5, alpha=0.9, max_activity=0.1)
    spec = NetworkSpec.from_config(cfg, 90, 7, 12)
    params = Parameters(spec, 3)
    ids, count = random_input(np.random.default_rng(4), 13, 40, 90, 12)
    out = {}
    for name in ("sparse_ops", "sparse_layer"):
        model = build_model(name, spec, params, get_backend("cpu"))
        with tf.GradientTape() as tape:
            o = model(tf.constant(ids), tf.constant(count))
            loss = tf.reduce_sum(o.logits * tf.range(7, dtype=tf.float32)) + 0.01 * tf.reduce_sum(o.spikes)
        grads = tape.gradient(loss, params.trainable)
        out[name] = [o.logits.numpy().tobytes().hex(), o.dropped.numpy().tolist()] + [
            g.numpy().tobytes().hex() for g in grads]
    print(json.dumps(out))
""")


@needs_ops
@pytest.mark.slow
def test_outputs_and_gradients_are_bit_identical_for_any_thread_count():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    results = {}
    for threads in (1, 2, 3, 8, 64):
        run = subprocess.run([sys.executable, "-c", THREAD_PROBE, str(threads)], capture_output=True, text=True,
                             cwd=root, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        results[threads] = json.loads(run.stdout.strip().splitlines()[-1])
    assert sum(results[1]["sparse_layer"][1]) > 0, "the probe must drop spikes to exercise the capacity limit"
    for threads, result in results.items():
        assert result == results[1], f"{threads} threads give different outputs or gradients than 1"


@needs_ops
def test_bench_command_with_hidden_time_steps_and_threads_prints_the_roofline(tmp_path):
    run = subprocess.run([sys.executable, "-m", "snn_runner.cli", "bench", "--network", "tiny", "--implementation",
                          "dense", "--implementation", "sparse_layer", "--max-activity", "0.1", "--hidden", "24,16",
                          "--time-steps", "12", "--threads", "1", "--warmup", "0", "--json", "b.json"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    records = json.loads((tmp_path / "b.json").read_text())
    dense, sparse = records
    assert dense["sizes"] == sparse["sizes"] == [100, 24, 16, 10]
    assert dense["time_steps"] == 12 and sparse["threads"] == dense["threads"] == 1
    assert dense["achieved_gops"] == 0 and sparse["row_ops"] > 0 and sparse["neuron_updates"] == 2 * 12 * 8 * 50
    assert sparse["peak_gops"] > 0 and sparse["roofline_fraction"] == sparse["achieved_gops"] / sparse["peak_gops"]
    assert "% of" in run.stdout and "| 1 |" in run.stdout


def test_scaling_plots_appear_only_for_the_size_a_sweep_varies(tmp_path):
    from snn_runner.results.report import SCALING_AXES, _scaling_plot

    def row(impl, width, act, step, rss, t=100, threads=2):
        return {"kind": "bench", "implementation": impl, "sizes": json.dumps([1156, width, width, 10]),
                "max_activity": act, "step_ms_median": step, "peak_rss_mb": rss, "time_steps": t, "threads": threads}

    rows = [row("dense", w, 0.01, w * 0.5, w) for w in (512, 1470, 4096)] + [
        row("sparse_layer", w, a, w * 0.01, 100) for w in (512, 1470, 4096) for a in (0.01, 0.05)]
    made = {axis[0]: _scaling_plot(rows, tmp_path, axis) for axis in SCALING_AXES}
    assert made["width"] is not None and made["width"].name == "scaling_width.png"
    assert made["width"].stat().st_size > 10_000
    assert made["time_steps"] is None and made["threads"] is None  # T and threads did not vary
