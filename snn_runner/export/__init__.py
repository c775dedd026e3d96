"""A trained network carried to other tools.

``to_nir(net, dt)`` maps a ``SavedNetwork`` (the ``/model`` group of a result
file) onto a NIR graph (Neuromorphic Intermediate Representation, the ``nir``
package); ``write_nir(net, path, dt)`` writes it as a ``.nir`` (HDF5) file.
See docs/nir.md for the mapping, the units and the metadata keys. Neither
imports TensorFlow.
"""

from __future__ import annotations

from snn_runner.export.nir import default_dt, to_nir, write_nir

__all__ = ["default_dt", "to_nir", "write_nir"]
