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


def ceil_sizes(size, kernel, strides, pads, dilations) -> tuple[list[int], list[int]]:
    """Ceil-mode output sizes: (every window that starts before the padded end, as onnx's
    shape inference counts them before opset 22; less a last window that would start in
    the end padding, as onnxruntime and opset 22 count them)."""
    n = len(kernel)
    eff = effective(kernel, dilations)
    up = [(size[i] + pads[i] + pads[n + i] - eff[i] + strides[i] - 1) // strides[i] + 1
          for i in range(n)]
    short = [u - ((u - 1) * strides[i] >= size[i] + pads[i]) for i, u in enumerate(up)]
    return up, short


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


def offset_views(xp: np.ndarray, kernel, strides, dilations, out, first: int = 2):
    """(offset, view [..., *out, ...]) per kernel offset over an already padded array whose
    spatial axes start at axis ``first`` ([B, C, *S]; 1 for channels last): the inputs each
    window position reads at that offset. Reductions and copies over these few large strided
    views run much faster in numpy than over the windows' small last axes."""
    for offs in np.ndindex(*kernel):
        index = tuple(slice(o * d, o * d + (m - 1) * s + 1, s)
                      for o, d, m, s in zip(offs, dilations, out, strides))
        yield offs, xp[(slice(None),) * first + index]


# One channel with at most this many kernel offsets goes offset by offset (its patches are
# the offsets in order), a copy per offset: 3x3 over 540 8x8 digits 0.18 against 0.45 ms,
# over 8 224x224 images 1.6 against 4.1; 5x5 0.95 against 1.11 (28x28) and 2.1 against 2.3;
# 7x7 (49 copies) 6.7 against 2.6 ms, so larger kernels keep the windows' copy.
ONE_CHANNEL_OFFSETS = 25


def im2col(x: np.ndarray, kernel, strides, pads, dilations) -> np.ndarray:
    """[B, C, *S] -> patches [B, prod(out S), C*prod(kernel)], channel-major, zero padded:
    always a new array (never a view of x)."""
    n = len(kernel)
    out = out_size(x.shape[2:], kernel, strides, pads, dilations)
    b, c = x.shape[:2]
    if c < kernel[-1] and not (c == 1 and int(np.prod(kernel)) <= ONE_CHANNEL_OFFSETS):
        # few channels (an RGB stem): numpy's copy loops innermost over the destination's
        # smallest stride, which is the channel axis per offset but the window's last axis here
        xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[n + i]) for i in range(n)])
        v = windows(xp, kernel, strides, dilations, out)  # [B, C, *out, *kernel]
        order = (0,) + tuple(range(2, 2 + n)) + (1,) + tuple(range(2 + n, 2 + 2 * n))
        cols = np.array(v.transpose(order), order="C")
    else:
        # channels last first, so that each offset's copy reads runs of channels instead of
        # striding across whole channel planes
        xp = np.moveaxis(x, 1, -1)
        if any(pads):
            inner = tuple(slice(pads[i], pads[i] + x.shape[2 + i]) for i in range(n))
            padded = np.zeros((b,) + tuple(s + pads[i] + pads[n + i]
                                           for i, s in enumerate(x.shape[2:])) + (c,), x.dtype)
            padded[(slice(None),) + inner] = xp
            xp = padded
        cols = np.empty((b, *out, c, *kernel), x.dtype)
        for offs, view in offset_views(xp, kernel, strides, dilations, out, first=1):
            cols[(Ellipsis,) + offs] = view
    return cols.reshape(b, -1, c * int(np.prod(kernel)))
