"""Weights as crossbar cells: how a tile of float weights becomes cell digits, and which cells
a write changes. One definition for the runtime's device model (``runtime.device`` programs
these digits, adding noise and stuck cells in analog mode) and the timing model
(``isa.timing`` charges a write for the cells whose digit changes and the rows holding them),
so both count the same cells.

Digits: a tile [R, C] becomes integer magnitudes of weight_bits - 1 bits (a scale per
column of the tile, or one per tensor: ``mapping.per_column_scaling``), split into signs
(differential pairs; or one array with an offset) and ``slices`` digits of ``cell_bits``
each (as many as the magnitude bits need: the pair carries the sign), least significant
first: ``digits[sign, slice, r, c]``. One crossbar cell holds one digit. Differential pairs
use a balanced encoding, most significant slice first, each digit the rounded remainder
(``encode``); the offset scheme plain base-2^cell_bits digits.

Cell state: what every cell of one crossbar holds, an int16 array of the crossbar's size
[signs, slices, rows, weights_per_row] (``blank``), -1 where nothing is known (never
written: a write always programs such a cell). A write programs the cells of its window
whose digit changes and leaves the others as they are (program-and-verify skips a cell that
verifies). With bit stucking (``LowWrite``, Farias and Kung, arXiv 2410.21730) it programs
only a random fraction of the changing cells in the lowest-order slices; the others keep
their previous digit (``kept``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .chip import Chip

UNKNOWN = -1  # a cell state nothing has been written to


def signed_max(chip: Chip) -> int:
    """The largest magnitude of a symmetric ``weight_bits``-bit integer: what the digital
    unit rounds its weights to."""
    return 2 ** (chip.arch.weight_bits - 1) - 1


def magnitude_max(chip: Chip) -> int:
    """The largest integer magnitude a crossbar weight is rounded to: ``signed_max``. The
    offset scheme stores q + offset, a sign bit more, in the same ``slices`` digits, so
    where they hold exactly weight_bits - 1 bits (1 or 7 bits a cell at 8-bit weights) its
    weights get one magnitude bit less (``offset_bits_lost``)."""
    a = chip.arch
    if chip.mapping.differential:
        return signed_max(chip)
    return min(signed_max(chip) + 1, 2 ** (a.cell_bits * a.slices - 1)) - 1


def offset_bits_lost(chip: Chip) -> bool:
    """Whether the offset scheme's sign costs a magnitude bit on this geometry (never with
    differential pairs)."""
    return magnitude_max(chip) < signed_max(chip)


def quantize_weights(tile: np.ndarray, chip: Chip, tensor_max, qmax: int | None = None):
    """Signed integer magnitudes (at most ``qmax``, by default a crossbar's
    ``magnitude_max``) and the per-column scale of a tile [R, C] (scale [C]), or of every
    matrix of a stack [..., R, C] (scale [..., C]). ``tensor_max``: the largest magnitude
    (one per matrix of a stack) when ``mapping.per_column_scaling`` is 0."""
    qmax = magnitude_max(chip) if qmax is None else qmax
    peak = np.abs(tile).max(axis=-2) if chip.mapping.per_column_scaling else \
        np.broadcast_to(np.asarray(tensor_max, np.float64)[..., None],
                        tile.shape[:-2] + tile.shape[-1:])
    # An all-zero column gets scale 0: whatever its cells hold, its digital output is zero.
    scale = (peak / qmax).astype(np.float64)
    q = np.rint(tile / np.where(scale > 0, scale, 1.0)[..., None, :])
    return np.clip(q, -qmax, qmax).astype(np.int64), scale


def to_digits(q: np.ndarray, chip: Chip) -> tuple[np.ndarray, float]:
    """[signs, slices, R, C] digits of signed magnitudes ``q`` [R, C] (of a stack [..., R, C]:
    [..., signs, slices, R, C]), plain base 2^cell_bits (the offset scheme's; differential
    pairs use ``encode``)."""
    base, slices = 2 ** chip.arch.cell_bits, chip.arch.slices
    if chip.mapping.differential:
        mags, offset = np.stack([np.maximum(q, 0), np.maximum(-q, 0)], axis=-3), 0
    else:
        offset = magnitude_max(chip) + 1
        mags = np.expand_dims(q + offset, -3)
    powers = base ** np.arange(slices)
    digits = (mags[..., :, None, :, :] // powers[:, None, None]) % base
    return digits.astype(np.int64), float(offset)


def kept(prev: np.ndarray, new: np.ndarray, select: np.ndarray | None) -> np.ndarray:
    """Cells a write leaves as they are: known cells whose digit does not change, and, where
    ``select`` is False (bit stucking), known cells whose digit would change."""
    same = prev == new
    return (prev != UNKNOWN) & (same if select is None else same | ~select)


def keep_previous(new: np.ndarray, held: np.ndarray, prev, select):
    """Digits and cell values after a write that wanted ``new`` (values ``held``): the cells
    ``kept`` keep their previous digit and value. ``prev``: (digits, values) the cells held,
    or None (nothing known: every cell is programmed)."""
    if prev is None:
        return new, held
    keep = kept(prev[0], new, select)
    return np.where(keep, prev[0], new), np.where(keep, prev[1], held)


def encode(q: np.ndarray, stuck: np.ndarray, noise: np.ndarray, chip: Chip,
           aware: bool, compensate: bool, g0: float, prev=None,
           select: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Differential digits and the cell values they end up as, most significant slice first.

    Each slice's digit pair (p, n) aims p - n at the rounded remainder. ``aware``: stuck cells
    (known from verify reads) are taken as fixed and the pair is chosen around them.
    ``compensate``: the remainder passed down is measured from what the cells really hold
    (noise, stuck and kept cells included), so lower slices cancel the higher slices' error;
    otherwise it is the remainder of the digits wanted. ``prev`` (digits, values) and
    ``select``: what the cells held before and which changing cells may be programmed
    (``keep_previous``); a cell not programmed keeps its value and gets no new noise.
    Returns (digits [2, S, R, C], cell values in level steps without Gmin). Every array
    may carry leading axes (a stack of tiles: q [..., R, C], the others [..., 2, S, R, C]);
    each tile's result is the same as alone.
    """
    top, base, slices = 2 ** chip.arch.cell_bits - 1, 2 ** chip.arch.cell_bits, chip.arch.slices
    fixed = np.where(stuck >= 0, stuck.astype(np.int64) * top, -1)
    rest = q.astype(np.float64)
    digits = np.zeros(stuck.shape, np.int64)
    values = np.zeros(stuck.shape, np.float64)
    for s in reversed(range(slices)):
        weight = base ** s
        want = np.clip(np.rint(rest / weight), -top, top).astype(np.int64)
        at = (Ellipsis, slice(None), s, slice(None), slice(None))  # [..., sign, s, R, C]
        p_fix = fixed[..., 0, s, :, :] if aware else np.full_like(want, -1)
        n_fix = fixed[..., 1, s, :, :] if aware else np.full_like(want, -1)
        p = np.where(p_fix >= 0, p_fix, np.where(n_fix >= 0, np.clip(want + n_fix, 0, top),
                                                 np.maximum(want, 0)))
        n = np.where(n_fix >= 0, n_fix, np.clip(p - want, 0, top))
        pair = np.stack([p, n], axis=-3)
        before = None if prev is None else (prev[0][at], prev[1][at])
        pair, held = keep_previous(pair, pair + noise[at], before,
                                   None if select is None else select[at])
        held = np.where(stuck[at] == 0, 0.0, np.where(stuck[at] == 1, top, held))
        held = np.maximum(held, -g0)  # a conductance is never below zero
        digits[at], values[at] = pair, held
        rest -= ((held[..., 0, :, :] - held[..., 1, :, :]) * weight if compensate
                 else (p - n) * weight)
    return digits, values


