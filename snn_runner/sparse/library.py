"""Loads the compiled custom ops (built from ops/ by CMake) exactly once."""

from __future__ import annotations

import functools
import os
from pathlib import Path

LIB_NAME = "libsnn_ops.so"
_DEFAULT_DIR = Path(__file__).resolve().parent / "_lib"


class OpsNotBuiltError(RuntimeError):
    """The compiled ops library is missing; the message says how to build it."""


def library_path() -> Path:
    # An environment override lets an image keep the library outside the
    # (read-only) package folder.
    override = os.environ.get("SNN_RUNNER_OPS_LIB")
    return Path(override) if override else _DEFAULT_DIR / LIB_NAME


def available() -> bool:
    return library_path().is_file()


@functools.lru_cache(maxsize=1)
def load():
    """Return the TensorFlow module object holding the snn ops."""
    path = library_path()
    if not path.is_file():
        raise OpsNotBuiltError(
            f"compiled ops not found at {path}; build them with "
            "`scripts/build-ops` (or run ./run once, which builds them)"
        )
    import tensorflow as tf

    return tf.load_op_library(str(path))
