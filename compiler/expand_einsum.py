"""Einsum of one or two operands, written as the operators the compiler has.

Exporters write ``torch.einsum`` as an Einsum node ("bhqd,bhkd->bhqk" for attention scores,
"bld,hd->blh" for a linear layer). With every shape static, each such node becomes: a
ReduceSum over the indices only one operand has and the output lacks; for two operands, a
Transpose of each to (batch indices, kept, contracted) and (batch, contracted, kept), a
Reshape of the kept and contracted groups to one axis each, a MatMul (which broadcasts the
batch indices), a Reshape back to the indices and a Transpose to the output's order. A
constant operand's Transpose and Reshape fold away, so a product with a constant matrix
reaches the crossbars as any MatMul does. ``...`` stands for the axes an operand has beyond
its letters (written internally as Greek letters, which no ONNX equation has).

Not expanded (the support check then names Einsum): more than two operands, an index
repeated within one operand (a diagonal), and a node whose operand shapes are unknown.
"""

from __future__ import annotations

from collections.abc import Container
from math import prod

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .support import DOMAINS

# The axes ``...`` stands for, as indices no equation has (ONNX's are ASCII letters)
ELLIPSIS_LETTERS = "".join(chr(0x3B1 + i) for i in range(24))  # Greek: alpha, beta, ...


def _ellipsis(index: str) -> bool:
    return index in ELLIPSIS_LETTERS


