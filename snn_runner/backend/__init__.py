"""Where a model runs: the op implementations and the step compiler of one device.

``get_backend("cpu")`` runs the compiled TensorFlow ops of snn_runner.sparse
in plain ``tf.function`` graphs; ``get_backend("ipu")`` runs the Poplar ops of
ops/poplar through tensorflow-ipu inside an ``IPUStrategy``. Models take the
backend as an argument and call only its ops, so a run executes on the
backend it records.

Importing this package does not import TensorFlow: a missing IPU stack is
reported before anything slow happens.
"""

from __future__ import annotations

from typing import Callable, ContextManager, Protocol, Sequence

from snn_runner.config import BACKENDS
from snn_runner.ipu.backend import IpuUnavailableError

__all__ = ["Backend", "IpuUnavailableError", "get_backend"]


class Backend(Protocol):
    """What a model needs from a device (see backend/cpu.py and backend/ipu.py)."""

    name: str  # recorded with the run: "cpu" or "ipu"
    mode: str  # how the steps are compiled, recorded with the run

    def sparse_binary_matmul(self, weights, spikes):
        """``[B, n_out]`` currents of ``SparseSpikes`` ``[B, K]`` through weights ``[n_in, n_out]``."""

    def select_spikes(self, u, threshold, threshold2, capacity: int, beta: float):
        """``(SparseSpikes [B, K], dropped [B])`` selected from membranes ``u [B, n]``."""

    def lif_sequence(self, current, alpha, threshold, threshold2, capacity: int, input_scale: float = 10.0,
                     beta: float = 10.0):
        """One layer's reset, integrate, fire and selection over all steps of time-major currents ``[T, B, n]``:
        ``(SparseSpikes [T, B, K], dropped [T, B])``."""

    def sparse_lif_layer(self, ids, count, weights: Sequence, alpha: Sequence, threshold: Sequence,
                         threshold2: Sequence, capacities: Sequence[int], input_scale: float, beta: float):
        """The fused network over all time steps; returns a ``snn_runner.sparse.fused.FusedOutput``."""

    def compile(self, fn: Callable, input_signature: Sequence) -> Callable:
        """``fn`` compiled to run on this backend, called with arguments matching ``input_signature``."""

    def scope(self) -> ContextManager:
        """Where variables and the optimizer must be created."""


def get_backend(name: str) -> Backend:
    """The backend called ``name``; raises IpuUnavailableError when the IPU stack is missing."""
    if name == "cpu":
        from snn_runner.backend.cpu import CpuBackend

        return CpuBackend()
    if name == "ipu":
        from snn_runner.backend.ipu import IpuBackend
        from snn_runner.ipu.backend import require_ipu

        return IpuBackend(require_ipu())
    raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
