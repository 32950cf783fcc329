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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from isa.chip import Chip


@dataclass
class Programmed:
    """What one crossbar holds after a write."""

    cells: np.ndarray      # [signs, slices, R, C] conductance in level steps (g0 included)
    target: np.ndarray     # [signs, slices, R, C] the digits the mapping wanted
    scale: np.ndarray      # [C] weight per unit magnitude
    gain: np.ndarray       # [signs, slices, C] digital correction from read-after-write
    full_scale: np.ndarray  # [signs, slices, C] ADC full scale (level steps)
    offset: float          # offset encoding: magnitude added to every weight (0 if differential)
    target_weight: np.ndarray  # [R, C] the quantized weights (scale applied)


def quantize_weights(tile: np.ndarray, chip: Chip, tensor_max: float):
    """Signed integer magnitudes and the per-column scale."""
    qmax = 2 ** (chip.arch.weight_bits - 1) - 1
    peak = np.abs(tile).max(axis=0) if chip.mapping.per_column_scaling else \
        np.full(tile.shape[1], tensor_max)
    # An all-zero column gets scale 0: whatever its cells hold, its digital output is zero.
    scale = (peak / qmax).astype(np.float64)
    q = np.rint(tile / np.where(scale > 0, scale, 1.0))
    return np.clip(q, -qmax, qmax).astype(np.int64), scale


