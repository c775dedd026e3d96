"""Plots and a Markdown summary from a collected table."""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # batch nodes have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from snn_runner.bench.measure import format_synops  # noqa: E402
from snn_runner.files import atomic_text  # noqa: E402
from snn_runner.results.collect import DEFAULT_READOUT, read_table  # noqa: E402

IMPLEMENTATION_ORDER = ("dense", "sparse_ops", "sparse_layer")  # the parity table's and plots' order


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
        if ax.get_legend_handles_labels()[0]:  # dense alone has no speed-up to draw
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


def _number(value) -> float | None:
    """A table cell as a number; None when empty (older tables and files lack the newer columns)."""
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _mean(values) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def _sd(values) -> float | None:
    """Sample standard deviation (ddof=1); None below two values, where it is undefined."""
    known = [v for v in values if v is not None]
    return statistics.stdev(known) if len(known) > 1 else None


@dataclass
class ParityGroup:
    """The train runs of one (dataset, sizes, readout, implementation, max_activity), over seeds."""

    dataset: str
    sizes: str
    readout: str
    implementation: str
    max_activity: float
    accuracies: list[float] = field(default_factory=list)
    seeds: list = field(default_factory=list)
    dropped: list[float | None] = field(default_factory=list)  # per sample and time step
    synops: list[float | None] = field(default_factory=list)  # per sample

    @property
    def setting(self) -> tuple[str, str, str]:
        return self.dataset, self.sizes, self.readout

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def sd(self) -> float | None:
        return _sd(self.accuracies)

    def sort_key(self):
        impl = self.implementation
        rank = IMPLEMENTATION_ORDER.index(impl) if impl in IMPLEMENTATION_ORDER else len(IMPLEMENTATION_ORDER)
        return self.dataset, _sizes_key(self.sizes), self.readout, rank, impl, self.max_activity


def _sizes_key(sizes: str) -> tuple:
    """Sizes in numeric order ([16, 24, 2] before [100, ...]); unparsable ones last, never compared with those."""
    try:
        return 0, tuple(int(n) for n in json.loads(sizes))
    except (ValueError, TypeError):
        return 1, (sizes,)


def parity_groups(rows: list[dict]) -> list[ParityGroup]:
    """Train rows grouped over seeds, in the report's order (dataset, sizes, readout, implementation, capacity)."""
    groups: dict[tuple, ParityGroup] = {}
    for r in rows:
        acc = _number(r.get("final_test_accuracy")) if r["kind"] == "train" else None
        if acc is None:
            continue
        key = (str(r["dataset"]), str(r["sizes"]), str(r.get("readout") or DEFAULT_READOUT), str(r["implementation"]),
               float(r["max_activity"]))
        g = groups.setdefault(key, ParityGroup(*key))
        g.accuracies.append(acc)
        g.seeds.append(r.get("seed", ""))
        g.dropped.append(_number(r.get("dropped_per_step")))
        g.synops.append(_number(r.get("synops")))
    return sorted(groups.values(), key=ParityGroup.sort_key)


def dense_baselines(groups: list[ParityGroup]) -> dict[tuple[str, str, str], tuple[float, float | None]]:
    """Dense accuracy (mean, sd over seeds) per (dataset, sizes, readout), whatever dense's max_activity.

    Dense ignores the capacity, so its runs at several max_activity values with one seed repeat the
    same run: each seed is averaged first, so a repeated seed does not weigh more than the others.
    """
    per_seed: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    for g in groups:
        if g.implementation == "dense":
            for i, (seed, acc) in enumerate(zip(g.seeds, g.accuracies)):
                # a run without a recorded seed counts as a seed of its own
                per_seed[g.setting][seed if seed != "" else ("run", g.max_activity, i)].append(acc)
    out = {}
    for setting, seeds in per_seed.items():
        means = [statistics.fmean(accs) for accs in seeds.values()]
        out[setting] = (statistics.fmean(means), _sd(means))
    return out


def dense_at_capacity(groups: list[ParityGroup]) -> dict[tuple, ParityGroup]:
    """The dense group of each (setting, max_activity), for recipes whose penalties follow the capacity."""
    return {(g.setting, g.max_activity): g for g in groups if g.implementation == "dense"}


def _pm(mean: float, sd: float | None) -> str:
    return f"{100 * mean:.2f} ± {'n/a' if sd is None else f'{100 * sd:.2f}'}"


def _synops(value) -> str:
    x = _number(value)
    return "" if x is None else format_synops(x)


