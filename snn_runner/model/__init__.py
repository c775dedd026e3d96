"""The network and its three interchangeable implementations.

``build_model(implementation, spec, params, backend)`` returns a callable
``model(ids, count)`` mapping a batch of sparse input spikes ``[B, T, K_in]``
to a ``ModelOutput``; the sparse implementations run the backend's ops.
"""

from __future__ import annotations

from snn_runner.config import IMPLEMENTATIONS, RunConfig, value_gradient_key
from snn_runner.model.network import ModelOutput, NetworkSpec, Parameters

__all__ = ["ModelOutput", "NetworkSpec", "Parameters", "build_model", "resolve", "resolve_implementation"]


def _sparse_ops_available() -> bool:
    from snn_runner.sparse import library

    return library.available()


def resolve_implementation(name: str) -> str:
    """Map 'auto' to the fastest implementation that can run here; other names pass through."""
    if name != "auto":
        return name
    return "sparse_layer" if _sparse_ops_available() else "dense"


def resolve(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``model.implementation`` as it will run: the only place ``auto`` is decided.

    What runs is what gets recorded, so callers resolve once, before a run,
    and pass the resolved configuration on.
    """
    if cfg.model.implementation != "auto":
        return cfg
    implementation = resolve_implementation("auto")
    if implementation == "sparse_layer" and value_gradient_key(cfg) is not None and cfg.train.backend == "ipu":
        # the IPU's fused gradient covers spike-count logits only: not the activity
        # regulariser, nor a membrane readout fed by the last hidden layer's slots
        implementation = "sparse_ops"
    return cfg.replace("model", implementation=implementation)


def build_model(implementation: str, spec: NetworkSpec, params: Parameters, backend):
    """The model ``implementation`` (resolved, not 'auto') running on ``backend`` (snn_runner.backend)."""
    if implementation == "auto":
        raise ValueError("build_model needs a resolved implementation; call resolve_implementation('auto') first")
    if implementation == "dense":
        from snn_runner.model.dense import DenseModel

        return DenseModel(spec, params, backend)
    if implementation == "sparse_ops":
        from snn_runner.model.sparse_ops import SparseOpsModel

        return SparseOpsModel(spec, params, backend)
    if implementation == "sparse_layer":
        from snn_runner.model.sparse_layer import SparseLayerModel

        return SparseLayerModel(spec, params, backend)
    raise ValueError(f"unknown implementation {implementation!r}; expected {', '.join(IMPLEMENTATIONS)}")
