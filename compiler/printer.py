"""Text and DOT forms of the graph IR: one op a line, the way you want to read it when debugging.

    %c1: f32[1,8,8,8] = conv(%x, @w, @b) {kernel=3x3 strides=1x1 pads=[1,1,1,1] dilations=1x1
        group=1 act=relu}  # onnx: /conv1/Conv        (one line in the output)

Attributes print in the order of their kind's schema (``compiler.ops``), each by its type
(``FORMATS``): dims as 3x3, lists as [1,1,1,1], a fused activation as relu or
leakyrelu(alpha=0.1), tiles, placements and chunks as their count and the first few. The
attributes of ONNX ops (which have no schema), and values that break their schema, print
plainly: numbers, [lists], strings, <dtype[shape]> for tensors. Private attributes (``_refit``)
and absent (None) ones do not print. Small constants show their values; after
allocate-buffers, each value's scratchpad offset follows its ONNX origin.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from isa.printer import one_line

from .ir import Graph
from .ops import ATTR_TYPES, ONNX, OPS, OpDef, lookup
from .shapes import fmt

SHOWN = 3  # items shown of a tile list, a placement, ...
LONG = 16  # entries shown of a plain list
SMALL = 8  # constants of at most this many elements show their values

_DTYPES = {"float32": "f32", "float64": "f64", "float16": "f16", "int64": "i64", "int32": "i32",
           "int8": "i8", "uint8": "u8", "bool": "bool"}


def _dtype(dtype) -> str:
    return _DTYPES.get(str(dtype), str(dtype))


def _plain(v) -> str:
    """Any attribute value, without Python reprs."""
    if isinstance(v, np.ndarray):
        return f"<{_dtype(v.dtype)}{fmt(v.shape)}>"
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        return f"{v:g}"
    if isinstance(v, dict):
        return "(" + ",".join(f"{k}={_plain(x)}" for k, x in v.items()) + ")"
    if isinstance(v, (list, tuple)):
        more = f",...({len(v)})" if len(v) > LONG else ""
        return "[" + ",".join(_plain(x) for x in v[:LONG]) + more + "]"
    if isinstance(v, str) and not re.fullmatch(r"[\w.+-]+", v):
        return '"' + v.replace('"', '\\"') + '"'
    return str(v)


def _counted(parts: list[str]) -> str:
    """``n:first,second,third,...``"""
    return f"{len(parts)}:" + ",".join(parts[:SHOWN]) + (",..." if len(parts) > SHOWN else "")


def _span(items: list[int]) -> str:
    """[a:b] for consecutive indices, else the list."""
    if items and list(items) == list(range(items[0], items[0] + len(items))):
        return f"[{items[0]}:{items[0] + len(items)}]"
    return _plain(items)


def _act(v) -> str:
    kind, attrs = v
    inner = format_attrs(OPS.get(kind), attrs, ",")
    return f"{kind}({inner})" if inner else kind


# attribute type (``compiler.ops.ATTR_TYPES``) -> how a value of that type prints
FORMATS: dict[str, Callable[[object], str]] = {
    "int": str,
    "float": lambda v: f"{v:g}",
    "str": _plain,
    "ints": _plain,
    "dims": lambda v: "x".join(map(str, v)),
    "act": _act,
    "tiles": lambda v: _counted([f"[{r0}:{r1},{c0}:{c1}]" for r0, r1, c0, c1 in v]),
    "placement": lambda v: _counted(["+".join(f"xb{xb}@{v0}:{v1}" for xb, v0, v1 in reps)
                                     for reps in v]),
    "flags": lambda v: f"{sum(v)}/{len(v)}",
    "chunks": lambda v: _counted([_span(c) for c in v]),
    "work": lambda v: _counted([f"xb{xb}/g{g}@{v0}:{v1}" for xb, g, v0, v1 in v]),
}


def format_attrs(row: OpDef | None, attrs: dict, sep: str = " ") -> str:
    """``attrs`` as name=value, in the order of ``row``'s schema (any others after it)."""
    schema = {a.name: a.type for a in (row.attrs or ())} if row else {}
    names = [n for n in schema if n in attrs] + [n for n in attrs if n not in schema]
    parts = []
    for name in names:
        value, kind = attrs[name], schema.get(name)
        if value is None or name.startswith("_"):
            continue
        typed = kind is not None and ATTR_TYPES[kind][0](value)
        parts.append(f"{name}={FORMATS[kind](value) if typed else _plain(value)}")
    return sep.join(parts)


