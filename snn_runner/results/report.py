"""Plots and a Markdown summary from a collected table."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # batch nodes have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from snn_runner.files import atomic_text  # noqa: E402
from snn_runner.results.collect import read_table  # noqa: E402


def _label(row: dict[str, Any]) -> str:
    act = "" if row["implementation"] == "dense" else f" act {float(row['max_activity']):g}"
    return f"{row['implementation']}{act} #{int(row['task_index'])}" if row["task_index"] != "" else row["file"]


def _net_key(row: dict[str, Any]) -> tuple[str, str]:
    return row["network"], row["sizes"]


def _dense_steps(bench: list[dict]) -> dict[tuple[str, str], float]:
    """Dense step time per network: the baseline of every speed-up."""
    return {_net_key(r): float(r["step_ms_median"]) for r in bench if r["implementation"] == "dense"}


def _bench_plot(rows: list[dict], out: Path) -> Path | None:
    bench = [r for r in rows if r["kind"] == "bench"]
    if not bench:
        return None
    dense = _dense_steps(bench)
    several = len({r["sizes"] for r in bench}) > 1
    by_impl = defaultdict(list)
    for r in bench:
        name = f"{r['implementation']} {r['sizes']}" if several else r["implementation"]
        by_impl[name].append((float(r["max_activity"]), float(r["step_ms_median"]), _net_key(r)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {}
    for impl, points in sorted(by_impl.items()):
        points.sort()
        colour = colours.setdefault(impl, f"C{len(colours)}")  # same colour in both panels
        if impl.startswith("dense"):
            # dense does not depend on the capacity: one time, drawn across the axis
            ax1.axhline(points[0][1], color=colour, ls="--", label=impl)
            continue
        acts = [p[0] for p in points]
        ax1.plot(acts, [p[1] for p in points], "o-", color=colour, label=impl)
        if all(p[2] in dense for p in points):
            ax2.plot(acts, [dense[p[2]] / p[1] for p in points], "o-", color=colour, label=impl)
    ax1.set(xlabel="max_activity (hidden capacity fraction)", ylabel="training step (ms, median)", yscale="log",
            title="Step time vs activity")
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set(xlabel="max_activity (hidden capacity fraction)", ylabel="speed-up over dense (same run)",
            title="Speed-up vs activity")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, out / "speedup_vs_activity.png")


def _curves_plot(rows, runs, out: Path) -> Path | None:
    train = [(r, run) for r, run in zip(rows, runs) if r["kind"] == "train" and run.get("metrics")]
    if not train:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r, run in train:
        m = run["metrics"]
        ax1.plot(m["epoch"], m["test_accuracy"], "o-", label=_label(r))
        ax2.plot(m["epoch"], m["train_loss"], "o-", label=_label(r))
    ax1.set(xlabel="epoch", ylabel="test accuracy", title="Accuracy", ylim=(0, 1.02))
    ax2.set(xlabel="epoch", ylabel="training loss", title="Loss")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out / "accuracy_loss.png")


def _rates_plot(rows, runs, out: Path) -> Path | None:
    train = [(r, run) for r, run in zip(rows, runs) if r["kind"] == "train" and run.get("metrics")]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r, run in train:
        rates = np.asarray(run["metrics"]["spike_rate"])[-1]
        ax.plot(np.arange(1, len(rates) + 1), 100 * rates, "o-", label=_label(r))
    ax.set(xlabel="layer", ylabel="spike rate (% of neurons per step)", title="Per-layer spike rate (last epoch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out / "spike_rates.png")


def _raster_plot(rows, runs, out: Path) -> Path | None:
    for r, run in zip(rows, runs):
        spikes = run.get("spikes") or {}
        layers = sorted(k[:-4] for k in spikes if k.startswith("layer") and k.endswith("_ids"))
        if r["kind"] != "train" or not layers:
            continue
        groups = [("input", spikes["input_ids"][0], spikes["input_count"][0])]
        groups += [(name, spikes[f"{name}_ids"][0], spikes[f"{name}_count"][0]) for name in layers]
        fig, axes = plt.subplots(len(groups), 1, figsize=(8, 2.0 * len(groups)), sharex=True)
        for ax, (name, ids, count) in zip(np.atleast_1d(axes), groups):
            t, k = np.nonzero(np.arange(ids.shape[1])[None, :] < count[:, None])
            ax.scatter(t, ids[t, k], s=40, marker="|", color="black", linewidths=1.2)
            ax.set_ylabel(f"{name}\nneuron")
        np.atleast_1d(axes)[-1].set_xlabel("time step")
        fig.suptitle(f"Spike raster, test sample 0 (label {int(spikes['labels'][0])}) — {_label(r)}")
        return _save(fig, out / "spike_raster.png")
    return None


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _markdown(rows: list[dict], images: list[Path]) -> str:
    lines = ["# snn-runner report", ""]
    bench = [r for r in rows if r["kind"] == "bench"]
    if bench:
        dense = _dense_steps(bench)
        lines += ["## Benchmark", "", "| network | implementation | max_activity | step ms | forward ms | speed-up vs dense "
                  "| spike rate % per layer | dropped/step | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(bench, key=lambda r: (r["sizes"], float(r["max_activity"]), r["implementation"])):
            d = dense.get(_net_key(r))
            step = float(r["step_ms_median"])
            speed = "" if d is None else f"{d / step:.2f}x"
            rates = " / ".join(f"{100 * x:.2f}" for x in json.loads(r["spike_rate"]))
            lines.append(f"| {r['sizes']} | {r['implementation']} | {float(r['max_activity']):g} | {step:.1f} "
                         f"| {float(r['forward_ms_median']):.1f} | {speed} | {rates} "
                         f"| {float(r['dropped_spikes']):.0f} | {float(r['peak_rss_mb']):.0f} |")
        lines.append("")
    train = [r for r in rows if r["kind"] == "train"]
    if train:
        lines += ["## Training", "", "| task | implementation | dataset | max_activity | epochs | test accuracy "
                  "| test loss | spike rate % per layer | dropped (last epoch) | step ms |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in train:
            rates = " / ".join(f"{100 * x:.2f}" for x in json.loads(r["spike_rate"]))
            step = f"{float(r['step_ms_median']):.1f}" if r["step_ms_median"] != "" else ""
            lines.append(f"| {r['job_name']}#{int(r['task_index'])} | {r['implementation']} | {r['dataset']} "
                         f"| {float(r['max_activity']):g} | {int(r['epochs'])} "
                         f"| {float(r['final_test_accuracy']):.4f} | {float(r['final_test_loss']):.4f} | {rates} "
                         f"| {r['dropped_spikes']} | {step} |")
        lines.append("")
    lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Refuse an output folder that cannot be made or written, before anything is drawn."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder; give a folder for the plots and summary.md")
    if not out.exists() and not out.parent.is_dir():
        raise ValueError(f"{out}: the folder {out.parent} does not exist; create it first")
    where = out if out.exists() else out.parent
    if not os.access(where, os.W_OK | os.X_OK):
        raise ValueError(f"{out}: the folder {where} is not writable")
    return out


def report(table: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """The plots and summary.md of ``table`` in ``out_dir``; ``ValueError``/``OSError`` with a one-line reason."""
    out = check_out_dir(out_dir)
    rows, runs = read_table(table)
    out.mkdir(exist_ok=True)
    images = [p for p in (_bench_plot(rows, out), _curves_plot(rows, runs, out), _rates_plot(rows, runs, out),
                          _raster_plot(rows, runs, out)) if p is not None]
    summary = out / "summary.md"
    atomic_text(summary, _markdown(rows, images))
    return images + [summary]
