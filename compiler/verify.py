"""IR verifier: run between passes (tests, ``--verify-each``).

Structure: the op graph is acyclic; every value is defined exactly once (graph input, constant
or one op output); every operand is defined; every op output has a type; every graph output is
defined and, from the canonical level on, the result of an op of its own.

Against the op table (``compiler.ops``), at the graph's level (``graph.level`` unless
``level`` is given), every op: has a kind the table knows that may appear at that level; has
as many operands as its row takes, the ``const`` ones constants (at the onnx level: tensors
that fold to constants), none omitted ("") but an optional operand of an ONNX op; has the
attributes of its row's schema with their types (a fused activation's too), or, as an ONNX op,
carries its NodeProto; has one result unless it is an ONNX op; and declares the result shape
its row's shape rule computes from its operands' shapes (so producer and consumer agree).

Raises ``VerifyError`` naming the op, its ONNX origin and the rule it breaks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import networkx as nx

from .ir import Graph, Op
from .ops import LEVELS, ONNX, OpDef, attr_problem, lookup
from .shapes import fmt
from .support import NOT_FOLDABLE, SHAPE_OPS


class VerifyError(Exception):
    """The IR broke an invariant: a compiler bug, not a user error."""


class _Ctx(NamedTuple):
    graph: Graph
    level: str
    const: set[str]  # what ``const`` operands may name


def _name(op: Op) -> str:
    return op.id + (f" (onnx: {op.origin})" if op.origin else "")


def _count(least: int, most: int | None) -> str:
    if most is None:
        return f"{least} or more"
    return str(least) if least == most else f"{least} to {most}"


def _kind(c: _Ctx, op: Op, row: OpDef) -> str | None:
    if not row.allowed_at(c.level):
        span = row.level if row.until == row.level else f"{row.level} to {row.until}"
        return f"{op.kind} is a kind of level {span}; this graph is at level {c.level}"
    return None


def _operands(c: _Ctx, op: Op, row: OpDef) -> str | None:
    least, most = row.arity
    if len(op.inputs) < least or (most is not None and len(op.inputs) > most):
        return (f"takes {_count(least, most)} operands "
                f"({', '.join(map(str, row.operands))}), got {len(op.inputs)}")
    for pos, name in enumerate(op.inputs):
        spec = row.operands[min(pos, len(row.operands) - 1)]
        if not name and not (spec.optional and row.level == ONNX):
            return f"operand {pos} ({spec}) is omitted (\"\")"
        if name and spec.role == "const" and name not in c.const:
            return f"operand {pos} ({spec}) must be a constant, and %{name} is computed"
    return None


def _attributes(c: _Ctx, op: Op, row: OpDef) -> str | None:
    if row.level == ONNX and getattr(op.proto, "op_type", None) != op.kind:
        return f"an ONNX op must carry its NodeProto (a {op.kind}) in op.proto"
    return attr_problem(row, op.attrs)


def _results(c: _Ctx, op: Op, row: OpDef) -> str | None:
    if row.level != ONNX and len(op.outputs) != 1:
        return f"has {len(op.outputs)} results; a {op.kind} has one"
    return None


def _shape(c: _Ctx, op: Op, row: OpDef) -> str | None:
    if row.shape is None:
        return None
    ins = [c.graph.shape(i) for i in op.inputs if i]
    declared = c.graph.shape(op.outputs[0])
    rule = " ".join(row.shape.__doc__.split())
    args = ", ".join(f"{n} {fmt(s)}" for n, s in zip([i for i in op.inputs if i], ins))
    try:
        want = tuple(row.shape(ins, op.attrs, declared))
    except (ValueError, IndexError) as exc:  # ShapeError, or operands of an unexpected rank
        why = str(exc) if str(exc) else "operands of the wrong rank"
        return f"operands {args} break the shape rule: {why} (rule: {rule})"
    if want != tuple(declared):
        return (f"declares %{op.outputs[0]} {fmt(declared)}, but its shape rule gives "
                f"{fmt(want)} from {args} (rule: {rule})")
    return None


# Each check: (context, op, its row) -> what is wrong, or None; in this order.
CHECKS: tuple[Callable[[_Ctx, Op, OpDef], str | None], ...] = (
    _kind, _operands, _attributes, _results, _shape)


def _structure(graph: Graph, where: str) -> None:
    if not nx.is_directed_acyclic_graph(graph.g):
        raise VerifyError(f"graph has a cycle{where}")
    defined = set(graph.inputs) | set(graph.constants)
    for op in graph.ops():
        for name in op.inputs:
            if name and name not in defined:
                raise VerifyError(f"{_name(op)}: operand %{name} is undefined{where}")
        for name in op.outputs:
            if name in defined:
                raise VerifyError(f"{_name(op)}: %{name} is defined twice{where}")
            if name not in graph.values:
                raise VerifyError(f"{_name(op)}: output %{name} has no type{where}")
            defined.add(name)
    for name in graph.outputs:
        if name not in defined:
            raise VerifyError(f"graph output %{name} is undefined{where}")


def _own_outputs(graph: Graph, where: str) -> None:
    """From the canonical level on, each graph output is the result of an op of its own."""
    seen: set[str] = set()
    for name in graph.outputs:
        if graph.producer(name) is None or name in seen:
            raise VerifyError(f"graph output %{name} is not the result of an op of its own "
                              f"(canonicalize copies inputs, constants and repeats){where}")
        seen.add(name)


def _folding(graph: Graph) -> set[str]:
    """Constants, and the results of ops that fold into constants at canonicalize (all
    operands folding, or a shape of a static tensor)."""
    const = set(graph.constants) | {""}
    for op in graph.ops():
        if op.kind in SHAPE_OPS or (op.kind not in NOT_FOLDABLE and
                                    all(i in const for i in op.inputs)):
            const.update(op.outputs)
    return const


def verify(graph: Graph, after: str = "", level: str | None = None) -> None:
    """Raise VerifyError unless ``graph`` holds every invariant of the module docstring at
    ``level`` (default ``graph.level``); ``after`` names the pass that just ran, for messages."""
    where = f" (after {after})" if after else ""
    level = level or graph.level
    if level not in LEVELS:
        raise VerifyError(f"unknown IR level {level!r}{where} (levels: {', '.join(LEVELS)})")
    _structure(graph, where)
    if level != ONNX:
        _own_outputs(graph, where)
    c = _Ctx(graph, level, _folding(graph) if level == ONNX else set(graph.constants))
    for op in graph.ops():
        row = lookup(op)
        if row is None:
            raise VerifyError(f"{_name(op)}: kind {op.kind!r} is not in the op table "
                              f"(compiler/ops.py){where}")
        for check in CHECKS:
            why = check(c, op, row)
            if why:
                raise VerifyError(f"{_name(op)}: {why}{where}")
