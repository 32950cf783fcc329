"""schedule: place every weight tile on a physical crossbar, and decide when it is written.

Before: lowered graph (``xbar_matmul`` ops carry ``tiles``).
After: every ``xbar_matmul`` carries ``placement``: for each tile, its replicas as
(crossbar, first vector, end vector), the replicas splitting the op's input vectors between
them; and ``resident`` (one flag per tile: written once in the load phase, else rewritten every
inference right before its mvm). With ``schedule == "naive"`` it also carries ``chunks``: the
tile indices written and then computed together (codegen fences each chunk).

- The model fits (tiles <= crossbars): weight-stationary, every tile resident. Spare
  crossbars hold resident replicas: repeatedly, the layer with the longest per-replica MVM
  that still fits gets one more replica of each of its tiles.
- BasisN (``basis_project`` ops, after ``basis_decompose``): every crossbar holds the basis
  tile, written once in the load phase. Each op's (group of h units, vector range) items go
  round-robin over the crossbars, a layer with fewer groups than crossbars splitting its
  vectors so that every crossbar works; the counter runs on across layers.
- ``naive``: each layer's tiles are written when the layer runs, in chunks of the chip's
  crossbars starting at crossbar 0; writes and compute of a chunk do not overlap.
- ``optimized`` (default): a resident set (the tiles with the longest MVMs, sized by the
  estimate below) stays; the other tiles rotate through the remaining crossbars. Each goes to
  the crossbar where its MVM would finish earliest (list scheduling with the chip's own cost
  model), so a write runs as soon as its crossbar is free, overlapping compute elsewhere.
  A layer with fewer tiles than crossbars whose MVMs outlast a write is replicated: each
  replica is written separately and processes a share of the input vectors, which shortens
  the critical path through the long early layers. Costs are the chip config's
  (``cimc --chip``); with shared write drivers (``timing.write_drivers``) a write also waits
  for the earliest free driver, and replicas must pay for that wait.
"""

from __future__ import annotations

import heapq

import numpy as np

from isa.chip import Chip

from ..errors import CompileError
from ..ir import Graph, Op

SCHEDULES = ("optimized", "naive")


def n_vectors(graph: Graph, op: Op) -> int:
    """Input vectors per sample: the src of an xbar_matmul viewed as [B, V, K]."""
    return int(np.prod(graph.shape(op.inputs[0])[1:-1], dtype=np.int64))


def _costs(graph: Graph, op: Op, chip: Chip) -> tuple[list[float], list[float]]:
    """Estimated (write ns, mvm ns) of each tile of ``op``, all rows assumed to change."""
    t, a = chip.timing, chip.arch
    vectors = graph.shape(op.inputs[0])[0] * n_vectors(graph, op)
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


def _replicas(op: Op, tiles, k: int, pool: int, v: int, drivers: int) -> int:
    """Replicas per tile of an op whose tiles start at ``tiles[k]``: worth it while a write
    is shorter than the MVM share it saves. With ``drivers`` shared write drivers, a write
    effectively costs pool / drivers times longer (the pool waits on them)."""
    count = len(op.attrs["tiles"])
    w, m = max(t[2] for t in tiles[k:k + count]), tiles[k][3]
    if drivers:
        w *= max(1.0, pool / drivers)
    return max(1, min(pool // count, v, int(m // max(w, 1.0))))


def _written(xb_free: float, w: float, drivers: list[float]) -> float:
    """When a write of ``w`` ns on a crossbar free at ``xb_free`` ends (earliest driver)."""
    return max(xb_free, drivers[0] if drivers else 0.0) + w


def _optimized(graph: Graph, ops: list[Op], tiles, n_xbars: int, chip: Chip) -> None:
    n_res = _residents(tiles, n_xbars)
    by_mvm = sorted(range(len(tiles)), key=lambda k: -tiles[k][3])[:n_res]
    free = {xb: 0.0 for xb in range(n_res, n_xbars)}
    drivers = [0.0] * chip.timing.write_drivers  # a heap of shared write drivers' free times
    ready: dict[str, float] = {}
    k = 0
    for op in ops:
        start = max([ready.get(i, 0.0) for i in op.inputs] + [0.0])
        if op.kind != "xbar_matmul":
            for o in op.outputs:
                ready[o] = start + _vector_ns(graph, op, chip)
            continue
        v = n_vectors(graph, op)
        reps = _replicas(op, tiles, k, len(free), v, chip.timing.write_drivers)
        bounds = np.linspace(0, v, reps + 1).astype(int)
        end = start
        for i in range(len(op.attrs["tiles"])):
            _, _, w, m = tiles[k]
            if k in by_mvm:
                op.attrs["placement"][i] = [(by_mvm.index(k), 0, v)]
                op.attrs["resident"][i] = True
                end = max(end, start + m)
            else:
                op.attrs["placement"][i] = []
                for v0, v1 in zip(bounds[:-1], bounds[1:]):
                    share = m * (v1 - v0) / v
                    xb = min(free, key=lambda x: (max(_written(free[x], w, drivers),
                                                      start) + share, x))
                    done = _written(free[xb], w, drivers)
                    if drivers:
                        heapq.heapreplace(drivers, done)
                    free[xb] = max(done, start) + share
                    op.attrs["placement"][i].append((xb, int(v0), int(v1)))
                    end = max(end, free[xb])
            k += 1
        ready[op.outputs[0]] = end


def _replicate_resident(graph: Graph, mms: list[Op], spare: int, chip: Chip) -> None:
    """Spend spare crossbars on resident replicas, longest per-replica MVM first."""
    reps = {op.id: 1 for op in mms}
    mvm = {op.id: _costs(graph, op, chip)[1][0] for op in mms}
    count = {op.id: len(op.attrs["tiles"]) for op in mms}
    limit = {op.id: n_vectors(graph, op) for op in mms}
    while True:
        fits = [o for o in reps if count[o] <= spare and reps[o] < limit[o]]
        if not fits:
            break
        best = max(fits, key=lambda o: mvm[o] / reps[o])
        reps[best] += 1
        spare -= count[best]
    xb = 0
    for op in mms:
        v = n_vectors(graph, op)
        bounds = np.linspace(0, v, reps[op.id] + 1).astype(int)
        placement = []
        for _ in op.attrs["tiles"]:
            placement.append([(xb + r, int(a), int(b))
                              for r, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))])
            xb += reps[op.id]
        op.attrs["placement"] = placement


