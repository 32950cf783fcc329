"""Read and programming noise keyed by sample, so that a sample's result does not depend on
which other samples share its run: the same images give the same outputs whether they run
alone, in a dataset of 540, or split into chunks by ``--memory-limit``.

Most draws are counter based: draw number j of stream k is a pure function of (k, j), so
that a compiled kernel computes it where it is used (``runtime.kernels``) and numpy computes
the same numbers without it. Read noise, one draw per physical column, input step and
vector (the bulk of all draws), streams by (run seed, purpose, line, tile, input sign,
sample); stuck cells by (run seed, purpose, crossbar) and a crossbar write's programming
noise by (run seed, purpose, crossbar, the write's number), one draw per cell. The
operands written at run time (``runtime.dynamic``) draw from a numpy generator seeded by
(run seed, purpose, the instruction's line, what it writes, the sample's index in the
whole input), whose first draws key their tiles' programming streams.

A stream's bits are SplitMix64's (Steele, Lea and Flood, OOPSLA 2014: the
state k + (j + 1) * gamma through its finalizer), turned into N(0, 1) by inverting the
normal distribution function from a table (``NORMAL_TABLE``) with linear interpolation:
only integer operations, a table read and float32 multiplies and adds, so both
implementations agree bit for bit. The tails beyond 6.01 sigma (probability 2e-9) are cut.
Uniform draws (stuck cells) are the top 53 bits over 2**53.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

STUCK, PROGRAM, READ, DYNAMIC = 1, 2, 3, 5  # purposes (stuck cells and the programming
# noise of static writes are keyed by crossbar, not by sample)

GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment (2**64 / golden ratio)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def mix64(z):
    """SplitMix64's finalizer on uint64 ``z`` (arithmetic modulo 2**64): elementwise on numpy
    arrays, and on scalars where numba compiles it."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


# Inverse normal distribution function over p in [0.5, 1) by interpolation: the top bit of
# a draw's 64 is its sign, the next 14 pick one of 2**14 equal intervals of p and the next
# 24 the place in it. The last interval (p > 1 - 2**-15) has 2**14 finer ones of its own,
# picked by bits 35-48, placed by bits 0-23.
INTERVAL_BITS, FRACTION_BITS = 14, 24
_K = 2 ** INTERVAL_BITS
_FRACTION_MASK, _INTERVAL_MASK = np.uint64(2 ** FRACTION_BITS - 1), np.uint64(_K - 1)
_SIGN_SHIFT, _INTERVAL_SHIFT = np.uint64(63), np.uint64(63 - INTERVAL_BITS)
_FRACTION_SHIFT = np.uint64(63 - INTERVAL_BITS - FRACTION_BITS)
_TAIL_SHIFT = np.uint64(63 - INTERVAL_BITS - INTERVAL_BITS)
_UNIT = np.float32(2.0 ** -FRACTION_BITS)


def _normal_table() -> np.ndarray:
    """float32 [interval, (base, slope)]: the knots z(p) of the 2**14 - 1 ordinary intervals
    then the 2**14 tail ones (the tail's last knot, at p = 1, is put at the middle of its
    last interval's p instead of infinity)."""
    inv = NormalDist().inv_cdf
    tail_start = 1 - 0.5 / _K
    p = [0.5 + 0.5 * j / _K for j in range(_K)]  # p[K - 1] == tail_start
    p_tail = [tail_start + (0.5 / _K) * k / _K for k in range(_K)]
    p_tail.append(1 - (0.5 / _K) * (0.5 / _K))
    main = np.array([inv(q) for q in p])
    tail = np.array([inv(q) for q in p_tail])
    base = np.concatenate([main[:-1], tail[:-1]])
    slope = np.concatenate([np.diff(main), np.diff(tail)])
    return np.stack([base, slope], axis=1).astype(np.float32)


NORMAL_TABLE = _normal_table()


