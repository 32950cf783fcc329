"""schedule: place every weight tile on a physical crossbar, and decide when it is written.

Before: lowered graph (``xbar_matmul`` ops carry ``tiles``).
After: every ``xbar_matmul`` carries ``placement``: for each tile, its replicas as
(crossbar, first vector, end vector), the replicas splitting the op's input vectors between
them; and ``resident`` (one flag per tile: written once in the load phase, else rewritten every
inference right before its mvm). With ``schedule == "naive"`` it also carries ``chunks``: the
tile indices written and then computed together (codegen fences each chunk).
A ``digital_matmul`` (``cimc --digital``) holds no crossbar and needs no placement; only its
tiles' absence changes the counts below, and the estimate issues its ``dmatmul``.

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
  the crossbar where its MVM would finish earliest (list scheduling), so a write runs as soon
  as its crossbar is free, overlapping compute elsewhere. A layer with fewer tiles than
  crossbars whose MVMs outlast a write is replicated: each replica is written separately and
  processes a share of the input vectors, which shortens the critical path through the long
  early layers. With shared write drivers (``timing.write_drivers``) a write also waits for
  the earliest free driver, and replicas must pay for that wait.
- Products written per inference (``dyn_write``, ``cimc --dynamic write``) get crossbars of
  their own after the static ones (``xbs``): ``ctx.dynamic_xbars`` (``cimc
  --dynamic-xbars``), by default as many as one matrix of the largest product needs.
- Weight sorting (the sort-weights pass ran and the model reprograms): the plan tracks what
  every crossbar's cells hold (``isa.cells``, the quantized mode's digits, with bit stucking's
  choice) and estimates each write by the rows it changes, as the simulator does; a rotating
  tile goes, among the crossbars where its mvm would end within ``SIMILAR_SLACK`` full writes
  of the earliest, to the one whose cells differ least from it.

The estimate (every schedule but BasisN's): the instructions codegen will emit for the
scheduled graph, in its order (resident writes, the inference barrier, then each op's), are
issued on an ``isa.timing.Machine`` with ``isa.timing``'s cost functions, on the chip config
(``cimc --chip``): the simulator's own rules and costs. A write is estimated with every row of
its tile changing (the simulator charges only rows that change). ``ctx.stats["schedule"]``
holds that ``Estimate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from isa.cells import LowWrite, blank, nominal_digits, window
from isa.chip import Chip
from isa.opcodes import OPCODES
from isa.timing import (
    DynamicWork,
    Machine,
    WriteChange,
    dbmm_cost,
    digital_cost,
    dmatmul_cost,
    mvm_cost,
    tile_windows,
    tile_write_cost,
    wbmm_cost,
    write_change,
    write_cost,
    xbar_unit,
)

from ..errors import CompileError
from ..ir import Graph, Op
from ..ops import OPS

SCHEDULES = ("optimized", "naive")
SIMILAR_SLACK = 0.25  # weight sorting: how much later than the earliest (in full writes of
#                       the tile) a crossbar whose cells differ less may end the tile's mvm


def n_vectors(graph: Graph, op: Op) -> int:
    """Input vectors per sample: the src of an xbar_matmul viewed as [B, V, K]."""
    return int(np.prod(graph.shape(op.inputs[0])[1:-1], dtype=np.int64))


@dataclass(frozen=True)
class Planned:
    """A crossbar instruction codegen will emit, and when the scheduler expects it to run."""
    op: str                          # "write" | "mvm"
    origin: str                      # the ONNX node (codegen's note)
    xb: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    vecs: tuple[int, int] | None     # mvm only
    start: float
    end: float


@dataclass
class Estimate:
    """The scheduler's timeline: its crossbar instructions in program order, the end of the
    load phase and of the whole program (ns)."""
    planned: list[Planned] = field(default_factory=list)
    load_ns: float = 0.0
    total_ns: float = 0.0


class _Plan:
    """Issues the instructions codegen emits for ops of ``graph`` on a Machine, with the
    chip's costs, recording the crossbar ones."""

    def __init__(self, graph: Graph, chip: Chip, cells: _Cells | None = None):
        self.graph, self.chip, self.cells = graph, chip, cells
        self.machine = Machine(chip.timing.write_drivers)
        self.estimate = Estimate()

    def write_ns(self, op: Op, i: int) -> float:
        r0, r1, c0, c1 = op.attrs["tiles"][i]
        return tile_write_cost(self.chip, r1 - r0, c1 - c0)[0]

    def mvm_ns(self, op: Op, i: int, v0: int, v1: int) -> float:
        r0, r1, c0, c1 = op.attrs["tiles"][i]
        vectors = self.graph.shape(op.inputs[0])[0] * (v1 - v0)
        return mvm_cost(self.chip, r1 - r0, c1 - c0, vectors)[0]

    def _srcs(self, names) -> list[str]:
        return [n for n in names if n and not self.graph.is_const(n)]

    def digital(self, opcode: str, srcs, dst: str) -> None:
        """A vector, buffer or control instruction ``opcode`` writing ``dst``."""
        elems = int(np.prod(self.graph.shape(dst), dtype=np.int64))
        self.machine.issue(OPCODES[opcode].unit, digital_cost(self.chip, opcode, elems)[0],
                           self._srcs(srcs), dst)

    def dmatmul(self, op: Op) -> None:
        """A ``digital_matmul``'s dmatmul on the digital unit, then its fused activation (the
        weight SRAM's size changes only the energy, which the plan does not need)."""
        k, m = self.graph.shape(op.inputs[1])
        vectors = int(np.prod(self.graph.shape(op.inputs[0])[:-1], dtype=np.int64))
        self.machine.issue(OPCODES["dmatmul"].unit, dmatmul_cost(self.chip, vectors, k, m, 0)[0],
                           self._srcs(op.inputs[:1]), op.outputs[0])
        if op.attrs.get("act"):
            self.digital(OPS[op.attrs["act"][0]].opcode, op.outputs, op.outputs[0])

    def product(self, op: Op) -> None:
        """A product of two computed operands: dbmm on the digital unit, or wbmm on the
        dynamic crossbars (estimated with a pool of one matrix's tiles)."""
        out, a = self.graph.shape(op.outputs[0]), self.graph.shape(op.inputs[0])
        g, m, k, n = int(np.prod(out[:-2], dtype=np.int64)), out[-2], a[-1], out[-1]
        if op.kind == "dyn_digital":
            ns = dbmm_cost(self.chip, g * m * k * n)[0]
        else:
            pool = len(tile_windows(k, n, self.chip.arch))
            ns = wbmm_cost(self.chip, DynamicWork(g, m, k, n, pool))[0]
        self.machine.issue(OPCODES[OPS[op.kind].opcode].unit, ns, self._srcs(op.inputs),
                           op.outputs[0])

    def write(self, op: Op, i: int, xb: int, body: bool = False) -> None:
        """Tile ``i``'s write to ``xb`` (``body``: a rotating tile's, with bit stucking);
        with weight sorting, as long as the rows whose cells it changes take."""
        ns = self.write_ns(op, i)
        if self.cells is not None:
            change = self.cells.write(op, i, xb, body)
            ns = write_cost(self.chip, change.rows, change.cells)[0]
        start, end = self.machine.issue(xbar_unit(xb), ns, write=True)
        self._record("write", op, i, xb, None, start, end)

    def mvm(self, op: Op, i: int, xb: int, v0: int, v1: int) -> None:
        start, end = self.machine.issue(xbar_unit(xb), self.mvm_ns(op, i, v0, v1),
                                        self._srcs(op.inputs[:1]), op.outputs[0], True)
        self._record("mvm", op, i, xb, (v0, v1), start, end)

    def choose(self, op: Op, i: int, v0: int, v1: int, pool) -> int:
        """The crossbar of ``pool`` where tile ``i``'s mvm over vectors [v0, v1) would end
        first if it were written there now (ties: the lowest). With weight sorting, of the
        crossbars where it would end within ``SIMILAR_SLACK`` of a full write of the
        earliest, the one whose cells differ least from the tile."""
        w, mvm, free = self.write_ns(op, i), self.mvm_ns(op, i, v0, v1), self.machine.free
        driver = self.machine.earliest(None, write=True)
        ready = self.machine.earliest(None, self._srcs(op.inputs[:1]), op.outputs[0], True)
        ends = [(max(max(driver, free.get(xbar_unit(xb), 0.0)) + w, ready) + mvm, xb)
                for xb in pool]
        best = min(ends)
        if self.cells is None:
            return best[1]
        near = [(end, xb) for end, xb in ends if end <= best[0] + SIMILAR_SLACK * w]
        differing = self.cells.differing(op, i, [xb for _, xb in near])
        return min(zip(differing, near))[1][1]

    def _record(self, kind: str, op: Op, i: int, xb: int, vecs, start: float, end: float):
        r0, r1, c0, c1 = op.attrs["tiles"][i]
        self.estimate.planned.append(Planned(kind, op.origin, xb, (r0, r1), (c0, c1), vecs,
                                             start, end))


