"""canonicalize: fold constants, drop no-ops, rewrite ONNX ops into canonical IR ops.

Before: a graph straight from the frontend (level ``onnx``: ops are ONNX types).
After (level ``canonical``): no op has only constant inputs (all folded with ONNX's reference
evaluator; Shape and Size of a static tensor fold too; a canonical op a normalizer made from
constants, as a CastLike of one, with the IR evaluator); the ONNX ops whose row in
``compiler.ops`` says ``drop`` (Identity, Dropout) are gone (a graph output that was one
becomes ``copy``; a Dropout mask someone reads is a constant of ones); the others are canonical
kinds from ``compiler.normalize`` (conv, matmul, batchnorm, relu, add, reshape, maxpool, ...)
with explicit numeric attributes and no omitted ("") operands; and every graph output is the
result of its own op (an output that is a graph input, a constant or another output's value
gets a ``copy``), so that codegen binds each output port to a buffer of its own.
"""

from __future__ import annotations

import numpy as np

from ..errors import CompileError
from ..evaluate import evaluate_op
from ..ir import Graph, Op
from ..normalize import NORMALIZERS
from ..onnx_reference import reference_evaluator
from ..ops import CANONICAL, ONNX, level_of, lookup
from ..support import NOT_FOLDABLE, SHAPE_OPS, dropout_is_random


def _shape_op(graph: Graph, op: Op) -> np.ndarray:
    shape = np.array(graph.shape(op.inputs[0]), dtype=np.int64)
    if op.kind == "Size":
        return np.int64(np.prod(shape, dtype=np.int64))
    return shape[op.attrs.get("start", 0):op.attrs.get("end", len(shape))]


def _fold(graph: Graph, op: Op) -> bool:
    if op.kind in SHAPE_OPS and op.inputs[0] in graph.values:
        results = [_shape_op(graph, op)]
    elif op.kind not in NOT_FOLDABLE and op.proto is not None and \
            all(not i or graph.is_const(i) for i in op.inputs):
        feeds = {i: graph.constants[i] for i in op.inputs if i}
        try:
            results = reference_evaluator(op.proto, opsets={"": graph.opset}).run(
                None, feeds)
        except Exception as exc:
            raise CompileError(f"{op.origin}: constant folding of {op.kind} failed: {exc}") \
                from None
    else:
        return False
    _become_constants(graph, op, results)
    return True


def _become_constants(graph: Graph, op: Op, results) -> None:
    """``op`` gone, its outputs the constants ``results``."""
    graph.remove_op(op)
    for name, value in zip(op.outputs, results):
        graph.remove_value(name)
        graph.add_constant(name, np.asarray(value))


def _training_dropout(graph: Graph, op: Op) -> bool:
    ins = op.inputs + ["", ""]
    ratio = float(graph.constants[ins[1]]) if ins[1] else op.attrs.get("ratio", 0.5)
    training = bool(graph.constants[ins[2]]) if ins[2] else False
    return dropout_is_random(ratio, training)


def _drop(graph: Graph, op: Op) -> None:
    if op.kind == "Dropout" and _training_dropout(graph, op):
        raise CompileError(f"{op.origin}: Dropout in training mode is not supported "
                           "(inference only)")
    graph.remove_op(op)
    for mask in op.outputs[1:]:  # what an inference-mode Dropout keeps: everything
        shape = graph.shape(mask)
        graph.remove_value(mask)
        graph.add_constant(mask, np.ones(shape, dtype=bool))
    src, out = op.inputs[0], op.outputs[0]
    if out in graph.outputs:
        graph.add_op("copy", [src], [out], {}, op.origin)
        return
    graph.replace_uses(out, src)
    graph.remove_value(out)


def _normalise(graph: Graph, op: Op) -> None:
    graph.remove_op(op)
    result = NORMALIZERS[op.kind](graph, op)
    if result is not None:
        kind, inputs, attrs = result
        inputs = list(inputs)
        while inputs and not inputs[-1]:  # an omitted optional operand at the end
            inputs.pop()
        graph.add_op(kind, inputs, op.outputs, attrs, op.origin)


def _fold_canonical(graph: Graph) -> None:
    """Fold the canonical ops whose operands are all constants (a normalizer can make one
    from an ONNX op that also read a computed tensor: CastLike of a constant, which reads
    only its target's type). A constant the chip computed would be a buffer without the
    batch axis that a run of many samples takes it to lead with. A graph output's own
    ``copy`` of a constant (``_own_outputs``) stays."""
    for op in graph.ops():
        if level_of(op) == ONNX or not all(graph.is_const(i) for i in op.inputs if i) or \
                set(op.outputs) & set(graph.outputs):
            continue
        _become_constants(graph, op, evaluate_op(
            graph, op, [graph.constants[i] if i else None for i in op.inputs]))


def _own_outputs(graph: Graph) -> None:
    """Give every graph output that is not the result of its own op a ``copy``."""
    seen: set[str] = set()
    for i, name in enumerate(graph.outputs):
        if graph.producer(name) is None or name in seen:
            copy = graph.add_value(graph.fresh(f"{graph.output_names[i]}.out"),
                                   graph.shape(name))
            graph.add_op("copy", [name], [copy])
            graph.outputs[i] = name = copy
        seen.add(name)


_REWRITES = {"drop": _drop, "normalize": _normalise}


def run(graph: Graph, ctx) -> Graph:
    for op in graph.ops():
        if _fold(graph, op) or level_of(op) != ONNX:
            continue
        rewrite = _REWRITES.get(lookup(op).rewrite)
        if rewrite is None:
            raise CompileError(f"{op.origin}: operator {op.kind} is not supported")
        rewrite(graph, op)
    _fold_canonical(graph)
    _own_outputs(graph)
    graph.drop_dead()
    graph.level = CANONICAL
    return graph
