"""The digital MAC unit's arithmetic in quantized and analog modes (opcode ``dmatmul``).

A digital unit has no cells, DAC or ADC: it multiplies integers and adds them exactly. Its
weights are stored at the chip's ``weight_bits`` with a symmetric scale per output column
(per tensor when ``mapping.per_column_scaling`` is 0), rounded exactly as a crossbar write
rounds them (``device.quantize_weights``); its inputs are quantized to ``input_bits`` a sign
against the range a crossbar's DAC would use (``analog.input_levels``, with the range the
interpreter's ``input_range`` gives: the buffer's calibrated range, else each sample's
maximum). The integer products are accumulated exactly, then scaled back to float and the
bias added. Analog mode is the same: no device noise reaches a digital unit.
"""

from __future__ import annotations

import numpy as np

from isa.cells import signed_max
from isa.chip import Chip

from .analog import input_levels
from .device import quantize_weights

EXACT = 2.0 ** 53  # float64 adds integers exactly below this


def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [..., K] @ b [K, M] of integer arrays, exactly: in float64 (BLAS) when no partial sum
    can reach 2**53, else in int64."""
    bound = a.shape[-1] * float(np.abs(a).max(initial=0)) * float(np.abs(b).max(initial=0))
    if bound < EXACT:
        return a.astype(np.float64) @ b.astype(np.float64)
    return (a.astype(np.int64) @ b.astype(np.int64)).astype(np.float64)


def quantized_matmul(x: np.ndarray, x_range: np.ndarray, weight: np.ndarray,
                     bias: np.ndarray | None, chip: Chip, weight_max: float) -> np.ndarray:
    """x [B, V, K] with DAC ranges x_range [B, 1, 1] (or broadcasting), weight [K, M] (largest
    magnitude ``weight_max``, for per-tensor scaling) -> float32 [B, V, M]."""
    levels = 2 ** chip.arch.input_bits - 1
    xq = input_levels(x, chip.arch.input_bits, x_range)
    wq, scale = quantize_weights(weight, chip, weight_max, signed_max(chip))
    y = exact_matmul(xq, wq) * (x_range / levels) * scale
    return (y if bias is None else y + bias).astype(np.float32)
