"""match-patterns: the decomposed forms of one-op functions become that op (LayerNorm, GELU).

Before: canonical ops (exporters below opset 17 write LayerNorm, and below opset 20 GELU, as
chains of elementwise ops and reductions).
After: every chain below whose intermediate values nobody else reads (and that are not graph
outputs) is one op writing the chain's last value:

- ``layernorm(x, scale, bias, axis, epsilon)`` from: m = reducemean(x) over the trailing axes
  from ``axis``, keepdims; d = sub(x, m); v = reducemean(pow(d, 2) or mul(d, d)) over the
  same axes; n = div(d, sqrt(add(v, epsilon))); then optionally mul by a constant scale and
  add a constant bias (either operand order). Without them, scale is ones and bias zeros.
- ``gelu(x, approximate="none")`` from: erf(div(x, sqrt 2) or mul(x, 1/sqrt 2)), add 1, then
  mul by x and by 0.5 in either order (x * (erf + 1) * 0.5, or (x * 0.5) * (erf + 1)).

Constants must match to 1e-3 relative (exporters round 1/sqrt(2)); a scale or bias must
broadcast to the normalised axes without growing them.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Op

TOLERANCE = 1e-3


def _only_user(graph: Graph, name: str, kind: str) -> Op | None:
    """The one op of ``kind`` that reads ``name``, when nothing else does."""
    users = graph.users(name)
    if name in graph.outputs or len(users) != 1 or users[0][0].kind != kind:
        return None
    return users[0][0]


def _scalar(graph: Graph, name: str, value: float) -> bool:
    c = graph.constants.get(name)
    return c is not None and c.size == 1 and abs(float(c.reshape(-1)[0]) - value) <= \
        TOLERANCE * abs(value)


def _other(op: Op, name: str) -> str | None:
    """The operand of a binary op that is not ``name`` (None if it is not one of them)."""
    a, b = op.inputs
    return b if a == name else a if b == name else None


def _produced(graph: Graph, name: str, kind: str) -> Op | None:
    op = graph.producer(name)
    return op if op is not None and op.kind == kind else None


def _trailing_mean(graph: Graph, op: Op | None) -> int | None:
    """The axis a keepdims reducemean over the trailing axes starts at, else None."""
    if op is None or op.kind != "reducemean" or not op.attrs["keepdims"]:
        return None
    rank, axes = len(graph.shape(op.inputs[0])), op.attrs["axes"]
    return axes[0] if list(axes) == list(range(axes[0], rank)) else None


def _affine(graph: Graph, value: str, kind: str, norm: tuple) -> tuple[Op | None, str | None]:
    """The op of ``kind`` applying a constant broadcasting to the normalised axes ``norm``
    to ``value`` (its only reader), and that constant; else (None, None)."""
    op = _only_user(graph, value, kind)
    c = _other(op, value) if op is not None else None
    if c is None or c not in graph.constants:
        return None, None
    shape = graph.constants[c].shape
    try:
        ok = len(shape) <= len(norm) and np.broadcast_shapes(shape, norm) == norm
    except ValueError:
        ok = False
    return (op, c) if ok else (None, None)


def _layernorm(graph: Graph, div: Op) -> tuple[list[Op], str, dict] | None:
    """The LayerNorm chain ending in ``div`` (module docstring): its ops, x, and the
    layernorm's operands and attributes."""
    d, s = div.inputs
    sub, sqrt = _produced(graph, d, "sub"), _produced(graph, s, "sqrt")
    if sub is None or sqrt is None:
        return None
    x, mean = sub.inputs
    m_op = _produced(graph, mean, "reducemean")
    axis = _trailing_mean(graph, m_op)
    add = _produced(graph, sqrt.inputs[0], "add")
    if axis is None or m_op.inputs[0] != x or add is None:
        return None
    v, eps = (add.inputs if add.inputs[1] in graph.constants else add.inputs[::-1])
    v_op = _produced(graph, v, "reducemean")
    sq = _produced(graph, v_op.inputs[0], "pow") or _produced(graph, v_op.inputs[0], "mul") \
        if v_op is not None else None
    if (sq is None or _trailing_mean(graph, v_op) != axis or sq.inputs[0] != d
            or not (sq.inputs[1] == d if sq.kind == "mul" else _scalar(graph, sq.inputs[1], 2.0))
            or eps not in graph.constants or graph.constants[eps].size != 1):
        return None
    chain = [m_op, sub, sq, v_op, add, sqrt, div]
    if any(len({u.id for u, _ in graph.users(o.outputs[0])}) != (2 if o is sub else 1)
           or o.outputs[0] in graph.outputs for o in chain[:-1]):
        return None
    norm = graph.shape(x)[axis:]
    out, scale, bias = div.outputs[0], None, None
    mul, scale = _affine(graph, out, "mul", norm)
    if mul is not None:
        chain.append(mul)
        out = mul.outputs[0]
    plus, bias = _affine(graph, out, "add", norm)
    if plus is not None:
        chain.append(plus)
    ones = np.ones(norm, np.float32)
    scale = graph.constants[scale] if scale else ones
    bias = graph.constants[bias] if bias else np.zeros_like(ones)
    attrs = {"axis": axis, "epsilon": float(graph.constants[eps].reshape(-1)[0])}
    return chain, x, {"scale": np.broadcast_to(scale, norm).astype(np.float32),
                      "bias": np.broadcast_to(bias, norm).astype(np.float32), "attrs": attrs}


