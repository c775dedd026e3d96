"""Errors of the event-dataset pipeline.

Each message is written for the person running the job: it names the folder or
file involved and what to do about it, so the CLI can print it unchanged.
"""

from __future__ import annotations


class DataError(Exception):
    """Base class: the dataset cannot be prepared or loaded as configured."""


class DatasetMissingError(DataError):
    """The data folder lacks the files a dataset needs (nothing is ever downloaded)."""


class DatasetCorruptError(DataError):
    """A dataset file exists but cannot be read as that dataset's format."""


class CacheError(DataError):
    """The preprocessing cache folder cannot be created or written."""
