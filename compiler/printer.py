"""Text and DOT forms of the graph IR: one op a line, the way you want to read it when debugging.

    %y: f32[1,8,8,8] = conv(%x, @w, @b) {kernel=[3,3] strides=[1,1]}  # onnx: /conv1/Conv
"""

from __future__ import annotations

import numpy as np

from .ir import Graph


def _ref(graph: Graph, name: str) -> str:
    return f"@{name}" if graph.is_const(name) else f"%{name}"


def _type(graph: Graph, name: str) -> str:
    return f"f32[{','.join(map(str, graph.shape(name)))}]"


def _attr(value) -> str:
    if isinstance(value, np.ndarray):
        return f"<{value.dtype}{list(value.shape)}>"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"[{', '.join(map(str, value[:4]))}, ... {len(value)} items]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace(" ", "")


def format_graph(graph: Graph, title: str = "") -> str:
    lines = [f"# {title}"] if title else []
    lines += [f"# {note}" for note in getattr(graph, "notes", [])]
    lines.append(f"graph(batch={graph.batch}) {{")
    for name in graph.inputs:
        lines.append(f"  input %{name}: {_type(graph, name)}")
    for name, arr in graph.constants.items():
        lines.append(f"  const @{name}: f32[{','.join(map(str, arr.shape))}]")
    for op in graph.ops():
        outs = ", ".join(f"%{o}: {_type(graph, o)}" for o in op.outputs)
        args = ", ".join(_ref(graph, i) for i in op.inputs)
        attrs = " ".join(f"{k}={_attr(v)}" for k, v in op.attrs.items()
                         if v is not None and not k.startswith("_"))
        line = f"  {outs} = {op.kind}({args})" + (f" {{{attrs}}}" if attrs else "")
        lines.append(line + (f"  # onnx: {op.origin}" if op.origin else ""))
    lines.append("  return " + ", ".join(f"%{o}" for o in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"


def format_dot(graph: Graph) -> str:
    """Graphviz DOT: ops as boxes, graph inputs/outputs as ellipses, edges labelled by shape."""
    out = ["digraph ir {", "  rankdir=TB; node [shape=box, fontname=monospace];"]
    for name in graph.inputs:
        out.append(f'  "in:{name}" [shape=ellipse, label="{name}"];')
    for op in graph.ops():
        out.append(f'  "{op.id}" [label="{op.kind}\\n{op.origin}"];')
        for name in op.inputs:
            src = graph.producer(name)
            if src is not None:
                out.append(f'  "{src.id}" -> "{op.id}" [label="{_type(graph, name)}"];')
            elif name in graph.inputs:
                out.append(f'  "in:{name}" -> "{op.id}";')
    for name in graph.outputs:
        out.append(f'  "out:{name}" [shape=ellipse, label="{name}"];')
        src = graph.producer(name)
        if src is not None:
            out.append(f'  "{src.id}" -> "out:{name}";')
    out.append("}")
    return "\n".join(out) + "\n"
