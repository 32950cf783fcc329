"""schedule: place every weight tile on a physical crossbar, and decide when it is written.

Before: lowered graph (``xbar_matmul`` ops carry ``tiles``).
After: every ``xbar_matmul`` carries ``xbars`` (one crossbar per tile) and ``resident`` (one
flag per tile: written once in the load phase, else rewritten every inference right before
its mvm). With ``schedule == "naive"`` it also carries ``chunks``: the tile indices written
and then computed together (codegen fences each chunk).

- The model fits (tiles <= crossbars): weight-stationary, every tile resident.
- ``naive``: each layer's tiles are written when the layer runs, in chunks of the chip's
  crossbars starting at crossbar 0; writes and compute of a chunk do not overlap.
- ``optimized`` (default): a resident set (the tiles with the longest MVMs, sized by the
  estimate below) stays; the other tiles rotate through the remaining crossbars. Each goes to
  the crossbar where its MVM would finish earliest (list scheduling with the chip's own cost
  model), so a write runs as soon as its crossbar is free, overlapping compute elsewhere.
"""

from __future__ import annotations

import numpy as np

from isa.chip import Chip

from ..errors import CompileError
from ..ir import Graph, Op

SCHEDULES = ("optimized", "naive")


def _costs(graph: Graph, op: Op, chip: Chip) -> tuple[list[float], list[float]]:
    """Estimated (write ns, mvm ns) of each tile of ``op``, all rows assumed to change."""
    t, a = chip.timing, chip.arch
    shape = graph.shape(op.inputs[0])
    vectors = int(np.prod(shape[:-1], dtype=np.int64))
    mvm = vectors * (a.input_bits + t.mvm_extra_steps) * t.mvm_step_ns
    row = t.write_phases * t.write_iterations * (t.t_pulse_ns + t.t_verify_ns)
    writes = [(r1 - r0) * row for r0, r1, _, _ in op.attrs["tiles"]]
    return writes, [mvm] * len(writes)


def _vector_ns(graph: Graph, op: Op, chip: Chip) -> float:
    n = sum(int(np.prod(graph.shape(o), dtype=np.int64)) for o in op.outputs)
    return n / chip.timing.vector_lanes / chip.timing.clock_ghz


def _residents(tiles, n_xbars: int) -> int:
    """How many tiles to keep resident. A resident tile saves its write every inference but
    holds a crossbar that then idles after its one MVM; pick the count that minimises the
    estimated work of the busiest crossbar (residents: the tiles with the longest MVMs)."""
    by_mvm = sorted(tiles, key=lambda t: -t[3])
    pool_work = sum(w + m for _, _, w, m in tiles)
    best, best_r = pool_work / n_xbars, 0
    for r in range(1, n_xbars):
        pool_work -= by_mvm[r - 1][2] + by_mvm[r - 1][3]
        est = max(pool_work / (n_xbars - r), by_mvm[0][3])
        if est < best:
            best, best_r = est, r
    return best_r


def _optimized(graph: Graph, ops: list[Op], tiles, n_xbars: int, chip: Chip) -> None:
    n_res = _residents(tiles, n_xbars)
    by_mvm = sorted(range(len(tiles)), key=lambda k: -tiles[k][3])[:n_res]
    resident = set(by_mvm)
    free = {xb: 0.0 for xb in range(n_res, n_xbars)}
    ready: dict[str, float] = {}
    k = 0
    for op in ops:
        start = max([ready.get(i, 0.0) for i in op.inputs] + [0.0])
        if op.kind != "xbar_matmul":
            for o in op.outputs:
                ready[o] = start + _vector_ns(graph, op, chip)
            continue
        end = start
        for i in range(len(op.attrs["tiles"])):
            _, _, w, m = tiles[k]
            if k in resident:
                op.attrs["xbars"][i], op.attrs["resident"][i] = by_mvm.index(k), True
                end = max(end, start + m)
            else:
                xb = min(free, key=lambda x: (max(free[x] + w, start) + m, x))
                free[xb] = max(free[xb] + w, start) + m
                op.attrs["xbars"][i] = xb
                end = max(end, free[xb])
            k += 1
        ready[op.outputs[0]] = end


def _naive(ops: list[Op], n_xbars: int) -> None:
    for op in ops:
        if op.kind == "xbar_matmul":
            idx = list(range(len(op.attrs["tiles"])))
            op.attrs["chunks"] = [idx[s:s + n_xbars] for s in range(0, len(idx), n_xbars)]
            op.attrs["xbars"] = [i % n_xbars for i in idx]


def run(graph: Graph, ctx) -> Graph:
    ops = graph.ops()
    mms = [op for op in ops if op.kind == "xbar_matmul"]
    tiles = []
    for op in mms:
        writes, mvms = _costs(graph, op, ctx.chip_config)
        op.attrs["xbars"] = list(range(len(tiles), len(tiles) + len(writes)))
        op.attrs["resident"] = [True] * len(writes)
        tiles += [(op, i, w, m) for i, (w, m) in enumerate(zip(writes, mvms))]
    n = max(ctx.max_xbars or len(tiles), 1)
    if ctx.schedule not in SCHEDULES:
        raise CompileError(f"unknown schedule {ctx.schedule!r}; choose from "
                           f"{', '.join(SCHEDULES)}")
    if len(tiles) > n:
        for op in mms:
            op.attrs["resident"] = [False] * len(op.attrs["tiles"])
        if ctx.schedule == "naive":
            _naive(ops, n)
        else:
            _optimized(graph, ops, tiles, n, ctx.chip_config)
    ctx.stats["xbars"] = n
    ctx.stats["tiles"] = len(tiles)
    return graph
