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
lanes, which work on different vectors or units in parallel); energy = merged reads x
``combiner_read_pj`` + set bits x ``combiner_add_pj`` (one add per selected projection) +
accumulations x ``combiner_acc_pj`` (one shift-add per kernel, unit and plane with any bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
                       int(sel.any(axis=2).sum()), int((-(-adds // n)).sum()))
