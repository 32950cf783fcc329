"""Event-driven timing and energy of a program on a chip, at cycle resolution.

Every instruction occupies one unit (``isa.opcodes``) from a start to an end time, by the
issue rules of ``Machine``: each unit runs its instructions in program order; an instruction
starts when its operands are ready and its unit is free (a write also needs a free write
driver when ``timing.write_drivers`` > 0), so a write on one crossbar overlaps compute on
another. ``barrier`` waits for everything before it. An ``mvm`` accumulates, so mvms into one
buffer wait only for its initialisation, and readers wait for all of them. Instructions before
``barrier label="inference"`` are the load phase; the rest is one pass over the compiled batch.

Costs are small pure functions of the chip and sizes, (duration ns, energy pJ) each:
``mvm_cost`` (a tile over some input vectors), ``write_cost`` (rows and cells that change;
``tile_write_cost`` when all of them do; which cells a write changes is ``write_change``:
cell digits and crossbar cell states are ``isa.cells``, the runtime's own quantization, so
``cells_written`` is what the runtime programs in quantized mode, bit stucking included),
``vector_cost``, ``buffer_cost``, ``combine_cost``,
``dmatmul_cost`` (the digital MAC unit) and ``digital_cost`` (any vector, buffer or control
opcode by the size of its destination).
``COSTS`` holds one function per opcode that reads those sizes off an instruction of a
program and calls them; the compiler's scheduler calls the same functions, and drives a
``Machine`` with the instructions it plans, so its estimate is the simulator's.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .cells import LowWrite, blank, nominal_digits, signs, write_cells
from .chip import Chip
from .combiner import (
    CombinerSize,
    CombineWork,
    combine_work,
    combiner_size,
    sram_pj_per_64b,
    sram_pj_per_byte,
)
from .digital import weight_bytes, weight_sram_bytes
from .opcodes import OPCODES, REDUCTIONS
from .program import ChipGeometry, Instr, Program
from .resources import weight_store_bytes

Cost = tuple[float, float]  # (duration ns, energy pJ)
F32_BYTES = 4  # buffers hold float32


@dataclass
class Event:
    index: int
    op: str
    unit: str
    start: float
    end: float
    energy: float
    phase: str  # "load" | "inference"


# -- costs: pure functions of the chip and sizes ------------------------------------------

def cells_per_weight(chip: Chip) -> int:
    """Cells one weight occupies: its slices, twice (differential pair or offset column)."""
    return 2 * chip.arch.slices


def mvm_cost(chip: Chip, rows: int, cols: int, vectors: int) -> Cost:
    """``vectors`` input vectors through a tile of ``rows`` x ``cols`` weights: input_steps
    (input_bits / dac_bits) + mvm_extra_steps steps each; per step the array read, per input
    step one DAC conversion per row (the extra pipeline steps apply no input digit) and one
    ADC conversion per physical column (one per MVM with ``adc_per_step`` 0: the steps are
    shift-added in the analog domain first)."""
    t, e, a = chip.timing, chip.energy, chip.arch
    steps = a.input_steps + t.mvm_extra_steps
    phys_cols = cols * cells_per_weight(chip)
    conversions = a.input_steps if a.adc_per_step else 1
    energy = vectors * (steps * e.xbar_step_pj + a.input_steps * rows * dac_pj(chip)
                        + conversions * phys_cols * e.adc_pj)
    return vectors * steps * t.mvm_step_ns, energy


def dac_pj(chip: Chip) -> float:
    """One DAC conversion: ``dac_pj`` is a 1-bit DAC's; a dac_bits DAC is taken to cost its
    2**dac_bits - 1 levels as many (an assumption: a current-steering DAC's unit cells)."""
    return chip.energy.dac_pj * (2 ** chip.arch.dac_bits - 1)


def verify_row_pj(chip: Chip) -> float:
    """One verify read of a row: one conversion per physical column at ``adc_pj``, one array
    step (``xbar_step_pj``), plus ``verify_row_pj`` for anything else the chip states."""
    e = chip.energy
    return chip.arch.cols * e.adc_pj + e.xbar_step_pj + e.verify_row_pj


def write_cost(chip: Chip, rows: int, cells: int) -> Cost:
    """Program-and-verify changing ``rows`` rows and ``cells`` cells: each row, in each of
    write_phases phases, takes write_iterations x (pulse + verify). Energy: every changed cell
    gets write_iterations pulses (in its one phase, SET or RESET) at ``write_pulse_pj`` each,
    a sourced per-cell figure (PUMA: 22.6 nJ per 128x128 array write) rather than
    V_w^2 x G x t_pulse; plus ``verify_row_pj(chip)`` per row, phase and iteration, unless
    programming is open loop (``t_verify_ns`` 0: no verify read, so none charged)."""
    t, e = chip.timing, chip.energy
    row_phase = t.write_iterations * (t.t_pulse_ns + t.t_verify_ns)
    verify = verify_row_pj(chip) if t.t_verify_ns > 0 else 0.0
    energy = (cells * t.write_iterations * e.write_pulse_pj
              + rows * t.write_phases * t.write_iterations * verify)
    return rows * t.write_phases * row_phase, energy


def tile_write_cost(chip: Chip, rows: int, cols: int) -> Cost:
    """A write of a ``rows`` x ``cols`` weight tile whose every row and cell changes."""
    return write_cost(chip, rows, rows * cols * cells_per_weight(chip))


def vector_cost(chip: Chip, elems: int) -> Cost:
    """``elems`` elements through the vector unit, ``vector_lanes`` a cycle."""
    cycles = -(-elems // chip.timing.vector_lanes)
    return cycles / chip.timing.clock_ghz, elems * chip.energy.vector_pj_per_elem * cmos(chip)


def buffer_cost(chip: Chip, nbytes: int) -> Cost:
    """``nbytes`` bytes through the scratchpad port, ``buffer_bytes_per_cycle`` a cycle."""
    cycles = -(-nbytes // chip.timing.buffer_bytes_per_cycle)
    return cycles / chip.timing.clock_ghz, nbytes * chip.energy.buffer_pj_per_byte * cmos(chip)


def cmos(chip: Chip) -> float:
    """The factor on CMOS logic and SRAM energies (``energy.cmos_scale``): Horowitz's 45 nm
    figures, taken as published at 1, beside ISAAC's 32 nm arrays and converters."""
    return chip.energy.cmos_scale


def combine_cost(chip: Chip, vectors: int, work: CombineWork,
                 size: CombinerSize | None = None) -> Cost:
    """BasisN's combiner (``isa.combiner``) on ``vectors`` vectors: their merged reads on
    ``combiner_lanes`` lanes in lockstep; the layer's coefficients (``work.coef_bytes``) are
    fetched once per group of ``combiner_lanes`` vectors, at ``combiner_coef_bytes_per_cycle``
    (the pass takes the longer of reads and fetch) and at the read energy of the program's
    coefficient SRAM (``size.coef_bytes``; without ``size``: the layer's own bytes); every
    accumulation reads and writes a ``combiner_acc_bits`` accumulator in a per-lane register
    file of ``size.kernels`` (else ``work.kernels``) accumulators."""
    t, e = chip.timing, chip.energy
    size = size or CombinerSize(work.coef_bytes, work.kernels)
    if t.combiner_analog:
        return analog_combine_cost(chip, vectors, work, size)
    fetch = _coef_fetch(chip, vectors, work)
    cycles = max(-(-vectors * work.merged_reads // t.combiner_lanes),
                 -(-fetch // t.combiner_coef_bytes_per_cycle))
    energy = (vectors * (work.merged_reads * e.combiner_read_pj + work.adds * e.combiner_add_pj
                         + work.accumulations * (e.combiner_acc_pj + _acc_rw_pj(chip, size)))
              + fetch * sram_pj_per_byte(size.coef_bytes))
    return cycles / t.clock_ghz, energy * cmos(chip)


def _coef_fetch(chip: Chip, vectors: int, work: CombineWork) -> int:
    """Coefficient bytes fetched for ``vectors`` vectors: the layer's levels once per group of
    ``combiner_lanes`` vectors (lanes in lockstep share a fetch), in either combiner model."""
    return -(-vectors // chip.timing.combiner_lanes) * work.coef_bytes


def _acc_rw_pj(chip: Chip, size: CombinerSize) -> float:
    """Read and write of one accumulator in a file of ``size.kernels`` accumulators."""
    bits = chip.timing.combiner_acc_bits
    return 2 * bits / 64 * sram_pj_per_64b(size.kernels * bits / 8)


def analog_combine_cost(chip: Chip, vectors: int, work: CombineWork,
                        size: CombinerSize) -> Cost:
    """The analog reading of the combiner (``isa.combiner`` docstring, optimistic bounds):
    per vector ceil(merged_reads / h) crossbar re-reads (h = weights_per_row // N units a
    read), spread over the program's crossbars; accumulations x input_bits ADC conversions,
    each followed by a shift-add into an accumulator; coefficient fetch as the digital model
    (once per ``combiner_lanes`` vectors)."""
    t, e, a = chip.timing, chip.energy, chip.arch
    per_read = max(1, a.weights_per_row // max(work.columns, 1))
    reads = vectors * -(-work.merged_reads // per_read)
    steps = a.input_steps + t.mvm_extra_steps
    conversions = vectors * work.accumulations * (a.input_steps if a.adc_per_step else 1)
    fetch = _coef_fetch(chip, vectors, work)
    ns = max(reads * steps * t.mvm_step_ns / max(a.xbars, 1),
             -(-fetch // t.combiner_coef_bytes_per_cycle) / t.clock_ghz)
    energy = (reads * (steps * e.xbar_step_pj + a.input_steps * a.rows * dac_pj(chip))
              + conversions * (e.adc_pj + (e.combiner_acc_pj + _acc_rw_pj(chip, size))
                               * cmos(chip))
              + fetch * sram_pj_per_byte(size.coef_bytes) * cmos(chip))
    return ns, energy


def dmatmul_cost(chip: Chip, vectors: int, k: int, m: int, weight_bytes_sram: int) -> Cost:
    """The digital MAC unit (``isa.digital``) on ``vectors`` vectors times a [k, m] weight.
    Weight-stationary: the array holds ``digital_macs`` weights at a time and streams every
    vector through them, so the weight (k x m at ``weight_bits``) is fetched from the weight
    SRAM once per instruction, at ``digital_weight_bytes_per_cycle``; the MACs are counted as
    fully used (a weight block smaller than the array is replicated over it to take several
    vectors at once). Cycles = max(ceil(vectors k m / digital_macs), ceil(fetch bytes /
    bytes per cycle)); energy = vectors k m x ``digital_mac_pj`` + fetch bytes x the read
    energy per byte of a ``weight_bytes_sram`` SRAM (all the program's dmatmul weights). As
    for ``mvm``, reading the inputs and writing the outputs through the scratchpad are not
    charged; a bias initialises the accumulators and is not charged either."""
    t = chip.timing
    macs = vectors * k * m
    fetch = weight_bytes(k * m, chip.arch.weight_bits)
    cycles = max(-(-macs // t.digital_macs), -(-fetch // t.digital_weight_bytes_per_cycle))
    energy = macs * chip.energy.digital_mac_pj + fetch * sram_pj_per_byte(weight_bytes_sram)
    return cycles / t.clock_ghz, energy * cmos(chip)


def dbmm_cost(chip: Chip, macs: int) -> Cost:
    """The digital MAC unit on a product of two computed operands (``dbmm``): ``macs``
    multiply-accumulates at ``digital_macs`` a cycle and ``digital_mac_pj`` each. Both
    operands come from the scratchpad, like an mvm's inputs, and are not charged; nothing is
    fetched from the weight SRAM."""
    t = chip.timing
    return -(-macs // t.digital_macs) / t.clock_ghz, macs * chip.energy.digital_mac_pj * cmos(chip)


def tile_windows(k: int, n: int, arch: ChipGeometry) -> list[tuple[int, int, int, int]]:
    """The crossbar windows (r0, r1, c0, c1) a whole [k, n] matrix written per inference is
    cut into, each at most rows x weights_per_row (``wbmm``)."""
    r, c = arch.rows, arch.weights_per_row
    return [(r0, min(r0 + r, k), c0, min(c0 + c, n))
            for r0 in range(0, k, r) for c0 in range(0, n, c)]


@dataclass(frozen=True)
class DynamicWork:
    """A ``wbmm``: ``matrices`` products [m, k] @ [k, n] over a pool of ``pool`` crossbars."""
    matrices: int
    m: int
    k: int
    n: int
    pool: int

    def tiles(self, chip: Chip) -> list[tuple[int, int]]:
        """(rows, weights) of the crossbar tiles one [k, n] matrix is cut into."""
        return [(r1 - r0, c1 - c0) for r0, r1, c0, c1 in tile_windows(self.k, self.n, chip.arch)]

    def writes(self, chip: Chip) -> int:
        """Tile writes per run: every tile of every matrix."""
        return self.matrices * len(self.tiles(chip))


def wbmm_cost(chip: Chip, work: DynamicWork) -> Cost:
    """Crossbars written per inference (``wbmm``): every tile of every matrix is programmed
    (every row and cell: the data is new, ``tile_write_cost``) and then read by the m rows of
    its first operand (``mvm_cost``). The tiles go round robin over the pool; a crossbar
    writes and reads its tiles one after another, and at most ``write_drivers`` (0: one per
    crossbar) program at once. Time: the larger of a crossbar's share (ceil(tiles / pool)
    average tiles, write and read) and the drivers' share of all the writes. Energy: every
    write and read."""
    tiles = work.tiles(chip)
    costs = [(tile_write_cost(chip, r, c), mvm_cost(chip, r, c, work.m)) for r, c in tiles]
    write_ns = sum(w[0] for w, _ in costs) / len(tiles)
    read_ns = sum(v[0] for _, v in costs) / len(tiles)
    energy = work.matrices * sum(w[1] + v[1] for w, v in costs)
    total = work.writes(chip)
    drivers = min(chip.timing.write_drivers or work.pool, work.pool)
    ns = max(-(-total // work.pool) * (write_ns + read_ns), total * write_ns / drivers)
    return ns, energy


def _free(chip: Chip, elems: int) -> Cost:
    return 0.0, 0.0


_BY_UNIT = {"vector": vector_cost, "control": _free,
            "buffer": lambda chip, elems: buffer_cost(chip, F32_BYTES * elems)}
_DIGITAL = {m: _BY_UNIT[op.unit] for m, op in OPCODES.items() if op.unit in _BY_UNIT}
_DIGITAL["reshape"] = _free  # a view: the data stays where it is

# Vector-unit passes over every element (assumption: one lane operation each, transcendental
# functions included): softmax takes the max, subtracts and exponentiates, sums, divides;
# layernorm the mean, the squared deviations, their mean, then normalises and scales; rmsnorm
# the squares, their mean, then normalises and scales;
# logsoftmax as softmax, a log and a subtraction for the divide; logsumexp the max, the
# shifted exponentials, their sum.
VECTOR_PASSES = {"softmax": 4, "logsoftmax": 4, "layernorm": 5, "rmsnorm": 3,
                 "reducelogsumexp": 3}
# Reductions are charged by the elements they read, not the ones they write.
READS_SOURCE = frozenset(REDUCTIONS)


def digital_cost(chip: Chip, mnemonic: str, elems: int) -> Cost:
    """A vector, buffer or control instruction over ``elems`` elements (its destination's;
    for a reduction its source's; for a control instruction its first operand's): vector ops
    by elements times ``VECTOR_PASSES``, buffer ops by their bytes; ``reshape`` and control
    instructions are free."""
    return _DIGITAL[mnemonic](chip, elems * VECTOR_PASSES.get(mnemonic, 1))


# -- COSTS: the cost of one instruction of a program -------------------------------------

@dataclass
class WriteChange:
    rows: int = 0
    cells: int = 0


def write_change(state: np.ndarray, new: np.ndarray,
                 select: np.ndarray | None = None) -> WriteChange:
    """Rows and cells a write of digits ``new`` [signs, slices, R, C] programs on a crossbar
    whose cell state is ``state`` (``isa.cells``, updated in place): the cells whose digit
    changes or is unknown, less those bit stucking leaves out (``select`` False). A row is
    written (costs time) when any of its cells is."""
    programmed = write_cells(state, new, select)
    return WriteChange(int(programmed.any(axis=(0, 1, 3)).sum()), int(programmed.sum()))


class _Ctx:
    """Shapes, crossbar contents and the chip (with the program's geometry), as the cost
    functions of ``COSTS`` see them."""

    def __init__(self, program: Program, chip: Chip, scale: int):
        self.chip = dataclasses.replace(chip, arch=program.chip)
        self.blobs = program.blob_map()
        self.shapes = {b.name: (b.type.shape[0] * scale,) + b.type.shape[1:] if b.type.shape
                       else () for b in program.buffers}
        self.states: dict[int, np.ndarray] = {}  # cell states (isa.cells) of rewritten ones
        self.nth: dict[int, int] = {}  # writes so far per crossbar
        written = Counter(ins.attr("xb") for ins in program.text if ins.op == "write")
        self.rewritten = {xb for xb, n in written.items() if n > 1}
        self._tensor_max: dict[str, float] = {}
        self.content: dict[int, tuple] = {}  # which blob window each crossbar holds
        self.tiles_used: set = set()  # distinct tiles the inference body multiplies with
        self.last_write = WriteChange()
        self.dynamic: DynamicWork | None = None  # the last wbmm's work
        self.combine: dict[str, CombineWork] = {}  # per coefficient blob
        self.combiner = combiner_size(program)  # coefficient SRAM and accumulator file sizes
        self.digital_sram = weight_sram_bytes(program)  # the digital unit's weight SRAM
        # reprogramming reads every weight it writes from its on-chip store (isa.resources)
        self.store_pj_per_byte = sram_pj_per_byte(weight_store_bytes(program)) * cmos(chip)

    def tensor_max(self, blob: str) -> float:
        """Largest magnitude in a blob (per-tensor weight scaling, as the runtime's)."""
        if blob not in self._tensor_max:
            self._tensor_max[blob] = float(np.abs(self.blobs[blob].data).max(initial=0.0))
        return self._tensor_max[blob]

    def shape(self, ref: str) -> tuple[int, ...]:
        return tuple(self.blobs[ref[1:]].data.shape) if ref[0] == "@" else self.shapes[ref[1:]]

    def elems(self, ref: str) -> int:
        return int(np.prod(self.shape(ref), dtype=np.int64))


def _mvm(c: _Ctx, ins: Instr) -> Cost:
    (r0, r1), (c0, c1), (v0, v1) = ins.attr("rows"), ins.attr("cols"), ins.attr("vecs")
    c.tiles_used.add(c.content.get(ins.attr("xb")))
    vectors = c.shapes[ins.operands[1][1:]][0] * (v1 - v0)
    return mvm_cost(c.chip, r1 - r0, c1 - c0, vectors)


def _write(c: _Ctx, ins: Instr) -> Cost:
    """The cells whose digit changes, from the digits the runtime programs in quantized mode
    (``isa.cells.nominal_digits``), and bit stucking's choice (``isa.cells.LowWrite``); a
    crossbar written once is charged every cell of its window (nothing is known before).
    The written weights (``weight_bits`` each) are read from the program's weight store at
    the SRAM energy for its size (``isa.resources.weight_store_bytes``; none: no charge)."""
    xb, blob = ins.attr("xb"), ins.operands[0][1:]
    (r0, r1), (c0, c1) = ins.attr("rows"), ins.attr("cols")
    c.nth[xb] = c.nth.get(xb, 0) + 1
    c.content[xb] = (ins.operands[0], r0, r1, c0, c1)
    if xb in c.rewritten:
        new = nominal_digits(c.blobs[blob].data[r0:r1, c0:c1], c.chip, c.tensor_max(blob))
        low = LowWrite.of(ins)
        select = low.select(xb, c.nth[xb], new.shape) if low else None
        c.last_write = write_change(c.states.setdefault(xb, blank(c.chip)), new, select)
    else:
        rows, cols = r1 - r0, c1 - c0
        c.last_write = WriteChange(rows, rows * cols * signs(c.chip) * c.chip.arch.slices)
    ns, pj = write_cost(c.chip, c.last_write.rows, c.last_write.cells)
    fetched = -(-(r1 - r0) * (c1 - c0) * c.chip.arch.weight_bits // 8)
    return ns, pj + fetched * c.store_pj_per_byte


def _combine(c: _Ctx, ins: Instr) -> Cost:
    name = ins.operands[2][1:]
    if name not in c.combine:
        levels = c.blobs[name].data
        n = ins.attr("unit")
        c.combine[name] = combine_work(levels.reshape(-1, n, levels.shape[-1]),
                                       ins.attr("bits"))
    vectors = int(np.prod(c.shapes[ins.operands[0][1:]][:-1], dtype=np.int64))
    return combine_cost(c.chip, vectors, c.combine[name], c.combiner)


def _dmatmul(c: _Ctx, ins: Instr) -> Cost:
    k, m = c.blobs[ins.operands[2][1:]].data.shape
    vectors = int(np.prod(c.shapes[ins.operands[1][1:]][:-1], dtype=np.int64))
    return dmatmul_cost(c.chip, vectors, k, m, c.digital_sram)


def _product(c: _Ctx, ins: Instr) -> tuple[int, int, int, int]:
    """(matrices, m, k, n) of a dbmm or wbmm, from its destination's and first operand's
    shapes."""
    dst, a = (c.shape(r) for r in ins.operands[:2])
    return int(np.prod(dst[:-2], dtype=np.int64)), dst[-2], a[-1], dst[-1]


def _dbmm(c: _Ctx, ins: Instr) -> Cost:
    g, m, k, n = _product(c, ins)
    return dbmm_cost(c.chip, g * m * k * n)


def _wbmm(c: _Ctx, ins: Instr) -> Cost:
    c.dynamic = DynamicWork(*_product(c, ins), pool=len(ins.attr("xbs")))
    return wbmm_cost(c.chip, c.dynamic)


def _digital(c: _Ctx, ins: Instr) -> Cost:
    ref = ins.operands[1] if ins.op in READS_SOURCE else ins.operands[0] if ins.operands else 0
    return digital_cost(c.chip, ins.op, c.elems(ref) if ref else 0)


def _interp(c: _Ctx, ins: Instr) -> Cost:
    """A multiply-add a tap and output element (a gather's one tap included)."""
    taps = c.shape(ins.operands[2])[1]
    return vector_cost(c.chip, c.elems(ins.operands[0]) * taps)


COSTS = {m: _digital for m in _DIGITAL}
COSTS.update({"mvm": _mvm, "write": _write, "combine": _combine, "dmatmul": _dmatmul,
              "dbmm": _dbmm, "wbmm": _wbmm, "interp": _interp})


# -- the issue rules, and the simulation of a program ------------------------------------

ACCUMULATE = ("mvm", "combine")  # ops that add into dst: they wait for its initialisation only


class Machine:
    """When instructions issued in program order start and end, by the rules of the module
    docstring; ``simulate`` issues a program's instructions, the compiler's scheduler the
    instructions it plans. Units, sources and destinations are names; ``drivers`` shared
    write drivers (0: one per crossbar). With ``contention=False`` only data dependencies
    count (no unit, driver or barrier waits): the critical path."""

    def __init__(self, drivers: int = 0, contention: bool = True):
        self.contention = contention
        self.drivers = [0.0] * drivers if contention else []
        self.free: dict[str, float] = {}   # unit -> when its last instruction ends
        self.ready: dict[str, float] = {}  # buffer -> when its value is complete
        self.init: dict[str, float] = {}   # buffer -> when its initialisation ended
        self.floor = 0.0                   # the last barrier
        self.latest = 0.0                  # the latest end so far

    def earliest(self, unit: str | None, srcs=(), dst: str | None = None,
                 accumulate: bool = False, write: bool = False) -> float:
        """When an instruction issued now would start (nothing changes); ``unit=None``: not
        counting its unit's wait."""
        start = max([self.floor] + [self.ready.get(s, 0.0) for s in srcs])
        if accumulate:
            start = max(start, self.init.get(dst, 0.0))
        if self.contention and unit is not None:
            start = max(start, self.free.get(unit, 0.0))
        if write and self.drivers:
            start = max(start, min(self.drivers))
        return start

    def issue(self, unit: str, duration: float, srcs=(), dst: str | None = None,
              accumulate: bool = False, write: bool = False) -> tuple[float, float]:
        """Issue an instruction on ``unit`` reading ``srcs`` (and writing or, accumulating,
        adding into ``dst``); a write takes the earliest free driver. Returns (start, end)."""
        start = self.earliest(unit, srcs, dst, accumulate, write)
        end = start + duration
        if write and self.drivers:
            self.drivers[int(np.argmin(self.drivers))] = end
        self.free[unit] = end
        if dst is not None:
            self.ready[dst] = max(self.ready.get(dst, 0.0), end) if accumulate else end
            if not accumulate:
                self.init[dst] = end
        self.latest = max(self.latest, end)
        return start, end

    def barrier(self) -> None:
        """Later instructions start after everything issued so far has ended."""
        if self.contention:
            self.floor = self.latest


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
    body_write_pj: float = 0.0  # energy of the inference phase's writes (wbmm's included)

    @property
    def body_ns(self) -> float:
        return self.total_ns - self.load_ns


def xbar_unit(xb: int) -> str:
    """The unit name of crossbar ``xb`` (its mvms and its writes)."""
    return f"xbar{xb}"


def unit_of(ins: Instr) -> str:
    unit = OPCODES[ins.op].unit
    return xbar_unit(ins.attr("xb")) if unit in ("xbar", "write") else unit


def simulate(program: Program, chip: Chip, scale: int = 1, units: bool = True) -> Timeline:
    """Simulate ``program`` running ``scale`` times its compiled batch. ``units=False`` ignores
    unit conflicts, barriers and write time (for the critical-path bound)."""
    ctx = _Ctx(program, chip, scale)
    machine = Machine(chip.timing.write_drivers, contention=units)
    load_end = None
    tl = Timeline([], 0.0, 0.0)
    for i, ins in enumerate(program.text):
        duration, energy = COSTS[ins.op](ctx, ins)
        phase = "load" if load_end is None else "inference"
        if ins.op == "halt":
            break
        if ins.op == "barrier":
            machine.barrier()
            if ins.attr("label") == "inference" and load_end is None:
                load_end = machine.latest if units else 0.0
                ctx.tiles_used.clear()
            continue
        if ins.op == "write":
            _count_write(tl, ctx.last_write, ins.attr("xb"), phase)
            duration = duration if units else 0.0
            tl.body_write_pj += energy if phase == "inference" else 0.0
        if ins.op == "wbmm":
            _count_dynamic(tl, ctx.dynamic, ins.attr("xbs"), ctx.chip, phase)
        has_dst = OPCODES[ins.op].operands[:1] == ("dst",)
        refs = ins.operands[1:] if has_dst else ins.operands
        start, end = machine.issue(unit_of(ins), duration, [r[1:] for r in refs if r[0] == "%"],
                                   ins.operands[0][1:] if has_dst else None,
                                   ins.op in ACCUMULATE, ins.op == "write")
        tl.events.append(Event(i, ins.op, unit_of(ins), start, end, energy, phase))
    tl.load_ns, tl.total_ns = load_end or 0.0, machine.latest
    tl.tiles_used = len(ctx.tiles_used)
    return tl


def _count_cells(tl: Timeline, change: WriteChange, phase: str) -> None:
    """Rows and cells written, in all and in the inference phase."""
    tl.rows_written += change.rows
    tl.cells_written += change.cells
    if phase == "inference":
        tl.body_rows_written += change.rows
        tl.body_cells_written += change.cells


def _count_write(tl: Timeline, change: WriteChange, xb: int, phase: str) -> None:
    _count_cells(tl, change, phase)
    if phase == "inference":
        tl.writes_per_xbar[xb] = tl.writes_per_xbar.get(xb, 0) + (change.rows > 0)


def _count_dynamic(tl: Timeline, work: DynamicWork, xbs: list[int], chip: Chip,
                   phase: str) -> None:
    """A wbmm's writes: every row and cell of every tile, the tiles round robin over ``xbs``
    (continuing where the last wbmm left off, so the pool wears evenly)."""
    tiles = work.tiles(chip)
    _count_cells(tl, WriteChange(work.matrices * sum(r for r, _ in tiles),
                                 work.matrices * sum(r * c for r, c in tiles)
                                 * cells_per_weight(chip)), phase)
    if phase == "inference":
        tl.body_write_pj += work.matrices * sum(tile_write_cost(chip, r, c)[1]
                                                for r, c in tiles)
        total = work.writes(chip)  # round robin on from the least written crossbars
        for i, xb in enumerate(sorted(xbs, key=lambda x: tl.writes_per_xbar.get(x, 0))):
            share = total // len(xbs) + (i < total % len(xbs))
            tl.writes_per_xbar[xb] = tl.writes_per_xbar.get(xb, 0) + share