def _parity_markdown(groups: list[ParityGroup]) -> list[str]:
    dense = dense_baselines(groups)
    same = dense_at_capacity(groups)
    lines = ["## Accuracy across implementations", "",
             "Final test accuracy over seeds: mean ± sample sd (n/a for one seed). Gap: percentage points to "
             "dense at the same max_activity when there are such runs (a recipe may tie its penalties to the "
             "capacity), else to the dense mean of the same dataset, sizes and readout. Dropped: spikes dropped for lack of capacity per "
             "sample and time step (last epoch, all layers). SynOps: synaptic operations per sample (last training epoch).",
             "", "| dataset | sizes | readout | implementation | max_activity | seeds | test accuracy % "
             "| gap to dense (pp) | dropped/sample/step | SynOps/sample |", "|---|---|---|---|---|---|---|---|---|---|"]
    shared = False
    for g in groups:
        if g.implementation == "dense":
            gap = "—"
        elif (g.setting, g.max_activity) in same:
            gap = f"{100 * (g.mean - same[g.setting, g.max_activity].mean):+.2f}"
        elif g.setting in dense:
            gap = f"{100 * (g.mean - dense[g.setting][0]):+.2f}"
        else:
            gap = "n/a"  # no dense run of this setting to compare with
        n = str(len(g.accuracies))
        if len(set(map(str, g.seeds))) < len(g.seeds):
            n, shared = n + "*", True
        dropped = _mean(g.dropped)
        lines.append(f"| {g.dataset} | {g.sizes} | {g.readout} | {g.implementation} | {g.max_activity:g} | {n} "
                     f"| {_pm(g.mean, g.sd)} | {gap} | {'' if dropped is None else f'{dropped:.3g}'} "
                     f"| {_synops(_mean(g.synops))} |")
    if shared:
        lines += ["", "\\* runs that share a seed: they differ in a setting the grouping ignores (e.g. the "
                  "learning rate or epochs); each run counts once in the mean."]
    return lines + [""]


def _setting_label(setting: tuple[str, str, str], several: bool) -> str:
    dataset, sizes, readout = setting
    return f" {dataset} {sizes} {readout}" if several else ""


