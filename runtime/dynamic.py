"""Products of two computed operands (opcodes ``dbmm`` and ``wbmm``) in quantized and analog
modes: attention's Q K^T and its weights times V, whose second operand changes every inference.

Both view a [..., M, K] @ b [..., K, N] as G = prod(leading axes) matrix products, the first
leading axis the batch. The first operand is the input side: quantized to ``input_bits`` a
sign against the DAC range the interpreter's ``input_range`` gives (the buffer's calibrated
range, else each sample's maximum). The second is the weight side: each matrix b[g] quantized
to ``weight_bits`` with a symmetric scale per column (per matrix when
``mapping.per_column_scaling`` is 0), as a crossbar write quantizes a tile.

- ``dbmm`` (the digital MAC unit): exact integer products, no noise (``runtime.digital``).
- ``wbmm`` (crossbars written per inference): every b[g] is cut into crossbar tiles, each tile
  programmed as ``write`` programs one (``device.program``: in analog mode with programming
  noise drawn afresh at every run from a stream of its own, whose key comes from a generator
  keyed by the seed, the instruction, the sample and the head: ``runtime.noise``) and read by
  a[g]'s rows as ``mvm`` reads one (``analog.tiles_mvm``: DAC steps, ADC per column, read
  noise from generators keyed alike). The pool crossbars' stuck cells and wear are not
  modelled here: the timing model counts their writes and the report projects their
  lifetime.
"""

from __future__ import annotations

import numpy as np

from isa.cells import signed_max
from isa.chip import Chip
from isa.timing import tile_windows

from . import device
from .analog import input_levels, tiles_mvm
from .digital import exact_matmul
from .mvm_groups import BYTES_PER_CHUNK, read_bytes


def _flat(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """a and b broadcast over their leading axes, as [G, M, K] and [G, K, N]; and those axes."""
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = np.broadcast_to(a, lead + a.shape[-2:]).reshape((-1,) + a.shape[-2:])
    b = np.broadcast_to(b, lead + b.shape[-2:]).reshape((-1,) + b.shape[-2:])
    return a, b, lead


def sample_ranges(a: np.ndarray, x_range: np.ndarray, groups: int) -> np.ndarray:
    """Per matrix g, the DAC range of its sample ([B, 1, 1] ranges, B samples of G/B
    matrices each) as [G, 1, 1]."""
    return np.repeat(x_range.reshape(-1), groups // x_range.size).reshape(-1, 1, 1)


def digital_bmm(a: np.ndarray, b: np.ndarray, x_range: np.ndarray, chip: Chip) -> np.ndarray:
    """``dbmm`` in quantized and analog modes: exact integer products, float32 result."""
    (a, b, lead), levels = _flat(a, b), 2 ** chip.arch.input_bits - 1
    r = sample_ranges(a, x_range, len(a))
    bq, scale = device.quantize_weights(b, chip, np.abs(b).max(axis=(1, 2), initial=0.0),
                                        signed_max(chip))
    y = exact_matmul(input_levels(a, chip.arch.input_bits, r), bq) * (r / levels) * \
        scale[:, None, :]
    return y.astype(np.float32).reshape(lead + y.shape[-2:])


def _reads(noise, chunk: range, per: int, tiles: int):
    """Read noise of a chunk of matrices, ``tiles`` tiles each along the tile axis, every
    matrix and input sign from its own generator."""
    def draws(part: int, shape: tuple):  # shape [steps, matrices x tiles, M, ...]
        one = shape[:1] + (tiles,) + shape[2:]
        return np.concatenate([noise(i, per, 1 + part).standard_normal(one, dtype=np.float32)
                               for i in chunk], axis=1)
    return draws


def written_bmm(a: np.ndarray, b: np.ndarray, x_range: np.ndarray, chip: Chip,
                noise=None, budget: int = BYTES_PER_CHUNK) -> np.ndarray:
    """``wbmm`` in quantized (``noise`` None) and analog modes: every matrix of b programmed
    tile by tile and read by a's rows; float32 result [..., M, N]. ``noise(g, per, use)``:
    the generator of matrix g (``per`` matrices a sample) for its programming (use 0: the
    first draws key its tiles' noise streams) and the reads of its positive and negative
    inputs (1, 2). ``budget``: bytes for the reads of matrices at once."""
    a, b, lead = _flat(a, b)
    g, m, k = a.shape
    n = b.shape[-1]
    r = sample_ranges(a, x_range, g)
    per = g // x_range.size
    tiles = tile_windows(k, n, chip.arch)
    keys = [[None] * len(tiles)] * g if noise is None else [  # each tile's noise stream
        noise(i, per, 0).integers(2 ** 64, size=len(tiles), dtype=np.uint64) for i in range(g)]
    peaks = np.abs(b).max(axis=(1, 2), initial=0.0).tolist()  # per-matrix weight scaling
    free = np.full((2, chip.arch.slices, chip.arch.rows, chip.arch.weights_per_row), -1, np.int8)
    step = max(1, budget // max(len(tiles) * read_bytes(chip.arch, m), 1))
    out = np.zeros((g, m, n), np.float32)
    for g0 in range(0, g, step):
        chunk = range(g0, min(g0 + step, g))
        progs = [device.program(b[i, r0:r1, c0:c1], chip, keys[i][w],
                                free[:, :, :r1 - r0, :c1 - c0], peaks[i])
                 for i in chunk for w, (r0, r1, c0, c1) in enumerate(tiles)]
        rows = max(r1 - r0 for r0, r1, _, _ in tiles)
        xs = np.zeros((len(progs), m, rows), np.float32)
        for t, (i, (r0, r1, _, _)) in enumerate((i, w) for i in chunk for w in tiles):
            xs[t, :, :r1 - r0] = a[i, :, r0:r1]
        ranges = np.repeat(np.broadcast_to(r[chunk.start:chunk.stop], (len(chunk), m, 1)),
                           len(tiles), axis=0)  # each tile at its sample's DAC range
        ys = tiles_mvm(xs, ranges, progs, chip, None if noise is None else _reads(
            noise, chunk, per, len(tiles)))
        for t, (i, (_, _, c0, c1)) in enumerate((i, w) for i in chunk for w in tiles):
            out[i, :, c0:c1] += ys[t, :, :c1 - c0]
    return out.reshape(lead + (m, n))
