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

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from snn_runner.config import (
    BENCH_FILLED_KEYS,
    COMMUNICATIONS,
    BenchConfig,
    ConfigError,
    RunConfig,
    reject_unknown,
    section_from_dict,
)
from snn_runner.files import OutputLayout

KINDS = ("train", "bench")
TOP_KEYS = ("name", "kind", "output", "model", "data", "train", "bench", "resources", "sweep")
SECTIONS = ("model", "data", "train", "bench", "resources")
MAX_TASKS = 100_000  # a sweep beyond this is a typo, and expanding it would exhaust memory
MAX_NODES = 1_000_000  # values in a job file, counting every repetition through YAML aliases
MAX_BYTES = 10_000_000


class _JobLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys at any level and remembers each key's line."""

    def __init__(self, stream):
        super().__init__(stream)
        self.key_lines: dict[tuple[int, Any], int] = {}  # (id of the mapping, key) -> 1-based line

    def _explicit_keys(self, node) -> dict:
        """Key -> line of the keys written in this mapping (merge keys ``<<`` aside); refuses repeats."""
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # construct_mapping refuses it with its own message
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found the key {key!r} twice (first on line {seen[key]}, again on line {line}); keep one",
                    key_node.start_mark)
            seen[key] = line
        return seen

    def construct_job_map(self, node):
        data: dict = {}
        yield data
        lines = self._explicit_keys(node)
        data.update(self.construct_mapping(node))
        for key, line in lines.items():
            self.key_lines[(id(data), key)] = line


_JobLoader.add_constructor("tag:yaml.org,2002:map", _JobLoader.construct_job_map)


