"""im2col and max pooling against their definitions: the windows a sliding view reads.

Both are computed offset by offset over large strided views (``isa.windows.offset_views``),
or, for few channels, over the windows themselves; every path must give exactly the patches
and maxima the definition gives, for any kernel, stride, dilation and padding, in 1-3
spatial dimensions."""

from __future__ import annotations

import numpy as np
import pytest

from isa import kernels
from isa import windows as win


def _cases(rng, count: int):
    """Random (x, kernel, strides, pads, dilations), every one with at least one output."""
    made = 0
    while made < count:
        nd = int(rng.integers(1, 4))
        kernel = tuple(int(v) for v in rng.integers(1, 4, nd))
        strides = tuple(int(v) for v in rng.integers(1, 3, nd))
        dilations = tuple(int(v) for v in rng.integers(1, 3, nd))
        pads = tuple(int(v) for v in rng.integers(0, 3, 2 * nd))
        size = tuple(int(v) for v in rng.integers(3, 9, nd))
        if min(win.out_size(size, kernel, strides, pads, dilations)) < 1:
            continue
        channels = int(rng.integers(1, 6))  # below and above the kernel's last size
        x = rng.standard_normal((int(rng.integers(1, 3)), channels) + size).astype(np.float32)
        made += 1
        yield x, kernel, strides, pads, dilations


def _windows(x, kernel, strides, pads, dilations, value=0.0):
    """[B, C, *out, *kernel]: the definition, one sliding-window view over padded x."""
    n = len(kernel)
    out = win.out_size(x.shape[2:], kernel, strides, pads, dilations)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[n + i]) for i in range(n)],
                constant_values=value)
    return win.windows(xp, kernel, strides, dilations, out)


@pytest.mark.parametrize("seed", range(4))
def test_im2col_gives_the_windows_channel_major_and_never_a_view(seed):
    for x, *window in _cases(np.random.default_rng(seed), 40):
        n = len(window[0])
        v = _windows(x, *window)
        order = (0,) + tuple(range(2, 2 + n)) + (1,) + tuple(range(2 + n, 2 + 2 * n))
        want = v.transpose(order).reshape(x.shape[0], -1, x.shape[1] * int(np.prod(window[0])))
        got = win.im2col(x, *window)
        assert got.shape == want.shape and np.array_equal(got, want)
        assert not np.shares_memory(got, x)


def test_a_one_by_one_im2col_is_a_copy_of_the_input_channels_last():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    got = win.im2col(x, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1))
    assert np.array_equal(got, x.transpose(0, 2, 3, 1).reshape(2, 20, 3))
    got[0, 0, 0] = -1
    assert x[0, 0, 0, 0] == 0


@pytest.mark.parametrize("seed", range(4))
def test_maxpool_is_the_max_over_each_window_and_padding_never_wins(seed):
    for x, kernel, strides, pads, dilations in _cases(np.random.default_rng(seed), 40):
        out = win.out_size(x.shape[2:], kernel, strides, pads, dilations)
        want = _windows(x, kernel, strides, pads, dilations, -np.inf).max(
            axis=tuple(range(-len(kernel), 0)))
        got = kernels.maxpool(x, kernel, strides, pads, dilations, out)
        assert np.array_equal(got, want)


def test_maxpool_of_all_negative_inputs_ignores_zero_padding():
    x = -np.ones((1, 1, 2, 2), np.float32)
    got = kernels.maxpool(x, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (2, 2))
    assert np.array_equal(got, x)


def test_ceil_mode_max_pooling_reads_the_windows_past_the_edge_as_missing():
    """A 5x5 input in 2x2 windows of stride 2 with ceil mode has 3x3 outputs: the last row
    and column of windows hang over the edge, and their missing inputs never win."""
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 5)).astype(np.float32) - 10
    got = kernels.maxpool(x, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), (3, 3))
    padded = np.pad(x, [(0, 0), (0, 0), (0, 1), (0, 1)], constant_values=-np.inf)
    want = padded.reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5))
    assert np.array_equal(got, want) and np.isfinite(got).all()