def to_digits(q: np.ndarray, chip: Chip) -> tuple[np.ndarray, float]:
    """[signs, slices, R, C] digits of signed magnitudes ``q``."""
    base, slices = 2 ** chip.arch.cell_bits, chip.arch.slices
    if chip.mapping.differential:
        mags, offset = np.stack([np.maximum(q, 0), np.maximum(-q, 0)]), 0
    else:
        offset = 2 ** (chip.arch.weight_bits - 1)
        mags = (q + offset)[None]
    powers = base ** np.arange(slices)
    digits = (mags[:, None] // powers[None, :, None, None]) % base
    return digits.astype(np.int64), float(offset)


def stuck_mask(rng: np.random.Generator, shape, chip: Chip) -> np.ndarray:
    """-1 free, 0 stuck at Gmin, 1 stuck at Gmax, per physical cell."""
    u = rng.random(shape)
    d = chip.device
    return np.where(u < d.stuck_at_gmin, 0, np.where(u < d.stuck_at_gmin + d.stuck_at_gmax,
                                                     1, -1)).astype(np.int8)


def encode(q: np.ndarray, stuck: np.ndarray, noise: np.ndarray, chip: Chip,
           aware: bool, compensate: bool, g0: float) -> tuple[np.ndarray, np.ndarray]:
    """Differential digits and the cell values they end up as, most significant slice first.

    Each slice's digit pair (p, n) aims p - n at the rounded remainder. ``aware``: stuck cells
    (known from verify reads) are taken as fixed and the pair is chosen around them.
    ``compensate``: the remainder passed down is measured from what the cells really hold
    (noise and stuck cells included), so lower slices cancel the higher slices' error.
    Returns (digits [2, S, R, C], cell values in level steps without Gmin).
    """
    top, base, slices = 2 ** chip.arch.cell_bits - 1, 2 ** chip.arch.cell_bits, chip.arch.slices
    fixed = np.where(stuck >= 0, stuck.astype(np.int64) * top, -1)
    rest = q.astype(np.float64)
    digits = np.zeros(stuck.shape, np.int64)
    values = np.zeros(stuck.shape, np.float64)
    for s in reversed(range(slices)):
        weight = base ** s
        want = np.clip(np.rint(rest / weight), -top, top).astype(np.int64)
        p_fix = fixed[0, s] if aware else np.full_like(want, -1)
        n_fix = fixed[1, s] if aware else np.full_like(want, -1)
        p = np.where(p_fix >= 0, p_fix, np.where(n_fix >= 0, np.clip(want + n_fix, 0, top),
                                                 np.maximum(want, 0)))
        n = np.where(n_fix >= 0, n_fix, np.clip(p - want, 0, top))
        digits[0, s], digits[1, s] = p, n
        held = np.stack([p, n]) + noise[:, s]
        held = np.where(stuck[:, s] == 0, 0.0, np.where(stuck[:, s] == 1, top, held))
        held = np.maximum(held, -g0)  # a conductance is never below zero
        values[:, s] = held
        rest -= (held[0] - held[1]) * weight if compensate else (p - n) * weight
    return digits, values


def read_conditions(cells: np.ndarray, chip: Chip) -> np.ndarray:
    """Conductances as an inference read sees them: after drift and with IR drop.

    Drift: G (1 + t)^-nu with t the seconds since programming. IR drop, first order closed
    form: a cell's current crosses its word line from the driver and its bit line to the ADC,
    about (column + rows - row) segments of ``wire_ohm``; with that series resistance R the
    cell conducts G / (1 + R G). Verify reads happen before either, so mitigations do not see
    them.
    """
    d = chip.device
    step_us = (d.g_max_us - d.g_min_us) / (2 ** chip.arch.cell_bits - 1)
    out = cells
    if d.drift_nu and d.drift_seconds:
        out = out * (1.0 + d.drift_seconds) ** -d.drift_nu
    if d.wire_ohm:
        signs, slices, rows, cols = out.shape
        phys_col = (np.arange(cols)[None, None, :] * 2 * slices
                    + np.arange(signs)[:, None, None] * slices
                    + np.arange(slices)[None, :, None])  # [signs, slices, cols]
        segments = phys_col[:, :, None, :] + 1 + (rows - np.arange(rows))[None, None, :, None]
        g_siemens = out * step_us * 1e-6
        out = out / (1.0 + d.wire_ohm * segments * g_siemens)
    return out


def program(tile: np.ndarray, chip: Chip, rng: np.random.Generator | None, stuck: np.ndarray,
            tensor_max: float) -> Programmed:
    """Map ``tile`` onto cells; ``rng`` None means no programming noise (quantized mode)."""
    q, scale = quantize_weights(tile, chip, tensor_max)
    top = 2 ** chip.arch.cell_bits - 1
    d, mp = chip.device, chip.mapping
    step = (d.g_max_us - d.g_min_us) / top
    g0 = d.g_min_us / step
    if mp.differential:
        stuck = stuck[:2]
        sigma = d.program_sigma * d.g_max_us / step
        noise = rng.normal(0.0, sigma, stuck.shape) if rng is not None else np.zeros(stuck.shape)
        digits, held = encode(q, stuck, noise, chip, bool(mp.stuck_aware),
                              bool(mp.slice_compensation) and rng is not None, g0)
        offset = 0.0
    else:
        digits, offset = to_digits(q, chip)
        stuck = stuck[:1]
        held = digits.astype(np.float64)
        if rng is not None:
            held = held + rng.normal(0.0, d.program_sigma * d.g_max_us / step, held.shape)
        held = np.where(stuck == 0, 0.0, np.where(stuck == 1, top, held))
    cells = np.maximum(g0 + held, 0.0)
    ideal = (g0 + digits).sum(axis=2)
    actual = cells.sum(axis=2)
    # Column gains correct what was not compensated; after slice compensation the cells
    # deviate from their digits on purpose, so gains would undo it.
    use_gain = mp.raw_calibration and rng is not None and not mp.slice_compensation
    gain = np.where(actual > 0, ideal / np.where(actual > 0, actual, 1.0), 1.0) \
        if use_gain else np.ones_like(ideal)
    full = np.maximum(actual, 1e-9) * mp.adc_headroom
    if rng is not None:
        cells = read_conditions(cells, chip)
    return Programmed(cells.astype(np.float32), digits, scale, gain.astype(np.float32),
                      full.astype(np.float32), offset, (q * scale).astype(np.float32))
