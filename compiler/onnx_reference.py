"""ONNX's reference evaluator, with our fixes: every whole-model or single-node evaluation of
ONNX in the compiler (constant folding, calibration, data-aware BasisN, the IR evaluator)
goes through ``reference_evaluator``."""

from __future__ import annotations

from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from isa import kernels


class LRN(OpRun):
    """ONNX's reference LRN (onnx 1.23) sums the squares over the batch axis instead of the
    channels (onnx/onnx#7805, fixed after that release by onnx/onnx#8331): the spec's LRN."""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):
        return (kernels.lrn(x, size, alpha, beta, bias).astype(x.dtype),)


def reference_evaluator(proto, **options) -> ReferenceEvaluator:
    """``ReferenceEvaluator(proto, **options)`` with the fixed operators above."""
    return ReferenceEvaluator(proto, new_ops=[LRN], **options)
