"""BasisN's combiner: the work of combining basis projections with bit-serial coefficients.

Hardware model (our reading of BasisN, arXiv 2407.03738; the paper body is not available
here). A basis crossbar read leaves, per unit of L inputs, N projections in N column registers
(after the ADCs). Kernel m's output for that unit is sum_n levels[n, m] * proj[n]. Levels are
sign-magnitude integers applied one magnitude bit-plane per pass with a shift-add: in plane p,
kernel m *selects* the columns whose level has bit p set, and an adder tree per kernel sums
its selected projections (with their signs) into its accumulator.

Contest: each column register has one read port per cycle, so in one cycle a column feeds one
kernel; kernels whose selections do not overlap merge in the same cycle. A (unit, plane) pass
then takes as many cycles as its busiest column has selecting kernels (each column's kernels
are served in turn; an adder tree takes any number of its kernel's columns at once), the
*merged reads*. ``contest`` compares that with the contest-free ceil(selections / N).

Per input vector of a layer: cycles = merged reads (on one of ``timing.combiner_lanes``
lanes, which work on different vectors of the layer in lockstep); energy = merged reads x
``combiner_read_pj`` + set bits x ``combiner_add_pj`` (one add per selected projection) +
accumulations x ``combiner_acc_pj`` (one shift-add per kernel, unit and plane with any bit).

As hardware (issue 12): the coefficients of every layer sit in a coefficient SRAM
(``CombinerSize.coef_bytes``: levels at ``bits`` bits each). The lanes work in lockstep on
different vectors, so one fetch of a layer's coefficients is broadcast to all lanes: a layer
fetches its coefficients once per group of ``combiner_lanes`` vectors, at the SRAM read energy
for the SRAM's size, and at ``combiner_coef_bytes_per_cycle`` (a timing limit when it binds).
Each lane keeps one accumulator of ``combiner_acc_bits`` per kernel of the widest layer in a
register file; every accumulation reads and writes one, at the SRAM energy for that file's
size. SRAM energies are Horowitz (ISSCC 2014, 45 nm) per 64-bit read: 8 KB 10 pJ, 32 KB 20 pJ,
1 MB 100 pJ, interpolated log-log and extrapolated with the nearest segment's slope.

The analog reading (``timing.combiner_analog = 1``; issue 12 asks for both). Coefficient bits
do not select digitised projections; they close switches that steer basis-column currents onto
per-kernel summing lines, and each line is digitised. A column's current can feed one line at a
time (no current mirrors assumed), so a (unit, plane) pass takes ``merged_reads`` crossbar
re-reads, as the digital model takes cycles. Costed, per input vector, as optimistic bounds
(``isa.timing.analog_combine_cost``): the units of one crossbar read (h = weights_per_row // N
basis copies) re-read in parallel, so ceil(merged_reads / h) re-reads of input_bits +
mvm_extra_steps steps, spread over all the program's crossbars (each holds the basis) and not
blocking their projections; one ADC conversion per accumulation (unit, plane, kernel with any
bit) and input bit, as if a kernel's columns of one plane always shared one re-read; one
shift-add per conversion; coefficient fetch as in the digital model. No adder trees and one
accumulator per kernel (not per lane); the switch matrix's area is not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm): SRAM read of 64 bits, pJ.
SRAM_64B_PJ = ((8 * 1024, 10.0), (32 * 1024, 20.0), (1024 * 1024, 100.0))


def sram_pj_per_64b(nbytes: float) -> float:
    """Energy of one 64-bit read of an SRAM of ``nbytes`` (Horowitz's three points, log-log
    interpolated, extrapolated with the slope of the nearest segment; 0 for no SRAM)."""
    if nbytes <= 0:
        return 0.0
    pts = SRAM_64B_PJ
    i = 0 if nbytes <= pts[1][0] else 1
    (s0, e0), (s1, e1) = pts[i], pts[i + 1]
    slope = math.log(e1 / e0) / math.log(s1 / s0)
    return e0 * (nbytes / s0) ** slope


def sram_pj_per_byte(nbytes: float) -> float:
    """Read energy per byte of an SRAM of ``nbytes``."""
    return sram_pj_per_64b(nbytes) / 8


@dataclass(frozen=True)
class CombinerSize:
    """What the combiner of a program must hold: coefficient SRAM bytes (every layer's levels
    at its coefficient bits), kernels of the widest layer (accumulators per lane) and the
    widest unit's basis columns N (adders per lane: a cycle reads at most N projections, each
    added once, by a kernel's tree or into its accumulator)."""
    coef_bytes: int = 0
    kernels: int = 0
    unit: int = 0


def level_bytes(levels: np.ndarray, bits: int) -> int:
    """Bytes of ``levels`` stored at ``bits`` bits each."""
    return -(-int(levels.size) * int(bits) // 8)


def combiner_size(program) -> CombinerSize:
    """The combiner size of ``program`` (an ``isa.Program``), from its combine blobs."""
    blobs = program.blob_map()
    seen: dict[str, tuple[int, int, int]] = {}
    for ins in program.text:
        if ins.op == "combine":
            levels = blobs[ins.operands[2][1:]].data
            seen[ins.operands[2]] = (level_bytes(levels, ins.attr("bits")),
                                     int(levels.shape[-1]), int(ins.attr("unit")))
    return CombinerSize(sum(v[0] for v in seen.values()),
                        max((v[1] for v in seen.values()), default=0),
                        max((v[2] for v in seen.values()), default=0))


def plane_selections(levels: np.ndarray, bits: int) -> np.ndarray:
    """Bool [U, P, N, M] of levels [U, N, M]: kernel m selects column n of unit u in plane p."""
    mag = np.abs(levels).astype(np.int64)
    planes = np.arange(bits - 1)
    return ((mag[:, None] >> planes[None, :, None, None]) & 1).astype(bool)


@dataclass(frozen=True)
class CombineWork:
    """Combiner work per input vector of one layer."""
    merged_reads: int   # sum over (unit, plane) of the busiest column's kernel count: cycles
    adds: int           # set coefficient bits: one selected projection added per bit
    accumulations: int  # (unit, plane, kernel) with any bit set: one shift-add each
    ideal_reads: int    # sum over (unit, plane) of ceil(selections / N): cycles without contest
    coef_bytes: int = 0  # the layer's levels at their bits: one fetch per group of lanes
    kernels: int = 0     # M: accumulators per vector
    columns: int = 0     # N: basis columns per unit

    @property
    def contest(self) -> float:
        """merged reads over contest-free reads (1.0: no kernel ever waits for a column)."""
        return self.merged_reads / max(self.ideal_reads, 1)


def combine_work(levels: np.ndarray, bits: int) -> CombineWork:
    """Work of levels [U, N, M] with ``bits``-bit sign-magnitude coefficients."""
    sel = plane_selections(levels, bits)
    degree = sel.sum(axis=3)  # [U, P, N]: kernels reading each column
    adds = degree.sum(axis=2)  # [U, P]
    n = levels.shape[1]
    return CombineWork(int(degree.max(axis=2, initial=0).sum()), int(adds.sum()),
                       int(sel.any(axis=2).sum()), int((-(-adds // n)).sum()),
                       level_bytes(levels, bits), int(levels.shape[-1]), n)
