"""Sliding-window helpers shared by im2col and pooling (N spatial axes, NC* layout)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def effective(kernel, dilations) -> list[int]:
    return [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]


def windows(xp: np.ndarray, kernel, strides, dilations, out) -> np.ndarray:
    """Views [B, C, *out, *kernel] over an already padded [B, C, *S] array."""
    n = len(kernel)
    eff = effective(kernel, dilations)
    v = sliding_window_view(xp, eff, axis=tuple(range(2, 2 + n)))
    index = (slice(None), slice(None))
    index += tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out, strides))
    index += tuple(slice(None, None, d) for d in dilations)
    return v[index]


def out_size(size, kernel, strides, pads, dilations) -> list[int]:
    n = len(kernel)
    eff = effective(kernel, dilations)
    return [(size[i] + pads[i] + pads[n + i] - eff[i]) // strides[i] + 1 for i in range(n)]


def pad_for(spatial, out, kernel, strides, pads, dilations) -> list[tuple[int, int]]:
    """Per-axis (begin, end) padding that covers every output window (ceil mode included)."""
    n = len(kernel)
    eff = effective(kernel, dilations)
    result = []
    for i in range(n):
        need = (out[i] - 1) * strides[i] + eff[i]
        end = max(pads[n + i], need - spatial[i] - pads[i])
        result.append((pads[i], end))
    return result


def im2col(x: np.ndarray, kernel, strides, pads, dilations) -> np.ndarray:
    """[B, C, *S] -> patches [B, prod(out S), C*prod(kernel)], channel-major, zero padded."""
    n = len(kernel)
    out = out_size(x.shape[2:], kernel, strides, pads, dilations)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[n + i]) for i in range(n)])
    v = windows(xp, kernel, strides, dilations, out)  # [B, C, *out, *kernel]
    order = (0,) + tuple(range(2, 2 + n)) + (1,) + tuple(range(2 + n, 2 + 2 * n))
    return v.transpose(order).reshape(x.shape[0], -1, x.shape[1] * int(np.prod(kernel)))
