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

from math import prod

import onnx

from .node_writer import NodeWriter, node_attr

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


def _transpose(w: NodeWriter, x: str, term: str, order: str) -> str:
    """``x``, whose axes are ``term``'s indices, with them in ``order``."""
    return w.transpose(x, [term.index(c) for c in order])


def _sum_alone(w: NodeWriter, x: str, term: str, keep: set[str]) -> tuple[str, str]:
    """``x`` summed over the indices of ``term`` not in ``keep``."""
    axes = [i for i, c in enumerate(term) if c not in keep]
    if not axes:
        return x, term
    x = w.node("ReduceSum", [x, w.ints(axes)], keepdims=0)
    return x, "".join(c for c in term if c in keep)


def _two(w: NodeWriter, names: list[str], terms: list[str], dims: dict[str, int],
         result: str) -> tuple[str, str]:
    """The product of two operands as (batch, left, right) indices: a MatMul."""
    (a, b), (ta, tb) = names, terms
    batch = [c for c in ta if c in tb and c in result]
    contracted = [c for c in ta if c in tb and c not in result]
    left = [c for c in ta if c not in tb]
    right = [c for c in tb if c not in ta]
    a = _transpose(w, a, ta, "".join(batch + left + contracted))
    b = _transpose(w, b, tb, "".join(batch + contracted + right))
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


def rewrite(node: onnx.NodeProto, shapes: list[tuple[int, ...]], values: dict
            ) -> NodeWriter | None:
    """The nodes and constants that compute ``node`` (an Einsum whose operands have
    ``shapes``), or None where it stays as it is (``values``: constants, unused)."""
    equation = node_attr(node, "equation", b"").decode()
    parsed = parse(equation, [len(s) for s in shapes])
    if parsed is None:
        return None
    terms, result = parsed
    dims = _letter_dims(terms, shapes)
    if dims is None or (len(terms) == 2 and any(
            _ellipsis(c) and c in terms[0] and c in terms[1] and
            shapes[0][terms[0].index(c)] != shapes[1][terms[1].index(c)] for c in dims)):
        return None  # a broadcast batch index: MatMul's reshape would not see it
    w = NodeWriter(node.output[0], "einsum")
    names = list(node.input)
    names[0], terms[0] = _sum_alone(w, names[0], terms[0],
                                    set(result) | (set(terms[1]) if len(terms) == 2 else set()))
    if len(terms) == 2:
        names[1], terms[1] = _sum_alone(w, names[1], terms[1], set(result) | set(terms[0]))
        y, term = _two(w, names, terms, dims, result)
    else:
        y, term = names[0], terms[0]
    if _transpose(w, y, term, result) in node.input:  # nothing to compute: "ij->ij"
        w.node("Identity", [y])
    return w.finish(node.output[0])


