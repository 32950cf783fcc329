"""The RRAM device model: weights -> cell levels -> conductances, with non-idealities.

A logical tile [R, C] of float weights becomes integer magnitudes (weight_bits - 1 bits, a
scale per column or per tensor), split into two signs (differential pairs; or one array with an
offset) and ``slices`` digits of ``cell_bits`` each, least significant first: ``digits[sign,
slice, r, c]``. A cell at digit d has conductance Gmin + d (Gmax - Gmin) / (2^cell_bits - 1);
we work in units of that level step, so a cell is ``g0 + d`` with g0 = Gmin / step.

Non-idealities (analog mode): each write adds N(0, program_sigma x Gmax) to every programmed
cell; stuck cells (fixed per chip seed) sit at Gmin or Gmax whatever is written; every read
adds output-referred noise. Mitigations: stuck-aware re-encoding (the verify reads reveal stuck
cells; each weight's digits are chosen, most significant first, to hit the target with the
cells that still work) and read-after-write column gains (verify reads measure what each column
really holds; the digital side rescales it).

Quantization and digits are ``isa.cells`` (shared with the timing model, which counts the cells
a write changes). A write programs only the cells whose digit changes (and, with bit stucking,
only some of those in the low-order slices): the others keep their value, noise included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from isa.cells import encode, keep_previous, quantize_weights, to_digits
from isa.chip import Chip

from . import kernels
from .encoding import program_fresh

__all__ = ["Programmed", "encode", "program", "quantize_weights", "read_conditions",
           "stuck_mask", "to_digits"]


@dataclass
class Programmed:
    """What one crossbar holds after a write."""

    cells: np.ndarray      # [signs, slices, R, C] conductance in level steps (g0 included)
    target: np.ndarray | None  # [signs, slices, R, C] the digits the cells hold (kept ones
    #                            too); None once a crossbar written only once is programmed
    scale: np.ndarray      # [C] weight per unit magnitude
    gain: np.ndarray       # [signs, slices, C] digital correction from read-after-write
    full_scale: np.ndarray  # [signs, slices, C] ADC full scale (level steps)
    offset: float          # offset encoding: magnitude added to every weight (0 if differential)
    held: np.ndarray | None = None  # [signs, slices, R, C] cell values in level steps without
    #                                 Gmin, before drift, IR drop and the grid (what a kept
    #                                 cell keeps; float64, so a kept cell reads back bit for
    #                                 bit)
    grid_bound: float | None = None  # cells on the grid (``on_grid``): a bound on any column
    #                                  sum (rows x the largest cell), in grid units; None:
    #                                  cells off the grid


def level_step_us(chip: Chip) -> float:
    """The conductance between adjacent cell levels (uS)."""
    d = chip.device
    return (d.g_max_us - d.g_min_us) / (2 ** chip.arch.cell_bits - 1)


# Analog mode resolves conductances to 2**-GRID_BITS of a level step (0.3 % of the default
# chip's programming noise sigma, 0.077 steps), so that a crossbar's column currents are sums
# that float32 holds exactly (``analog.float32_exact``)
GRID_BITS = 12


def on_grid(cells: np.ndarray) -> np.ndarray:
    """float32 ``cells`` (level steps) rounded in place to the nearest multiple of
    2**-GRID_BITS (ties to even); returns them. Scaling by powers of 2 is exact."""
    cells *= np.float32(2.0 ** GRID_BITS)
    np.rint(cells, out=cells)
    cells *= np.float32(2.0 ** -GRID_BITS)
    return cells


def gmin_levels(chip: Chip) -> float:
    """Gmin in units of one level step: the current every applied input level adds on top
    of its cells' digits (programming adds it to the cells, reads remove it)."""
    return chip.device.g_min_us / level_step_us(chip)


def stuck_mask(key, shape, chip: Chip) -> np.ndarray:
    """-1 free, 0 stuck at Gmin, 1 stuck at Gmax, per physical cell: cell j (flat, C order)
    is stuck at Gmin where draw j of stream ``key`` (a uniform u, ``noise.uniform_from_bits``)
    is below stuck_at_gmin, else at Gmax where u is below both rates together. ``key``: one
    uint64, or an array of them for a mask each (shaped key.shape + shape)."""
    d = chip.device
    return kernels.stream_below(key, int(np.prod(shape)), d.stuck_at_gmin,
                                d.stuck_at_gmin + d.stuck_at_gmax).reshape(
        np.shape(key) + tuple(shape))


def _drifts(chip: Chip) -> bool:
    return bool(chip.device.drift_nu and chip.device.drift_seconds)


def _as_programmed(chip: Chip) -> bool:
    """Whether reads see the cells' conductances as programmed (``read_conditions`` is the
    identity: no drift, no IR drop)."""
    return not _drifts(chip) and not chip.device.wire_ohm


def read_conditions(cells: np.ndarray, chip: Chip) -> np.ndarray:
    """Conductances as an inference read sees them: after drift and with IR drop.

    Drift: G (1 + t)^-nu with t the seconds since programming. IR drop, first order closed
    form: a cell's current crosses its word line from the driver and its bit line to the ADC,
    about (column + rows - row) segments of ``wire_ohm``; with that series resistance R the
    cell conducts G / (1 + R G). Verify reads happen before either, so mitigations do not see
    them.
    """
    d = chip.device
    step_us = level_step_us(chip)
    out = cells
    if _drifts(chip):
        out = out * (1.0 + d.drift_seconds) ** -d.drift_nu
    if d.wire_ohm:
        signs, slices, rows, cols = out.shape[-4:]
        phys_col = (np.arange(cols)[None, None, :] * 2 * slices
                    + np.arange(signs)[:, None, None] * slices
                    + np.arange(slices)[None, :, None])  # [signs, slices, cols]
        segments = phys_col[:, :, None, :] + 1 + (rows - np.arange(rows))[None, None, :, None]
        g_siemens = out * step_us * 1e-6
        out = out / (1.0 + d.wire_ohm * segments * g_siemens)
    return out