class _Cells:
    """Weight sorting's view of the crossbars: the cell state (``isa.cells``) each holds as
    the plan writes tiles, in the digits the runtime programs in quantized mode, with bit
    stucking's choice on rotating tiles (``low``), as ``isa.timing`` counts them."""

    def __init__(self, graph: Graph, chip: Chip, low: LowWrite | None):
        self.graph, self.chip, self.low = graph, chip, low
        self.states: dict[int, np.ndarray] = {}
        self.nth: dict[int, int] = {}
        self._peak: dict[str, float] = {}
        self._last: tuple = (None, None)  # (op id, tile) and its digits

    def digits(self, op: Op, i: int) -> np.ndarray:
        """Tile ``i``'s digits (the last tile's are kept: choose, then write)."""
        if self._last[0] != (op.id, i):
            name = op.inputs[1]
            w = self.graph.constants[name]
            if name not in self._peak:
                self._peak[name] = float(np.abs(w).max(initial=0.0))
            r0, r1, c0, c1 = op.attrs["tiles"][i]
            self._last = ((op.id, i),
                          nominal_digits(w[r0:r1, c0:c1], self.chip, self._peak[name]))
        return self._last[1]

    def differing(self, op: Op, i: int, xbs: list[int]) -> list[int]:
        """Per crossbar of ``xbs``, the cells tile ``i`` would change there."""
        new = self.digits(op, i)
        win = window(*new.shape[2:])
        return [int((self.states[xb][win] != new).sum()) if xb in self.states else new.size
                for xb in xbs]

    def write(self, op: Op, i: int, xb: int, body: bool) -> WriteChange:
        self.nth[xb] = self.nth.get(xb, 0) + 1
        new = self.digits(op, i)
        select = self.low.select(xb, self.nth[xb], new.shape) if body and self.low else None
        return write_change(self.states.setdefault(xb, blank(self.chip)), new, select)


