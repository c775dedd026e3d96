"""Quiet TensorFlow start-up by default: the console of every process snn-runner starts.

TensorFlow 2.16+ writes its C++ start-up lines (oneDNN, CPU features, CUDA
factories), once per shared library, through absl before absl's logging is
initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not reach them; only
``TF_ENABLE_ONEDNN_OPTS=0`` would, and that changes the numerics. So fd 2 is
filtered while ``tensorflow`` itself is first imported: the known noise is
dropped, errors and anything else are written back. ``--verbose`` or
``SNN_RUNNER_VERBOSE=1`` turns all of it off.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

VERBOSE_ENV = "SNN_RUNNER_VERBOSE"

# Lines TensorFlow writes to fd 2 from C++ while it is imported. TensorFlow
# 2.16+ logs them through absl before absl::InitializeLog(), so
# TF_CPP_MIN_LOG_LEVEL does not reach the oneDNN line (only
# TF_ENABLE_ONEDNN_OPTS=0 would, and that changes the numerics): they are
# filtered out of what is written to fd 2 during the import instead.
# Errors and anything else written in that time are kept.
_NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IW]\d{4} .*"  # absl/glog INFO and WARNING lines: I0000 00:00:... file.cc:N] ...
    rb"|E\d{4} .*(Unable to register cu\w+ factory|computation placer already registered).*"
    rb"|To enable the following instructions: .*"  # 2nd line of cpu_feature_guard's message
    rb"|.*TF-TRT Warning: Could not find TensorRT.*"
    rb")\r?$"
)

_set_log_level = False  # whether TF_CPP_MIN_LOG_LEVEL came from here (undone by set_verbose)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Filters fd 2 while ``tensorflow`` itself is executed (its first import)."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        _uninstall()  # one-shot; also keeps importlib.util.find_spec below from recursing
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module") or verbose():
            return spec
        exec_module = loader.exec_module

        def quiet_exec_module(module):
            try:
                with _filtered_stderr():
                    exec_module(module)
            finally:
                loader.__dict__.pop("exec_module", None)

        loader.exec_module = quiet_exec_module  # this loader instance serves only `tensorflow`
        return spec


class _filtered_stderr:
    """Send fd 2 to a temporary file; on exit, write back what is not TensorFlow noise."""

    def __enter__(self):
        self._saved = None
        try:
            sys.stderr.flush()
            self._file = tempfile.TemporaryFile()
            self._saved = os.dup(2)
            os.dup2(self._file.fileno(), 2)
        except (OSError, ValueError, AttributeError):  # no usable fd 2: leave it alone
            self._saved = None
        return self

    def __exit__(self, *exc):
        if self._saved is None:
            return False
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        kept = [line for line in self._file.read().splitlines(keepends=True) if not _NOISE.match(line.rstrip(b"\n"))]
        self._file.close()
        if kept:
            os.write(2, b"".join(kept))
        return False


_FINDER = _QuietTensorFlowImport()


def _uninstall() -> None:
    try:
        sys.meta_path.remove(_FINDER)
    except ValueError:
        pass


def set_verbose(on: bool = True) -> None:
    """Show (or hide) TensorFlow's start-up lines here and in child processes.

    Effective only before TensorFlow is imported (commands import it lazily).
    """
    global _set_log_level
    if on:
        os.environ[VERBOSE_ENV] = "1"
        _uninstall()
        if _set_log_level:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
            _set_log_level = False
    else:
        os.environ.pop(VERBOSE_ENV, None)
        quiet()


def quiet() -> None:
    global _set_log_level
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # INFO and WARNING; level 3 would hide errors
        _set_log_level = True
    if "tensorflow" not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)

