"""Quantized and analog MVM: what a crossbar computes, step by step, through its ADCs.

Inputs are split into positive and negative parts, quantized to ``input_bits`` against a
range (the buffer's calibrated range, else each sample's own maximum), and applied
``dac_bits`` bits per step: one bit (the default 1-bit DAC, bit-serial), or a digit of
0..2**dac_bits - 1 levels from a multi-bit DAC, whose column currents, and so the ADC's full
scale, grow by that factor. Each step, every physical column's current (in level steps, Gmin
included) goes through the ADC: clipped to the column's full scale and rounded to
``adc_bits``. The digital side removes the Gmin part, applies read-after-write gains, and
shift-adds slices, signs and input steps. Analog mode adds read noise: every column current,
at every step, times 1 + N(0, read_sigma).
The currents are one product per group of tiles, [input steps x vectors, rows] @ [rows, tiles
x signs x slices x cols], in blocks of rows, whose sums are exact: in float32 when the cells
are on the device's grid (analog mode, ``float32_exact``), else in float64 (quantized
mode's cells are digits plus Gmin, off the grid). With numba, exact integer products
replace them where they give the same sums (``INTEGER_PRODUCTS``): grid units for analog
cells read by DAC digits up to 8 bits, counts of each level for quantized cells.
``kernels.read_pass`` does everything after the product.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from isa.chip import Chip

from . import kernels
from .device import GRID_BITS, Programmed, gmin_levels
from .kernels import (
    Streams,
    counted_product,
    exact_product,
    halves,
    integer_product,
    level_indicators,
    read_pass,
    split_digits,
    wide_cells,
)
from .noise import ReadStreams


def input_levels(x: np.ndarray, bits: int, x_range: np.ndarray) -> np.ndarray:
    """Signed integer levels of x as the DAC applies them: each sign's magnitude scaled to
    ``bits`` bits of ``x_range`` (2**bits - 1 at full scale), clipped and rounded (the
    digital unit's inputs too, ``runtime.digital``)."""
    levels = 2 ** bits - 1
    return np.rint(np.clip(x / x_range * levels, -levels, levels)).astype(np.int32)


def _quantize_inputs(x: np.ndarray, bits: int, x_range: np.ndarray,
                     dac_bits: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The DAC's digit planes of one sign's magnitudes x >= 0 [N, R]: planes [steps, N, R]
    float32 (``dac_bits`` bits each, 0..2**dac_bits - 1, least significant first; exact),
    the input levels each step applies per vector, active [steps, N], and each plane's
    count of non-zero digits [steps] (``kernels.split_digits``)."""
    return split_digits(input_levels(x, bits, x_range), dac_bits, -(-bits // dac_bits))


# noise(part, shape) -> float32 N(0, 1) draws of ``shape`` for the read of input sign ``part``
# (0 positive, 1 negative); None: no read noise
Noise = Callable[[int, tuple], np.ndarray]


def generator_noise(rng: np.random.Generator | None) -> Noise | None:
    """Read noise drawn from one generator in call order (``rng`` None: none)."""
    if rng is None:
        return None
    return lambda part, shape: rng.standard_normal(shape, dtype=np.float32)


def crossbar_mvm(x: np.ndarray, x_range: np.ndarray, prog: Programmed, chip: Chip,
                 rng: np.random.Generator | None) -> np.ndarray:
    """x [N, R] (already the tile's rows), x_range [N, 1] -> [N, C] float."""
    return tiles_mvm(x[None], x_range, [prog], chip, generator_noise(rng))[0]


def _stack(progs: list[Programmed]) -> tuple[np.ndarray, ...]:
    """Tiles padded to a common [R, C]: cells 0 (no current), full scale 1, scale 0."""
    signs, slices = progs[0].cells.shape[:2]
    rows = max(p.cells.shape[2] for p in progs)
    cols = max(p.cells.shape[3] for p in progs)
    cells = np.zeros((len(progs), signs, slices, rows, cols), np.float32)
    full = np.ones((len(progs), signs, slices, cols), np.float32)
    gain = np.ones((len(progs), signs, slices, cols), np.float32)
    scale = np.zeros((len(progs), cols))
    for t, p in enumerate(progs):
        r, c = p.cells.shape[2:]
        cells[t, :, :, :r, :c], full[t, :, :, :c] = p.cells, p.full_scale
        gain[t, :, :, :c], scale[t, :c] = p.gain, p.scale
    return cells, full, gain, scale


# A block of tiles x rows is read at a time: its input planes and currents (counted as
# float64, the larger case) stay within this many bytes (but a block has at least
# MIN_BLOCK_ROWS rows, for an efficient product), so that they are reused from cache instead
# of allocated (and page-faulted in) at the size of the whole batch; rows and tiles are
# independent, so blocks never change a result. 16 MB (a block's int32 currents about 4 MB)
# against 4: ResNet-50 analog on two threads, one image 4.1-4.5 -> 3.6-4.0 s, two 7.0-8.2 ->
# 6.5-6.9 s (a quarter of the calls, each with its Python around it; 8, 32 and 64 MB were
# in between).
BLOCK_BYTES = 16 * 2 ** 20
MIN_BLOCK_ROWS = 256


def tiles_mvm(x: np.ndarray, x_range: np.ndarray, progs: list[Programmed], chip: Chip,
              noise: Noise | None, inputs=None) -> np.ndarray:
    """Several tiles read at once: x [U, N, R] (zero padded to the tiles' rows), which tile t
    reads as x[inputs[t]] (``inputs`` None: U = T, tile t reads x[t]); x_range [N, 1] (every
    tile's vectors at the same DAC ranges) or, with ``inputs`` None, [T, N, 1] (each tile's
    own) -> [T, N, C] (zero padded). Tiles that read one input quantize it once and share
    one product. With ``arch.adc_per_step`` 0 the steps' currents are summed in the analog
    domain, each weighted by its digit's place, and converted once, against a full scale
    that many times larger (CrossSim's ``ADC_per_ibit = False``). ``noise``: the read
    noise's draws (analog mode), None in quantized mode."""
    a, d = chip.arch, chip.device
    cells, full, gain, scale = _stack(progs)
    tiles, signs, slices, rows, cols = cells.shape
    inputs = np.arange(tiles) if inputs is None else np.asarray(inputs)
    if x_range.ndim == 3 and not np.array_equal(inputs, np.arange(tiles)):
        raise ValueError("per-tile DAC ranges need one input per tile")
    ranges = x_range if x_range.ndim == 3 else np.broadcast_to(x_range[None],
                                                                (len(x),) + x_range.shape)
    # each sign's magnitudes; inputs that are never negative (after a ReLU) read as they are
    # (a NaN's min is NaN: split as before)
    negative = bool(x.size) and not x.min() >= 0
    parts = [(np.maximum(x, 0) if negative else x, 1.0),
             (np.maximum(-x, 0) if negative else None, -1.0)]
    present = [part is not None and part.any() for part, _ in parts]
    widths = np.array([p.cells.shape[3] for p in progs], np.int64)  # each tile's own
    draws = [_draws(noise, index, (a.input_steps, tiles) + x.shape[1:2] + cells.shape[1:3]
                    + (cols,), widths) if present[index] and d.read_sigma else None
             for index in range(2)]
    out = np.zeros((tiles, x.shape[1], cols))
    if x.shape[1] == 0:
        return out.astype(np.float32)
    row_bytes = 8 * a.input_steps * (rows + signs * slices * cols)  # one tile's, per row
    n_step = min(x.shape[1], max(MIN_BLOCK_ROWS, BLOCK_BYTES // (row_bytes * tiles)))
    t_step = max(1, BLOCK_BYTES // (row_bytes * n_step))
    for u in np.unique(inputs):
        readers = np.flatnonzero(inputs == u)
        groups = [_TileGroup(idx, cells, full, gain, progs, chip)
                  for idx in (readers[j:j + t_step] for j in range(0, len(readers), t_step))]
        for n0 in range(0, x.shape[1], n_step):
            n1 = min(n0 + n_step, x.shape[1])
            for index, (part, sign) in enumerate(parts):
                if not present[index]:
                    continue
                block = part[u, n0:n1]
                if not block.any():
                    continue  # no input, no current: nothing to add
                # the planes, their input levels per step and their non-zero entries, counted
                # once for every group's product
                planes, active, nonzeros = _quantize_inputs(block, a.input_bits,
                                                            ranges[u, n0:n1], a.dac_bits)
                typed = {planes.dtype: planes}  # in each group's product type, cast once
                for group in groups:
                    if group.plane_type not in typed:
                        typed[group.plane_type] = planes.astype(group.plane_type)
                    group.read(typed[group.plane_type], active, nonzeros, out, n0, sign,
                               _block(draws[index], group.idx, n0, n1))
    levels = 2 ** a.input_bits - 1
    return (out * (ranges[inputs] / levels) * scale[:, None, :]).astype(np.float32)


# Exact integer products (onnxruntime's uint8 x int8 GEMM) instead of float ones, the same
# sums, faster: for cells that are integers in grid units (analog mode) read by DAC digits
# up to 8 bits, ``kernels.integer_product``; for cells that are a few levels
# (quantized mode's Gmin plus a digit), ``kernels.counted_product``. Only with numba: their
# numpy twins (and no sparse planes) cost more than BLAS (the digits CNN's quantized run
# 0.9 -> 2.8 ms an image). A switch for tests and benchmarks.
INTEGER_PRODUCTS = True


class _TileGroup:
    """Tiles ``idx`` that read the same input, read together: their cells side by side as
    one matrix [crossbar rows, tiles x signs x slices x C] (float32 where its sums are exact,
    else float64), so that each block of input vectors is one product for all of them."""

    def __init__(self, idx: np.ndarray, cells: np.ndarray, full: np.ndarray,
                 gain: np.ndarray, progs, chip: Chip):
        self.idx, self.shape = idx, cells.shape[1:]  # signs, slices, rows, cols
        signs, slices, rows, cols = self.shape
        g = cells[idx].transpose(3, 0, 1, 2, 4).reshape(rows, len(idx) * signs * slices * cols)
        chosen, digit = [progs[t] for t in idx], 2 ** chip.arch.dac_bits - 1
        exact = float32_exact(chosen, digit)
        self.units = self.wide = self.twice = self.levels = self.onehot = None
        allowed = INTEGER_PRODUCTS and kernels.compiled()
        # cells on the grid: binary planes, or digits whose sums float32 cannot hold (small
        # digits keep its product: the integer one of digits must join two halves after)
        in_units = (allowed and digit <= 255 and int32_exact(chosen, digit)
                    and (digit == 1 or not exact))
        if in_units:
            self.units, self.wide = wide_cells(g, 2.0 ** GRID_BITS) or (None, None)
            if self.wide is not None and digit > 1:  # multi-bit digits
                self.twice, self.wide = halves(self.wide), None
        # the float product's cells (none needed beside integer ones)
        self.g = g if exact or self.units is not None else g.astype(np.float64)
        # sums exact in g's type: any order gives the same bits, so any product may sum them
        self.exact = exact or float64_exact(chosen, digit, chip)
        if not in_units and self.exact and digit <= 255 and allowed and chip.arch.cell_bits <= 2:
            # quantized cells: Gmin plus a digit, rounded to float32 as programming does. At
            # most 4 levels: their int32 counts (4 bytes a level and physical column) take at
            # most twice a block's budget of 8 bytes; more levels keep the float product
            self.levels = np.float32(gmin_levels(chip) + np.arange(
                2 ** chip.arch.cell_bits)).astype(np.float64)
            self.onehot = level_indicators(self.g, self.levels)
        # the planes' type: the float product's, the integer ones' exact float32 digits
        integer = self.units is not None or self.onehot is not None
        self.plane_type = np.dtype(np.float32) if integer else self.g.dtype
        # where the tiles sit side by side, their outputs are a slice: reads add into a view
        first = int(idx[0])
        self.tiles = slice(first, first + len(idx)) if np.array_equal(
            idx, np.arange(first, first + len(idx))) else idx
        self.constants = dict(_adc_constants(full[idx], chip), gain=gain[idx],
                              offsets=np.array([progs[t].offset for t in idx], np.float64),
                              g0=gmin_levels(chip), sigma=chip.device.read_sigma)

    def read(self, planes: np.ndarray, active: np.ndarray, nonzeros: np.ndarray,
             out: np.ndarray, n0: int, sign: float, noise) -> None:
        """Add these tiles' read of vectors n0.. (``planes`` [steps, vectors, crossbar rows]
        in ``plane_type``; ``nonzeros`` [steps]: each plane's non-zero entries; ``active``
        [steps, vectors]: the input levels applied) by one input sign into ``out``
        [T, N, C]; ``noise``: the block's (``_block``)."""
        signs, slices, _, cols = self.shape
        (steps, vectors, rows), k = planes.shape, len(self.idx)
        # summed where sums of these products are exact (float64, or float32 for cells on
        # the device's grid, ``float32_exact``), so that a sample's currents do not
        # depend on how many others share the product (BLAS orders sums by shape) or on
        # which product sums them (``exact_product``, only then): outputs do not depend on
        # how a run is split
        unit = 1.0
        if self.units is not None:  # in grid units
            current, unit = integer_product(planes, self.units, self.wide, nonzeros,
                                            self.twice), 2.0 ** -GRID_BITS
        elif self.onehot is not None:
            current = counted_product(planes, self.g, self.levels, self.onehot, nonzeros)
        elif self.exact:
            current = exact_product(planes, self.g, nonzeros)
        else:
            current = planes.reshape(-1, rows) @ self.g
        current = current.reshape(steps, vectors, k, signs, slices, cols).transpose(
            0, 2, 1, 3, 4, 5)
        acc = out[self.tiles, n0:n0 + vectors]  # a view where self.tiles is a slice
        read_pass(current, np.broadcast_to(active[:, None], (steps, k, vectors)),
                  **self.constants, sign=sign, noise=noise, out=acc, unit=unit)
        if not isinstance(self.tiles, slice):
            out[self.tiles, n0:n0 + vectors] = acc


def float32_exact(progs: list[Programmed], digit: int) -> bool:
    """Whether every sum of products of input digits 0..``digit`` with these crossbars'
    cells, down a column, is exact in float32, in any order: when the cells are multiples
    of 2**-GRID_BITS (``device.on_grid``) and no column sum (cells are >= 0) can reach
    2**24 of those units (``Programmed.grid_bound``). Then a float32 product gives the
    float64 product's sums rounded to float32, the same bits at twice the speed."""
    return _grid_sums_below(progs, digit, 24)


def int32_exact(progs: list[Programmed], digit: int) -> bool:
    """Whether those sums, in grid units, fit int32 (``kernels.integer_product``'s
    currents): cells on the grid, and no column sum reaching 2**31 of its units."""
    return _grid_sums_below(progs, digit, 31)


def _grid_sums_below(progs: list[Programmed], digit: int, bits: int) -> bool:
    """Cells on the grid, and no column sum of digits up to ``digit`` times them reaching
    2**bits grid units (``Programmed.grid_bound``)."""
    bounds = [p.grid_bound for p in progs]
    return None not in bounds and max(bounds, default=0.0) * digit < 2.0 ** bits


def float64_exact(progs: list[Programmed], digit: int, chip: Chip) -> bool:
    """Whether those sums are exact in float64: for cells on the grid, below 2**53 of its
    units; for quantized mode's cells (float32 of Gmin plus a digit, every one a multiple of
    the last bit of float32(Gmin)), when the largest column sum stays below 2**53 of that
    bit. Chips with a tiny Gmin, long columns and wide DAC digits can fail it."""
    if None not in [p.grid_bound for p in progs]:
        return _grid_sums_below(progs, digit, 53)
    gmin = gmin_levels(chip)
    g0 = np.float32(gmin)
    unit = 2.0 ** (int(np.frexp(g0)[1]) - 24) if g0 > 0 else 1.0  # float32: 24-bit significands
    top = float(np.float32(gmin + 2 ** chip.arch.cell_bits - 1))
    return chip.arch.rows * top * digit / unit < 2.0 ** 53


def _adc_constants(full: np.ndarray, chip: Chip) -> dict:
    """``read_pass``'s full, lsb, slice_w, step_w, levels and per_step arguments for tiles
    whose cells at full scale give ``full`` [T, S, Q, C] (float32, level units)."""
    a = chip.arch
    levels = 2 ** a.adc_bits - 1
    # a step's column current reaches 2**dac_bits - 1 times the cells' sum: so does full scale
    full = full * (2 ** a.dac_bits - 1)
    slice_w = (2.0 ** a.cell_bits) ** np.arange(full.shape[2])
    step_w = (2.0 ** a.dac_bits) ** np.arange(a.input_steps)
    if a.adc_per_step:
        lsb, full = (full / levels).astype(np.float64), full.astype(np.float64)
    else:  # the steps' currents summed, each at its digit's place: full scale that many times
        full = full * step_w.sum()
        lsb = full / levels
    return dict(full=full, lsb=lsb, slice_w=slice_w, step_w=step_w, levels=levels,
                per_step=a.adc_per_step)


def _draws(noise, part: int, shape: tuple, widths: np.ndarray):
    """What ``kernels.read_pass`` takes for the read noise of the whole read: ``Streams``
    (draws numbered by each tile's own width ``widths``, so that they do not depend on which
    tiles share the read), or an array of draws (a ``Noise`` function's, called once with
    the whole read's ``shape``), or None."""
    if noise is None:
        return None
    if isinstance(noise, ReadStreams):
        return Streams(noise.keys(part), noise.vectors, 0, widths)
    return noise(part, shape)


def _block(draws, idx: np.ndarray, n0: int, n1: int):
    """The part of a whole read's noise that tiles ``idx`` and rows n0..n1 draw."""
    if draws is None or isinstance(draws, np.ndarray):
        return None if draws is None else draws[:, idx, n0:n1]
    return draws._replace(keys=draws.keys[idx], row0=n0, widths=draws.widths[idx])