def signs(chip: Chip) -> int:
    """Cells per weight and slice: 2 with differential pairs, 1 with the offset scheme."""
    return 2 if chip.mapping.differential else 1


def nominal_digits(tile: np.ndarray, chip: Chip, tensor_max: float) -> np.ndarray:
    """[signs, slices, R, C] digits a write of ``tile`` aims at with no stuck cells and no
    noise: the digits the runtime programs in quantized mode. ``tensor_max``: the largest
    magnitude of the whole blob (per-tensor scaling)."""
    q, _ = quantize_weights(tile, chip, tensor_max)
    if not chip.mapping.differential:
        return to_digits(q, chip)[0].astype(np.int16)
    shape = (2, chip.arch.slices) + q.shape
    digits, _ = encode(q, np.full(shape, -1, np.int8), np.zeros(shape), chip, False, False, 0.0)
    return digits.astype(np.int16)


def blank(chip: Chip) -> np.ndarray:
    """The cell state of a crossbar nothing has been written to."""
    a = chip.arch
    return np.full((signs(chip), a.slices, a.rows, a.weights_per_row), UNKNOWN, np.int16)


def window(rows: int, cols: int) -> tuple[slice, ...]:
    """The cells of a rows x cols tile in a cell state (tiles sit at the crossbar's corner)."""
    return (slice(None), slice(None), slice(0, rows), slice(0, cols))


@dataclass(frozen=True)
class LowWrite:
    """Bit stucking: in the ``slices`` lowest-order slices a write programs only a fraction
    ``write`` of the cells whose digit changes; the others keep their previous digit. The
    cells are chosen at random, independently with probability ``write``, by a generator
    seeded with (``seed``, crossbar, n) for the crossbar's n-th write in program order (from
    1): the runtime and the timing model draw the same cells. Carried on a ``write`` as the
    attributes of ``ATTRS``."""
    slices: int
    write: float
    seed: int = 0

    ATTRS = ("low_slices", "low_write", "low_seed")

    @classmethod
    def of(cls, ins) -> LowWrite | None:
        """The bit stucking of a ``write`` instruction, None for a full write."""
        if ins.attr(cls.ATTRS[0]) is None:
            return None
        return cls(*(ins.attr(a) for a in cls.ATTRS))

    def attrs(self) -> tuple:
        return tuple(zip(self.ATTRS, (self.slices, float(self.write), self.seed)))

    def select(self, xb: int, nth: int, shape: tuple) -> np.ndarray:
        """Which cells of a state window of ``shape`` [signs, slices, R, C] the ``nth`` write
        to crossbar ``xb`` may program: all in the higher slices, a random ``write``
        fraction in the ``slices`` lowest."""
        mask = np.ones(shape, bool)
        low = min(self.slices, shape[1])
        rng = np.random.default_rng([self.seed, xb, nth])
        mask[:, :low] = rng.random((shape[0], low) + tuple(shape[2:])) < self.write
        return mask


def write_cells(state: np.ndarray, new: np.ndarray, select: np.ndarray | None) -> np.ndarray:
    """Apply a write of digits ``new`` (a tile at the crossbar's corner) to the cell
    ``state`` in place; return the mask of the cells it programs (those not ``kept``)."""
    win = window(*new.shape[2:])
    prev = state[win]
    programmed = ~kept(prev, new, select)
    state[win] = np.where(programmed, new, prev)
    return programmed