def _capacity_plot(rows: list[dict], out: Path) -> Path | None:
    groups = parity_groups(rows)
    sparse = [g for g in groups if g.implementation != "dense"]
    if not sparse:
        return None  # capacity means nothing to dense alone
    dense = dense_baselines(groups)
    settings = sorted({g.setting for g in sparse}, key=lambda s: (s[0], _sizes_key(s[1]), s[2]))
    several = len(settings) > 1
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    colour = (f"C{i % 10}" for i in itertools.count())
    for setting in settings:
        suffix = _setting_label(setting, several)
        dense_groups = sorted((g for g in groups if g.implementation == "dense" and g.setting == setting),
                              key=lambda g: g.max_activity)
        if len(dense_groups) > 1:  # dense trained per capacity (the recipe follows it): a curve like the others
            ax.errorbar([g.max_activity for g in dense_groups], [100 * g.mean for g in dense_groups],
                        yerr=[100 * (g.sd or 0.0) for g in dense_groups], fmt="s--", capsize=3,
                        color=next(colour), label=f"dense{suffix}")
        elif setting in dense:
            mean, sd = dense[setting]
            c = next(colour)
            ax.axhline(100 * mean, color=c, ls="--", label=f"dense{suffix}")
            if sd:
                ax.axhspan(100 * (mean - sd), 100 * (mean + sd), color=c, alpha=0.15, lw=0)
        by_impl = defaultdict(list)
        for g in sparse:
            if g.setting == setting:
                by_impl[g.implementation].append(g)
        for impl, gs in by_impl.items():
            gs.sort(key=lambda g: g.max_activity)
            ax.errorbar([g.max_activity for g in gs], [100 * g.mean for g in gs],
                        yerr=[100 * (g.sd or 0.0) for g in gs], fmt="o-", capsize=3, color=next(colour),
                        label=f"{impl}{suffix}")
    ax.set(xscale="log", xlabel="max_activity (hidden capacity fraction)", ylabel="final test accuracy (%)",
           title="Accuracy vs capacity (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out / "accuracy_vs_capacity.png")


def _synops_plot(rows: list[dict], out: Path) -> Path | None:
    groups = [g for g in parity_groups(rows) if (_mean(g.synops) or 0) > 0]  # a log axis needs SynOps > 0
    if not groups:
        return None
    several = len({g.setting for g in groups}) > 1
    series = defaultdict(list)
    for g in groups:
        series[(g.implementation, g.setting)].append(g)
    markers = dict(zip(IMPLEMENTATION_ORDER, "soD"))
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for i, ((impl, setting), gs) in enumerate(sorted(series.items(), key=lambda kv: kv[1][0].sort_key())):
        xs, ys = [_mean(g.synops) for g in gs], [100 * g.mean for g in gs]
        ax.errorbar(xs, ys, yerr=[100 * (g.sd or 0.0) for g in gs], fmt=markers.get(impl, "^"), ls="none",
                    capsize=3, color=f"C{i % 10}", label=f"{impl}{_setting_label(setting, several)}")
        if impl != "dense":  # dense ignores the capacity: its label would say nothing
            for g, x, y in zip(gs, xs, ys):
                ax.annotate(f"{g.max_activity:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xscale="log", xlabel="synaptic operations per sample (last epoch)", ylabel="final test accuracy (%)",
           title="Accuracy vs SynOps (labels: max_activity)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out / "accuracy_vs_synops.png")


def _width(row: dict) -> int:
    """The widest hidden layer of a row's network."""
    sizes = json.loads(row["sizes"])
    return max(sizes[1:-1]) if len(sizes) > 2 else sizes[-1]


def _threads(row: dict) -> int | None:
    value = _number(row.get("threads"))
    return None if value is None else int(value)


# What a scaling sweep varies: (name, value of a bench row, axis label).
SCALING_AXES = (
    ("width", _width, "widest hidden layer (neurons)"),
    ("time_steps", lambda r: int(r["time_steps"]) if _number(r.get("time_steps")) else None, "time steps T"),
    ("threads", _threads, "op pool threads"),
)


def _scaling_plot(rows: list[dict], out: Path, axis) -> Path | None:
    """Step time (and peak memory) against one size on log-log axes, dense beside each sparse capacity.

    Drawn when the bench rows vary in that size only; a series is one implementation at one capacity.
    """
    name, value_of, label = axis
    bench = [r for r in rows if r["kind"] == "bench" and value_of(r) is not None]
    if len({value_of(r) for r in bench}) < 2:
        return None
    series = defaultdict(list)
    for r in bench:
        key = "dense" if r["implementation"] == "dense" else f"{r['implementation']} {float(r['max_activity']):g}"
        series[key].append((value_of(r), float(r["step_ms_median"]), float(r["peak_rss_mb"])))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (key, points) in enumerate(sorted(series.items())):
        points.sort()
        style = "s--" if key == "dense" else "o-"
        xs = [p[0] for p in points]
        ax1.plot(xs, [p[1] for p in points], style, color=f"C{i % 10}", label=key)
        ax2.plot(xs, [p[2] for p in points], style, color=f"C{i % 10}", label=key)
    ax1.set(ylabel="training step (ms, median)", title=f"Step time vs {name}")
    ax2.set(ylabel="peak RSS (MB)", title=f"Peak memory vs {name}")
    for ax in (ax1, ax2):
        ax.set(xscale="log", yscale="log", xlabel=label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return _save(fig, out / f"scaling_{name}.png")


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
                  "| spike rate % per layer | dropped/step | SynOps/sample | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(bench, key=lambda r: (r["sizes"], float(r["max_activity"]), r["implementation"])):
            d = dense.get(_net_key(r))
            step = float(r["step_ms_median"])
            speed = "" if d is None else f"{d / step:.2f}x"
            rates = " / ".join(f"{100 * x:.2f}" for x in json.loads(r["spike_rate"]))
            lines.append(f"| {r['sizes']} | {r['implementation']} | {float(r['max_activity']):g} | {step:.1f} "
                         f"| {float(r['forward_ms_median']):.1f} | {speed} | {rates} "
                         f"| {float(r['dropped_spikes']):.0f} | {_synops(r.get('synops'))} "
                         f"| {float(r['peak_rss_mb']):.0f} |")
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
        lines += _parity_markdown(parity_groups(train))
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
                          _raster_plot(rows, runs, out), _capacity_plot(rows, out), _synops_plot(rows, out),
                          *(_scaling_plot(rows, out, axis) for axis in SCALING_AXES))
              if p is not None]
    summary = out / "summary.md"
    atomic_text(summary, _markdown(rows, images))
    return images + [summary]
