"""BasisN: every crossbar layer as one global basis times quantized coefficients.

- ``set``: the ``BasisSet`` format (what ``cimc --basis FILE`` reads and ``--basis-out``
  writes) and the algebra of units and reconstructions; re-exported here.
- ``layers``: an ONNX model's crossbar layers as [K, M] matrices, by the pipeline's own
  lowering (``lower_to_crossbar.weight_matrix``), and a decomposition written back (``apply``).
- ``fit``: post-training fit of a basis to those matrices.
- ``refine``: data-aware coefficients from the layers' inputs on sample data.
- ``auto``: ``--basis auto``, the smallest N within an accuracy budget (imports onnxruntime).

The pass that maps a BasisSet onto the chip is ``compiler.passes.basis_decompose``.
"""

from .set import BasisLayer, BasisSet, fit_scales, qmax, reconstruct, units

__all__ = ["BasisLayer", "BasisSet", "fit_scales", "qmax", "reconstruct", "units"]