def _ref(graph: Graph, name: str) -> str:
    if not name:
        return "_"  # an omitted optional ONNX input
    return f"@{name}" if graph.is_const(name) else f"%{name}"


def _type(graph: Graph, name: str) -> str:
    """ONNX's dtype and shape before canonicalize; after it f32[shape] (every value is held
    as float32) and, where ONNX typed it otherwise, what it holds, as the .cim ports say:
    token ids below V, other integers, booleans."""
    if graph.level == ONNX and name in graph.values:  # before canonicalize: ONNX's dtype
        return f"{_dtype(graph.values[name].dtype)}{fmt(graph.shape(name))}"
    held = f" ids={graph.index_inputs[name]}" if name in graph.index_inputs else \
        " ints" if name in graph.int_inputs or name in graph.int_outputs else \
        " bool" if name in graph.booleans else ""
    return f"f32{fmt(graph.shape(name))}{held}"


def _const(name: str, arr: np.ndarray) -> str:
    line = f"  const @{name}: {_dtype(arr.dtype)}{fmt(arr.shape)}"
    if arr.size <= SMALL:
        line += " = " + (_plain(arr.item()) if arr.ndim == 0 else _plain(arr.ravel().tolist()))
    return line


def _comment(graph: Graph, values: list[str], origin: str = "") -> str:
    """``  # onnx: origin; offset N`` (the scratchpad offset, once allocate-buffers ran)."""
    parts = [f"onnx: {one_line(origin)}"] if origin else []
    parts += [f"offset {graph.offsets[v]}" for v in values if v in graph.offsets]
    return "  # " + "; ".join(parts) if parts else ""


def format_graph(graph: Graph, title: str = "") -> str:
    lines = [f"# {title}"] if title else []
    lines += [f"# {note}" for note in graph.notes]
    lines.append(f"graph(batch={graph.batch}) level={graph.level} {{")
    for name in graph.inputs:
        lines.append(f"  input %{name}: {_type(graph, name)}" + _comment(graph, [name]))
    lines += [_const(name, np.asarray(arr)) for name, arr in graph.constants.items()]
    for op in graph.ops():
        outs = ", ".join(f"%{o}: {_type(graph, o)}" for o in op.outputs)
        args = ", ".join(_ref(graph, i) for i in op.inputs)
        attrs = format_attrs(lookup(op), op.attrs)
        line = f"  {outs} = {op.kind}({args})" + (f" {{{attrs}}}" if attrs else "")
        lines.append(line + _comment(graph, op.outputs, op.origin))
    lines.append("  return " + ", ".join(f"%{o}" for o in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot(text) -> str:
    """``text`` inside a DOT double-quoted string (ONNX names may hold quotes, backslashes
    and newlines)."""
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_dot(graph: Graph) -> str:
    """Graphviz DOT: ops as boxes, graph inputs/outputs as ellipses, edges labelled by shape."""
    out = ["digraph ir {", "  rankdir=TB; node [shape=box, fontname=monospace];"]
    for name in graph.inputs:
        out.append(f'  "in:{_dot(name)}" [shape=ellipse, label="{_dot(name)}"];')
    for op in graph.ops():
        out.append(f'  "{_dot(op.id)}" [label="{_dot(op.kind)}\\n{_dot(op.origin)}"];')
        for name in op.inputs:
            src = graph.producer(name)
            if src is not None:
                out.append(f'  "{_dot(src.id)}" -> "{_dot(op.id)}" '
                           f'[label="{_dot(_type(graph, name))}"];')
            elif name in graph.inputs:
                out.append(f'  "in:{_dot(name)}" -> "{_dot(op.id)}";')
    for name in graph.outputs:
        out.append(f'  "out:{_dot(name)}" [shape=ellipse, label="{_dot(name)}"];')
        src = graph.producer(name)
        if src is not None:
            out.append(f'  "{_dot(src.id)}" -> "out:{_dot(name)}";')
    out.append("}")
    return "\n".join(out) + "\n"
