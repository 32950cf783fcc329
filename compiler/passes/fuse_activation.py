"""fuse_activation: fold an activation into the epilogue of the op that produces its input.

Before: canonical ops, batchnorm folded.
After: an activation (a kind whose row in ``compiler.ops`` is ``fusable``: relu, leakyrelu,
clip, sigmoid, tanh, hardsigmoid, gelu and ``ops.ACTIVATIONS``) whose input is the only use of
the result of an op that can carry an epilogue (its row has an ``act`` attribute: conv,
matmul; after lowering also xbar_matmul, combine) and carries none yet, is gone; that producer
carries
``act=Act(kind, attrs)`` and writes the activation's output.
"""

from __future__ import annotations

from ..ir import Graph
from ..ops import FUSABLE, OPS, Act


def run(graph: Graph, ctx) -> Graph:
    for act in [op for op in graph.ops() if op.kind in FUSABLE]:
        prod = graph.producer(act.inputs[0])
        mid = act.inputs[0]
        if (prod is None or prod.kind not in OPS or not OPS[prod.kind].epilogue
                or prod.attrs.get("act") or len(graph.users(mid)) != 1 or mid in graph.outputs):
            continue
        graph.remove_op(act)
        graph.remove_op(prod)
        attrs = dict(prod.attrs, act=Act(act.kind, dict(act.attrs)))
        graph.add_op(prod.kind, prod.inputs, act.outputs, attrs, prod.origin)
        graph.remove_value(mid)
    return graph