def _parse(text: bytes, where: str) -> tuple[Any, dict]:
    loader = None
    try:
        loader = _JobLoader(text)
        return loader.get_single_data(), loader.key_lines
    except yaml.YAMLError as err:
        raise JobFileError(f"{where}: not valid YAML: {_yaml_problem(err)}") from None
    except RecursionError:
        raise JobFileError(f"{where}: not usable YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: where, what, and in what."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        text = f"line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
        if err.context:
            text += f" ({err.context}"
            if err.context_mark is not None and err.context_mark.line != mark.line:
                text += f" from line {err.context_mark.line + 1}"
            text += ")"
        return " ".join(text.split())
    if isinstance(err, yaml.reader.ReaderError):
        if isinstance(err.character, bytes):
            what = f"byte 0x{err.character[0]:02X}" if err.character else "a byte"
        elif err.encoding == "unicode":
            what = f"character U+{err.character:04X}"
        else:
            what = f"byte 0x{err.character:02X} ({err.encoding})"
        return f"{what} at position {err.position}: {err.reason}"
    return " ".join(str(err).split())


def _count_nodes(value: Any, where: str) -> None:
    """Refuse documents that expand (through aliases) into more values than any job file has."""
    memo: dict[int, int] = {}

    def size(v: Any, depth: int) -> int:
        if depth > 100:
            raise JobFileError(f"{where}: values nested more than 100 levels deep; a job file needs a few")
        if not isinstance(v, (dict, list)):
            return 1
        if id(v) in memo:
            return memo[id(v)]
        items = list(v.items()) if isinstance(v, dict) else v
        n = 1
        for item in items:
            n += size(item, depth + 1) if not isinstance(v, dict) else size(item[1], depth + 1) + 1
            if n > MAX_NODES:
                break
        memo[id(v)] = n
        return n

    if size(value, 0) > MAX_NODES:
        raise JobFileError(f"{where}: expands to more than {MAX_NODES} values (through YAML aliases?); "
                           "write the job file out plainly")


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
    # nodes x tasks_per_node > 1: each task is one worker of one data-parallel run (snn_runner.distribute)
    nodes: int = 1
    tasks_per_node: int = 1
    communication: str = "auto"  # the workers' collectives: auto | ring (both ring all-reduce on CPUs)

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    def validate(self) -> None:
        if self.communication not in COMMUNICATIONS:
            raise ConfigError(f"resources.communication: invalid value {self.communication!r}; expected one of "
                              f"{', '.join(COMMUNICATIONS)}")
        for key in ("time_min", "cpus_per_task", "array_parallelism", "signal_delay_s", "max_timeouts", "nodes",
                    "tasks_per_node"):
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

    def results_of(self, task: Task, output_dir: str | Path | None = None) -> list[Path]:
        """Every result file in the output folder with this task's configuration id, under any index.

        The task's own name (``result``) comes first when it exists. The id is the hash of
        the resolved configuration, so a file found here holds exactly this task's run even
        when an edit of the sweep has moved the task to another index.
        """
        own = self.result(task, output_dir)
        folder = own.parent
        if not folder.is_dir():
            return []
        found = sorted(p for p in folder.glob(f"*-{task.task_id}.h5")
                       if p != own and not p.name.startswith(".") and p.is_file())
        return ([own] if own.is_file() else []) + found

    def existing_result(self, task: Task, output_dir: str | Path | None = None,
                        is_complete: Callable[[Path], bool] | None = None) -> Path | None:
        """A complete result of this task's configuration already in the output folder, else None.

        ``is_complete`` (``snn_runner.results.schema.is_complete``; the jobs layer does not
        import the results layer) decides which files count; without it any file does.
        """
        for path in self.results_of(task, output_dir):
            if is_complete is None or is_complete(path):
                return path
        return None


def load_job(path: str | Path) -> Job:
    path = Path(path)
    where = str(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_BYTES:
            raise JobFileError(f"{where}: {path.stat().st_size} bytes is not a job file (those are a few KB)")
        text = path.read_bytes()
    except FileNotFoundError:
        raise JobFileError(f"{where}: no such job file") from None
    except IsADirectoryError:
        raise JobFileError(f"{where}: is a folder; give the job file (.yaml) inside it") from None
    except OSError as err:
        raise JobFileError(f"{where}: cannot read the job file: {err.strerror or err}") from None
    if b"\0" in text:
        raise JobFileError(f"{where}: not a text file (it contains NUL bytes); expected a YAML job file")
    raw, lines = _parse(text, where)
    if raw is None:
        raise JobFileError(f"{where}: the job file is empty; expected a mapping of sections (name, model, data, ...)")
    if not isinstance(raw, dict):
        raise JobFileError(f"{where}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    _count_nodes(raw, where)

    def line(mapping: Any, key: Any) -> str:
        n = lines.get((id(mapping), key))
        return f" (line {n})" if n else ""

    try:
        for key in raw:
            if not isinstance(key, str):
                raise ConfigError(f"{where}: top-level key {key!r}{line(raw, key)} is not a word; "
                                  f"known keys: {', '.join(TOP_KEYS)}")
        reject_unknown(raw, set(TOP_KEYS), where)
        for key in SECTIONS + ("sweep",):
            value = raw.get(key)
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{where}: {key}{line(raw, key)}: expected a mapping of keys to values, "
                                  f"got {_short(value)} ({type(value).__name__}); write e.g. `{key}: {{...}}` "
                                  "or leave the section out for the defaults")
            for sub in value or {}:
                if not isinstance(sub, str):
                    raise ConfigError(f"{where}: {key}{line(value, sub)}: key {sub!r} is not a word")
        name = raw.get("name", path.stem)
        kind = raw.get("kind", "train")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.+=,@][A-Za-z0-9_.+=,@-]*", name) \
                or name in (".", ".."):
            raise ConfigError(f"{where}: name{line(raw, 'name')}: invalid value {_short(name)}; expected a word of "
                              "letters, digits and ._-+=,@ (no spaces or '/')")
        if not isinstance(kind, str) or kind not in KINDS:
            raise ConfigError(f"{where}: kind{line(raw, 'kind')}: invalid value {_short(kind)}; "
                              f"expected one of {', '.join(KINDS)}")
        output = raw.get("output", f"results/{name}")
        if not isinstance(output, str) or not output.strip() or any(ord(c) < 32 for c in output):
            raise ConfigError(f"{where}: output{line(raw, 'output')}: expected a folder path, got {_short(output)}")
        sections = {k: raw.get(k) or {} for k in SECTIONS}
        bench = section_from_dict(BenchConfig, sections["bench"], f"{where}: bench").validate()
        resources = section_from_dict(Resources, sections["resources"], f"{where}: resources")
        resources.validate()
        base = {k: sections[k] for k in ("model", "data", "train")}
        sweep = raw.get("sweep") or {}
        job = Job(path, name, kind, Path(output), base, bench, resources, sweep)
        expand_sweep(job)  # validates every task's configuration now, not at run time
    except ConfigError as err:
        msg = _with_line(str(err), raw, line)
        raise JobFileError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    return job


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _with_line(msg: str, raw: dict, line: Callable[[Any, Any], str]) -> str:
    """Add the line of the first ``section.key`` a message names, when the job file sets it there."""
    if "(line " in msg:
        return msg
    for match in re.finditer(r"\b(model|data|train|bench|resources)\.(\w+)", msg):
        section = raw.get(match.group(1))
        if isinstance(section, dict) and match.group(2) in section:
            where = line(section, match.group(2))
            if where:
                return msg + where
    sweep = raw.get("sweep")
    if isinstance(sweep, dict) and re.search(r": sweep[.:]", msg):
        for key in ("grid", "list"):
            if f"sweep.{key}" in msg and line(sweep, key):
                return msg.replace(f"sweep.{key}", f"sweep.{key}{line(sweep, key)}", 1)
        if line(raw, "sweep"):
            return re.sub(r": sweep(?=[.:])", ": sweep" + line(raw, "sweep"), msg, count=1)
    return msg


def _overrides_list(job: Job) -> list[dict]:
    where = f"{job.path}: sweep"
    sweep = job.sweep
    if not isinstance(sweep, dict):
        raise ConfigError(f"{where}: expected a mapping with 'grid' and/or 'list'")
    reject_unknown(sweep, {"grid", "list"}, where)
    grid = sweep.get("grid")
    grid = {} if grid is None else grid
    explicit = sweep.get("list")
    explicit = [{}] if explicit is None or explicit == [] else explicit
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}.grid: expected a mapping of 'section.key' to non-empty lists of values, "
                          f"got {_short(grid)}")
    for key, values in grid.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}.grid: key {key!r} must look like model.KEY, data.KEY, train.KEY or bench.KEY")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.grid: {key}: expected a non-empty list of values like [a, b], "
                              f"got {_short(values)}")
    if not isinstance(explicit, list) or not all(isinstance(e, dict) for e in explicit):
        raise ConfigError(f"{where}.list: expected a list of mappings of 'section.key' to a value, "
                          f"got {_short(explicit)}")
    for entry in explicit:
        for key in entry:
            if not isinstance(key, str):
                raise ConfigError(f"{where}.list: key {key!r} must look like model.KEY, data.KEY, train.KEY "
                                  "or bench.KEY")
    count = len(explicit) * math.prod(len(v) for v in grid.values())
    if count > MAX_TASKS:
        raise ConfigError(f"{where}: expands to {count} tasks, more than the {MAX_TASKS} a job may have; "
                          "split it into several job files")
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
    return [{**entry, **combo} for entry in explicit for combo in combos]


def _apply(base: dict, bench: BenchConfig, overrides: dict, where: str) -> tuple[dict, BenchConfig]:
    config = copy.deepcopy(base)
    bench_changes = {}
    for dotted, value in overrides.items():
        if not isinstance(dotted, str):
            raise ConfigError(f"{where}: sweep key {dotted!r} must look like model.KEY, data.KEY, train.KEY "
                              "or bench.KEY")
        section, _, key = dotted.partition(".")
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
