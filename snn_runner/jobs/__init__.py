"""Job files and their sweeps: what to run, where, and with which resources."""

from snn_runner.jobs.jobfile import Job, JobFileError, Task, TaskChangedError, load_job

__all__ = ["Job", "JobFileError", "Task", "TaskChangedError", "load_job"]
