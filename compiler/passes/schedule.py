"""schedule: place every weight tile on a physical crossbar.

Before: lowered graph (``xbar_matmul`` ops carry ``tiles``).
After: every ``xbar_matmul`` carries ``xbars``, one crossbar index per tile. This is the
weight-stationary schedule: each tile owns a crossbar, written once before any compute, so the
chip needs as many crossbars as there are tiles. A chip with fewer crossbars is rejected with
how many it would need.
"""

from __future__ import annotations

from ..errors import CompileError
from ..ir import Graph


def run(graph: Graph, ctx) -> Graph:
    next_xb = 0
    for op in graph.ops():
        if op.kind == "xbar_matmul":
            op.attrs["xbars"] = list(range(next_xb, next_xb + len(op.attrs["tiles"])))
            next_xb += len(op.attrs["tiles"])
    if ctx.max_xbars is not None and next_xb > ctx.max_xbars:
        raise CompileError(f"the model needs {next_xb} crossbars for weight-stationary mapping "
                           f"but the chip has {ctx.max_xbars}; use a larger --xbars "
                           "(reprogramming schedules are not implemented yet)")
    ctx.stats["xbars"] = max(next_xb, 1)
    return graph