def _normals(keys: np.ndarray, sigma: float, shape: tuple) -> np.ndarray:
    """float64 N(0, sigma) draws of ``shape`` [T, ...]: tile t's cell j (flat, C order)
    gets sigma times draw j of stream ``keys[t]`` (``kernels.stream_normals``)."""
    z = kernels.stream_normals(keys, int(np.prod(shape[1:]))).reshape(shape).astype(
        np.float64)
    z *= sigma
    return z


def column_sums(values: np.ndarray) -> np.ndarray:
    """``values`` [..., R, C] summed over rows, one row after another (as the compiled
    programming pass adds them; numpy's sum adds a single column pairwise)."""
    return np.cumsum(values, axis=-2)[..., -1, :]


def program(tile: np.ndarray, chip: Chip, key: np.uint64 | None, stuck: np.ndarray,
            tensor_max: float, prev=None, select: np.ndarray | None = None) -> Programmed:
    """Map ``tile`` onto cells; ``key``: the stream of its programming noise
    (``noise.stream_key``; None means none, quantized mode).
    ``prev``: (digits, values) the tile's cells held before (``isa.cells`` state, -1 where
    unknown), None if nothing is known; ``select``: the changing cells bit stucking lets the
    write program (``isa.cells.LowWrite``), None for all. Cells the write does not program
    keep their digit and value (``isa.cells.keep_previous``)."""
    return program_many([(tile, chip, key, stuck, tensor_max, prev, select)])[0]


def program_many(writes: list[tuple]) -> list[Programmed]:
    """``program(*w)`` for every ``w`` in ``writes``, whose tiles share one shape and which
    all have or all lack ``prev``, ``select`` and a noise key: computed in one pass of
    numpy over the stacked tiles (a crossbar's noise still comes from its own stream),
    each tile's result the same as alone."""
    tiles, chips, keys, stucks, maxes, prevs, selects = zip(*writes)
    chip = chips[0]
    keys = None if keys[0] is None else np.array(keys, np.uint64)
    prev = None if prevs[0] is None else (np.stack([p[0] for p in prevs]),
                                          np.stack([p[1] for p in prevs]))
    select = None if selects[0] is None else np.stack(selects)
    q, scale = quantize_weights(np.stack(tiles), chip, np.asarray(maxes, np.float64))
    stuck = np.stack(stucks)
    top = 2 ** chip.arch.cell_bits - 1
    d, mp = chip.device, chip.mapping
    g0 = gmin_levels(chip)
    sigma = d.program_sigma * d.g_max_us / level_step_us(chip)
    fused = None
    # analog reads without drift or IR drop see the cells as programmed: the compiled
    # programming puts them on the grid itself (2**GRID_BITS units; 0: float64 cells)
    on_grid_now = 2 ** GRID_BITS if keys is not None and _as_programmed(chip) else 0
    if mp.differential:
        stuck = stuck[:, :2]
        how = (chip, bool(mp.stuck_aware), bool(mp.slice_compensation) and keys is not None, g0)
        if prev is None and select is None:  # None without numba
            fused = program_fresh(q, stuck, keys, sigma, *how, grid=on_grid_now)
        if fused is not None:
            digits, held, cells, ideal, actual = fused
        else:
            noise = np.zeros(stuck.shape) if keys is None else _normals(keys, sigma,
                                                                         stuck.shape)
            digits, held = encode(q, stuck, noise, *how, prev, select)
        offset = 0.0
    else:
        digits, offset = to_digits(q, chip)
        stuck = stuck[:, :1]
        held = digits.astype(np.float64)
        if keys is not None:
            held = held + _normals(keys, sigma, held.shape)
        digits, held = keep_previous(digits, held, prev, select)
        held = np.where(stuck == 0, 0.0, np.where(stuck == 1, top, held))
    if fused is None:
        cells = np.maximum(g0 + held, 0.0)
        ideal, actual = column_sums(g0 + digits), column_sums(cells)
    # Column gains correct what was not compensated; after slice compensation the cells
    # deviate from their digits on purpose, so gains would undo it.
    use_gain = mp.raw_calibration and keys is not None and not mp.slice_compensation
    gain = np.where(actual > 0, ideal / np.where(actual > 0, actual, 1.0), 1.0) \
        if use_gain else np.ones_like(ideal)
    full = np.maximum(actual, 1e-9) * mp.adc_headroom
    bounds = [None] * len(writes)
    if keys is not None:  # analog: drift and IR drop, then conductances resolved to the grid
        if fused is None or not on_grid_now:  # (else the compiled programming did both)
            cells = on_grid(read_conditions(cells, chip).astype(np.float32))
        largest = cells.reshape(len(writes), -1).max(axis=1).astype(np.float64)
        bounds = (largest * cells.shape[-2] * 2.0 ** GRID_BITS).tolist()
    cells, gain, full = (cells.astype(np.float32, copy=False), gain.astype(np.float32),
                         full.astype(np.float32))
    return [Programmed(cells[t], digits[t], scale[t], gain[t], full[t], offset, held[t],
                       bounds[t]) for t in range(len(writes))]
