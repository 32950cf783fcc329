"""Event-driven timing and energy of a program on a chip, at cycle resolution.

Every instruction occupies one unit (``isa.opcodes``) from a start to an end time. Each unit
runs its instructions in program order; an instruction starts when its operands are ready and
its unit is free (a write also needs a free write driver when ``timing.write_drivers`` > 0), so
a write on one crossbar overlaps compute on another. ``barrier`` waits for everything before
it. An ``mvm`` accumulates, so mvms into one buffer wait only for its initialisation, and
readers wait for all of them. Instructions before ``barrier label="inference"`` are the load
phase; the rest is one pass over the compiled batch.

``COSTS`` holds one cost function per opcode: (duration ns, energy pJ) from the chip config,
the operand shapes and, for writes, how many rows and cells really change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .chip import Chip
from .combiner import CombineWork, combine_work
from .opcodes import OPCODES
from .program import Instr, Program


@dataclass
class Event:
    index: int
    op: str
    unit: str
    start: float
    end: float
    energy: float
    phase: str  # "load" | "inference"


@dataclass
class WriteCost:
    rows: int = 0
    cells: int = 0


class _Ctx:
    """Shapes, crossbar contents and the chip, as the cost functions see them."""

    def __init__(self, program: Program, chip: Chip, scale: int):
        self.chip, self.arch = chip, program.chip
        self.blobs = program.blob_map()
        self.shapes = {b.name: (b.type.shape[0] * scale,) + b.type.shape[1:] if b.type.shape
                       else () for b in program.buffers}
        self.xbar: dict[int, np.ndarray] = {}
        self.content: dict[int, tuple] = {}  # which blob window each crossbar holds
        self.tiles_used: set = set()  # distinct tiles the inference body multiplies with
        self.last_write = WriteCost()
        self.combine: dict[str, CombineWork] = {}  # per coefficient blob

    def elems(self, ref: str) -> int:
        if ref[0] == "@":
            return int(self.blobs[ref[1:]].data.size)
        return int(np.prod(self.shapes[ref[1:]], dtype=np.int64))


def _mvm(c: _Ctx, ins: Instr):
    t, e, a = c.chip.timing, c.chip.energy, c.arch
    (r0, r1), (c0, c1), (v0, v1) = ins.attr("rows"), ins.attr("cols"), ins.attr("vecs")
    vectors = c.shapes[ins.operands[1][1:]][0] * (v1 - v0)
    c.tiles_used.add(c.content.get(ins.attr("xb")))
    steps = a.input_bits + t.mvm_extra_steps
    phys_cols = (c1 - c0) * 2 * a.slices
    energy = vectors * (steps * (e.xbar_step_pj + (r1 - r0) * e.dac_pj)
                        + a.input_bits * phys_cols * e.adc_pj)
    return vectors * steps * t.mvm_step_ns, energy


def write_cost(old: np.ndarray | None, new: np.ndarray, cells_per_weight: int) -> WriteCost:
    """Rows and cells a write really changes (program-and-verify skips unchanged rows)."""
    if old is None or old.shape[1] != new.shape[1]:
        return WriteCost(new.shape[0], new.size * cells_per_weight)
    n = min(len(old), len(new))
    diff = np.zeros(new.shape, bool)
    diff[:n] = old[:n] != new[:n]
    diff[n:] = True
    return WriteCost(int(diff.any(axis=1).sum()), int(diff.sum()) * cells_per_weight)


def _write(c: _Ctx, ins: Instr):
    t, d, e = c.chip.timing, c.chip.device, c.chip.energy
    (r0, r1), (c0, c1) = ins.attr("rows"), ins.attr("cols")
    new = c.blobs[ins.operands[0][1:]].data[r0:r1, c0:c1]
    cost = write_cost(c.xbar.get(ins.attr("xb")), new, 2 * c.arch.slices)
    c.xbar[ins.attr("xb")] = new
    c.content[ins.attr("xb")] = (ins.operands[0], r0, r1, c0, c1)
    c.last_write = cost
    row_phase = t.write_iterations * (t.t_pulse_ns + t.t_verify_ns)
    duration = cost.rows * t.write_phases * row_phase
    g_avg = (d.g_min_us + d.g_max_us) / 2 * 1e-6
    pulse_pj = d.write_voltage ** 2 * g_avg * t.t_pulse_ns * 1e-9 * 1e12
    energy = (cost.cells * t.write_iterations * pulse_pj
              + cost.rows * t.write_phases * t.write_iterations * e.verify_row_pj)
    return duration, energy


def _vector(c: _Ctx, ins: Instr):
    n = c.elems(ins.operands[0])
    cycles = -(-n // c.chip.timing.vector_lanes)
    return cycles / c.chip.timing.clock_ghz, n * c.chip.energy.vector_pj_per_elem


def _buffer(c: _Ctx, ins: Instr):
    nbytes = 4 * c.elems(ins.operands[0])
    cycles = -(-nbytes // c.chip.timing.buffer_bytes_per_cycle)
    return cycles / c.chip.timing.clock_ghz, nbytes * c.chip.energy.buffer_pj_per_byte


def _combine(c: _Ctx, ins: Instr):
    """BasisN combiner (``isa.combiner``): merged reads on ``combiner_lanes`` lanes."""
    t, e = c.chip.timing, c.chip.energy
    name = ins.operands[2][1:]
    if name not in c.combine:
        levels = c.blobs[name].data
        n = ins.attr("unit")
        c.combine[name] = combine_work(levels.reshape(-1, n, levels.shape[-1]),
                                       ins.attr("bits"))
    work = c.combine[name]
    shape = c.shapes[ins.operands[0][1:]]
    vectors = int(np.prod(shape[:-1], dtype=np.int64))
    cycles = -(-vectors * work.merged_reads // t.combiner_lanes)
    energy = vectors * (work.merged_reads * e.combiner_read_pj + work.adds * e.combiner_add_pj
                        + work.accumulations * e.combiner_acc_pj)
    return cycles / t.clock_ghz, energy


def _free(c: _Ctx, ins: Instr):
    return 0.0, 0.0


_BY_UNIT = {"vector": _vector, "buffer": _buffer, "control": _free}
COSTS = {m: _BY_UNIT.get(op.unit) for m, op in OPCODES.items()}
COSTS.update({"mvm": _mvm, "write": _write, "reshape": _free, "combine": _combine})


ACCUMULATE = ("mvm", "combine")  # ops that add into dst: they wait for its initialisation only


@dataclass
class Timeline:
    events: list[Event]
    load_ns: float
    total_ns: float
    rows_written: int = 0
    cells_written: int = 0
    body_rows_written: int = 0
    body_cells_written: int = 0
    writes_per_xbar: dict[int, int] = field(default_factory=dict)
    tiles_used: int = 0

    @property
    def body_ns(self) -> float:
        return self.total_ns - self.load_ns


def unit_of(ins: Instr) -> str:
    unit = OPCODES[ins.op].unit
    return f"xbar{ins.attr('xb')}" if unit in ("xbar", "write") else unit


def simulate(program: Program, chip: Chip, scale: int = 1, units: bool = True) -> Timeline:
    """Simulate ``program`` running ``scale`` times its compiled batch. ``units=False`` ignores
    unit conflicts, barriers and write time (for the critical-path bound)."""
    ctx = _Ctx(program, chip, scale)
    free: dict[str, float] = {}
    drivers = [0.0] * chip.timing.write_drivers
    ready: dict[str, float] = {}
    init: dict[str, float] = {}
    floor, latest, load_end = 0.0, 0.0, None
    events: list[Event] = []
    tl = Timeline(events, 0.0, 0.0)
    for i, ins in enumerate(program.text):
        duration, energy = COSTS[ins.op](ctx, ins)
        phase = "load" if load_end is None else "inference"
        if ins.op == "halt":
            break
        if ins.op == "barrier":
            if units:
                floor = latest
            if ins.attr("label") == "inference" and load_end is None:
                load_end = latest if units else 0.0
                ctx.tiles_used.clear()
            continue
        if ins.op == "write":
            _count_write(tl, ctx.last_write, ins.attr("xb"), phase)
            if not units:
                duration = 0.0
        unit = unit_of(ins)
        srcs = ins.operands[1:] if OPCODES[ins.op].operands[:1] == ("dst",) else ins.operands
        start = max([floor] + [ready.get(r[1:], 0.0) for r in srcs if r[0] == "%"])
        dst = ins.operands[0][1:] if OPCODES[ins.op].operands[:1] == ("dst",) else None
        if ins.op in ACCUMULATE:
            start = max(start, init.get(dst, 0.0))
        if units:
            start = max(start, free.get(unit, 0.0))
            if ins.op == "write" and drivers:
                k = int(np.argmin(drivers))
                start = max(start, drivers[k])
                drivers[k] = start + duration
        end = start + duration
        free[unit] = end
        if dst is not None:
            ready[dst] = max(ready.get(dst, 0.0), end) if ins.op in ACCUMULATE else end
            if ins.op not in ACCUMULATE:
                init[dst] = end
        latest = max(latest, end)
        events.append(Event(i, ins.op, unit, start, end, energy, phase))
    tl.load_ns, tl.total_ns = load_end or 0.0, latest
    tl.tiles_used = len(ctx.tiles_used)
    return tl


def _count_write(tl: Timeline, cost: WriteCost, xb: int, phase: str) -> None:
    tl.rows_written += cost.rows
    tl.cells_written += cost.cells
    if phase == "inference":
        tl.body_rows_written += cost.rows
        tl.body_cells_written += cost.cells
        tl.writes_per_xbar[xb] = tl.writes_per_xbar.get(xb, 0) + (cost.rows > 0)
