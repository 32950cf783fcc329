"""``device.program_many``'s differential programming of fresh writes (nothing known before
them, every cell programmed: every load-phase write), compiled by numba: one pass per
weight down its slices that draws each cell's programming noise where it is used, encodes
its digits (``isa.cells.encode``), and adds its conductance to its column's sums (then,
for analog reads without drift or IR drop, resolves each tile's conductances to the grid,
``device.on_grid``, in one pass while they are in cache), where numpy makes about thirty
passes over the whole stack of tiles. It does the same IEEE
operations in the same order, so it gives the same digits, values, cells and sums
(tests/test_device.py); ``device`` takes numpy's way where numba is off
(``CIMSTACK_NUMBA=0``), the write has a previous state or a selection, or the mapping is
the offset one (not differential).
"""

from __future__ import annotations

import numpy as np

from isa.chip import Chip

from . import kernels


def _loops(q, stuck, keys, sigma, noisy, top, base, aware, compensate, g0, grid, digits,
           values, cells, on_grid, ideal, actual):
    """q [T, R, C] int magnitudes; stuck, digits, values, cells (out) [T, 2, S, R, C];
    ideal, actual (out, zeros) [T, 2, S, C]: ``cells.encode`` slice by slice, most
    significant first, each over all of a tile's weights (long loops over contiguous
    memory), with noise sigma x draw j of stream keys[t] for the cell at
    flat index j of its tile (``device._normals``; none unless ``noisy``); then each cell
    max(g0 + value, 0) and the column sums of cells and of g0 + digits, row by row. With
    ``grid`` (2**GRID_BITS, else 0), cells is one tile's scratch [1, 2, S, R, C] and
    on_grid (out, float32) [T, 2, S, R, C] gets each tile's cells as ``device.on_grid``
    resolves their float32 (in one pass per tile, which vectorises)."""
    tiles, rows, cols = q.shape
    slices, n = digits.shape[2], rows * cols
    rest, noise_p, noise_n = np.zeros(n), np.zeros(n), np.zeros(n)
    for t in range(tiles):
        key = keys[t]
        mine = 0 if grid else t  # the tile's own cells, or the scratch
        magnitudes = q[t].reshape(-1)
        for i in range(n):
            rest[i] = np.float64(magnitudes[i])
        for s in range(slices - 1, -1, -1):
            weight = np.float64(base ** s)
            if noisy:  # cells (0, s) and (1, s) are draws s n + i and (S + s) n + i
                for i in range(n):
                    at = np.uint64(s * n + i)
                    noise_p[i] = np.float64(kernels._draw(kernels._bits(key, at))) * sigma
                for i in range(n):
                    at = np.uint64((slices + s) * n + i)
                    noise_n[i] = np.float64(kernels._draw(kernels._bits(key, at))) * sigma
            stuck_p, stuck_n = stuck[t, 0, s].reshape(-1), stuck[t, 1, s].reshape(-1)
            digit_p, digit_n = digits[t, 0, s].reshape(-1), digits[t, 1, s].reshape(-1)
            value_p, value_n = values[t, 0, s].reshape(-1), values[t, 1, s].reshape(-1)
            for i in range(n):
                want = np.int64(min(max(np.rint(rest[i] / weight), -top), top))
                sp, sn = np.int64(stuck_p[i]), np.int64(stuck_n[i])
                p_fix = sp * top if aware and sp >= 0 else np.int64(-1)
                n_fix = sn * top if aware and sn >= 0 else np.int64(-1)
                p = p_fix if p_fix >= 0 else (min(max(want + n_fix, 0), top) if n_fix >= 0
                                              else max(want, 0))
                m = n_fix if n_fix >= 0 else min(max(p - want, 0), top)
                held_p = _held(np.float64(p) + (noise_p[i] if noisy else 0.0), sp, top, g0)
                held_n = _held(np.float64(m) + (noise_n[i] if noisy else 0.0), sn, top, g0)
                digit_p[i], digit_n[i] = p, m
                value_p[i], value_n[i] = held_p, held_n
                rest[i] -= (held_p - held_n) * weight if compensate \
                    else np.float64((p - m) * weight)
        for k in range(2):  # each column's sums row by row, as ``device.column_sums``
            for s in range(slices):
                for r in range(rows):
                    for c in range(cols):
                        cell = max(g0 + values[t, k, s, r, c], 0.0)
                        cells[mine, k, s, r, c] = cell
                        actual[t, k, s, c] += cell
                        ideal[t, k, s, c] += g0 + np.float64(digits[t, k, s, r, c])
        if grid:
            flat, out = cells[0].reshape(-1), on_grid[t].reshape(-1)
            for i in range(flat.size):
                out[i] = _on_grid(flat[i], grid)


def _on_grid(cell, units):
    """``device.on_grid`` of float32(cell), ``units`` = 2**GRID_BITS (the same float32
    operations: scaling by powers of 2 is exact, np.rint rounds half to even)."""
    return np.rint(np.float32(cell) * np.float32(units)) * (np.float32(1.0) / np.float32(units))


def _held(value, stuck, top, g0):
    """A cell's value after its stuck state, never below zero conductance."""
    value = 0.0 if stuck == 0 else (np.float64(top) if stuck == 1 else value)
    return max(value, -g0)


_compiled = None
if kernels.numba is not None and kernels._kernel is not None:
    _held, _on_grid = kernels._jit(_held), kernels._jit(_on_grid)
    _compiled = kernels._jit(_loops)


def program_fresh(q: np.ndarray, stuck: np.ndarray, keys: np.ndarray | None, sigma: float,
                  chip: Chip, aware: bool, compensate: bool, g0: float, grid: int = 0):
    """Fresh differential writes of a stack of tiles q [T, R, C] int magnitudes with stuck
    [T, 2, S, R, C] and programming noise sigma x draws of streams ``keys`` [T] (None:
    none): (digits, values, cells, ideal, actual) as ``device.program_many`` computes them
    with numpy (``isa.cells.encode``, max(g0 + values, 0), column sums of g0 + digits and of
    cells), or None where numba is off. ``grid`` 2**GRID_BITS: the cells as float32 on that
    grid (``device.on_grid``; for reads without drift or IR drop, whose conductances are
    the cells); 0: float64 (the sums are of the float64 cells either way)."""
    if _compiled is None:
        return None
    q, stuck = np.ascontiguousarray(q), np.ascontiguousarray(stuck)  # (flat loops)
    shape = stuck.shape
    digits, values = np.empty(shape, np.int64), np.empty(shape, np.float64)
    cells = np.empty((1,) + shape[1:] if grid else shape)
    grids = np.empty(shape if grid else (0,) + shape[1:], np.float32)
    ideal, actual = np.zeros(shape[:3] + shape[4:]), np.zeros(shape[:3] + shape[4:])
    noisy = keys is not None
    _compiled(q, stuck, keys if noisy else np.zeros(len(q), np.uint64),
              float(sigma) if noisy else 0.0, noisy, 2 ** chip.arch.cell_bits - 1,
              2 ** chip.arch.cell_bits, bool(aware), bool(compensate), float(g0), float(grid),
              digits, values, cells, grids, ideal, actual)
    return digits, values, grids if grid else cells, ideal, actual
