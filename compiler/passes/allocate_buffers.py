"""allocate_buffers: give every tensor a byte offset in the on-chip scratchpad.

Before: a scheduled graph. After: ``graph.offsets`` maps every non-constant value to an offset
(64-byte aligned) such that two values live at the same time never overlap, found by a
first-fit linear scan over the topological order; ``ctx.stats['scratchpad_bytes']`` is the peak,
which must be within ``ctx.limits`` (else CompileError).
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph

ALIGN = 64


def _size(graph: Graph, name: str) -> int:
    n = int(np.prod(graph.shape(name), dtype=np.int64)) * 4
    return -(-n // ALIGN) * ALIGN


def _last_use(graph: Graph, order: list) -> dict[str, int]:
    last = {name: len(order) for name in graph.outputs}
    for step, op in enumerate(order):
        for name in op.inputs:
            if name in graph.values:
                last[name] = max(last.get(name, step), step)
    return last


def _first_fit(live: list[tuple[int, int]], size: int) -> int:
    offset = 0
    for start, end in sorted(live):
        if offset + size <= start:
            break
        offset = max(offset, end)
    return offset


def run(graph: Graph, ctx) -> Graph:
    order = graph.ops()
    last = _last_use(graph, order)
    offsets: dict[str, int] = {}
    live: dict[str, tuple[int, int]] = {}
    births = [(-1, name) for name in graph.inputs]
    births += [(step, o) for step, op in enumerate(order) for o in op.outputs]
    for step, name in births:
        for dead in [n for n in live if last.get(n, -1) < step]:
            del live[dead]
        size = _size(graph, name)
        offsets[name] = _first_fit(list(live.values()), size)
        live[name] = (offsets[name], offsets[name] + size)
    graph.offsets = offsets
    ends = [offsets[n] + _size(graph, n) for n in offsets]
    ctx.stats["scratchpad_bytes"] = max(ends, default=0)
    ctx.limits.check_scratchpad(ctx.stats["scratchpad_bytes"], "the program")
    return graph
