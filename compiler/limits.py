"""Compile-time size limits: refuse a model that would not fit before allocating anything for it.

Two budgets, in MB (``cimc --max-scratchpad-mb``, ``--max-weights-mb``):

- scratchpad: the on-chip buffer memory the program declares. The simulator holds every live
  tensor in host memory, so this also bounds what ``cimrun`` allocates. Checked three times,
  each before the allocation it guards: the largest single tensor and im2col patch matrix
  predicted from ONNX shapes right after shape inference (``check_model``), then the exact
  peak that ``allocate_buffers`` computes.
- weights: bytes of weights the compiler holds. The ONNX initializers are checked before they
  are converted to arrays (``check_model``), the crossbar matrices (grouped convolutions
  become block-diagonal matrices, larger than their kernels) before ``lower_to_crossbar``
  builds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .errors import CompileError

MB = 1 << 20
F32 = 4  # bytes of every tensor the chip computes


@dataclass(frozen=True)
class Limits:
    scratchpad_mb: float = 1024.0  # ResNet-50 on 224x224 needs 11.5 MB a sample: batch 64 fits
    weights_mb: float = 4096.0     # 7x VGG-16's 528 MB; the compiler holds a few copies

    def check_scratchpad(self, nbytes: int, what: str) -> None:
        """Raise CompileError if ``what`` (e.g. "the program") needs more than the limit."""
        if nbytes > self.scratchpad_mb * MB:
            raise CompileError(f"{what} needs {_mb(nbytes)} MB of scratchpad (limit "
                               f"{self.scratchpad_mb:g} MB; raise it with --max-scratchpad-mb)")

    def check_weights(self, nbytes: int, what: str) -> None:
        if nbytes > self.weights_mb * MB:
            raise CompileError(f"{what} needs {_mb(nbytes)} MB of weights (limit "
                               f"{self.weights_mb:g} MB; raise it with --max-weights-mb)")


def _mb(nbytes: int) -> str:
    mb = nbytes / MB
    return f"{mb:.0f}" if mb >= 100 else f"{mb:.3g}"


def _count(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers once converted to arrays, from their dims alone."""
    total = 0
    for init in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        total += _count(init.dims) * max(dtype.itemsize, 1)
    return total


def _patch_bytes(node: onnx.NodeProto, shapes: dict) -> int:
    """Bytes of a Conv's im2col patches [B, output positions, C * kernel size] (0: unknown)."""
    x, w, y = (shapes.get(node.input[0]), shapes.get(node.input[1]),
               shapes.get(node.output[0]))
    if x is None or w is None or y is None:
        return 0
    return x[0] * _count(y[2:]) * x[1] * _count(w[2:]) * F32


def largest_tensor(model: onnx.ModelProto, shapes: dict) -> tuple[int, str]:
    """(bytes, description) of the largest activation or im2col patch matrix of the model."""
    weights = {i.name for i in model.graph.initializer}
    best = max(((_count(s) * F32, f"tensor {name!r}") for name, s in shapes.items()
                if name not in weights), default=(0, "the model"))
    for node in model.graph.node:
        if node.op_type == "Conv":
            best = max(best, (_patch_bytes(node, shapes),
                              f"Conv {node.name or node.output[0]!r} (its im2col patches)"))
    return best


def check_model(model: onnx.ModelProto, shapes: dict, limits: Limits) -> None:
    """Check a shape-inferred model (``shapes``: tensor name -> static shape, initializers
    included) against ``limits`` before its weights or activations are allocated."""
    limits.check_weights(initializer_bytes(model), "the model (its initializers)")
    nbytes, what = largest_tensor(model, shapes)
    limits.check_scratchpad(nbytes, what)
