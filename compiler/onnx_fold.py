"""Constant subgraphs of an ONNX model evaluated into initializers, before shape inference.

ONNX shape inference propagates values through only some ops: a Reshape whose target is
computed from ``Shape(x)`` through Slice, Div and Concat (the way exporters and ONNX's own
function expansions write it) is left without a shape although every value on the way is a
compile-time constant. ``fold_constants`` evaluates each node whose outputs are all constants
(``support.constant_tensors``: Shape and Size of a static tensor included) with ONNX's
reference evaluator, replaces it by initializers, and leaves every other node as it was; shape
inference run again then knows those shapes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import CompileError
from .onnx_reference import reference_evaluator
from .support import SHAPE_OPS, constant_tensors


def _shape_op(node: onnx.NodeProto, shape: tuple[int, ...]) -> list[np.ndarray]:
    if node.op_type == "Size":
        return [np.array(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)]
    attrs = {a.name: a.i for a in node.attribute}
    full = np.array(shape, dtype=np.int64)
    return [full[attrs.get("start", 0):attrs.get("end", len(shape))]]


def _evaluate(node: onnx.NodeProto, values: dict, shapes: dict, opset: int) -> list:
    if node.op_type in SHAPE_OPS and node.input[0] not in values:
        return _shape_op(node, shapes[node.input[0]])
    feeds = {i: values[i] for i in node.input if i}
    try:
        return reference_evaluator(node, opsets={"": opset}).run(None, feeds)
    except Exception as exc:
        raise CompileError(f"{node.name or node.op_type}: constant folding of {node.op_type} "
                           f"failed: {exc}") from None


def fold_constants(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                   opset: int) -> onnx.ModelProto:
    """A copy of ``model`` whose constant nodes are initializers (``shapes``: the static
    shapes shape inference found)."""
    const = constant_tensors(model, shapes)
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    for node in model.graph.node:
        if not node.output or not all(o in const for o in node.output):
            out.graph.node.append(node)
            continue
        for name, value in zip(node.output, _evaluate(node, values, shapes, opset)):
            values[name] = np.asarray(value)
            out.graph.initializer.append(numpy_helper.from_array(values[name], name))
    return out
