"""The network and its three interchangeable implementations.

``build_model(name, spec, params)`` returns a callable ``model(ids, count)``
mapping a batch of sparse input spikes ``[B, T, K_in]`` to a ``ModelOutput``.
"""

from __future__ import annotations

from snn_runner.model.network import ModelOutput, NetworkSpec, Parameters

__all__ = ["ModelOutput", "NetworkSpec", "Parameters", "build_model", "resolve_implementation"]


def _sparse_ops_available() -> bool:
    from snn_runner.sparse import library

    return library.available()


def resolve_implementation(name: str) -> str:
    """Map 'auto' to the fastest implementation that can run here."""
    if name != "auto":
        return name
    return "sparse_layer" if _sparse_ops_available() else "dense"


def build_model(name: str, spec: NetworkSpec, params: Parameters):
    name = resolve_implementation(name)
    if name == "dense":
        from snn_runner.model.dense import DenseModel

        return DenseModel(spec, params)
    if name == "sparse_ops":
        from snn_runner.model.sparse_ops import SparseOpsModel

        return SparseOpsModel(spec, params)
    if name == "sparse_layer":
        from snn_runner.model.sparse_layer import SparseLayerModel

        return SparseLayerModel(spec, params)
    raise ValueError(f"unknown implementation {name!r}; expected dense, sparse_ops or sparse_layer")
