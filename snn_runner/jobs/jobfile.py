"""Job files (YAML): a base run configuration, resources and a sweep.

A job file looks like::

    name: smoke
    kind: train                 # train | bench
    output: results/smoke       # folder for the task result files
    model: {hidden: [32], implementation: dense}
    data: {dataset: randman, time_steps: 20}
    train: {epochs: 2, batch_size: 16}
    bench: {network: tiny, steps: 5, warmup: 1}
    resources: {partition: debug, time_min: 10, cpus_per_task: 2, array_parallelism: 4}
    sweep:
      grid: {model.max_activity: [0.01, 0.05]}
      list: [{model.implementation: sparse_ops}, {model.implementation: sparse_layer}]

Every key is checked: unknown keys (with a did-you-mean), wrong types and
impossible values are rejected with the file, the key and the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from snn_runner.config import (
    BENCH_FILLED_KEYS,
    BenchConfig,
    ConfigError,
    RunConfig,
    reject_unknown,
    section_from_dict,
)
from snn_runner.files import OutputLayout

KINDS = ("train", "bench")
TOP_KEYS = ("name", "kind", "output", "model", "data", "train", "bench", "resources", "sweep")


class JobFileError(ValueError):
    """A job file cannot be used; the message names the file, key and reason."""


class TaskChangedError(JobFileError):
    """The job file no longer gives a submitted task the configuration it was submitted with."""


@dataclass(frozen=True)
class Resources:
    partition: str = ""
    time_min: int = 60
    cpus_per_task: int = 2
    mem_gb: float = 8.0
    gpus: int = 0
    account: str = ""
    qos: str = ""
    array_parallelism: int = 16
    image: str = ""  # .sif image to run tasks in; empty: the host installation
    signal_delay_s: int = 90  # Slurm sends USR2 this long before the time limit: save and requeue
    max_timeouts: int = 3  # requeues on timeout before the task counts as failed
    launcher: str = "apptainer"
    binds: tuple = ()
    setup: tuple = ()  # shell lines run before each task

    def validate(self) -> None:
        for key in ("time_min", "cpus_per_task", "array_parallelism", "signal_delay_s", "max_timeouts"):
            if getattr(self, key) < 1:
                raise ConfigError(f"resources.{key}: invalid value {getattr(self, key)!r}; expected an integer >= 1")
        if self.gpus < 0:
            raise ConfigError(f"resources.gpus: invalid value {self.gpus!r}; expected an integer >= 0")
        if not self.mem_gb > 0:
            raise ConfigError(f"resources.mem_gb: invalid value {self.mem_gb!r}; expected a positive number")


@dataclass(frozen=True)
class Task:
    index: int
    task_id: str  # stable: hash of the resolved configuration
    config: RunConfig  # for a bench task: with the preset's network, input and batch filled in
    bench: BenchConfig
    overrides: dict


@dataclass(frozen=True)
class Job:
    path: Path
    name: str
    kind: str
    output: Path
    base: dict  # the model/data/train sections as written
    bench: BenchConfig
    resources: Resources
    sweep: dict = field(default_factory=dict)

    def tasks(self) -> list[Task]:
        return expand_sweep(self)

    def task(self, index: int, expected_id: str | None = None) -> Task:
        """Task ``index``; with ``expected_id``, refuses when the job file now gives it another configuration."""
        tasks = self.tasks()
        if not 0 <= index < len(tasks):
            raise TaskChangedError(f"{self.path}: has no task {index} any more (it has {len(tasks)}); it was edited "
                                   f"after submission: resubmit with `snn-runner submit {self.path}`")
        task = tasks[index]
        if expected_id is not None and task.task_id != expected_id:
            raise TaskChangedError(
                f"{self.path}: task {index} was submitted with id {expected_id} but the job file now gives id "
                f"{task.task_id} (edited after submission); restore the file or resubmit with "
                f"`snn-runner submit {self.path}`")
        return task

    def layout(self, output_dir: str | Path | None = None) -> OutputLayout:
        """Where this job's files go: ``output_dir`` when given, else the job's ``output``."""
        return OutputLayout(Path(output_dir or self.output), self.name)

    def result(self, task: Task, output_dir: str | Path | None = None) -> Path:
        return self.layout(output_dir).result(task.index, task.task_id)


def load_job(path: str | Path) -> Job:
    path = Path(path)
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise JobFileError(f"{where}: no such job file") from None
    except yaml.YAMLError as err:
        raise JobFileError(f"{where}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise JobFileError(f"{where}: expected a mapping of sections at the top level")
    try:
        reject_unknown(raw, set(TOP_KEYS), where)
        name = raw.get("name", path.stem)
        kind = raw.get("kind", "train")
        if not isinstance(name, str) or not name or any(c in name for c in "/ \t"):
            raise ConfigError(f"{where}: name: invalid value {name!r}; expected a word without spaces or '/'")
        if kind not in KINDS:
            raise ConfigError(f"{where}: kind: invalid value {kind!r}; expected one of {', '.join(KINDS)}")
        output = raw.get("output", f"results/{name}")
        if not isinstance(output, str):
            raise ConfigError(f"{where}: output: expected a folder path, got {output!r}")
        bench = section_from_dict(BenchConfig, raw.get("bench") or {}, f"{where}: bench").validate()
        resources = section_from_dict(Resources, raw.get("resources") or {}, f"{where}: resources")
        resources.validate()
        base = {k: raw.get(k) or {} for k in ("model", "data", "train")}
        sweep = raw.get("sweep") or {}
        job = Job(path, name, kind, Path(output), base, bench, resources, sweep)
        expand_sweep(job)  # validates every task's configuration now, not at run time
    except ConfigError as err:
        msg = str(err)
        raise JobFileError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    return job


def _overrides_list(job: Job) -> list[dict]:
    where = f"{job.path}: sweep"
    sweep = job.sweep
    if not isinstance(sweep, dict):
        raise ConfigError(f"{where}: expected a mapping with 'grid' and/or 'list'")
    reject_unknown(sweep, {"grid", "list"}, where)
    grid = sweep.get("grid") or {}
    explicit = sweep.get("list") or [{}]
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{where}.grid: expected a mapping of 'section.key' to non-empty lists of values")
    if not isinstance(explicit, list) or not all(isinstance(e, dict) for e in explicit):
        raise ConfigError(f"{where}.list: expected a list of mappings of 'section.key' to a value")
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
    return [{**entry, **combo} for entry in explicit for combo in combos]


def _apply(base: dict, bench: BenchConfig, overrides: dict, where: str) -> tuple[dict, BenchConfig]:
    config = json.loads(json.dumps(base))  # deep copy of plain data
    bench_changes = {}
    for dotted, value in overrides.items():
        section, _, key = str(dotted).partition(".")
        if section == "bench":
            bench_changes[key] = value
        elif section in ("model", "data", "train") and key:
            config.setdefault(section, {})[key] = value
        else:
            raise ConfigError(f"{where}: sweep key '{dotted}' must look like model.KEY, data.KEY, train.KEY "
                              "or bench.KEY")
    if bench_changes:
        merged = {**dataclasses.asdict(bench), **bench_changes}
        bench = section_from_dict(BenchConfig, merged, f"{where}: bench").validate()
    return config, bench


def _refuse_preset_keys(raw: dict, where: str) -> None:
    for dotted in BENCH_FILLED_KEYS:
        section, key = dotted.split(".")
        if key in (raw.get(section) or {}):
            raise ConfigError(f"{where}: {dotted} is set by the bench preset in a bench job; choose the network "
                              "with bench.network and hidden sizes with bench.hidden instead")


def task_id(config: RunConfig, bench: BenchConfig, kind: str) -> str:
    payload = {"kind": kind, "config": config.identity()}
    if kind == "bench":
        payload["bench"] = dataclasses.asdict(bench)
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return digest[:10]


def expand_sweep(job: Job) -> list[Task]:
    tasks = []
    for index, overrides in enumerate(_overrides_list(job)):
        where = f"{job.path}: task {index} ({overrides})" if overrides else str(job.path)
        raw, bench = _apply(job.base, job.bench, overrides, where)
        config = RunConfig.from_dict(raw, where)
        if job.kind == "bench":
            _refuse_preset_keys(raw, where)
            config = bench.apply(config)
        tasks.append(Task(index, task_id(config, bench, job.kind), config, bench, overrides))
    seen = {}
    for t in tasks:
        if t.task_id in seen:
            raise ConfigError(f"{job.path}: sweep: tasks {seen[t.task_id]} and {t.index} are identical")
        seen[t.task_id] = t.index
    return tasks
