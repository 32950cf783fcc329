"""ONNX ConvTranspose as a convolution the crossbars run.

A transposed convolution is a stride-1 convolution of the input spread by the strides
(stride - 1 zeros between neighbours) and padded by the kernel's reach less the pads, with
the kernel flipped and its two channel axes swapped within each group. ``plan`` gives the
spreading of each spatial axis as ``interp`` taps (``isa.kernels.interp``: one tap, weight
one or zero; a negative padding crops), and the convolution's weight and attributes. The
compiler lowers ConvTranspose by it (``normalize``), and the reference evaluator computes it
by it (``onnx_reference``: onnx 1.23's own fails on groups and output_shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Plan:
    spreads: list  # (axis, index [out, 1], weight [out, 1]) of each axis to spread, as
    # ``resize.plan``'s steps (axes of the whole input: spatial axis i is 2 + i)
    weight: np.ndarray  # the convolution's [M, C / group, *kernel]
    dilations: list[int]
    group: int
    out_spatial: list[int]  # the result's spatial shape


def insert_zeros(n_in: int, stride: int, before: int, after: int) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """``interp`` taps spreading an axis of n_in by ``stride`` with ``before`` and ``after``
    zeros at its ends (negative: that many positions cropped): weight 1 on input i at output
    before + i stride, 0 elsewhere."""
    n_out = before + (n_in - 1) * stride + 1 + after
    o = np.arange(n_out) - before
    hit = (o >= 0) & (o % stride == 0) & (o // stride < n_in)
    return np.where(hit, o // stride, 0)[:, None], hit.astype(np.float64)[:, None]


def pads(attrs: dict, x_sp, k_eff, strides, out_pad) -> list[int]:
    """[begin..., end...] pads: ``attrs``' own, or derived from output_shape or auto_pad as
    the ONNX spec derives them, and as onnxruntime where the spec is silent: auto_pad's
    padding is never negative (a stride past the kernel's reach), and an output_shape past
    the natural size grows the end alone."""
    n = len(x_sp)
    auto, shape = attrs.get("auto_pad") or "NOTSET", attrs.get("output_shape")
    if shape is None and auto in ("SAME_UPPER", "SAME_LOWER"):
        shape = [x * s for x, s in zip(x_sp, strides)]
    if shape is not None:
        total = [s * (x - 1) + p + k - o for s, x, p, k, o in
                 zip(strides, x_sp, out_pad, k_eff, list(shape)[-n:])]
        if attrs.get("output_shape") is None:
            total = [max(t, 0) for t in total]
        small, big = [t // 2 for t in total], [t - t // 2 for t in total]
        begin, end = (small, big) if auto == "SAME_UPPER" else (big, small)
        return [0 if t < 0 else b for b, t in zip(begin, total)] + \
            [t if t < 0 else e for e, t in zip(end, total)]
    return [0] * 2 * n if auto == "VALID" else list(attrs.get("pads") or [0] * 2 * n)


def plan(x_sp, w: np.ndarray, attrs: dict) -> Plan:
    """ConvTranspose of an input with spatial shape ``x_sp`` by weight ``w`` [C, M / group,
    *kernel] with ONNX attributes ``attrs`` (absent or None: the defaults)."""
    n, group = len(x_sp), int(attrs.get("group") or 1)
    kernel = list(w.shape[2:])
    strides = list(attrs.get("strides") or [1] * n)
    dil = list(attrs.get("dilations") or [1] * n)
    out_pad = list(attrs.get("output_padding") or [0] * n)
    k_eff = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    p = pads(attrs, x_sp, k_eff, strides, out_pad)
    spreads, out_sp = [], []
    for i in range(n):
        before, after = k_eff[i] - 1 - p[i], k_eff[i] - 1 - p[n + i] + out_pad[i]
        if strides[i] != 1 or before or after:
            spreads.append((2 + i, *insert_zeros(x_sp[i], strides[i], before, after)))
        out_sp.append(before + (x_sp[i] - 1) * strides[i] + 1 + after - k_eff[i] + 1)
    ci, co = w.shape[0] // group, w.shape[1]
    flipped = np.flip(w.reshape(group, ci, co, *kernel).swapaxes(1, 2), tuple(range(3, 3 + n)))
    return Plan(spreads, flipped.reshape(group * co, ci, *kernel).astype(np.float32), dil,
                group, out_sp)
