"""The hook into Graphcore's tensorflow-ipu.

``require_ipu()`` runs when the IPU backend is chosen
(``snn_runner.backend.get_backend("ipu")``), before any data or model work.
Without Graphcore's TensorFlow (``tensorflow.python.ipu``) or without the
Poplar SDK (``popc``) it raises ``IpuUnavailableError`` with a
message that says what is missing, where it comes from and how to run on CPU
instead. Both checks are cheap: the stock TensorFlow wheel is recognised
without importing it.

With the stack present it returns an ``IpuRuntime``, which configures the IPU
system and calls the Poplar ops of ops/poplar (built by
``scripts/build-ipu-ops``) through ``ipu.custom_ops.precompiled_user_op``.

UNTESTED: everything past the availability checks needs tensorflow-ipu, the
Poplar SDK and an IPU, none of which exist where this was written. The
kernels it loads are tested on the host (tests/test_ipu_codelets.py); the
glue below is kept small on purpose and was only checked against a stand-in
module (tests/test_ipu_backend.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Sequence

__all__ = ["CODELETS", "OP_LIBRARIES", "IpuRuntime", "IpuUnavailableError", "ops_dir", "require_ipu"]

# Built by ops/poplar/CMakeLists.txt; each exports Build, Build_grad and
# their _metadata / _allocator companions.
OP_LIBRARIES = {
    "sparse_binary_matmul": "libsnn_ipu_sparse_binary_matmul.so",
    "select_spikes": "libsnn_ipu_select_spikes.so",
    "sparse_lif_layer": "libsnn_ipu_sparse_lif_layer.so",
}
CODELETS = "snn_codelets.gp"

_WHERE_FROM = (
    "Both come with Graphcore's Poplar SDK and its container base images (for example "
    "graphcore/tensorflow:2) and are not on public package registries such as PyPI, so pip cannot "
    "install them"
)
_CPU_HINT = "to run on CPU instead, use --backend cpu"


class IpuUnavailableError(RuntimeError):
    """The IPU software stack (tensorflow-ipu, Poplar SDK or the built IPU ops) is missing."""


def ops_dir() -> Path:
    """Where the built IPU ops are looked for (SNN_RUNNER_IPU_OPS_DIR overrides)."""
    override = os.environ.get("SNN_RUNNER_IPU_OPS_DIR")
    return Path(override) if override else Path(__file__).resolve().parent / "_lib"


def _import_tensorflow_ipu():
    """``tensorflow.python.ipu``, or None when this TensorFlow is not Graphcore's.

    The stock wheel has no tensorflow/python/ipu folder; looking for it first
    avoids importing TensorFlow just to find out.
    """
    try:
        spec = importlib.util.find_spec("tensorflow")
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not any((Path(loc) / "python" / "ipu").is_dir() for loc in locations):
        return None
    try:
        from tensorflow.python import ipu
    except ImportError:
        return None
    return ipu


def require_ipu() -> "IpuRuntime":
    """Return an IpuRuntime, or raise IpuUnavailableError saying what is missing."""
    problems = []
    ipu = _import_tensorflow_ipu()
    if ipu is None:
        problems.append("tensorflow-ipu cannot be imported (this TensorFlow has no tensorflow.python.ipu)")
    if shutil.which("popc") is None:
        problems.append("the Poplar SDK is not enabled (popc is not on PATH)")
    if problems:
        raise IpuUnavailableError(
            "the IPU backend needs Graphcore's tensorflow-ipu and the Poplar SDK, but "
            + " and ".join(problems)
            + f". {_WHERE_FROM}. On a Graphcore machine, enable the SDK, "
            "build the IPU ops with scripts/build-ipu-ops and run again; "
            + _CPU_HINT
            + "."
        )
    return IpuRuntime(ipu)


class IpuRuntime:
    """tensorflow-ipu with the built snn Poplar ops: device set-up and the user-op call (UNTESTED on hardware).

    ``snn_runner.backend.ipu.IpuBackend`` builds on it: it plans each op and
    declares its outputs.
    """

    def __init__(self, ipu, lib_dir: str | os.PathLike | None = None):
        self.ipu = ipu
        self.lib_dir = Path(lib_dir) if lib_dir is not None else ops_dir()
        missing = [n for n in (*OP_LIBRARIES.values(), CODELETS) if not (self.lib_dir / n).is_file()]
        if missing:
            raise IpuUnavailableError(
                f"the IPU ops are not built: {', '.join(missing)} missing in {self.lib_dir}; build "
                f"them with scripts/build-ipu-ops (needs the Poplar SDK), or set "
                f"SNN_RUNNER_IPU_OPS_DIR to where they are; {_CPU_HINT}"
            )

    def configure(self, num_ipus: int = 1):
        """Attach to ``num_ipus`` IPUs; returns the IPUConfig."""
        config = self.ipu.config.IPUConfig()
        config.auto_select_ipus = num_ipus
        config.configure_ipu_system()
        return config

    def strategy(self):
        return self.ipu.ipu_strategy.IPUStrategy()

    def user_op(self, op: str, inputs: list, types: list, shapes: list, attributes: str,
                inputs_with_gradients: Sequence[int], name: str) -> list:
        """Call the Build entry point of the op library ``OP_LIBRARIES[op]``; returns its outputs."""
        # Forward and gradient share the plan: Build_grad lays its tensors out
        # on the same tiles as Build. Integer outputs receive zero gradients
        # from tf.GradientTape; Build_grad only reads the float ones.
        return self.ipu.custom_ops.precompiled_user_op(
            inputs,
            library_path=str(self.lib_dir / OP_LIBRARIES[op]),
            gp_path=str(self.lib_dir / CODELETS),
            outs={"output_types": types, "output_shapes": shapes},
            name=name,
            op_name="Build",
            separate_gradients=False,
            inputs_with_gradients=list(inputs_with_gradients),
            attributes=attributes,
            gradient_attributes=attributes,
        )
