"""The digital side of a crossbar read, fused in one pass over its column currents: read
noise, the ADC (clip to full scale, round to its levels), removing Gmin's share, the
read-after-write gains, and shift-adding slices, signs and input steps (``analog.tiles_mvm``
does the product before it and the DAC scaling after).

Two implementations of one contract, ``read_pass``: a compiled kernel (numba, when it is
installed and ``CIMSTACK_NUMBA`` is not ``0``) and numpy. They do the same IEEE operations
in the same order on the same types (the kernel skips steps that apply no input, whose
operations would add exact zeros), so their results are identical
(``tests/test_kernels.py``); the kernel is faster because it draws the read noise where it
is used (``noise`` counter-based streams) and reads each current once instead of once per
pass.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np

from . import intgemm
from . import noise as nz

try:  # optional at run time: numpy gives the same numbers, slower
    import llvmlite.ir
    import numba
    import numba.extending
except ImportError:  # pragma: no cover - depends on the environment
    numba = None

NONE, STREAMS, DRAWS = 0, 1, 2  # where read noise comes from: none, keyed streams, an array


class Streams(NamedTuple):
    """Read noise from counter-based streams (``noise.ReadStreams``): row n of the read is
    row row0 + n of the read the keys [T, samples] are for, sample (row0 + n) // vectors;
    widths [T]: each tile's own columns (None: all of the read's), which number the draws."""

    keys: np.ndarray
    vectors: int
    row0: int = 0
    widths: np.ndarray | None = None


# The table's knots packed a row per uint64 (base's float32 bits low, slope's high): one
# gather a draw instead of two (0.82 -> 0.60 ns a draw alone, the same bits)
_LOW32, _HIGH = np.uint64(2 ** 32 - 1), np.uint64(32)
_PAIRS = (nz.NORMAL_TABLE[:, 0].view(np.uint32).astype(np.uint64)
          | (nz.NORMAL_TABLE[:, 1].view(np.uint32).astype(np.uint64) << _HIGH))


def _float32_of(bits):
    """The float32 whose bits are the uint32 ``bits`` (compiled: an LLVM bitcast)."""
    return np.uint32(bits).view(np.float32)


def _normal(h):
    """``noise.normal_from_bits`` on one uint64 (the same operations, so the same float32)."""
    i = (h >> nz._INTERVAL_SHIFT) & nz._INTERVAL_MASK
    tail = i == nz._INTERVAL_MASK
    m = np.int64(nz._K - 1) + np.int64((h >> nz._TAIL_SHIFT) & nz._INTERVAL_MASK) if tail \
        else np.int64(i)
    frac = np.int64((h if tail else h >> nz._FRACTION_SHIFT) & nz._FRACTION_MASK)
    pair = _PAIRS[m]
    base, slope = _float32_of(pair & _LOW32), _float32_of(pair >> _HIGH)
    z = base + np.float32(frac) * nz._UNIT * slope
    return z * (np.float32(1.0) - np.float32(2.0) * np.float32(np.int64(h >> nz._SIGN_SHIFT)))


# A step's row of currents (all signs, slices and columns, flat), in units of unit32, each
# times 1 + sigma x its draw (as ``_noisy``): one small function per noise source, chosen in
# ``_loops``. (One function branching over the sources, even inlined, left its loops
# unvectorised: 0.57 -> 0.43 ns a column read without noise, 1.20 -> 1.07 with it.)

def _plain_row(current, unit32, b, t, n, row):
    """No read noise."""
    for i in range(row.shape[0]):
        row[i] = np.float32(current[b, n, t, i]) * unit32


def _stream_row(current, unit32, b, t, n, key, state0, sigma32, row, bits):
    """Stream ``key``'s draws state0, state0 + 1, ... (a tile without padding columns)."""
    for i in range(row.shape[0]):  # the hashes apart from the table reads: they vectorise
        bits[i] = _bits(key, state0 + np.uint64(i))
    for i in range(row.shape[0]):  # (one long loop: a tile's 16 columns are too few)
        d32 = _draw(bits[i]) * sigma32
        row[i] = np.float32(current[b, n, t, i]) * unit32 * (d32 + np.float32(1.0))


