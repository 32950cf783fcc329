"""``isa.cells.encode`` for a write with nothing known before it and every cell programmed
(``prev`` and ``select`` None: every load-phase write), compiled by numba: one pass per
weight down its slices, where numpy makes about twenty passes over the whole stack of
tiles. It does the same IEEE operations in the same order, so it gives the same digits and
values (tests/test_device.py); ``encode`` picks numpy's where numba is off
(``CIMSTACK_NUMBA=0``) or the write has a previous state.
"""

from __future__ import annotations

import numpy as np

from isa import cells
from isa.chip import Chip

from . import kernels


def _loops(q, stuck, noise, top, base, aware, compensate, g0, digits, values):
    """q [T, R, C] int magnitudes; stuck, noise, digits (out), values (out) [T, 2, S, R, C]:
    ``cells.encode`` weight by weight, most significant slice first."""
    tiles, rows, cols = q.shape
    slices = digits.shape[2]
    for t in range(tiles):
        for r in range(rows):
            for c in range(cols):
                rest = np.float64(q[t, r, c])
                for s in range(slices - 1, -1, -1):
                    weight = base ** s
                    want = np.int64(min(max(np.rint(rest / weight), -top), top))
                    sp, sn = np.int64(stuck[t, 0, s, r, c]), np.int64(stuck[t, 1, s, r, c])
                    p_fix = sp * top if aware and sp >= 0 else np.int64(-1)
                    n_fix = sn * top if aware and sn >= 0 else np.int64(-1)
                    p = p_fix if p_fix >= 0 else (min(max(want + n_fix, 0), top) if n_fix >= 0
                                                  else max(want, 0))
                    n = n_fix if n_fix >= 0 else min(max(p - want, 0), top)
                    held_p = _held(np.float64(p) + noise[t, 0, s, r, c], sp, top, g0)
                    held_n = _held(np.float64(n) + noise[t, 1, s, r, c], sn, top, g0)
                    digits[t, 0, s, r, c], digits[t, 1, s, r, c] = p, n
                    values[t, 0, s, r, c], values[t, 1, s, r, c] = held_p, held_n
                    rest -= (held_p - held_n) * weight if compensate \
                        else np.float64((p - n) * weight)


def _held(value, stuck, top, g0):
    """A cell's value after its stuck state, never below zero conductance."""
    value = 0.0 if stuck == 0 else (np.float64(top) if stuck == 1 else value)
    return max(value, -g0)


_compiled = None
if kernels.numba is not None and kernels._kernel is not None:
    _held = kernels._jit(_held)
    _compiled = kernels._jit(_loops)


def encode(q: np.ndarray, stuck: np.ndarray, noise: np.ndarray, chip: Chip, aware: bool,
           compensate: bool, g0: float, prev=None, select=None):
    """``isa.cells.encode`` (same arguments, same results) for stacks of tiles q [T, R, C]:
    compiled for writes without ``prev`` and ``select``, numpy's otherwise."""
    if _compiled is None or prev is not None or select is not None or q.ndim != 3:
        return cells.encode(q, stuck, noise, chip, aware, compensate, g0, prev, select)
    digits = np.zeros(stuck.shape, np.int64)
    values = np.zeros(stuck.shape, np.float64)
    _compiled(q, stuck, noise.astype(np.float64, copy=False), 2 ** chip.arch.cell_bits - 1,
              2 ** chip.arch.cell_bits, bool(aware), bool(compensate), float(g0), digits,
              values)
    return digits, values
