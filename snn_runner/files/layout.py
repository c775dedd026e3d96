"""The output folder of a job: which file holds what.

Every path snn-runner writes below a job's output folder is named here and
nowhere else: task results, their checkpoints, the submission record and the
Slurm logs. A result file's checkpoint sits beside it, hidden, so a run
started from options (``train -o FILE``) resumes the same way as a task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SUBMISSIONS_NAME = ".snn-submissions.jsonl"  # one JSON line per submitted task
LOGS_NAME = "slurm-logs"


def checkpoint_for(result: str | Path) -> Path:
    """The checkpoint of the run that will write ``result``."""
    result = Path(result)
    return result.with_name(f".{result.name}.ckpt")


@dataclass(frozen=True)
class OutputLayout:
    root: Path
    job_name: str = ""  # names the task results; not needed for the submissions and logs

    def result(self, task_index: int, task_id: str) -> Path:
        return self.root / f"{self.job_name}-{task_index:03d}-{task_id}.h5"

    def checkpoint(self, task_index: int, task_id: str) -> Path:
        return checkpoint_for(self.result(task_index, task_id))

    @property
    def submissions(self) -> Path:
        return self.root / SUBMISSIONS_NAME

    @property
    def logs(self) -> Path:
        """submitit's folder; ``%j`` becomes each Slurm job id."""
        return self.root / LOGS_NAME / "%j"