def normal_from_bits(h: np.ndarray) -> np.ndarray:
    """float32 N(0, 1) draws from uint64 bits ``h`` (numpy; ``kernels`` has the scalar twin):
    float32 operations only, so both round alike."""
    i = (h >> _INTERVAL_SHIFT) & _INTERVAL_MASK
    tail = i == _INTERVAL_MASK
    m = np.where(tail, (_K - 1) + ((h >> _TAIL_SHIFT) & _INTERVAL_MASK), i).astype(np.intp)
    frac = np.where(tail, h, h >> _FRACTION_SHIFT) & _FRACTION_MASK
    row = NORMAL_TABLE[m]
    z = row[..., 0] + frac.astype(np.int64).astype(np.float32) * _UNIT * row[..., 1]
    z *= np.float32(1.0) - np.float32(2.0) * (h >> _SIGN_SHIFT).astype(np.int64).astype(
        np.float32)  # the sign bit
    return z


_UNIFORM_SHIFT, _UNIFORM_UNIT = np.uint64(11), 2.0 ** -53  # (the compiled fills use them)


def uniform_from_bits(h: np.ndarray) -> np.ndarray:
    """float64 U[0, 1) draws from uint64 bits ``h``: the top 53 bits over 2**53 (exact)."""
    return (h >> _UNIFORM_SHIFT).astype(np.float64) * _UNIFORM_UNIT


def draw_bits(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """The 64 bits of draw number ``counters`` of streams ``keys`` (uint64, broadcast
    together): SplitMix64's state keys + (counters + 1) x gamma through its finalizer
    (``kernels._bits`` is the compiled scalar twin)."""
    return mix64(keys + (counters + np.uint64(1)) * GAMMA)


_MASK64 = 2 ** 64 - 1


def _mix_int(z: int) -> int:
    """``mix64`` on a Python int (modulo 2**64)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def stream_key(seed: int, purpose: int, *fields: int) -> np.uint64:
    """``stream_keys`` of int fields, one key: Python int arithmetic, a few microseconds
    where numpy's calls cost tens (one key per crossbar write)."""
    gamma = int(GAMMA)
    key = _mix_int((seed + gamma) & _MASK64)
    for f in (purpose, *fields):
        key = _mix_int(key ^ _mix_int((f + gamma) & _MASK64))
    return np.uint64(key)


def stream_keys(seed: int, purpose: int, *fields) -> np.ndarray:
    """uint64 stream keys of (seed, purpose, fields...): each field an int or an integer
    array, broadcast together."""
    key = mix64(np.asarray([seed % 2 ** 64], np.uint64) + GAMMA)
    key = mix64(key ^ mix64(np.asarray([purpose], np.uint64) + GAMMA))
    for f in fields:
        key = mix64(key ^ mix64(np.array(f, np.int64, ndmin=1).astype(np.uint64) + GAMMA))
    return key


def stream_normals(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Draw number ``counters`` of streams ``keys`` (broadcast together), float32 N(0, 1)."""
    return normal_from_bits(draw_bits(keys, np.array(counters, np.uint64, ndmin=1)))


def stream_uniforms(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Draw number ``counters`` of streams ``keys`` (broadcast together), float64 U[0, 1)."""
    return uniform_from_bits(draw_bits(keys, np.array(counters, np.uint64, ndmin=1)))


@dataclass(frozen=True)
class ReadStreams:
    """The read noise of a batch of tile reads: ``keys(part)`` are the uint64 stream keys
    [tiles, samples] for the reads of input sign ``part`` (0 positive, 1 negative); row n of
    the read belongs to sample n // ``vectors``, and its draw for step b, vector v = n %
    ``vectors``, sign s, slice q, column c of a tile of C columns (its own, not padded) is
    number (((b V + v) S + s) Q + q) C + c of its sample's stream."""

    keys: object  # Callable[[int], np.ndarray]
    vectors: int


class SampleNoise:
    """The noise of one pass over samples ``first``, ``first + 1``, ... of a run."""

    def __init__(self, seed: int, first: int = 0):
        self.seed, self.first = seed, first

    def generator(self, purpose: int, key: tuple, sample: int) -> np.random.Generator:
        """The generator of local ``sample`` for (``purpose``, ``key``)."""
        return np.random.default_rng([self.seed, purpose, *key, self.first + sample])

    def read_streams(self, line: int, tiles: np.ndarray, samples: np.ndarray,
                     vectors: int) -> ReadStreams:
        """Read streams of ``tiles`` (indices in their group) x local ``samples``, for the
        mvm at ``line``."""
        global_samples = self.first + samples
        return ReadStreams(lambda part: stream_keys(
            self.seed, READ, line, tiles[:, None], part, global_samples[None, :]), vectors)