def _gelu(graph: Graph, erf: Op) -> tuple[list[Op], str] | None:
    """The erf GELU chain around ``erf`` (module docstring): its ops and x."""
    pre = graph.producer(erf.inputs[0])
    if pre is None or pre.kind not in ("div", "mul") or pre.inputs[1] not in graph.constants:
        return None
    x = pre.inputs[0]
    if not _scalar(graph, pre.inputs[1], np.sqrt(2.0) if pre.kind == "div" else
                   1 / np.sqrt(2.0)):
        return None
    plus = _only_user(graph, erf.outputs[0], "add")
    if plus is None or not _scalar(graph, _other(plus, erf.outputs[0]), 1.0):
        return None
    mul = _only_user(graph, plus.outputs[0], "mul")
    if mul is None:
        return None
    left = _other(mul, plus.outputs[0])
    half = _produced(graph, left, "mul")
    if left == x:  # x * (erf + 1), then * 0.5
        last = _only_user(graph, mul.outputs[0], "mul")
        if last is None or not _scalar(graph, _other(last, mul.outputs[0]), 0.5):
            return None
        chain = [pre, erf, plus, mul, last]
    elif half is not None and x in half.inputs and _scalar(graph, _other(half, x), 0.5) and \
            len(graph.users(left)) == 1 and left not in graph.outputs:
        chain = [pre, half, erf, plus, mul]
    else:
        return None
    if len(graph.users(pre.outputs[0])) != 1 or pre.outputs[0] in graph.outputs:
        return None
    return chain, x


def _replace(graph: Graph, chain: list[Op], kind: str, inputs: list[str], attrs: dict,
             gone: set[str]) -> None:
    """Remove ``chain`` (recording its ops in ``gone``) and its intermediate values; one op
    of ``kind`` writes its result."""
    gone.update(op.id for op in chain)
    out = chain[-1].outputs[0]
    for op in chain:
        graph.remove_op(op)
    for op in chain[:-1]:
        graph.remove_value(op.outputs[0])
    graph.add_op(kind, inputs, [out], attrs, chain[-1].origin)


def run(graph: Graph, ctx) -> Graph:
    gone: set[str] = set()  # ops removed with an earlier match
    for op in graph.ops():
        if op.id in gone:
            continue
        if op.kind == "div" and (found := _layernorm(graph, op)):
            chain, x, parts = found
            scale = graph.add_constant(graph.fresh(f"{op.origin or op.id}.scale"),
                                       parts["scale"])
            bias = graph.add_constant(graph.fresh(f"{op.origin or op.id}.bias"), parts["bias"])
            _replace(graph, chain, "layernorm", [x, scale, bias], parts["attrs"], gone)
            ctx.stats["layernorms_matched"] = ctx.stats.get("layernorms_matched", 0) + 1
        elif op.kind == "erf" and (found := _gelu(graph, op)):
            chain, x = found
            _replace(graph, chain, "gelu", [x], {"approximate": "none"}, gone)
            ctx.stats["gelus_matched"] = ctx.stats.get("gelus_matched", 0) + 1
    return graph