def _padded_stream_row(current, unit32, b, t, n, key, state0, cols, own, sigma32, row,
                       bits):
    """``cols`` columns a (sign, slice), the first ``own`` the tile's own: the draw for
    (sign, slice) k and own column c is number state0 + k x own + c; padding columns carry
    no current and draw nothing."""
    for k in range(row.shape[0] // cols):
        at, j = k * cols, state0 + np.uint64(k * own)
        for c in range(own):
            bits[c] = _bits(key, j + np.uint64(c))
        for c in range(own):
            d32 = _draw(bits[c]) * sigma32
            row[at + c] = np.float32(current[b, n, t, at + c]) * unit32 * (d32 + np.float32(1.0))
        for c in range(own, cols):
            row[at + c] = np.float32(current[b, n, t, at + c]) * unit32


def _drawn_row(current, unit32, b, t, n, draws, sigma32, row):
    """Draws given as an array shaped like current."""
    for i in range(row.shape[0]):
        d32 = draws[b, n, t, i] * sigma32
        row[i] = np.float32(current[b, n, t, i]) * unit32 * (d32 + np.float32(1.0))


def _shift_add(values, slice_w, weight, offset, act, signs, cols, acc, total):
    """total[c] += (the signs' difference, or the offset encoding's correction, of values'
    slices shift-added in float64) x weight; values [S x Q x C] flat (converted codes)."""
    acc[:, :] = 0.0
    for s in range(signs):
        for q in range(slice_w.shape[0]):
            at = (s * slice_w.shape[0] + q) * cols
            for c in range(cols):
                acc[s, c] = acc[s, c] + np.float64(values[at + c]) * slice_w[q]
    for c in range(cols):
        value = acc[0, c] - acc[1, c] if signs == 2 else acc[0, c] - offset * act
        total[c] = total[c] + value * weight


def _loops(current, unit, active, full, lsb, gain, offsets, slice_w, step_w, g0, levels,
           per_step, sign, sigma, mode, keys, vectors, row0, widths, draws, out):
    """The kernel's loops (compiled by numba; ``read_pass`` has the contract), on flat
    (sign, slice, column) axes: current and draws [B, N, T, S x Q x C], C-contiguous (a
    row's currents at unit stride), full, lsb and gain [T, S x Q x C]. Rounding to an
    integer is x + 2**23 - 2**23 (2**52 in float64): half to even, as np.rint, for the
    ADC's 0 <= x < 2**23."""
    steps, rows, tiles, width = current.shape
    slices, cols = slice_w.shape[0], out.shape[2]
    signs = width // (slices * cols)
    acc = np.zeros((signs, cols))
    total = np.zeros(cols)
    row = np.zeros(width, np.float32)
    bits = np.zeros(width, np.uint64)
    summed = np.zeros(width)
    zero32, one32 = np.float32(0.0), np.float32(1.0)
    sigma32, g0_32, levels32 = np.float32(sigma), np.float32(g0), np.float32(levels)
    unit32 = np.float32(unit)
    round32, round64 = np.float32(2.0 ** 23), 2.0 ** 52
    full32, lsb32 = full.astype(np.float32), lsb.astype(np.float32)  # exact when per_step
    for t in range(tiles):
        # a row's draws: its vector's place in its sample's stream, then step by step,
        # numbered by the tile's own width (not the padded one: that depends on which tiles
        # share the read)
        own = widths[t]
        own_width = signs * slices * own
        for n in range(rows):
            key = keys[t, (row0 + n) // vectors] if mode == STREAMS else np.uint64(0)
            state0 = np.uint64(((row0 + n) % vectors) * own_width)
            total[:] = 0.0
            if not per_step:
                summed[:] = 0.0
            act64 = 0.0
            for b in range(steps):
                if active[b, t, n] == 0:
                    continue  # no input, no current: codes 0, it would add zeros
                at = state0 + np.uint64(b * vectors * own_width)
                if mode == STREAMS and own == cols:
                    _stream_row(current, unit32, b, t, n, key, at, sigma32, row, bits)
                elif mode == STREAMS:
                    _padded_stream_row(current, unit32, b, t, n, key, at, cols, own, sigma32,
                                       row, bits)
                elif mode == DRAWS:
                    _drawn_row(current, unit32, b, t, n, draws, sigma32, row)
                else:
                    _plain_row(current, unit32, b, t, n, row)
                if per_step:
                    g_act = g0_32 * active[b, t, n]
                    for i in range(width):  # a conversion per input step
                        cur = row[i] / full32[t, i]
                        cur = min(max(cur, zero32), one32) * levels32
                        cur = (cur + round32) - round32
                        row[i] = (cur * lsb32[t, i] - g_act) * gain[t, i]
                    _shift_add(row, slice_w, step_w[b], offsets[t], np.float64(active[b, t, n]),
                               signs, cols, acc, total)
                else:  # the steps' currents summed at their places
                    act64 = act64 + np.float64(active[b, t, n]) * step_w[b]
                    for i in range(width):
                        summed[i] = summed[i] + np.float64(row[i]) * step_w[b]
            if not per_step:
                g_act64 = g0 * act64
                for i in range(width):  # one conversion of the summed currents
                    cur64 = summed[i] / full[t, i]
                    cur64 = min(max(cur64, 0.0), 1.0) * levels
                    cur64 = (cur64 + round64) - round64
                    summed[i] = (cur64 * lsb[t, i] - g_act64) * np.float64(gain[t, i])
                _shift_add(summed, slice_w, 1.0, offsets[t], act64, signs, cols, acc, total)
            for c in range(cols):
                out[t, n, c] = out[t, n, c] + sign * total[c]


def _numpy(current, unit, active, full, lsb, gain, offsets, slice_w, step_w, g0, levels,
           per_step, sign, sigma, mode, keys, vectors, row0, widths, draws, out):
    """``_loops`` vectorised over tiles, rows and columns, input step by input step."""
    steps, tiles, rows, signs, slices, cols = current.shape
    step_draws = _draws_of(mode, keys, vectors, row0, widths, draws, current.shape)
    total = np.zeros((tiles, rows, cols))
    acts = active.astype(np.float64)
    for b in range(steps if per_step else 1):
        if per_step:
            cur = _convert32(_noisy(current[b], unit, step_draws(b), sigma), full, lsb, levels)
            cur -= np.float32(g0) * active[b][:, :, None, None, None]
            cur *= gain[:, None]
            act = acts[b]
        else:
            cur, act = np.zeros(current.shape[1:]), np.zeros((tiles, rows))
            for k in range(steps):  # the steps' currents, summed at their places
                act = act + acts[k] * step_w[k]
                cur = cur + _noisy(current[k], unit, step_draws(k), sigma).astype(
                    np.float64) * step_w[k]
            cur = _convert64(cur, full, lsb, levels)
            cur -= g0 * act[:, :, None, None, None]
            cur *= gain[:, None].astype(np.float64)
        acc = np.zeros((tiles, rows, signs, cols))
        for q in range(slices):
            acc += cur[:, :, :, q, :].astype(np.float64) * slice_w[q]
        value = acc[:, :, 0] - acc[:, :, 1] if signs == 2 else \
            acc[:, :, 0] - offsets[:, None, None] * act[:, :, None]
        total += value * (step_w[b] if per_step else 1.0)
    out += sign * total


def _convert32(cur, full, lsb, levels):
    """The ADC in float32, in place: clip to full scale, round to ``levels``, back to
    current units."""
    cur /= full.astype(np.float32)[:, None]
    np.clip(cur, np.float32(0.0), np.float32(1.0), out=cur)
    cur *= np.float32(levels)
    np.rint(cur, out=cur)
    cur *= lsb.astype(np.float32)[:, None]
    return cur


def _convert64(cur, full, lsb, levels):
    """``_convert32`` in float64 (one conversion of currents summed over input steps)."""
    cur /= full[:, None]
    np.clip(cur, 0.0, 1.0, out=cur)
    cur *= float(levels)
    np.rint(cur, out=cur)
    cur *= lsb[:, None]
    return cur


def _noisy(current: np.ndarray, unit: float, draws: np.ndarray | None,
           sigma: float) -> np.ndarray:
    """A copy of one step's currents [T, N, S, Q, C] (in units of ``unit``), each times
    1 + sigma x its draw."""
    current = current.astype(np.float32) * np.float32(unit)
    if draws is None:
        return current
    d = draws * np.float32(sigma)
    d += np.float32(1.0)
    return current * d


def _draws_of(mode, keys, vectors, row0, widths, draws, shape):
    """step -> that step's draws [T, N, S, Q, C] (None: no noise); streams numbered as
    ``_stream_row`` and ``_padded_stream_row`` number them, padding columns 0."""
    steps, tiles, rows, signs, slices, cols = shape
    if mode == NONE:
        return lambda b: None
    if mode == DRAWS:
        return lambda b: draws[b]
    own = widths.astype(np.uint64)[:, None, None, None, None]  # [T, 1, 1, 1, 1]
    sq = np.arange(signs * slices, dtype=np.uint64).reshape(signs, slices, 1)
    place = sq * own + np.arange(cols, dtype=np.uint64)  # [T, 1, S, Q, C]
    padding = np.arange(cols)[None, None, None, None, :] >= widths[:, None, None, None, None]
    n = row0 + np.arange(rows)
    vector = (n % vectors).astype(np.uint64)[None, :, None, None, None]
    row_keys = keys[:, n // vectors][:, :, None, None, None]

    def of_step(b: int) -> np.ndarray:
        counters = (np.uint64(b * vectors) + vector) * (np.uint64(signs * slices) * own) + place
        z = nz.stream_normals(row_keys, counters)
        z[np.broadcast_to(padding, z.shape)] = 0.0  # no current, no draw (a factor of 1)
        return z
    return of_step


def _bits(key, counter):
    """``noise.draw_bits`` on one uint64 key and counter (the compiled loops' twin)."""
    return _mix(key + (counter + np.uint64(1)) * nz.GAMMA)


def _fill_normals(keys, out):
    """out[t, j] = draw j of stream keys[t], float32 N(0, 1) (``noise.stream_normals``)."""
    for t in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[t, j] = _draw(_bits(keys[t], np.uint64(j)))


def _fill_below(keys, low, high, out):
    """out[k, j] = 0 if draw j of stream keys[k] (float64 U[0, 1),
    ``noise.uniform_from_bits``) is below ``low``, else 1 if below ``high``, else -1; the
    rates given as ``_units_above``'s integers, so that the draw's top 53 bits are
    compared as they are (uint64 to float64 does not vectorise on AVX2)."""
    for k in range(out.shape[0]):
        for j in range(out.shape[1]):
            m = _bits(keys[k], np.uint64(j)) >> nz._UNIFORM_SHIFT
            out[k, j] = 0 if m < low else (1 if m < high else -1)


def _split_digits(q, dac_bits, planes, active, nonzeros):
    """planes[b, n, r] = digit b of levels q[n, r] (``dac_bits`` bits each, least
    significant first) as float32; active[b, n] = the sum of row n's digits b (float32,
    exact: below 2**24); nonzeros[b] = plane b's count of non-zero digits."""
    digit = np.int32(2 ** dac_bits - 1)
    steps, rows, width = planes.shape
    for b in range(steps):
        shift = np.int32(b * dac_bits)
        count = 0
        for n in range(rows):
            level_sum = 0
            for r in range(width):
                d = (q[n, r] >> shift) & digit
                planes[b, n, r] = np.float32(d)
                level_sum += d
                count += d != 0
            active[b, n] = np.float32(level_sum)
        nonzeros[b] = count


def split_digits(q: np.ndarray, dac_bits: int, steps: int):
    """The DAC's digit planes of levels q [N, R] >= 0 (int32): planes [steps, N, R] float32,
    least significant digit first; each step's input levels per row, active [steps, N]
    float32; and each plane's non-zero count [steps] (compiled when numba is on, the same
    numbers either way)."""
    if _kernel is None:
        shifts = (dac_bits * np.arange(steps, dtype=np.int32))[:, None, None]
        digits = (q[None] >> shifts) & (2 ** dac_bits - 1)
        return (digits.astype(np.float32), digits.sum(axis=2).astype(np.float32),
                np.count_nonzero(digits, axis=(1, 2)))
    planes = np.empty((steps,) + q.shape, np.float32)
    active = np.empty((steps, q.shape[0]), np.float32)
    nonzeros = np.empty(steps, np.int64)
    _split_digits(np.ascontiguousarray(q, np.int32), dac_bits, planes, active, nonzeros)
    return planes, active, nonzeros


def _units_above(rate: float) -> np.uint64:
    """The least integer not below rate x 2**53: a draw's top 53 bits m (its uniform
    m x 2**-53, exact) satisfy m x 2**-53 < rate exactly when m < this (for rates in
    [0, 2]; scaling by 2**53 is exact)."""
    return np.uint64(math.ceil(rate * 2.0 ** 53))


def _select(a, m, chosen):
    """chosen[:count] = the columns of a's row m that are non-zero (found without a branch
    per entry); returns count."""
    count = 0
    for k in range(a.shape[1]):
        chosen[count] = k
        count += a[m, k] != 0
    return count


def _sparse_product(a, b, out, weighted=True):
    """out [M, N] = a [M, K] @ b [K, N]: each row the sum, in row order, of b's rows that
    a's row selects, times them (``weighted`` False: a holds zeros and ones, so the rows
    are summed as they are; for integers, whose sums any order gives the same)."""
    chosen = np.empty(a.shape[1], np.int64)
    for m in range(a.shape[0]):
        for n in range(b.shape[1]):
            out[m, n] = 0
        for i in range(_select(a, m, chosen)):
            k = chosen[i]
            v = a[m, k]
            if weighted:
                for n in range(b.shape[1]):
                    out[m, n] += v * b[k, n]
            else:
                for n in range(b.shape[1]):
                    out[m, n] += b[k, n]


def _doubled(a, out):
    """out [S x M, 2K] uint8 = [a | 128 a] for planes a [S, M, K] (C order) of zeros and
    ones (indexed as one matrix: three indices kept the loop from vectorising, 7x slower)."""
    planes, rows, inner = a.shape
    flat = a.reshape(planes * rows, inner)
    for m in range(planes * rows):
        for k in range(inner):
            bit = np.int32(flat[m, k])
            out[m, k] = bit
            out[m, inner + k] = bit * 128


def _digit_parts(a, top, out):
    """out [S x M, K] uint8 = digits a [S, M, K] (0..255, exact floats) mod 128; with
    ``top``, out [S x M, 2K] = [d mod 128 | 128 (d div 128)]."""
    planes, rows, inner = a.shape
    flat = a.reshape(planes * rows, inner)
    for m in range(planes * rows):
        for k in range(inner):
            out[m, k] = np.int32(flat[m, k]) & 127
        if top:
            for k in range(inner):
                out[m, inner + k] = (np.int32(flat[m, k]) >> 7) << 7


def _join_halves(y, out):
    """out [M, N] = y[:, :N] + 128 y[:, N:] (int32: the caller bounds the sums)."""
    rows, cols = out.shape
    for m in range(rows):
        for n in range(cols):
            out[m, n] = y[m, n] + (y[m, cols + n] << 7)


# Cells held as integers (grid units) below 2**WIDE_BITS split into two 7-bit halves, so
# that binary input planes doubled as [p | 128 p] give p @ cells in one exact uint8 x int8
# product (``intgemm``; 7 bits keep its pairs within int16)
WIDE_BITS = 14


def _split_units(cells, scale, units, wide):
    """units = cells x scale (a power of 2) as int32, wide = [units mod 128; units // 128]
    as int8; False where some cell is not an integer in [0, 2**WIDE_BITS) grid units."""
    inner, cols = cells.shape
    scale32, top = np.float32(scale), np.float32(2 ** WIDE_BITS)
    bad = 0
    for k in range(inner):
        for n in range(cols):  # (no branches: the loop vectorises)
            u = min(max(cells[k, n] * scale32, np.float32(-1.0)), top)
            i = np.int32(u)
            bad |= (np.float32(i) != u) | (i < 0) | (i >= 2 ** WIDE_BITS)
            units[k, n] = i
            wide[k, n] = i & 127
            wide[inner + k, n] = i >> 7
    return bad == 0


def _indicators(cells, levels, onehot):
    """``level_indicators``'s loops; False where a non-zero cell is none of the levels."""
    inner, cols = cells.shape
    seen = np.zeros(cols, np.bool_)
    bad = False
    for k in range(inner):
        for n in range(cols):
            seen[n] = cells[k, n] == 0
        for j in range(levels.shape[0]):
            for n in range(cols):
                hit = cells[k, n] == levels[j]
                onehot[k, j * cols + n] = hit
                seen[n] |= hit
        for n in range(cols):
            bad |= not seen[n]
        if bad:
            return False  # (analog cells fail at once: their noise puts them off the levels)
    return True


def _combine(counts, levels, out):
    """out [M, N] = float32 of sum over l of levels[l] x counts[:, l-th block of N]."""
    rows, cols = out.shape
    acc = np.empty(cols)
    for m in range(rows):
        for n in range(cols):
            acc[n] = 0.0
        for j in range(levels.shape[0]):
            for n in range(cols):
                acc[n] += levels[j] * counts[m, j * cols + n]
        for n in range(cols):
            out[m, n] = np.float32(acc[n])


_kernel = None
if numba is not None and os.environ.get("CIMSTACK_NUMBA") != "0":
    # compiled on first call, then cached on disk by numba; the loops call compiled twins.
    # error_model numpy: x / 0 is inf, not an exception (a branch per division that stops
    # the loops from vectorising; full scales are never 0)
    _jit = numba.njit(nogil=True, error_model="numpy",
                      cache=os.environ.get("CIMSTACK_NUMBA_CACHE") != "0")
    if not numba.config.DISABLE_JIT:  # (NUMBA_DISABLE_JIT runs the Python one above)
        @numba.extending.intrinsic
        def _float32_of(typingctx, bits):  # noqa: F811 (the compiled twin of the one above)
            if not isinstance(bits, numba.types.Integer) or bits.bitwidth < 32:
                return None  # typing fails: only integers of 32 bits or more

            def codegen(context, builder, signature, args):
                word = builder.trunc(args[0], llvmlite.ir.IntType(32)) \
                    if bits.bitwidth > 32 else args[0]
                return builder.bitcast(word, llvmlite.ir.FloatType())
            return numba.types.float32(bits), codegen

    _mix, _draw = _jit(nz.mix64), _jit(_normal)
    _bits = _jit(_bits)
    _plain_row, _stream_row, _drawn_row = _jit(_plain_row), _jit(_stream_row), _jit(_drawn_row)
    _padded_stream_row, _shift_add = _jit(_padded_stream_row), _jit(_shift_add)
    _kernel = _jit(_loops)
    _fill_normals, _fill_below = _jit(_fill_normals), _jit(_fill_below)
    _select, _sparse_product = _jit(_select), _jit(_sparse_product)
    _doubled, _digit_parts, _join_halves = _jit(_doubled), _jit(_digit_parts), _jit(_join_halves)
    _split_digits, _split_units = _jit(_split_digits), _jit(_split_units)
    _indicators, _combine = _jit(_indicators), _jit(_combine)

def compiled() -> bool:
    """Whether the compiled kernels run (numba installed and ``CIMSTACK_NUMBA`` not 0)."""
    return _kernel is not None


# Below this share of non-zero entries in an input plane (bit planes of activations: ReLU
# zeros, empty high bits) the compiled sparse product replaces a one-thread BLAS product. A
# speed choice only (both give the same bits), set from whole analog runs on this machine,
# one thread and BLAS on one (``python -m tools.bench_sparse_product --model
# resnet50-imagenet``): with OpenBLAS's AVX-512 kernels ResNet-50's product took 2.4-2.5 s
# at 0.05-0.15 against 3.3 s at 0.25 (the digits CNN's 90 ms against 117); with its AVX2
# kernels, as this machine's environment forces, 3.9 s at 0.15 against 3.7 s at 0.25 (146
# against 135 ms). Random planes (its first table) put the break-even near 0.2-0.3: real
# planes' non-zero entries cluster, which costs the sparse loop more than BLAS
SPARSE_BELOW = 0.15


def exact_product(a: np.ndarray, b: np.ndarray,
                  nonzeros: np.ndarray | None = None) -> np.ndarray:
    """a [S, M, K] @ b [K, N] -> [S x M, N], both of one float type, for operands whose sums
    are exact in it (``analog.float32_exact`` or ``float64_exact``; callers check): any
    order of the sums gives the same bits, so where a plane a[s] is mostly zeros and numba
    is on, the compiled sparse product (the sum of the rows of b that a row selects)
    replaces BLAS for that plane. ``nonzeros`` [S]: each plane's count of non-zero entries,
    when the caller knows it (None: counted here). Planes choose apart because their
    densities differ: a ReLU network's low input bits are a quarter non-zero, its high ones
    almost empty."""
    planes, rows, inner = a.shape
    if _kernel is None:
        return a.reshape(-1, inner) @ b
    if nonzeros is None:
        nonzeros = np.count_nonzero(a, axis=(1, 2))
    out = np.empty((planes, rows, b.shape[1]), np.result_type(a, b))
    for s in range(planes):
        if nonzeros[s] >= SPARSE_BELOW * rows * inner:
            np.matmul(a[s], b, out=out[s])
        else:
            _sparse_product(a[s], b, out[s])
    return out.reshape(-1, b.shape[1])


# Below this share of non-zero entries, a binary plane's integer product is the compiled sum
# of selected rows instead. A speed choice only (the same bits), from whole analog runs on
# one thread (``python -m tools.bench_sparse_product --model resnet50-imagenet``): ResNet-50's
# product took 1.28-1.32 s at 0.04-0.08 against 1.45 at 0 and 2.09 at 0.25 (the float32
# products' best, BLAS and their sparse loop, 2.07 s); the digits CNN's 65-71 ms at 0-0.08
INTEGER_SPARSE_BELOW = 0.08


# The integer products' numpy branches below are their twins for tests: runs without numba
# keep the float products (``analog.INTEGER_PRODUCTS``), which BLAS runs faster there.


def wide_cells(cells: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray] | None:
    """For ``integer_product``: cells [K, N] in grid units (cells x ``scale``) as int32, and
    those units split as int8 [units mod 128; units // 128] [2K, N]; None where some cell is
    not an integer in [0, 2**WIDE_BITS) grid units."""
    units = np.empty(cells.shape, np.int32)
    wide = np.empty((2 * cells.shape[0], cells.shape[1]), np.int8)
    if _kernel is not None:
        return (units, wide) if _split_units(cells, float(scale), units, wide) else None
    u = cells.astype(np.float64) * scale
    if u.size and (u.min() < 0 or u.max() >= 2 ** WIDE_BITS or not np.array_equal(u, np.rint(u))):
        return None
    units[:] = u
    wide[:] = np.concatenate([units & 127, units >> 7])
    return units, wide


def _dense(a: np.ndarray, nonzeros: np.ndarray | None) -> np.ndarray:
    """Which planes of a [S, M, K] go through the integer GEMM: those at or above
    INTEGER_SPARSE_BELOW non-zero (all of them without numba)."""
    planes, rows, inner = a.shape
    if _kernel is None:
        return np.ones(planes, bool)
    if nonzeros is None:
        nonzeros = np.count_nonzero(a, axis=(1, 2))
    return nonzeros >= INTEGER_SPARSE_BELOW * rows * inner


def _runs(dense: np.ndarray):
    """(start, stop, dense) for each sparse plane and each run of consecutive dense ones."""
    s = 0
    while s < len(dense):
        end = s + 1
        while dense[s] and end < len(dense) and dense[end]:
            end += 1
        yield s, end, bool(dense[s])
        s = end


def halves(wide: np.ndarray) -> np.ndarray:
    """For ``integer_product`` of multi-bit digits: ``wide_cells``'s halves [c mod 128;
    c div 128] [2K, N] side by side, twice: int8 [[c mod 128 | c div 128]] x 2, [2K, 2N]."""
    inner = wide.shape[0] // 2
    side = np.concatenate([wide[:inner], wide[inner:]], axis=1)
    return np.concatenate([side, side])


def integer_product(a: np.ndarray, units: np.ndarray, wide: np.ndarray | None,
                    nonzeros: np.ndarray | None = None,
                    twice: np.ndarray | None = None) -> np.ndarray:
    """a [S, M, K] @ units [K, N] (int32, each cell an integer in [0, 2**WIDE_BITS)) ->
    int32 [S x M, N], exact when every column sum fits int32 (callers check). Either a
    1-bit DAC's planes (zeros and ones) with ``wide`` (``wide_cells``), or digits 0..255
    with ``twice`` (``halves``); ``nonzeros`` as for ``exact_product``. Dense planes run
    through onnxruntime's integer GEMM, each run of consecutive ones in one product: binary
    planes as [p | 128 p] @ wide; digits d as [d mod 128 | 128 (d div 128)] @ twice, whose
    two column halves y0, y1 give y0 + 128 y1 (the digits' first half alone where none
    reaches 128). Every uint8 entry is at most 128 and every int8 one at most 127, so
    adjacent pairs stay within int16 (``intgemm``). Sparse planes (with numba) go through
    the compiled sum of selected rows. Integers: the same sums in any order, so the same
    bits as the float product of exact cells (``exact_product``)."""
    planes, rows, inner = a.shape
    cols = units.shape[1]
    out = np.empty((planes, rows, cols), np.int32)
    for s, end, dense in _runs(_dense(a, nonzeros)):
        if not dense:
            _sparse_product(a[s], units, out[s], twice is not None)
            continue
        target = out[s:end].reshape(-1, cols)
        if twice is None:
            intgemm.matmul(_doubled_planes(a[s:end]), wide, target)
            continue
        top = bool(a[s:end].max() >= 128)
        y = np.empty((target.shape[0], 2 * cols), np.int32)
        intgemm.matmul(_parts_of_digits(a[s:end], top), twice[:2 * inner if top else inner],
                       y)
        if _kernel is not None:
            _join_halves(y, target)
        else:
            np.add(y[:, :cols], y[:, cols:] << 7, out=target)
    return out.reshape(-1, cols)


def _doubled_planes(a: np.ndarray) -> np.ndarray:
    """[p | 128 p] uint8 [S x M, 2K] of binary planes a [S, M, K]."""
    if _kernel is not None:
        doubled = np.empty((a.shape[0] * a.shape[1], 2 * a.shape[2]), np.uint8)
        _doubled(a, doubled)
        return doubled
    bits = (a != 0).astype(np.uint8).reshape(-1, a.shape[2])
    return np.concatenate([bits, bits << np.uint8(7)], axis=1)


def _parts_of_digits(a: np.ndarray, top: bool) -> np.ndarray:
    """[d mod 128 | 128 (d div 128)] uint8 [S x M, 2K] of digit planes a [S, M, K] (the
    first half only, [S x M, K], where ``top`` is False)."""
    inner = a.shape[2]
    if _kernel is not None:
        parts = np.empty((a.shape[0] * a.shape[1], (2 if top else 1) * inner), np.uint8)
        _digit_parts(a, top, parts)
        return parts
    d = a.reshape(-1, inner).astype(np.int32)
    parts = [d & 127] + ([(d >> 7) << 7] if top else [])
    return np.concatenate(parts, axis=1).astype(np.uint8)


def level_indicators(cells: np.ndarray, levels: np.ndarray) -> np.ndarray | None:
    """int8 [K, L x N]: 1 where cells [K, N] == levels[l] (the l-th block of N columns), for
    ``counted_product``; None where some non-zero cell is none of the levels."""
    inner, cols = cells.shape
    onehot = np.empty((inner, len(levels) * cols), np.int8)
    if _kernel is not None:
        return onehot if _indicators(cells, levels, onehot) else None
    hits = cells[:, None, :] == levels[None, :, None]
    if not (hits.any(axis=1) | (cells == 0)).all():
        return None
    onehot[:] = hits.reshape(inner, -1)
    return onehot


def counted_product(a: np.ndarray, cells: np.ndarray, levels: np.ndarray,
                    onehot: np.ndarray, nonzeros: np.ndarray | None = None) -> np.ndarray:
    """a [S, M, K] (DAC digits, 0..255) @ cells [K, N] (float64, each non-zero cell one of
    ``levels`` [L], float64) -> float32 [S x M, N]: the exact sums rounded to float32, for
    cells whose sums are exact in float64 (``analog.float64_exact``: quantized mode's
    Gmin-plus-digit cells). Dense planes count each level's selected cells, weighted by the
    digits, in one integer GEMM against ``onehot`` (``level_indicators``; pairs of uint8
    digits times 0 or 1 stay far inside int16) and sum counts x levels in float64;
    sparse ones (numba) sum the selected rows of cells. Exact sums in any order: the bits of
    ``exact_product`` rounded to float32, which is what a read does with them."""
    planes, rows, inner = a.shape
    cols = cells.shape[1]
    out = np.empty((planes, rows, cols), np.float32)
    for s, end, dense in _runs(_dense(a, nonzeros)):
        if not dense:
            summed = np.empty((rows, cols))
            _sparse_product(a[s], cells, summed)
            out[s] = summed
            continue
        counts = np.empty(((end - s) * rows, len(levels) * cols), np.int32)
        intgemm.matmul(a[s:end].reshape(-1, inner).astype(np.uint8), onehot, counts)
        if _kernel is not None:
            _combine(counts, levels, out[s:end].reshape(-1, cols))
        else:
            out[s:end] = (counts.reshape(-1, len(levels), cols) * levels[:, None]).sum(
                axis=1).reshape(end - s, rows, cols)
    return out.reshape(-1, cols)


def stream_normals(keys: np.ndarray, n: int) -> np.ndarray:
    """float32 [T, n]: draws 0 .. n - 1 of streams ``keys`` [T] (``noise.stream_normals``),
    compiled when numba is on, the same numbers either way."""
    keys = np.asarray(keys, np.uint64).reshape(-1)
    if _kernel is None:
        return nz.stream_normals(keys[:, None], np.arange(n, dtype=np.uint64)[None, :])
    out = np.empty((keys.size, n), np.float32)
    _fill_normals(keys, out)
    return out


def stream_below(keys: np.ndarray, n: int, low: float, high: float) -> np.ndarray:
    """int8 [K, n]: for draws 0 .. n - 1 of streams ``keys`` [K] as uniforms u on [0, 1), 0
    where u < low, else 1 where u < high, else -1 (stuck cells' states)."""
    keys = np.asarray(keys, np.uint64).reshape(-1)
    if _kernel is None:
        u = nz.stream_uniforms(keys[:, None], np.arange(n, dtype=np.uint64)[None, :])
        return np.where(u < low, 0, np.where(u < high, 1, -1)).astype(np.int8)
    out = np.empty((keys.size, n), np.int8)
    _fill_below(keys, _units_above(low), _units_above(high), out)
    return out


def read_pass(current, active, full, lsb, slice_w, step_w, levels, per_step, gain, offsets,
              g0, sign, sigma, noise, out, implementation=None, unit=1.0) -> None:
    """Add one input sign's read of T tiles by N rows into ``out`` [T, N, C] float64.

    - current [B, T, N, S, Q, C], float64, float32 or int32 (rounded to float32 first):
      each input step's column currents (B steps, S signs, Q slices), in units of ``unit``
      level steps (a power of 2: integer currents' grid units, ``integer_product``);
    - active [B, T, N] float32: the input levels applied per step. A step that applies
      none (0) must have zero currents: the compiled kernel skips it, the numpy one adds
      its zeros;
    - full, lsb [T, S, Q, C] float64: the ADC's full scale and step (float32 values when
      ``per_step``); gain [T, S, Q, C] float32: read-after-write gains;
    - offsets [T]: the offset encoding's per-tile offset (used when S == 1);
    - slice_w [Q], step_w [B]: place weights; g0: Gmin in level units; levels: the ADC's
      top code;
    - per_step: an ADC conversion per input step, else the steps' currents summed in the
      analog domain at their places and converted once;
    - sign: +1 or -1; sigma: read noise; noise: None, an array of draws shaped like
      current, or ``Streams``;
    - implementation: "numba" or "numpy" (default: numba when available).
    """
    if math.frexp(unit)[0] != 0.5:
        raise ValueError(f"unit {unit} is not a power of 2: scaling by it would round")
    mode, keys, vectors, row0, draws = NONE, np.zeros((1, 1), np.uint64), 1, 0, \
        np.zeros((1,) * 6, np.float32)
    widths = np.full(current.shape[1], current.shape[5], np.int64)
    if noise is not None and sigma:
        if isinstance(noise, np.ndarray):
            mode, draws = DRAWS, noise
        else:
            mode, keys, vectors, row0 = STREAMS, noise.keys, noise.vectors, noise.row0
            widths = widths if noise.widths is None else np.asarray(noise.widths, np.int64)
    kernel = _kernel if implementation != "numpy" else None
    if implementation == "numba" and kernel is None:
        raise RuntimeError("numba is not available")
    if kernel is not None:  # the loops take [B, N, T, (sign, slice, column) flat], C order
        tiles = current.shape[1]
        current, draws = (np.ascontiguousarray(a.swapaxes(1, 2)).reshape(
            a.shape[0], a.shape[2], a.shape[1], -1) for a in (current, draws))
        full, lsb, gain = (a.reshape(tiles, -1) for a in (full, lsb, gain))
    args = (current, float(unit), active, full, lsb, gain, np.asarray(offsets, np.float64),
            slice_w, step_w, float(g0), float(levels), bool(per_step), float(sign), float(sigma),
            mode, keys, int(vectors), int(row0), widths, draws, out)
    (kernel or _numpy)(*args)
