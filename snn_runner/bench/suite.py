"""Run benchmark cases side by side, each in a fresh process, and report them.

A fresh process per case gives each its own peak-memory figure and keeps one
implementation's graphs and caches from slowing the next; all cases still run
in one invocation on one machine, so their ratios are comparable.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Callable

from snn_runner.bench.measure import format_synops, measure_case
from snn_runner.config import BENCH_NETWORKS, BenchConfig, RunConfig
from snn_runner.files import atomic_text


def _child(conn, cfg: RunConfig, bench: BenchConfig) -> None:
    try:
        conn.send(("ok", measure_case(cfg, bench).to_dict()))
    except BaseException as exc:  # report any failure to the parent instead of dying silently
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_case_isolated(cfg: RunConfig, bench: BenchConfig) -> dict:
    """``measure_case`` in a fresh process; its record as a dict."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, cfg, bench))
    proc.start()
    child.close()
    what = f"{cfg.model.implementation} at max_activity {cfg.model.max_activity}"
    try:
        status, payload = parent.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"benchmark process for {what} died with exit code {proc.exitcode}") from None
    proc.join()
    if status != "ok":
        raise RuntimeError(f"benchmark {what} failed: {payload}")
    return payload


def case_config(bench: BenchConfig, implementation: str, max_activity: float,
                base: RunConfig | None = None) -> RunConfig:
    """The timed configuration of one case of ``bench``."""
    base = (base or RunConfig()).replace("model", implementation=implementation, max_activity=max_activity)
    return bench.apply(base)


def run_suite(bench: BenchConfig, implementations: list[str], activities: list[float],
              log: Callable[[str], None]) -> list[dict]:
    """Every implementation at every activity, dense once; implementations must be resolved names."""
    net = BENCH_NETWORKS[bench.network]
    log(f"bench: {bench.network} {list(bench.sizes)} T={bench.time_steps or net.time_steps} batch={net.batch_size} "
        f"input events/step={net.input_events}; {bench.steps} timed steps after {bench.warmup} warm-up")
    dense = None
    records = []
    if "dense" in implementations:
        # dense does not depend on max_activity: measure it once, report it per activity
        dense = run_case_isolated(case_config(bench, "dense", activities[0]), bench)
        log(_line(dense, None))
    for activity in activities:
        if dense is not None:
            records.append({**dense, "max_activity": activity, "speedup_vs_dense": 1.0})
        for impl in implementations:
            if impl == "dense":
                continue
            measured = run_case_isolated(case_config(bench, impl, activity), bench)
            rec = with_speedups([r for r in (dense, measured) if r is not None])[-1]
            log(_line(rec, dense))
            records.append(rec)
    return records


def roofline(rec: dict) -> str:
    """Work per step, achieved rate and fraction of the calibrated peak; "" where not measured."""
    if not rec.get("achieved_gops"):
        return ""
    text = (f"{format_synops(rec['row_ops'])} row-ops + {format_synops(rec['neuron_updates'])} neuron-updates, "
            f"{rec['achieved_gops']:.1f} G/s")
    if rec.get("peak_gops"):
        text += f" = {100 * rec['roofline_fraction']:.0f}% of {rec['peak_gops']:.1f}"
    return text


def with_speedups(records: list[dict]) -> list[dict]:
    """Add speed-ups against the dense record of the same network (when there is one)."""
    dense = {(r["network"], tuple(r["sizes"])): r for r in records if r["implementation"] == "dense"}
    out = []
    for r in records:
        d = dense.get((r["network"], tuple(r["sizes"])))
        out.append({**r, "speedup_vs_dense": d["step_ms_median"] / r["step_ms_median"] if d else None,
                    "forward_speedup_vs_dense": d["forward_ms_median"] / r["forward_ms_median"] if d else None})
    return out


def _line(rec: dict, dense: dict | None) -> str:
    rates = "/".join(f"{100 * r:.2f}" for r in rec["spike_rate_per_layer"])
    drops = "/".join(f"{d:.0f}" for d in rec["dropped_spikes"])
    speed = f"  x{rec['speedup_vs_dense']:.2f}" if dense else ""
    act = "-" if rec["implementation"] == "dense" else f"{rec['max_activity']:.2f}"
    return (f"  {rec['implementation']:<13} act {act:>4}  step {rec['step_ms_median']:8.1f} ms"
            f"  fwd {rec['forward_ms_median']:7.1f} ms{speed}  rate% {rates}  dropped/step {drops}"
            f"  synops/sample {synops(rec) or '-'}  rss {rec['peak_rss_mb']:.0f} MB"
            f"  compile {rec['compile_s']:.1f} s" + (f"  work {work}" if (work := roofline(rec)) else ""))


def synops(rec: dict) -> str:
    """Total synaptic operations per sample; "" for records made before bench counted them."""
    total = rec.get("synops_total")
    if total is None and rec.get("synops_per_sample") is not None:
        total = sum(rec["synops_per_sample"])
    return "" if total is None else format_synops(float(total))


def format_table(records: list[dict]) -> str:
    head = ("| network | implementation | max_activity | step ms (median) | forward ms | speed-up vs dense (step) "
            "| spike rate % per layer | dropped/step per layer | SynOps/sample | peak RSS MB | threads "
            "| work per step, rate, % of calibrated peak |")
    rows = [head, "|" + "---|" * 12]
    shown_dense = set()
    for r in records:
        if r["implementation"] == "dense":
            # one dense step per network, repeated per max_activity in the records: one row
            if tuple(r["sizes"]) in shown_dense:
                continue
            shown_dense.add(tuple(r["sizes"]))
        speed = r.get("speedup_vs_dense")
        act = "-" if r["implementation"] == "dense" else f"{r['max_activity']:.2f}"  # dense has no capacity
        rows.append(
            f"| {r['sizes']} | {r['implementation']} | {act} | {r['step_ms_median']:.1f} "
            f"| {r['forward_ms_median']:.1f} | {'' if speed is None else f'{speed:.2f}x'} "
            f"| {' / '.join(f'{100 * x:.2f}' for x in r['spike_rate_per_layer'])} "
            f"| {' / '.join(f'{x:.0f}' for x in r['dropped_spikes'])} | {synops(r)} | {r['peak_rss_mb']:.0f} "
            f"| {r.get('threads') or ''} | {roofline(r)} |")
    return "\n".join(rows)


def write_json(records: list[dict], path: Path) -> None:
    atomic_text(path, json.dumps(records, indent=1))
