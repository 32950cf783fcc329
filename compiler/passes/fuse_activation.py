"""fuse_activation: fold an activation into the epilogue of the conv/matmul that feeds it.

Before: canonical ops, batchnorm folded.
After: a relu/leakyrelu/clip/sigmoid/tanh whose input is the only use of a conv or matmul
output is gone; that producer carries ``act=(kind, attrs)`` and writes the activation's output.
"""

from __future__ import annotations

from ..ir import Graph

ACTIVATIONS = {"relu", "leakyrelu", "clip", "sigmoid", "tanh"}
PRODUCERS = {"conv", "matmul"}


def run(graph: Graph, ctx) -> Graph:
    for act in [op for op in graph.ops() if op.kind in ACTIVATIONS]:
        prod = graph.producer(act.inputs[0])
        mid = act.inputs[0]
        if (prod is None or prod.kind not in PRODUCERS or prod.attrs.get("act")
                or len(graph.users(mid)) != 1 or mid in graph.outputs):
            continue
        graph.remove_op(act)
        graph.remove_op(prod)
        attrs = dict(prod.attrs, act=(act.kind, dict(act.attrs)))
        graph.add_op(prod.kind, prod.inputs, act.outputs, attrs, prod.origin)
        graph.values.pop(mid, None)
    return graph