def _walk(plan: _Plan, ops: list[Op], new: dict, choose=None) -> None:
    """Issue codegen's instructions for ``ops`` with the placements in ``new`` (op id ->
    the attributes this pass sets). A replica placed on crossbar None is placed now, on
    ``choose(op, tile, v0, v1)``, and ``new`` records it."""
    for op in ops:  # the load phase: resident tiles
        for i, placed in enumerate(new.get(op.id, {}).get("placement", [])):
            for xb, _, _ in placed if new[op.id]["resident"][i] else []:
                plan.write(op, i, xb)
    plan.machine.barrier()
    plan.estimate.load_ns = plan.machine.latest
    for op in ops:
        if op.kind == "digital_matmul":
            plan.dmatmul(op)
            continue
        if op.kind in ("dyn_digital", "dyn_write"):
            plan.product(op)
            continue
        if op.kind != "xbar_matmul":
            plan.digital(OPS[op.kind].opcode, op.inputs, op.outputs[0])
            continue
        a = new[op.id]
        plan.digital("copy" if len(op.inputs) > 2 else "fill", op.inputs[2:], op.outputs[0])
        if "chunks" in a:
            _fenced(plan, op, a)
        else:
            a["placement"] = [_tile(plan, op, i, placed, a["resident"][i], choose)
                              for i, placed in enumerate(a["placement"])]
        if op.attrs.get("act"):
            plan.digital(OPS[op.attrs["act"][0]].opcode, op.outputs, op.outputs[0])
    plan.estimate.total_ns = plan.machine.latest


