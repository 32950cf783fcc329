"""Result-shape rules of the IR op kinds (``compiler.ops``): one small function per rule.

A rule takes the operands' shapes in operand order (an optional operand left out is absent),
the op's attributes, and the shape its result declares; it returns the shape the result must
have, or raises ``ShapeError`` when the operands disagree with each other or with the
attributes. Its docstring is the rule, as the verifier quotes it. A rule reads ``declared``
only where the result is not a function of the operands, and then checks it: reshape (the
declared shape is the target), unpatch (the declared spatial size), copy (a broadcast to the
declared shape) and ceil-mode pooling (ONNX opsets disagree on a last window that would start
in the right padding).
"""

from __future__ import annotations

from math import prod

import numpy as np

from isa import windows as win

Shape = tuple[int, ...]


class ShapeError(ValueError):
    """The operands' shapes disagree with each other or with the attributes."""


def fmt(shape) -> str:
    return f"[{','.join(map(str, shape))}]"


def same(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """y has x's shape"""
    return ins[0]


def broadcast(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """the operands broadcast against each other (numpy rules)"""
    try:
        return tuple(np.broadcast_shapes(*ins))
    except ValueError:
        raise ShapeError(f"{' and '.join(map(fmt, ins))} do not broadcast") from None


def _bias(ins: list[Shape], y: Shape, at: int) -> None:
    """An optional bias operand ``ins[at]`` must broadcast to y without growing it."""
    if len(ins) > at and broadcast([y, ins[at]], {}, y) != y:
        raise ShapeError(f"bias {fmt(ins[at])} does not broadcast to the result {fmt(y)}")


def _window(x: Shape, a: dict) -> list[int]:
    """The floor-mode output size of the window attributes over x [B, C, *S]."""
    n = len(x) - 2
    sizes = [len(a["kernel"]), len(a["strides"]), len(a["dilations"]), len(a["pads"]) // 2]
    if n < 1 or sizes != [n] * 4 or len(a["pads"]) != 2 * n:
        raise ShapeError(f"x {fmt(x)} has {max(n, 0)} spatial axes; kernel, strides, "
                         "dilations and half the pads must have as many entries")
    out = win.out_size(x[2:], a["kernel"], a["strides"], a["pads"], a["dilations"])
    if min(out) < 1:
        raise ShapeError(f"the kernel {fmt(a['kernel'])} does not fit x {fmt(x)} padded")
    return out


def conv(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """x [B, C, *S], w [M, C/group, *kernel], b [M] -> [B, M, *out];
    out = (S + pads - dilations*(kernel-1) - 1) // strides + 1"""
    (x, w), g = ins[:2], a["group"]
    if len(w) != len(x) or w[1] * g != x[1] or w[0] % g or tuple(w[2:]) != tuple(a["kernel"]):
        raise ShapeError(f"x {fmt(x)} and weight {fmt(w)} disagree (group {g}, kernel "
                         f"{fmt(a['kernel'])})")
    y = (x[0], w[0]) + tuple(_window(x, a))
    if len(ins) > 2 and ins[2] != (w[0],):
        raise ShapeError(f"bias {fmt(ins[2])} is not [{w[0]}]")
    return y


def pool(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """x [B, C, *S] -> [B, C, *out]; out as for conv, rounded up with ceil (less a last window
    that would start in the right padding, as ONNX opset 22 counts it)"""
    x = ins[0]
    out = _window(x, a)
    if not a["ceil"]:
        return x[:2] + tuple(out)
    up, short = win.ceil_sizes(x[2:], a["kernel"], a["strides"], a["pads"], a["dilations"])
    return x[:2] + (tuple(short) if tuple(declared[2:]) == tuple(short) else tuple(up))


def global_pool(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """x [B, C, *S] -> [B, C, 1, ...]"""
    return ins[0][:2] + (1,) * (len(ins[0]) - 2)


def matmul(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """x [..., K] @ w [K, M] (+ b broadcasting to the result) -> [..., M]"""
    x, w = ins[:2]
    if len(w) != 2 or not x or x[-1] != w[0]:
        raise ShapeError(f"x {fmt(x)} and weight {fmt(w)} disagree on K")
    y = x[:-1] + (w[1],)
    _bias(ins, y, 2)
    return y


def xbar_matmul(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """as matmul, and every tile [r0:r1, c0:c1] lies inside w [K, M]"""
    y = matmul(ins, a, declared)
    k, m = ins[1]
    outside = [t for t in a["tiles"] if not (t[1] <= k and t[3] <= m)]
    if outside:
        raise ShapeError(f"tile {fmt(outside[0])} lies outside the weight [{k},{m}]")
    return y


def batchnorm(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """x [B, C, ...] and scale, bias, mean, var [C] -> x's shape"""
    x = ins[0]
    if len(x) < 2 or any(p != (x[1],) for p in ins[1:]):
        raise ShapeError(f"parameters {', '.join(map(fmt, ins[1:]))} are not [C] of x {fmt(x)}")
    return x


def reshape(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """the declared shape, holding as many elements as x"""
    if prod(ins[0]) != prod(declared):
        raise ShapeError(f"x {fmt(ins[0])} has {prod(ins[0])} elements, the declared "
                         f"{fmt(declared)} {prod(declared)}")
    return declared


def copy(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """x broadcast to the declared shape"""
    if broadcast([ins[0], declared], a, declared) != tuple(declared):
        raise ShapeError(f"x {fmt(ins[0])} does not broadcast to {fmt(declared)}")
    return tuple(declared)


def transpose(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """x's axes in the order perm"""
    x, perm = ins[0], list(a["perm"])
    if sorted(perm) != list(range(len(x))):
        raise ShapeError(f"perm {fmt(perm)} is not a permutation of x {fmt(x)}'s axes")
    return tuple(x[p] for p in perm)


def concat(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """operands of one rank, equal but along axis, joined along axis"""
    axis, first = a["axis"], ins[0]
    if not 0 <= axis < len(first) or any(len(s) != len(first) or
                                         s[:axis] + s[axis + 1:] != first[:axis] + first[axis + 1:]
                                         for s in ins):
        raise ShapeError(f"{', '.join(map(fmt, ins))} do not join along axis {axis}")
    return first[:axis] + (sum(s[axis] for s in ins),) + first[axis + 1:]


def pad(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """x grown by pads (begins, then ends; negative crops)"""
    x, pads = ins[0], a["pads"]
    n = len(x)
    y = tuple(x[i] + pads[i] + pads[n + i] for i in range(n)) if len(pads) == 2 * n else ()
    if len(pads) != 2 * n or min(y, default=0) < 0:
        raise ShapeError(f"pads {fmt(pads)} do not fit x {fmt(x)}")
    return y


def axis(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """x's shape, with axis one of x's axes"""
    if not 0 <= a["axis"] < len(ins[0]):
        raise ShapeError(f"axis {a['axis']} is not an axis of x {fmt(ins[0])}")
    return ins[0]


def im2col(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """x [B, C, *S] -> patches [B, prod(out), C*prod(kernel)], out as for conv"""
    x = ins[0]
    return (x[0], prod(_window(x, a)), x[1] * prod(a["kernel"]))


def unpatch(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """x [B, P, M] -> [B, M, *S], S the declared spatial shape with prod(S) = P"""
    x = ins[0]
    if len(x) != 3 or len(declared) < 3 or prod(declared[2:]) != x[1]:
        raise ShapeError(f"x {fmt(x)} is not [B, P, M] with P = prod of the declared "
                         f"{fmt(declared)}'s spatial axes")
    return (x[0], x[2]) + tuple(declared[2:])


def basis_project(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """x [..., groups*unit*copies], tile [unit*copies, N*copies] -> [..., groups*N*copies]"""
    x, tile = ins
    rows = a["unit"] * a["copies"]
    if len(tile) != 2 or tile[0] != rows or not x or x[-1] != a["groups"] * rows:
        raise ShapeError(f"x {fmt(x)} and tile {fmt(tile)} disagree with unit={a['unit']} "
                         f"copies={a['copies']} groups={a['groups']}")
    return x[:-1] + (a["groups"] * tile[1],)


def combine(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """proj [..., J], levels [J, M], scale [M] (+ b broadcasting to the result) -> [..., M]"""
    proj, levels, scale = ins[:3]
    if len(levels) != 2 or not proj or proj[-1] != levels[0] or scale != levels[1:]:
        raise ShapeError(f"projections {fmt(proj)}, levels {fmt(levels)} and scale "
                         f"{fmt(scale)} disagree")
    y = proj[:-1] + (levels[1],)
    _bias(ins, y, 3)
    return y


def dynmatmul(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """a [..., M, K] @ b [..., K, N], both of rank >= 2, the leading axes broadcasting (numpy
    matmul) -> [..., M, N]"""
    x, w = ins
    if len(x) < 2 or len(w) < 2 or x[-1] != w[-2]:
        raise ShapeError(f"a {fmt(x)} and b {fmt(w)} are not [..., M, K] and [..., K, N]")
    return broadcast([x[:-2], w[:-2]], a, declared) + (x[-2], w[-1])


def layernorm(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """x normalised over its axes from axis on; scale and bias broadcast to those axes"""
    x, axis = ins[0], a["axis"]
    if not 0 <= axis < len(x):
        raise ShapeError(f"axis {axis} is not an axis of x {fmt(x)}")
    for p in ins[1:]:
        if len(p) > len(x) - axis or broadcast([x[axis:], p], a, declared) != x[axis:]:
            raise ShapeError(f"parameter {fmt(p)} does not broadcast to x {fmt(x)}'s "
                             f"normalised axes {fmt(x[axis:])}")
    return x


def interp(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """x with axis resampled: index and weight are [out, taps] alike, y has out there"""
    x, idx, w = ins
    if not 0 <= a["axis"] < len(x):
        raise ShapeError(f"axis {a['axis']} is not an axis of x {fmt(x)}")
    if len(idx) != 2 or idx != w:
        raise ShapeError(f"index {fmt(idx)} and weight {fmt(w)} must be [out, taps] alike")
    return x[:a["axis"]] + idx[:1] + x[a["axis"] + 1:]


def reduce(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """x reduced over axes (distinct axes of x), kept as size 1 with keepdims"""
    x, axes = ins[0], a["axes"]
    if len(set(axes)) != len(axes) or not all(0 <= ax < len(x) for ax in axes):
        raise ShapeError(f"axes {fmt(axes)} are not distinct axes of x {fmt(x)}")
    if a["keepdims"]:
        return tuple(1 if i in axes else d for i, d in enumerate(x))
    return tuple(d for i, d in enumerate(x) if i not in axes)


def sliced(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """range(starts[i], ends[i], steps[i]) of every axis i of x (normalized bounds, as
    slice.indices gives them: an end of -1 with a negative step runs past the front;
    steps non-zero)"""
    x = ins[0]
    parts = (a["starts"], a["ends"], a["steps"])
    if any(len(p) != len(x) for p in parts) or 0 in a["steps"]:
        raise ShapeError(f"starts, ends and steps need one entry per axis of x {fmt(x)}, "
                         "steps non-zero")
    return tuple(len(range(*slice(*t).indices(d))) if t[1] >= 0 or t[2] > 0
                 else len(range(t[0], -1, t[2])) for d, t in zip(x, zip(*parts)))


def gather(ins: list[Shape], a: dict, declared: Shape) -> Shape:
    """data [..., D_axis, ...] at indices I along axis -> data[:axis] + I + data[axis+1:]"""
    data, idx, axis = ins[0], ins[1], a["axis"]
    if not 0 <= axis < len(data):
        raise ShapeError(f"axis {axis} is not an axis of data {fmt(data)}")
    return tuple(data[:axis]) + tuple(idx) + tuple(data[axis + 1:])