def parse(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    """The operands' index strings and the output's, ``...`` spelled out as Greek letters,
    the output implicit where the equation has no ``->`` (the ellipsis, then every index
    that appears once, in ASCII order, as ONNX and numpy have it); None for what
    ``expand`` leaves alone."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks) or not 1 <= len(terms) <= 2 or \
            not all(c.isascii() and c.isalpha() for c in equation.replace("...", "")
                    .replace(",", "").replace("->", "")):
        return None
    width = max([r - len(t.replace("...", "")) for t, r in zip(terms, ranks) if "..." in t],
                default=0)
    out = []
    for term, rank in zip(terms, ranks):
        own = rank - len(term.replace("...", ""))  # the axes its ellipsis stands for
        if own < 0 or (own > 0 and "..." not in term) or own > len(ELLIPSIS_LETTERS):
            return None
        term = term.replace("...", ELLIPSIS_LETTERS[width - own:width])
        if len(set(term)) != len(term):
            return None  # a diagonal
        out.append(term)
    if arrow:
        result = rhs.replace("...", ELLIPSIS_LETTERS[:width])
    else:
        letters = "".join(out)
        result = ELLIPSIS_LETTERS[:width] + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1 and not _ellipsis(c)))
    if len(set(result)) != len(result) or not set(result) <= set("".join(out)):
        return None
    return out, result


class _Writer:
    """New nodes and constants for one Einsum, named after its first output."""

    def __init__(self, base: str):
        self.base, self.nodes, self.inits, self.count = base, [], [], 0

    def name(self) -> str:
        self.count += 1
        return f"{self.base}/einsum{self.count}"

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name()
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def ints(self, values) -> str:
        name = self.name()
        self.inits.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def transpose(self, x: str, term: str, order: str) -> str:
        perm = [term.index(c) for c in order]
        return x if perm == sorted(perm) else self.node("Transpose", [x], perm=perm)

    def reshape(self, x: str, shape: list[int]) -> str:
        return self.node("Reshape", [x, self.ints(shape)])


def _sum_alone(w: _Writer, x: str, term: str, keep: set[str]) -> tuple[str, str]:
    """``x`` summed over the indices of ``term`` not in ``keep``."""
    axes = [i for i, c in enumerate(term) if c not in keep]
    if not axes:
        return x, term
    x = w.node("ReduceSum", [x, w.ints(axes)], keepdims=0)
    return x, "".join(c for c in term if c in keep)


def _two(w: _Writer, names: list[str], terms: list[str], dims: dict[str, int],
         result: str) -> tuple[str, str]:
    """The product of two operands as (batch, left, right) indices: a MatMul."""
    (a, b), (ta, tb) = names, terms
    batch = [c for c in ta if c in tb and c in result]
    contracted = [c for c in ta if c in tb and c not in result]
    left = [c for c in ta if c not in tb]
    right = [c for c in tb if c not in ta]
    a = w.transpose(a, ta, "".join(batch + left + contracted))
    b = w.transpose(b, tb, "".join(batch + contracted + right))
    k = prod(dims[c] for c in contracted)
    a = w.reshape(a, [dims[c] for c in batch] + [prod(dims[c] for c in left), k])
    b = w.reshape(b, [dims[c] for c in batch] + [k, prod(dims[c] for c in right)])
    y = w.node("MatMul", [a, b])
    y = w.reshape(y, [dims[c] for c in batch + left + right])
    return y, "".join(batch + left + right)


def _letter_dims(terms: list[str], shapes: list[tuple[int, ...]]) -> dict[str, int] | None:
    """Each index's size (a size-1 ellipsis axis broadcasts); None if two disagree."""
    dims: dict[str, int] = {}
    for term, shape in zip(terms, shapes):
        for c, n in zip(term, shape):
            old = dims.get(c, n)
            if old != n and not (_ellipsis(c) and 1 in (old, n)):
                return None
            dims[c] = max(old, n) if _ellipsis(c) else n
    return dims


def rewrite(node: onnx.NodeProto, shapes: list[tuple[int, ...]]) -> _Writer | None:
    """The nodes and constants that compute ``node`` (an Einsum whose operands have
    ``shapes``), or None where ``expand`` leaves it."""
    equation = next((helper.get_attribute_value(a) for a in node.attribute
                     if a.name == "equation"), b"").decode()
    parsed = parse(equation, [len(s) for s in shapes])
    if parsed is None:
        return None
    terms, result = parsed
    dims = _letter_dims(terms, shapes)
    if dims is None or (len(terms) == 2 and any(
            _ellipsis(c) and c in terms[0] and c in terms[1] and
            shapes[0][terms[0].index(c)] != shapes[1][terms[1].index(c)] for c in dims)):
        return None  # a broadcast batch index: MatMul's reshape would not see it
    w = _Writer(node.output[0])
    names = list(node.input)
    names[0], terms[0] = _sum_alone(w, names[0], terms[0],
                                    set(result) | (set(terms[1]) if len(terms) == 2 else set()))
    if len(terms) == 2:
        names[1], terms[1] = _sum_alone(w, names[1], terms[1], set(result) | set(terms[0]))
        y, term = _two(w, names, terms, dims, result)
    else:
        y, term = names[0], terms[0]
    if w.transpose(y, term, result) in node.input:  # nothing to compute: "ij->ij"
        w.node("Identity", [y])
    w.nodes[-1].output[0] = node.output[0]
    return w


def expand(model: onnx.ModelProto, const: Container[str]) -> onnx.ModelProto:
    """``model`` (shapes inferred) with each Einsum of one or two operands, not all
    constant, replaced by the nodes that compute it; ``model`` itself when none is."""
    g = model.graph
    types = {v.name: v.type for v in (*g.value_info, *g.input, *g.output)}
    shapes = {i.name: tuple(i.dims) for i in g.initializer}
    for name, t in types.items():
        d = t.tensor_type.shape.dim
        if t.tensor_type.HasField("shape") and all(x.HasField("dim_value") for x in d):
            shapes[name] = tuple(x.dim_value for x in d)
    nodes, inits, changed = [], [], False
    for node in g.node:
        w = None
        if node.op_type == "Einsum" and node.domain in DOMAINS and \
                all(i in shapes for i in node.input) and \
                not all(i in const for i in node.input):
            w = rewrite(node, [shapes[i] for i in node.input])
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
    return out