def _tile(plan: _Plan, op: Op, i: int, placed, resident: bool, choose) -> list:
    """Each replica's write (unless resident) then its mvm; the placement made."""
    out = []
    for xb, v0, v1 in placed:
        if not resident:
            xb = choose(op, i, v0, v1) if xb is None else xb
            plan.write(op, i, xb, body=True)
        plan.mvm(op, i, xb, v0, v1)
        out.append((xb, v0, v1))
    return out


def _fenced(plan: _Plan, op: Op, a: dict) -> None:
    """Per chunk: a barrier, its writes, a barrier, its mvms (the naive schedule)."""
    for chunk in a["chunks"]:
        plan.machine.barrier()
        for i in chunk:
            for xb, _, _ in a["placement"][i]:
                plan.write(op, i, xb, body=True)
        plan.machine.barrier()
        for i in chunk:
            for xb, v0, v1 in a["placement"][i]:
                plan.mvm(op, i, xb, v0, v1)


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


def _shares(v: int, reps: int) -> list[tuple[int, int]]:
    """[v0, v1) ranges splitting ``v`` vectors between ``reps`` replicas."""
    bounds = np.linspace(0, v, reps + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _optimized(plan: _Plan, ops: list[Op], tiles, n_xbars: int) -> dict:
    """The optimized reprogramming schedule (module docstring): residents and replica counts
    first, then each rotating replica's crossbar chosen as the plan reaches it."""
    n_res = _residents(tiles, n_xbars)
    by_mvm = sorted(range(len(tiles)), key=lambda k: -tiles[k][3])[:n_res]
    pool = range(n_res, n_xbars)
    new, k = {}, 0
    for op in (o for o in ops if o.kind == "xbar_matmul"):
        v = n_vectors(plan.graph, op)
        shares = _shares(v, _replicas(op, tiles, k, len(pool), v,
                                      plan.chip.timing.write_drivers))
        count = len(op.attrs["tiles"])
        resident = [k + i in by_mvm for i in range(count)]
        new[op.id] = {"resident": resident,
                      "placement": [[(by_mvm.index(k + i), 0, v)] if resident[i] else
                                    [(None, v0, v1) for v0, v1 in shares] for i in range(count)]}
        k += count
    _walk(plan, ops, new, lambda op, i, v0, v1: plan.choose(op, i, v0, v1, pool))
    return new


def _stationary(plan: _Plan, mms: list[Op], spare: int) -> dict:
    """Every tile resident; spare crossbars hold replicas, longest per-replica MVM first."""
    reps = {op.id: 1 for op in mms}
    mvm = {op.id: plan.mvm_ns(op, 0, 0, n_vectors(plan.graph, op)) for op in mms}
    count = {op.id: len(op.attrs["tiles"]) for op in mms}
    limit = {op.id: n_vectors(plan.graph, op) for op in mms}
    while True:
        fits = [o for o in reps if count[o] <= spare and reps[o] < limit[o]]
        if not fits:
            break
        best = max(fits, key=lambda o: mvm[o] / reps[o])
        reps[best] += 1
        spare -= count[best]
    new, xb = {}, 0
    for op in mms:
        shares = _shares(n_vectors(plan.graph, op), reps[op.id])
        placement = []
        for _ in op.attrs["tiles"]:
            placement.append([(xb + r, v0, v1) for r, (v0, v1) in enumerate(shares)])
            xb += reps[op.id]
        new[op.id] = {"placement": placement, "resident": [True] * len(placement)}
    return new


def _naive(graph: Graph, mms: list[Op], n_xbars: int) -> dict:
    """Each layer's tiles in chunks of ``n_xbars``, from crossbar 0, none resident."""
    new = {}
    for op in mms:
        idx = list(range(len(op.attrs["tiles"])))
        v = n_vectors(graph, op)
        new[op.id] = {"chunks": [idx[s:s + n_xbars] for s in range(0, len(idx), n_xbars)],
                      "placement": [[(i % n_xbars, 0, v)] for i in idx],
                      "resident": [False] * len(idx)}
    return new


def _basis(graph: Graph, ops: list[Op], n_xbars: int) -> dict:
    """placement: (crossbar, group, first vector, end vector) items of each basis_project."""
    new, turn = {}, 0
    for op in (o for o in ops if o.kind == "basis_project"):
        v, groups = n_vectors(graph, op), op.attrs["groups"]
        placement = []
        for v0, v1 in _shares(v, min(v, -(-n_xbars // groups))):
            for g in range(groups):
                placement.append(((turn + len(placement)) % n_xbars, g, v0, v1))
        turn += len(placement)
        new[op.id] = {"placement": placement}
    return new


def _set_attrs(graph: Graph, ops: list[Op], new: dict) -> None:
    """Give each scheduled op a new attribute dict: its own plus what this pass decided."""
    for op in ops:
        if op.id in new:
            graph.set_attrs(op, {**op.attrs, **new[op.id]})


def _dynamic_pool(graph: Graph, ctx) -> None:
    """Crossbars after the static ones for the products written per inference (dyn_write):
    ``ctx.dynamic_xbars`` of them, by default as many as one matrix of the largest needs."""
    ops = [op for op in graph.ops() if op.kind == "dyn_write"]
    if not ops:
        return
    def tiles(op: Op) -> int:
        k, n = graph.shape(op.inputs[0])[-1], graph.shape(op.outputs[0])[-1]
        return len(tile_windows(k, n, ctx.chip))
    size = ctx.dynamic_xbars or max(map(tiles, ops))
    pool = list(range(graph.xbars, graph.xbars + size))
    for op in ops:
        graph.set_attrs(op, {**op.attrs, "xbs": pool})
    graph.xbars += size
    ctx.stats["dynamic_xbars"] = size


def run(graph: Graph, ctx) -> Graph:
    graph = _static(graph, ctx)
    _dynamic_pool(graph, ctx)
    return graph


def _static(graph: Graph, ctx) -> Graph:
    if ctx.schedule not in SCHEDULES:
        raise CompileError(f"unknown schedule {ctx.schedule!r}; choose from "
                           f"{', '.join(SCHEDULES)}")
    ops = graph.ops()
    if any(op.kind == "basis_project" for op in ops):
        n = max(ctx.max_xbars or 1, 1)
        _set_attrs(graph, ops, _basis(graph, ops, n))
        ctx.stats["tiles"], graph.xbars = 1, n
        return graph
    similar = ctx.stats.get("sort-weights", {}).get("reprograms", False)
    cells = _Cells(graph, ctx.chip_config, ctx.bit_stucking) if similar else None
    plan = _Plan(graph, ctx.chip_config, cells)
    mms = [op for op in ops if op.kind == "xbar_matmul"]
    tiles = [(op, i, plan.write_ns(op, i), plan.mvm_ns(op, i, 0, n_vectors(graph, op)))
             for op in mms for i in range(len(op.attrs["tiles"]))]
    n = max(ctx.max_xbars or len(tiles), 1)
    if len(tiles) <= n:
        spare = n - len(tiles) if ctx.schedule == "optimized" else 0
        new = _stationary(plan, mms, spare)
        _walk(plan, ops, new)
    elif ctx.schedule == "naive":
        new = _naive(graph, mms, n)
        _walk(plan, ops, new)
    else:
        new = _optimized(plan, ops, tiles, n)
    _set_attrs(graph, ops, new)
    ctx.stats.update(tiles=len(tiles), schedule=plan.estimate)
    graph.xbars = n
    return graph
