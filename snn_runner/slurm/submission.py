"""The record of what was sent to Slurm: one JSON line per submitted task.

Kept in the job's output folder (``OutputLayout.submissions``) and only ever
appended to, so resubmissions add lines and the last line of a task wins.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Submission:
    job_file: str  # absolute path of the job file the task was expanded from
    task_index: int
    task_id: str  # the configuration hash the task must still have when it runs
    job_id: str  # Slurm's id, JOB_INDEX for array tasks
    log_folder: str  # submitit's folder for this job
    submitted_utc: str = ""

    @classmethod
    def now(cls, job_file: str, task_index: int, task_id: str, job_id: str, log_folder: str) -> "Submission":
        return cls(job_file, task_index, task_id, job_id, log_folder,
                   time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def read_submissions(path: Path) -> list[Submission]:
    """Every record in the file ``path`` (none when it does not exist)."""
    if not path.is_file():
        return []
    names = {f.name for f in dataclasses.fields(Submission)}
    records = []
    for line in path.read_text().splitlines():
        try:
            raw = json.loads(line)
            records.append(Submission(**{k: v for k, v in raw.items() if k in names}))
        except (json.JSONDecodeError, TypeError):
            continue  # a line cut short by a crash; the rest is still good
    return records


def latest_by_task(records: list[Submission]) -> dict[str, Submission]:
    """The last submission of each task id."""
    return {r.task_id: r for r in records}


def append_submissions(path: Path, records: list[Submission]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write("".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in records))
