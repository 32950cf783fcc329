"""ONNX operators with no function body that the compiler takes as others it has.

Once shapes are static (``frontend.prepare``, after function bodies are expanded), each node
whose operator is in ``REWRITES`` and whose inputs are not all constants (those fold as
they are) is replaced by the nodes its rewrite writes; a rewrite may decline (returns
None), and the support check then names the operator:

- Einsum of one or two operands: ``expand_einsum``.
- CumSum along a constant axis: a MatMul with a constant triangular matrix of ones along
  that axis (lower or upper, with or without its diagonal, for ``reverse`` and
  ``exclusive``), so on the crossbars as any product with a constant matrix.
- LpNormalization (p = 1 or 2): x / norm along the axis, and 0 where the norm is 0, as
  ONNX's reference (and onnxruntime, where x is too small to square in float32).
- A ceil-mode MaxPool or AveragePool with a last window starting in the end padding: the
  pool, then a Slice that drops that window (``ceil_pool``).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping

import numpy as np
import onnx

from isa import windows as win

from . import expand_einsum
from .node_writer import NodeWriter, node_attr
from .support import DOMAINS, constant_values

Shapes = list[tuple[int, ...]]


def cumsum(node: onnx.NodeProto, shapes: Shapes, values: dict) -> NodeWriter | None:
    """y[..., j, ...] = the sum of x along ``axis`` up to j (ONNX's CumSum)."""
    if len(node.input) < 2 or node.input[1] not in values:
        return None
    rank = len(shapes[0])
    axis = int(np.asarray(values[node.input[1]]).reshape(-1)[0]) % max(rank, 1)
    n = shapes[0][axis]
    i, j = np.indices((n, n))  # y[j] = sum of x[i] over i <= j (reverse: i >= j)
    reverse, exclusive = node_attr(node, "reverse", 0), node_attr(node, "exclusive", 0)
    take = (i >= j) if reverse else (i <= j)
    if exclusive:
        take &= i != j
    w = NodeWriter(node.output[0], "cumsum")
    ones = w.constant(take.astype(np.float32))
    if rank == 1:  # MatMul takes rank 2 and up
        y = w.node("MatMul", [w.reshape(node.input[0], [1, n]), ones])
        w.reshape(y, [n])
        return w.finish(node.output[0])
    perm = [k for k in range(rank) if k != axis] + [axis]
    y = w.node("MatMul", [w.transpose(node.input[0], perm), ones])
    w.transpose(y, [int(k) for k in np.argsort(perm)])  # (none when the axis is last)
    return w.finish(node.output[0])


def lp_normalization(node: onnx.NodeProto, shapes: Shapes, values: dict
                     ) -> NodeWriter | None:
    """x divided by its L1 or L2 norm along ``axis`` (ONNX's LpNormalization)."""
    p, axis = node_attr(node, "p", 2), node_attr(node, "axis", -1)
    if p not in (1, 2):
        return None
    w = NodeWriter(node.output[0], "lpnorm")
    x = node.input[0]
    part = w.node("Abs", [x]) if p == 1 else w.node("Mul", [x, x])
    norm = w.node("ReduceSum", [part, w.ints([axis])], keepdims=1)
    if p == 2:
        norm = w.node("Sqrt", [norm])
    zero = w.node("Equal", [norm, w.constant(np.float32(0))])
    y = w.node("Div", [x, w.node("Where", [zero, w.constant(np.float32(1)), norm])])
    w.node("Where", [zero, w.constant(np.float32(0)), y])  # x too small to square: 0
    return w.finish(node.output[0])


def ceil_pool(node: onnx.NodeProto, shapes: Shapes, values: dict) -> NodeWriter | None:
    """A ceil-mode MaxPool or AveragePool whose last window along an axis would start in the
    end padding: onnx's shape inference counts that window before opset 22, onnxruntime and
    onnx's reference evaluator drop it (as opset 22 does). The pool as it is, then a Slice
    that drops it, so the model's later shapes are onnxruntime's; None when no such window
    (or for SAME auto_pad, or a MaxPool whose indices are read)."""
    x = shapes[0]
    n = len(x) - 2
    auto = node_attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if not node_attr(node, "ceil_mode", 0) or n < 1 or any(node.output[1:]) or \
            auto not in ("NOTSET", "VALID"):
        return None
    k = list(node_attr(node, "kernel_shape"))
    s = list(node_attr(node, "strides", [1] * n))
    d = list(node_attr(node, "dilations", [1] * n))
    p = [0] * 2 * n if auto == "VALID" else list(node_attr(node, "pads", [0] * 2 * n))
    up, short = win.ceil_sizes(x[2:], k, s, p, d)
    if short == up:
        return None
    w = NodeWriter(node.output[0], "ceil")
    pool = onnx.NodeProto()
    pool.CopyFrom(node)
    pool.output[0] = w.name()
    w.nodes.append(pool)
    w.node("Slice", [pool.output[0], w.ints([0] * n), w.ints(short), w.ints(range(2, 2 + n))])
    return w.finish(node.output[0])


# Inputs a rewrite needs as constants (the conformance tool binds them, as it does the op
# table's)
CONSTANT_INPUTS = {"CumSum": frozenset({1})}

REWRITES: dict[str, Callable[[onnx.NodeProto, Shapes, dict], NodeWriter | None]] = {
    "Einsum": expand_einsum.rewrite,
    "CumSum": cumsum,
    "LpNormalization": lp_normalization,
    "MaxPool": ceil_pool,
    "AveragePool": ceil_pool,
}


def expand(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]],
           const: Container[str]) -> onnx.ModelProto:
    """``model`` (shapes inferred; ``shapes``: its static ones) with each node ``REWRITES``
    takes, its inputs not all constant and their shapes static, replaced by the nodes that
    compute it; ``model`` itself when none is."""
    values = constant_values(model)
    nodes, inits, changed = [], [], False
    for node in model.graph.node:
        rewrite = REWRITES.get(node.op_type) if node.domain in DOMAINS else None
        inputs = [i for i in node.input if i]
        w = None
        if rewrite is not None and all(i in shapes for i in inputs) and \
                not all(i in const for i in inputs):
            w = rewrite(node, [shapes[i] for i in inputs], values)
        if w is None:
            nodes.append(node)
        else:
            nodes.extend(w.nodes)
            inits.extend(w.inits)
            changed = True
    if not changed:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    # shapes are inferred again: a ceil_pool rewrite changes them from its node on, even
    # where the model declares onnx's count for an output
    del out.graph.value_info[:]
    inputs = {i.name for i in out.graph.input}
    for o in out.graph.output:
        if o.name not in inputs:  # (an input returned as it is keeps the input's type)
            o.type.tensor_type.ClearField("shape")
    return out
