"""Whole-program checks that the grammar cannot express.

After ``verify(p)`` the header is within ``isa.limits``; names are unique; ports bind declared
buffers and every output is written; the text ends with its only ``halt``; a ``batch free``
header is true (every buffer leads with the batch, no instruction mixes samples); buffers live
at the same time do not overlap in the scratchpad (their offsets); and every
instruction passes the check of its opcode in ``CHECKS``: operands declared and of the rank
the opcode needs, attributes in range, windows inside their blob, crossbar and buffers, and the
destination shape the one the opcode computes from its sources (at the compiled batch).

A verified program runs through ``isa.timing`` without error, and the runtime's semantics
see only shapes they accept: what is left (a buffer read before it is written, a crossbar that
holds a different tile than an mvm expects) is the runtime's to report.
"""

from __future__ import annotations

import math
from typing import Callable, NoReturn

import numpy as np

from . import limits
from .cells import LowWrite
from .errors import IsaError
from .opcodes import BROADCASTING, ELEMENTWISE, OPCODES, REDUCTIONS
from .printer import text_line
from .program import Instr, Program

PAD_MODES = ("constant", "reflect", "edge", "wrap")
COMBINE_BITS = (2, 25)  # levels are float32: integers are exact up to 2**24


def _fail(ins: Instr, message: str) -> NoReturn:
    """IsaError at the instruction's line (none for programs built in memory)."""
    raise IsaError(f"{ins.op}: {message}", ins.line or None, 1 if ins.line else None)


class _Ctx:
    """The program's geometry and the declared shape of every buffer and blob."""

    def __init__(self, p: Program):
        self.chip = p.chip
        self.buffers = {b.name: tuple(b.type.shape) for b in p.buffers}
        self.blobs = p.blob_map()
        self.blob_shapes = {b.name: tuple(b.data.shape) for b in p.blobs}
        self.finite: set[str] = set()  # blobs already found finite
        self.differ: dict[str, bool] = {}  # blobs checked by batch_rows
        self.tiles: dict[int, tuple[int, int]] = {}  # crossbar -> its last write's tile
        end = next((i for i, ins in enumerate(p.text) if ins.op == "barrier"
                    and ins.attr("label") == "inference"), len(p.text))
        self.load_writes = {id(ins) for ins in p.text[:end] if ins.op == "write"}

    def shape(self, ref: str) -> tuple[int, ...]:
        return (self.buffers if ref[0] == "%" else self.blob_shapes)[ref[1:]]

    def batch_rows(self, ref: str) -> bool:
        """Whether ``ref`` is a blob whose rows along its leading axis differ
        (``rows_differ``)."""
        if ref[0] != "@":
            return False
        if ref not in self.differ:
            self.differ[ref] = rows_differ(self.blobs[ref[1:]].data)
        return self.differ[ref]

    def dst(self, ins: Instr) -> tuple[int, ...]:
        return self.shape(ins.operands[0])

    def src(self, ins: Instr, i: int = 1) -> tuple[int, ...]:
        return self.shape(ins.operands[i])


def _dupes(names: list[str]) -> set[str]:
    seen: set[str] = set()
    return {n for n in names if n in seen or seen.add(n)}


def _expect_shape(ins: Instr, got: tuple, want: tuple) -> None:
    """The destination's declared shape ``got`` is the ``want`` the operation computes."""
    if tuple(got) != tuple(want):
        _fail(ins, f"{ins.operands[0]} has shape {list(got)}; the operation gives {list(want)}")


def _expect_rank(ins: Instr, ref: str, shape: tuple, ranks: range) -> None:
    """``ref``'s rank is one of ``ranks`` (one rank, or a rank and all above it)."""
    if len(shape) not in ranks:
        want = f"{ranks.start}" if len(ranks) == 1 else f"at least {ranks.start}"
        _fail(ins, f"{ref} has rank {len(shape)}; the operation needs rank {want}")


def _window(ins: Instr, key: str, limit: int, what: str) -> tuple[int, int]:
    """An attribute [start, stop] with 0 <= start < stop <= limit."""
    w = ins.attr(key)
    if len(w) != 2 or w[0] >= w[1]:
        _fail(ins, f"{key} {list(w)}: rows and cols must be [start,stop] windows")
    if not 0 <= w[0] < w[1] <= limit:
        _fail(ins, f"{key} {list(w)} outside the {limit} {what}")
    return w


