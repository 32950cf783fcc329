"""Quantized and analog MVM: what a crossbar computes, bit-serially, through its ADCs.

Inputs are split into positive and negative parts, quantized to ``input_bits`` against a
range (the buffer's calibrated range, else each sample's own maximum), and applied one bit
per step (1-bit DAC). Each step, every physical column's current (in level steps, Gmin
included) goes through the ADC: clipped to the column's full scale and rounded to
``adc_bits``. The digital side removes the Gmin part, applies read-after-write gains, and
shift-adds slices, signs and input bits. Analog mode adds read noise: every column current,
at every step, times 1 + N(0, read_sigma).
All of it is one matmul over [bit-planes x vectors, rows] @ [rows, signs x slices x cols].
"""

from __future__ import annotations

import numpy as np

from isa.chip import Chip

from .device import Programmed


def _quantize_inputs(x: np.ndarray, bits: int, x_range: np.ndarray) -> np.ndarray:
    levels = 2 ** bits - 1
    q = np.rint(np.clip(x / x_range * levels, 0, levels)).astype(np.int64)
    planes = (q[None] >> np.arange(bits)[:, None, None]) & 1
    return planes.astype(np.float32)  # [bits, N, R]


def crossbar_mvm(x: np.ndarray, x_range: np.ndarray, prog: Programmed, chip: Chip,
                 rng: np.random.Generator | None) -> np.ndarray:
    """x [N, R] (already the tile's rows), x_range [N, 1] -> [N, C] float."""
    a, d = chip.arch, chip.device
    top = 2 ** a.cell_bits - 1
    g0 = d.g_min_us / ((d.g_max_us - d.g_min_us) / top)
    signs, slices, rows, cols = prog.cells.shape
    g = prog.cells.transpose(2, 0, 1, 3).reshape(rows, signs * slices * cols)
    adc_levels = 2 ** a.adc_bits - 1
    full = prog.full_scale.reshape(1, 1, signs, slices, cols)
    slice_weight = (2.0 ** a.cell_bits) ** np.arange(slices)
    bit_weight = 2.0 ** np.arange(a.input_bits)
    out = np.zeros((x.shape[0], cols))
    for part, sign in ((np.maximum(x, 0), 1.0), (np.maximum(-x, 0), -1.0)):
        if not part.any():
            continue
        planes = _quantize_inputs(part, a.input_bits, x_range)
        current = (planes.reshape(-1, rows) @ g).reshape(a.input_bits, -1, signs, slices, cols)
        if rng is not None and d.read_sigma:  # every column read: sigma x its own current
            noise = rng.standard_normal(current.shape, dtype=np.float32)
            noise *= d.read_sigma
            noise += 1.0
            current *= noise
        current /= full  # in place from here on: these arrays are the big ones
        np.clip(current, 0.0, 1.0, out=current)
        current *= adc_levels
        np.rint(current, out=current)
        current *= full / adc_levels
        read = current
        active = planes.sum(axis=2)[:, :, None, None, None]  # inputs at 1 this step
        read -= g0 * active
        digital = read
        digital *= prog.gain[None, None]
        per_sign = np.einsum("bnsqc,q->bnsc", digital, slice_weight)
        value = per_sign[:, :, 0] - per_sign[:, :, 1] if signs == 2 else \
            per_sign[:, :, 0] - prog.offset * active[:, :, 0, 0]
        out += sign * np.einsum("bnc,b->nc", value, bit_weight)
    levels = 2 ** a.input_bits - 1
    return (out * (x_range / levels) * prog.scale[None, :]).astype(np.float32)