def _naive(graph: Graph, ops: list[Op], n_xbars: int) -> None:
    for op in ops:
        if op.kind == "xbar_matmul":
            idx = list(range(len(op.attrs["tiles"])))
            op.attrs["chunks"] = [idx[s:s + n_xbars] for s in range(0, len(idx), n_xbars)]
            v = n_vectors(graph, op)
            op.attrs["placement"] = [[(i % n_xbars, 0, v)] for i in idx]


def _basis(graph: Graph, ops: list[Op], n_xbars: int) -> None:
    """placement: (crossbar, group, first vector, end vector) items of each basis_project."""
    turn = 0
    for op in ops:
        if op.kind != "basis_project":
            continue
        v, groups = n_vectors(graph, op), op.attrs["groups"]
        reps = min(v, -(-n_xbars // groups))
        bounds = np.linspace(0, v, reps + 1).astype(int)
        op.attrs["placement"] = []
        for v0, v1 in zip(bounds[:-1], bounds[1:]):
            for g in range(groups):
                op.attrs["placement"].append(((turn + len(op.attrs["placement"])) % n_xbars, g,
                                              int(v0), int(v1)))
        turn += len(op.attrs["placement"])


def run(graph: Graph, ctx) -> Graph:
    ops = graph.ops()
    if any(op.kind == "basis_project" for op in ops):
        n = max(ctx.max_xbars or 1, 1)
        _basis(graph, ops, n)
        ctx.stats["xbars"], ctx.stats["tiles"] = n, 1
        return graph
    mms = [op for op in ops if op.kind == "xbar_matmul"]
    tiles = []
    for op in mms:
        writes, mvms = _costs(graph, op, ctx.chip_config)
        v = n_vectors(graph, op)
        op.attrs["placement"] = [[(xb, 0, v)] for xb in range(len(tiles), len(tiles) + len(writes))]
        op.attrs["resident"] = [True] * len(writes)
        tiles += [(op, i, w, m) for i, (w, m) in enumerate(zip(writes, mvms))]
    n = max(ctx.max_xbars or len(tiles), 1)
    if ctx.schedule not in SCHEDULES:
        raise CompileError(f"unknown schedule {ctx.schedule!r}; choose from "
                           f"{', '.join(SCHEDULES)}")
    if len(tiles) < n and ctx.schedule == "optimized":
        _replicate_resident(graph, mms, n - len(tiles), ctx.chip_config)
    if len(tiles) > n:
        for op in mms:
            op.attrs["resident"] = [False] * len(op.attrs["tiles"])
        if ctx.schedule == "naive":
            _naive(graph, ops, n)
        else:
            _optimized(graph, ops, tiles, n, ctx.chip_config)
    ctx.stats["xbars"] = n
    ctx.stats["tiles"] = len(tiles)
    return graph