def _axis(ins: Instr, rank: int) -> int:
    """The ``axis`` attribute, in -rank..rank-1, as a non-negative axis."""
    axis = ins.attr("axis")
    if not -rank <= axis < rank:
        _fail(ins, f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def _broadcast(ins: Instr, shapes: list[tuple], dst: tuple) -> None:
    """The sources broadcast to exactly ``dst`` (never to anything larger)."""
    try:
        result = np.broadcast_shapes(*shapes, dst)
    except ValueError:
        result = None
    if result != tuple(dst):
        _fail(ins, f"source shapes {', '.join(str(list(s)) for s in shapes)} do not broadcast "
                   f"to {ins.operands[0]} {list(dst)}")


def _finite_blob(c: _Ctx, ins: Instr, ref: str) -> np.ndarray:
    """The blob's data, which must be finite (checked once per blob)."""
    data = c.blobs[ref[1:]].data
    if ref not in c.finite and not np.isfinite(data).all():
        _fail(ins, f"{ref} holds NaN or infinite values")
    c.finite.add(ref)
    return data


# --- crossbars -------------------------------------------------------------------------------

def _crossbar(c: _Ctx, ins: Instr, rows: tuple, cols: tuple) -> None:
    """``xb`` names a crossbar of the chip and the rows x cols tile fits it."""
    xb = ins.attr("xb")
    if not 0 <= xb < c.chip.xbars:
        _fail(ins, f"crossbar {xb} outside the chip's {c.chip.xbars}")
    if rows[1] - rows[0] > c.chip.rows or cols[1] - cols[0] > c.chip.weights_per_row:
        _fail(ins, f"tile {rows[1] - rows[0]}x{cols[1] - cols[0]} exceeds the crossbar "
                   f"({c.chip.rows}x{c.chip.weights_per_row} weights)")


def _write(c: _Ctx, ins: Instr) -> None:
    ref = ins.operands[0]
    shape = c.shape(ref)
    if len(shape) != 2:
        _fail(ins, f"window outside blob {ref} of shape {shape}: a tile needs a 2-D blob")
    rows = _window(ins, "rows", shape[0], f"rows of blob {ref}")
    cols = _window(ins, "cols", shape[1], f"columns of blob {ref}")
    _crossbar(c, ins, rows, cols)
    _finite_blob(c, ins, ref)
    _low_write(c, ins)
    c.tiles[ins.attr("xb")] = (rows[1] - rows[0], cols[1] - cols[0])


def _low_write(c: _Ctx, ins: Instr) -> None:
    """Bit stucking's attributes: all or none, within range, and only on writes after
    barrier label="inference" (load-phase writes are full writes)."""
    given = [a for a in LowWrite.ATTRS if ins.attr(a) is not None]
    if not given:
        return
    if len(given) < len(LowWrite.ATTRS):
        _fail(ins, f"bit stucking needs {', '.join(LowWrite.ATTRS)} together")
    if id(ins) in c.load_writes:
        _fail(ins, "bit stucking (low_*) only on writes after barrier label=\"inference\": "
                   "load-phase writes are full writes")
    low = LowWrite.of(ins)
    if not 1 <= low.slices <= c.chip.slices:
        _fail(ins, f"low_slices={low.slices} must be within 1..{c.chip.slices} (the slices)")
    if not 0.0 <= low.write <= 1.0:
        _fail(ins, f"low_write={low.write} must be a fraction within 0..1")
    if low.seed < 0:
        _fail(ins, f"low_seed={low.seed} must be at least 0")


def _mvm(c: _Ctx, ins: Instr) -> None:
    dst_ref, src_ref = ins.operands
    if src_ref[0] != "%":
        _fail(ins, f"source {src_ref} must be a buffer")
    src, dst = c.src(ins), c.dst(ins)
    n_vec = math.prod(src[1:-1]) if len(src) >= 2 else 0
    vecs = ins.attr("vecs")
    if len(vecs) != 2 or not 0 <= vecs[0] < vecs[1] <= n_vec:
        _fail(ins, f"vecs {list(vecs)} outside the {n_vec} input vectors of {src_ref}")
    _expect_rank(ins, dst_ref, dst, range(2, limits.MAX_RANK + 1))
    if dst[0] != src[0] or math.prod(dst[1:-1]) != n_vec:
        _fail(ins, f"{dst_ref} {list(dst)} does not hold the {src[0]}x{n_vec} vectors of "
                   f"{src_ref} {list(src)}")
    rows = _window(ins, "rows", src[-1], f"inputs of {src_ref}")
    cols = _window(ins, "cols", dst[-1], f"outputs of {dst_ref}")
    _crossbar(c, ins, rows, cols)
    _programmed(c, ins, (rows[1] - rows[0], cols[1] - cols[0]))


def _programmed(c: _Ctx, ins: Instr, tile: tuple[int, int]) -> None:
    """The crossbar an mvm reads holds a tile of its shape: the last write before it (the
    text runs straight through) programmed one."""
    xb, held = ins.attr("xb"), c.tiles.get(ins.attr("xb"))
    if held is None:
        _fail(ins, f"mvm reads crossbar {xb}, which no write before it programs")
    if held != tile:
        _fail(ins, f"mvm reads a {tile[0]}x{tile[1]} tile of crossbar {xb}, whose last write "
                   f"programs {held[0]}x{held[1]}")


def _combine(c: _Ctx, ins: Instr) -> None:
    dst, proj = c.dst(ins), c.src(ins)
    levels_ref, scale_ref = ins.operands[2:]
    levels, scale = c.shape(levels_ref), c.shape(scale_ref)
    if len(levels) != 2 or min(levels) < 1 or scale != levels[1:]:
        _fail(ins, f"levels {levels_ref} {list(levels)} and scale {scale_ref} {list(scale)} "
                   "are not [J, M] and [M]")
    j, m = levels
    _expect_rank(ins, ins.operands[1], proj, range(1, limits.MAX_RANK + 1))
    _expect_rank(ins, ins.operands[0], dst, range(1, limits.MAX_RANK + 1))
    if proj[-1] != j or dst[-1] != m or math.prod(proj) // j != math.prod(dst) // m:
        _fail(ins, f"{ins.operands[1]} {list(proj)} @ {levels_ref} {list(levels)} does not "
                   f"give {ins.operands[0]} {list(dst)}")
    unit, bits = ins.attr("unit"), ins.attr("bits")
    if unit < 1 or j % unit:
        _fail(ins, f"unit {unit} does not divide the {j} rows of {levels_ref}")
    low, high = COMBINE_BITS
    if not low <= bits <= high:
        _fail(ins, f"bits {bits} is out of range ({low}..{high})")
    data, qmax = _finite_blob(c, ins, levels_ref), 2 ** (bits - 1) - 1
    if (np.rint(data) != data).any() or (np.abs(data) > qmax).any():
        _fail(ins, f"levels {levels_ref} must be integers within +-{qmax} ({bits} bits)")


def _dmatmul(c: _Ctx, ins: Instr) -> None:
    """src [B, V.., K] (a buffer) @ weight [K, M] (+ bias [M]) gives dst [B, V.., M]; the
    weight and bias are finite."""
    dst_ref, src_ref, w_ref = ins.operands[:3]
    if src_ref[0] != "%":
        _fail(ins, f"source {src_ref} must be a buffer")
    src, dst, w = c.src(ins), c.dst(ins), c.shape(w_ref)
    if len(w) != 2 or min(w) < 1:
        _fail(ins, f"weight {w_ref} {list(w)} is not [K, M]")
    if len(ins.operands) > 3 and c.shape(ins.operands[3]) != w[1:]:
        _fail(ins, f"bias {ins.operands[3]} {list(c.shape(ins.operands[3]))} is not [M] for "
                   f"weight {w_ref} {list(w)}")
    _expect_rank(ins, src_ref, src, range(2, limits.MAX_RANK + 1))
    _expect_rank(ins, dst_ref, dst, range(2, limits.MAX_RANK + 1))
    if (src[-1], dst[-1], dst[0]) != (w[0], w[1], src[0]) or \
            math.prod(dst[1:-1]) != math.prod(src[1:-1]):
        _fail(ins, f"{src_ref} {list(src)} @ {w_ref} {list(w)} does not give {dst_ref} "
                   f"{list(dst)}")
    for ref in ins.operands[2:]:
        _finite_blob(c, ins, ref)


# --- sliding windows -------------------------------------------------------------------------

def _window_attrs(c: _Ctx, ins: Instr) -> tuple[list, list, list, list, tuple]:
    """kernel, strides, pads, dilations (checked against each other and the source's rank)
    and the source's shape."""
    k, s, p, d = (list(ins.attr(a)) for a in ("kernel", "strides", "pads", "dilations"))
    n, src = len(k), c.src(ins)
    if n < 1 or len(s) != n or len(d) != n or len(p) != 2 * n:
        _fail(ins, f"kernel, strides, dilations need one value per spatial axis and pads two; "
                   f"got {len(k)}, {len(s)}, {len(d)} and {len(p)}")
    if min(k + s + d) < 1 or min(p) < 0:
        _fail(ins, "kernel, strides and dilations must be >= 1 and pads >= 0")
    _expect_rank(ins, ins.operands[1], src, range(n + 2, n + 3))
    extent = [(k[i] - 1) * d[i] + 1 for i in range(n)]
    for i in range(n):
        if src[2 + i] + p[i] + p[n + i] < extent[i]:
            _fail(ins, f"the window ({extent[i]}) is larger than the padded axis {i + 2} "
                       f"({src[2 + i] + p[i] + p[n + i]})")
    return k, s, p, d, src


def _padded_within_limits(ins: Instr, src: tuple, widths: list[tuple[int, int]]) -> None:
    """The runtime's padded copy of ``src`` [B, C, *S] stays within ``limits.MAX_ELEMENTS``."""
    padded = math.prod(src[:2]) * math.prod(a + b + e for a, (b, e) in zip(src[2:], widths))
    if padded > limits.MAX_ELEMENTS:
        _fail(ins, f"the padded source would hold {padded} elements (at most "
                   f"{limits.MAX_ELEMENTS})")


def _im2col(c: _Ctx, ins: Instr) -> None:
    k, s, p, d, src = _window_attrs(c, ins)
    n = len(k)
    out = [(src[2 + i] + p[i] + p[n + i] - (k[i] - 1) * d[i] - 1) // s[i] + 1 for i in range(n)]
    _expect_shape(ins, c.dst(ins), (src[0], math.prod(out), src[1] * math.prod(k)))
    _padded_within_limits(ins, src, [(p[i], p[n + i]) for i in range(n)])
    _perm_attr(ins, src[1] * math.prod(k), "patch positions")


def _perm_attr(ins: Instr, n: int, what: str) -> None:
    """An optional ``perm`` attribute is a permutation of 0..n-1."""
    perm = ins.attr("perm")
    if perm is not None and sorted(perm) != list(range(n)):
        _fail(ins, f"perm must be a permutation of the {n} {what} (0..{n - 1})")


def _pool(c: _Ctx, ins: Instr) -> None:
    k, s, p, d, src = _window_attrs(c, ins)
    n, dst = len(k), c.dst(ins)
    flags = [key for key in ("ceil", "count_pad") if key in OPCODES[ins.op].attrs]
    if any(ins.attr(key) not in (0, 1) for key in flags):
        _fail(ins, f"{' and '.join(flags)} must be 0 or 1")
    _expect_rank(ins, ins.operands[0], dst, range(n + 2, n + 3))
    spans = [src[2 + i] + p[i] + p[n + i] - (k[i] - 1) * d[i] - 1 for i in range(n)]
    low = [span // s[i] + 1 for i, span in enumerate(spans)]
    high = [-(-span // s[i]) + 1 for i, span in enumerate(spans)] if ins.attr("ceil") else low
    if dst[:2] != src[:2] or not all(lo <= o <= hi for lo, o, hi in zip(low, dst[2:], high)):
        want = list(src[:2]) + [f"{lo}..{hi}" if lo != hi else lo for lo, hi in zip(low, high)]
        _fail(ins, f"{ins.operands[0]} has shape {list(dst)}; the pooling gives {want}")
    ends = [max(p[n + i], (dst[2 + i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 - src[2 + i] - p[i])
            for i in range(n)]
    _padded_within_limits(ins, src, [(p[i], ends[i]) for i in range(n)])


# --- data movement and vector ops ------------------------------------------------------------

def _unpatch(c: _Ctx, ins: Instr) -> None:
    src, dst = c.src(ins), c.dst(ins)
    _expect_rank(ins, ins.operands[1], src, range(3, 4))
    _expect_rank(ins, ins.operands[0], dst, range(2, limits.MAX_RANK + 1))
    if dst[:2] != (src[0], src[2]) or math.prod(dst[2:]) != src[1]:
        _fail(ins, f"{ins.operands[0]} {list(dst)} is not [B, M, *S] of {ins.operands[1]} "
                   f"{list(src)} = [B, P, M] with prod(S) = P")
    _perm_attr(ins, src[2], "columns")


def _reshape(c: _Ctx, ins: Instr) -> None:
    src, dst = c.src(ins), c.dst(ins)
    if math.prod(src) != math.prod(dst):
        _fail(ins, f"{ins.operands[1]} {list(src)} and {ins.operands[0]} {list(dst)} hold "
                   "different numbers of elements")


def _transpose(c: _Ctx, ins: Instr) -> None:
    src, perm = c.src(ins), ins.attr("perm")
    if sorted(perm) != list(range(len(src))):
        _fail(ins, f"perm {list(perm)} is not a permutation of the {len(src)} axes of "
                   f"{ins.operands[1]}")
    _expect_shape(ins, c.dst(ins), tuple(src[i] for i in perm))


def _permute(c: _Ctx, ins: Instr) -> None:
    """dst has src's shape; the blob is a permutation of 0..n-1, n src's last axis."""
    src, perm_ref = c.src(ins), ins.operands[2]
    _expect_rank(ins, ins.operands[1], src, range(1, limits.MAX_RANK + 1))
    perm = c.blobs[perm_ref[1:]].data
    if perm.ndim != 1 or not np.array_equal(np.sort(perm), np.arange(src[-1])):
        _fail(ins, f"{perm_ref} is not a permutation of 0..{src[-1] - 1} (the last axis of "
                   f"{ins.operands[1]})")
    _expect_shape(ins, c.dst(ins), src)


def _concat(c: _Ctx, ins: Instr) -> None:
    dst = c.dst(ins)
    axis = _axis(ins, len(dst))
    srcs = [c.shape(r) for r in ins.operands[1:]]
    if any(len(s) != len(dst) or s[:axis] + s[axis + 1:] != dst[:axis] + dst[axis + 1:]
           for s in srcs) or sum(s[axis] for s in srcs) != dst[axis]:
        _fail(ins, f"sources {', '.join(str(list(s)) for s in srcs)} do not join along axis "
                   f"{axis} into {ins.operands[0]} {list(dst)}")


def _pad(c: _Ctx, ins: Instr) -> None:
    src, dst, pads, mode = c.src(ins), c.dst(ins), ins.attr("pads"), ins.attr("mode")
    n = len(src)
    if mode not in PAD_MODES:
        _fail(ins, f"mode {mode!r}; expected one of {', '.join(PAD_MODES)}")
    if len(pads) != 2 * n:
        _fail(ins, f"pads has {len(pads)} values; {ins.operands[1]} of rank {n} needs {2 * n}")
    for i in range(n):
        begin, end = pads[i], pads[n + i]
        kept = src[i] - max(-begin, 0) - max(-end, 0)  # negative pads crop
        if kept < (1 if mode != "constant" and max(begin, end) > 0 else 0):
            _fail(ins, f"pads crop axis {i} of size {src[i]} to {kept}")
    _expect_shape(ins, dst, tuple(src[i] + pads[i] + pads[n + i] for i in range(n)))


def _same_shape(c: _Ctx, ins: Instr) -> None:
    _expect_shape(ins, c.dst(ins), c.src(ins))


def _softmax(c: _Ctx, ins: Instr) -> None:
    _same_shape(c, ins)
    _axis(ins, len(c.src(ins)))


def _lrn(c: _Ctx, ins: Instr) -> None:
    _same_shape(c, ins)
    src, size = c.src(ins), ins.attr("size")
    _expect_rank(ins, ins.operands[1], src, range(2, limits.MAX_RANK + 1))
    if size < 1 or math.prod(src[:1] + src[2:]) * (src[1] + size - 1) > limits.MAX_ELEMENTS:
        _fail(ins, f"size {size} must be >= 1 and pad the channels within "
                   f"{limits.MAX_ELEMENTS} elements")


def _global_pool(c: _Ctx, ins: Instr) -> None:
    src = c.src(ins)
    _expect_shape(ins, c.dst(ins), src[:2] + (1,) * (len(src) - 2))


def _copy(c: _Ctx, ins: Instr) -> None:
    _broadcast(ins, [c.src(ins)], c.dst(ins))


def _broadcasting(c: _Ctx, ins: Instr) -> None:
    """The sources (two, or Where's three) broadcast to the destination."""
    _broadcast(ins, [c.src(ins, i) for i in range(1, len(ins.operands))], c.dst(ins))


def _gelu(c: _Ctx, ins: Instr) -> None:
    _same_shape(c, ins)
    if ins.attr("approximate") not in ("none", "tanh"):
        _fail(ins, f"approximate {ins.attr('approximate')!r}; expected \"none\" or \"tanh\"")


def _layernorm(c: _Ctx, ins: Instr) -> None:
    _same_shape(c, ins)
    src = c.src(ins)
    axis = _axis(ins, len(src))
    for ref in ins.operands[2:]:
        shape = c.shape(ref)
        try:
            ok = len(shape) <= len(src) - axis and \
                np.broadcast_shapes(shape, src[axis:]) == src[axis:]
        except ValueError:
            ok = False
        if not ok:
            _fail(ins, f"{ref} {list(shape)} does not broadcast to the normalised axes "
                       f"{list(src[axis:])}")


def _reduce(c: _Ctx, ins: Instr) -> None:
    src, axes, keep = c.src(ins), ins.attr("axes"), ins.attr("keepdims")
    if ins.op in ("argmax", "argmin") and len(axes) != 1:
        _fail(ins, f"{ins.op} takes exactly one axis, got axes {list(axes)}")
    if keep not in (0, 1) or len(set(axes)) != len(axes) or \
            not all(0 <= a < len(src) for a in axes):
        _fail(ins, f"axes {list(axes)} must be distinct axes of {ins.operands[1]} "
                   f"{list(src)}, keepdims 0 or 1")
    want = tuple(1 if i in axes else d for i, d in enumerate(src)) if keep else \
        tuple(d for i, d in enumerate(src) if i not in axes)
    _expect_shape(ins, c.dst(ins), want)


def _slice(c: _Ctx, ins: Instr) -> None:
    src = c.src(ins)
    parts = [ins.attr(k) for k in ("starts", "ends", "steps")]
    if any(len(p) != len(src) for p in parts) or 0 in parts[2] or any(
            not (0 <= s <= d and -1 <= e <= d) for s, e, d in zip(parts[0], parts[1], src)):
        _fail(ins, f"starts, ends and steps need one entry per axis of {ins.operands[1]} "
                   f"{list(src)}, within it, steps non-zero")
    _expect_shape(ins, c.dst(ins), tuple(len(range(s, e, st)) for s, e, st in zip(*parts)))


def _gather(c: _Ctx, ins: Instr) -> None:
    data, idx = c.src(ins, 1), c.src(ins, 2)
    axis = _axis(ins, len(data))
    if ins.operands[2][0] == "@":
        values = _finite_blob(c, ins, ins.operands[2])
        if ((values != np.rint(values)) | (values < 0) | (values >= data[axis])).any():
            _fail(ins, f"{ins.operands[2]} holds indices that are not integers in "
                       f"[0, {data[axis]})")
    _expect_shape(ins, c.dst(ins), data[:axis] + idx + data[axis + 1:])


def _interp(c: _Ctx, ins: Instr) -> None:
    """An axis of the source; index and weight blobs [out, taps] alike, at least one of
    each, indices integers within the axis; the destination the source with ``out`` there."""
    src, idx, w, axis = c.src(ins), c.src(ins, 2), c.src(ins, 3), ins.attr("axis")
    if not 0 <= axis < len(src):
        _fail(ins, f"axis {axis} is not an axis of {ins.operands[1]} {list(src)} (0 to "
                   f"{len(src) - 1})")
    if len(idx) != 2 or idx != w or min(idx) < 1:
        _fail(ins, f"{ins.operands[2]} {list(idx)} and {ins.operands[3]} {list(w)} must be "
                   "[out, taps] alike, at least one of each")
    values = _finite_blob(c, ins, ins.operands[2])
    _finite_blob(c, ins, ins.operands[3])
    if ((values != np.rint(values)) | (values < 0) | (values >= src[axis])).any():
        _fail(ins, f"{ins.operands[2]} holds indices that are not integers in [0, {src[axis]})")
    _expect_shape(ins, c.dst(ins), src[:axis] + idx[:1] + src[axis + 1:])


def _bmm(c: _Ctx, ins: Instr) -> None:
    """a [..., M, K] (a buffer: the input side, quantized per sample) @ b [..., K, N]."""
    if ins.operands[1][0] != "%":
        _fail(ins, f"first operand {ins.operands[1]} must be a buffer (the input side; a "
                   "constant a is the weight side of (b^T a^T)^T)")
    a, b = c.src(ins, 1), c.src(ins, 2)
    for ref, shape in ((ins.operands[1], a), (ins.operands[2], b)):
        _expect_rank(ins, ref, shape, range(2, limits.MAX_RANK + 1))
    try:
        lead = np.broadcast_shapes(a[:-2], b[:-2])
    except ValueError:
        lead = None
    if lead is None or a[-1] != b[-2]:
        _fail(ins, f"{list(a)} @ {list(b)}: not [..., M, K] @ [..., K, N] with broadcasting "
                   "leading axes")
    _expect_shape(ins, c.dst(ins), tuple(lead) + (a[-2], b[-1]))


def _wbmm(c: _Ctx, ins: Instr) -> None:
    _bmm(c, ins)
    xbs = ins.attr("xbs")
    if not xbs or len(set(xbs)) != len(xbs) or not all(0 <= x < c.chip.xbars for x in xbs):
        _fail(ins, f"xbs {list(xbs)} must name distinct crossbars of the chip's "
                   f"{c.chip.xbars}")


def _nothing(c: _Ctx, ins: Instr) -> None:
    """fill, barrier, halt: no operand shapes or attribute ranges to check."""


CHECKS: dict[str, Callable[[_Ctx, Instr], None]] = {
    "write": _write, "mvm": _mvm, "combine": _combine, "dmatmul": _dmatmul, "fill": _nothing,
    "im2col": _im2col, "unpatch": _unpatch, "maxpool": _pool, "avgpool": _pool,
    "gavgpool": _global_pool, "gmaxpool": _global_pool,
    **{op: _broadcasting for op in BROADCASTING}, **{op: _same_shape for op in ELEMENTWISE},
    "softmax": _softmax, "lrn": _lrn,
    "reshape": _reshape, "transpose": _transpose, "concat": _concat, "pad": _pad,
    "copy": _copy, "permute": _permute, "barrier": _nothing, "halt": _nothing,
    "gelu": _gelu, "layernorm": _layernorm, "rmsnorm": _layernorm, "logsoftmax": _softmax,
    "slice": _slice, "gather": _gather, "interp": _interp, "dbmm": _bmm, "wbmm": _wbmm,
    **{op: _reduce for op in REDUCTIONS},
}


# --- the whole program -----------------------------------------------------------------------

def _buffer_problem(b) -> str | None:
    problem = limits.tensor_problem(b.type)
    if not problem and not (0 <= b.offset <= limits.MAX_OFFSET and 0 <= b.range < np.inf):
        problem = f"offset {b.offset} or range {b.range} is out of range"
    return problem and f"buffer %{b.name}: {problem}"


def _check_header(p: Program) -> None:
    """What the parser checks line by line, for programs built in memory."""
    geometry = limits.geometry_problem(p.chip)
    problems = [geometry[1] if geometry else None, limits.batch_problem(p.batch)]
    problems += [_buffer_problem(b) for b in p.buffers]
    problem = next((x for x in problems if x), None)
    if problem:
        raise IsaError(problem)


def _check_names(p: Program) -> None:
    for kind, names in (("buffer", [b.name for b in p.buffers]),
                        ("blob", [b.name for b in p.blobs]),
                        ("input", [q.name for q in p.inputs]),
                        ("output", [q.name for q in p.outputs])):
        if dup := _dupes(names):
            raise IsaError(f"duplicate {kind} name(s): {', '.join(sorted(dup))}")


def _check_ports(p: Program) -> None:
    buffers = p.buffer_map()
    for port in p.ports:
        if port.buffer not in buffers:
            raise IsaError(f"{port.kind} {port.name!r} binds undeclared buffer %{port.buffer}")
        if (port.ids or port.bools) and port.kind != "input":
            raise IsaError(f"output {port.name!r}: only an input can hold token ids (ids=) "
                           "or booleans (bools=); an output may say ints=1 (integers held "
                           "as float32, returned as int64)")
    if not p.outputs:
        raise IsaError("the program has no output")
    written = {ins.operands[0] for ins in p.text if OPCODES[ins.op].operands[:1] == ("dst",)}
    written |= {"%" + q.buffer for q in p.inputs}
    for port in p.outputs:
        if "%" + port.buffer not in written:
            raise IsaError(f"output {port.name!r}: no instruction writes %{port.buffer}")


def _check_halt(p: Program) -> None:
    halts = [ins for ins in p.text if ins.op == "halt"]
    if not p.text or p.text[-1].op != "halt":
        raise IsaError("the text section must end with halt")
    if len(halts) > 1:
        _fail(halts[0], "halt must be the last instruction (it ends the program)")


_REF_KIND = {"dst": "%", "blob": "@"}  # operand kinds that take only buffers or only blobs


def _check_form(c: _Ctx, ins: Instr) -> None:
    """Operands (count, kind, declared) and attribute names as the opcode table says (the
    parser checks this as it reads; programs built in memory are checked here)."""
    spec = OPCODES[ins.op]
    kinds = spec.operands
    least, most = spec.arity
    count_ok = least <= len(ins.operands) and (most is None or len(ins.operands) <= most)
    if not count_ok or not spec.required <= {k for k, _ in ins.attrs} <= set(spec.attrs):
        _fail(ins, f"expected operands ({', '.join(kinds)}) and attributes "
                   f"({', '.join(spec.attrs)})")
    for i, ref in enumerate(ins.operands):
        if ref[1:] not in (c.buffers if ref[0] == "%" else c.blob_shapes):
            _fail(ins, f"{ref} is not declared")
        need = _REF_KIND.get(spec.kind(i))
        if need and ref[0] != need:
            _fail(ins, f"operand {i + 1} ({ref}) must be a {'buffer' if need == '%' else 'blob'}")


def same_for_every_sample(data: np.ndarray) -> bool:
    """Whether a blob's rows along its leading axis are all alike, bit for bit (a constant
    expanded over a fixed batch, as a class token folded at ``--batch 4``): read along the
    batch, it is the same for every sample, and its first row serves a run of any size."""
    if data.ndim < 1 or len(data) < 1:
        return False
    rows = np.ascontiguousarray(data).view(np.uint8).reshape(len(data), -1)
    return bool(np.all(rows == rows[:1]))  # bit for bit: 0.0 and -0.0 differ (1 / x)


def rows_differ(data: np.ndarray) -> bool:
    """Whether a blob has more than one row along its leading axis and they are not all
    alike (``same_for_every_sample``): read along the batch, it gives each sample of a
    compiled batch a row of its own."""
    return data.ndim >= 1 and len(data) > 1 and not same_for_every_sample(data)


def _blob_along_batch(c: _Ctx, ins: Instr, rank: int) -> bool:
    """A blob source with the destination's rank and more than one row along the batch."""
    return any(r[0] == "@" and len(c.shape(r)) == rank and c.shape(r)[0] != 1
               for r in ins.operands[1:])


def _rows_along_batch(c: _Ctx, ins: Instr, rank: int) -> bool:
    """A blob source with the destination's rank and rows along the batch that differ (a
    broadcasting op reads alike rows as one: ``runtime.semantics``)."""
    return any(len(c.shape(r)) == rank and c.batch_rows(r) for r in ins.operands[1:])


# opcode -> does this (verified) instruction mix samples, given the destination's rank
_MIXES: dict[str, Callable[[_Ctx, Instr, int], bool]] = {
    "transpose": lambda c, ins, rank: ins.attr("perm")[0] != 0,
    "concat": lambda c, ins, rank: ins.attr("axis") % rank == 0 or any(
        c.batch_rows(r) for r in ins.operands[1:]),
    **{op: lambda c, ins, rank: ins.attr("axis") % rank == 0
       for op in ("softmax", "logsoftmax")},
    "pad": lambda c, ins, rank: ins.attr("pads")[0] != 0 or ins.attr("pads")[rank] != 0,
    **{op: _rows_along_batch for op in BROADCASTING},
    **{op: _blob_along_batch for op in ("copy", "dbmm", "wbmm")},
    **{op: lambda c, ins, rank: ins.attr("axis") % rank == 0 for op in ("layernorm", "rmsnorm")},
    **{op: lambda c, ins, rank: 0 in ins.attr("axes") for op in REDUCTIONS},
    "slice": lambda c, ins, rank: (ins.attr("starts")[0], ins.attr("ends")[0],
                                   ins.attr("steps")[0]) != (0, c.src(ins)[0], 1),
    "interp": lambda c, ins, rank: ins.attr("axis") == 0,
    "gather": lambda c, ins, rank: ins.attr("axis") % len(c.src(ins)) == 0
    and ins.operands[1][0] == "%",
}


def batch_mixing(p: Program) -> str | None:
    """Why the verified ``p`` cannot run any multiple of its batch in one pass (a buffer that
    does not lead with the batch, an instruction that mixes samples), or None."""
    c = _Ctx(p)
    for name, shape in c.buffers.items():
        if not shape or shape[0] != p.batch:
            return f"buffer %{name} {list(shape)} does not lead with the batch {p.batch}"
    return sample_mixing(p, c)


def sample_mixing(p: Program, c: _Ctx | None = None) -> str | None:
    """The first instruction of the verified ``p`` whose result for a sample depends on the
    other samples of its batch (a reduction or a running sum over the batch axis, ...), as
    a message, or None: such a program computes something else on passes of its batch
    than on all of a run's samples at once."""
    c = c or _Ctx(p)
    for i, ins in enumerate(p.text):
        mixes = _MIXES.get(ins.op)
        if mixes and mixes(c, ins, len(c.dst(ins))):
            return f"line {ins.line or text_line(p, i)}: {ins.op} mixes samples of the batch"
    return None


def _live_ranges(p: Program) -> dict[str, tuple[int, int]]:
    """Buffer -> (first, last) instruction index touching it; inputs live from before the
    first instruction, outputs until after the last."""
    span: dict[str, tuple[int, int]] = {}
    for i, ins in enumerate(p.text):
        for ref in ins.operands:
            if ref[0] == "%":
                first, _ = span.get(ref[1:], (i, i))
                span[ref[1:]] = (first, i)
    end = len(p.text)
    for port in p.ports:
        first, last = span.get(port.buffer, (end, -1))
        span[port.buffer] = (-1, last) if port.kind == "input" else (first, end)
    return span


def _check_scratchpad(p: Program) -> None:
    """Two buffers live at the same time must not share scratchpad bytes (their offsets). A
    program whose offsets are all 0 declares no layout (hand-written programs) and passes."""
    buffers = p.buffer_map()
    if all(b.offset == 0 for b in p.buffers):
        return
    spans = sorted((first, last, name) for name, (first, last) in _live_ranges(p).items()
                   if limits.tensor_bytes(buffers[name].type) > 0)
    active: list[tuple[int, int, int, str]] = []  # (last, start byte, end byte, name)
    for first, last, name in spans:
        lo = buffers[name].offset
        hi = lo + limits.tensor_bytes(buffers[name].type)
        active = [a for a in active if a[0] >= first]
        for _, a_lo, a_hi, other in active:
            if lo < a_hi and a_lo < hi:
                raise IsaError(f"buffers %{other} and %{name} are live at the same time but "
                               f"overlap in the scratchpad (bytes {max(lo, a_lo)}.."
                               f"{min(hi, a_hi)})")
        active.append((last, lo, hi, name))


def verify(p: Program) -> None:
    """Raise IsaError (with the line where there is one) unless ``p`` is consistent."""
    _check_header(p)
    _check_names(p)
    _check_halt(p)
    c = _Ctx(p)
    for ins in p.text:
        _check_form(c, ins)
        CHECKS[ins.op](c, ins)
    _check_ports(p)
    _check_scratchpad(p)
    if p.batch_free and (why := batch_mixing(p)):
        raise IsaError(f"the header says 'batch {p.batch} free' but {why}")
