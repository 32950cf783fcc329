"""ONNX Resize as one linear map per axis.

Resize's interpolation is separable: along each resized axis, output position o reads a few
input positions with fixed weights. ``axis_taps`` computes them (the positions as indices
[out, taps], the weights as coefficients [out, taps]) for the nearest, linear and cubic modes,
every coordinate transformation but ``tf_crop_and_resize``, ``antialias`` and
``exclude_outside``, as ONNX's reference implementation computes them, except where it
disagrees with onnxruntime: positions are float32, and align_corners and pytorch_half_pixel
use the output's integer length (the operator's text says so too; the reference uses scale
x input length, which differs when that is fractional). ``plan`` lists the axes a Resize
changes; the IR runs each as one ``interp`` op (``isa.kernels.interp``), and ``resize``
computes the same for ONNX's reference evaluator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from isa import kernels


def _align_corners(y, scale, n_in, out_width, n_out):
    return np.zeros_like(y) if n_out == 1 else y * (n_in - 1) / (n_out - 1)


def _pytorch_half_pixel(y, scale, n_in, out_width, n_out):
    return np.zeros_like(y) if n_out == 1 else (y + 0.5) / scale - 0.5


def _half_pixel_symmetric(y, scale, n_in, out_width, n_out):
    offset = n_in / 2 * (1 - n_out / out_width)
    return offset + (y + 0.5) / scale - 0.5


# coordinate_transformation_mode -> the input coordinate of output positions y (float64),
# given the scale, the input length, scale x input length and the output length
COORDINATES: dict[str, Callable] = {
    "half_pixel": lambda y, scale, n_in, out_width, n_out: (y + 0.5) / scale - 0.5,
    "half_pixel_symmetric": _half_pixel_symmetric,
    "pytorch_half_pixel": _pytorch_half_pixel,
    "align_corners": _align_corners,
    "asymmetric": lambda y, scale, n_in, out_width, n_out: y / scale,
}


def _nearest(ratio: np.ndarray, rounding: str, scale: float) -> np.ndarray:
    """[out, 2] weights of the left and right neighbour; an exact position (ratio 1) takes
    the right one, which is that position. ``simple`` (not an ONNX value: Upsample's and
    Resize-10's rule, ``frontend._legacy_resize``) is floor, or ceil when downsampling."""
    if rounding == "simple":
        rounding = "ceil" if scale < 1 else "floor"
    right = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
             "floor": np.zeros_like(ratio, bool), "ceil": np.ones_like(ratio, bool)}[rounding]
    right = right | (ratio == 1)
    return np.stack([~right, right], axis=1).astype(np.float64)


def _cubic_weight(d: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``d``."""
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _antialiased(ratio: np.ndarray, scale: float, reach: int, weight) -> np.ndarray:
    """Weights of a kernel of half-width ``reach`` stretched by 1 / scale when downsampling,
    normalised to sum 1."""
    s = min(scale, 1.0)
    start = int(np.floor(-reach / s) + 1)
    w = weight((np.arange(start, 2 - start)[None, :] - ratio[:, None]) * s)
    return w / w.sum(axis=1, keepdims=True)


def _weights(mode: str, ratio: np.ndarray, scale: float, attrs: dict) -> np.ndarray:
    """[out, n] interpolation weights of the n neighbours around each position, left first."""
    a = attrs["cubic_coeff_a"]
    if mode == "nearest":
        return _nearest(ratio, attrs["nearest_mode"], scale)
    if attrs["antialias"] and mode == "linear":
        return _antialiased(ratio, scale, 1, lambda d: np.clip(1 - np.abs(d), 0, 1))
    if attrs["antialias"]:
        return _antialiased(ratio, scale, 2, lambda d: _cubic_weight(d, a))
    if mode == "linear":
        return np.stack([1 - ratio, ratio], axis=1)
    return _cubic_weight(np.stack([ratio + 1, ratio, 1 - ratio, 2 - ratio], axis=1), a)


def axis_taps(n_in: int, n_out: int, scale: float, attrs: dict) -> tuple[np.ndarray,
                                                                        np.ndarray]:
    """(indices, weights), each [n_out, taps]: output position o along the axis is
    sum_t weights[o, t] x input[indices[o, t]]. ``attrs``: mode, coordinate_transformation_mode,
    nearest_mode, cubic_coeff_a, exclude_outside, antialias (ONNX's, defaults filled in)."""
    # positions in float32, as onnxruntime computes them: a nearest pick at a near-tie
    # (scale 0.3: position 1.5000001 or 1.4999999) follows its rounding
    y, s = np.arange(n_out, dtype=np.float32), np.float32(scale)
    x = COORDINATES[attrs["coordinate_transformation_mode"]](y, s, n_in, s * n_in, n_out)
    left = np.floor(x)
    ratio = np.where(x == left, 1.0, x - left)  # an exact position counts as the right one
    w = _weights(attrs["mode"], ratio, scale, attrs)
    n = w.shape[1]
    # the n neighbours nearest to x, the smaller on a tie: starting at left - n/2 + 1, or
    # left - n/2 at an exact position (whose ratio 1 weighs the right end of the window)
    start = left.astype(np.int64) - n // 2 + np.where(x == left, 0, 1)
    idx = start[:, None] + np.arange(n)[None, :]
    if attrs["exclude_outside"]:
        w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return _compact(np.clip(idx, 0, n_in - 1), w)


DEFAULTS = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
            "nearest_mode": "round_prefer_floor", "cubic_coeff_a": -0.75, "exclude_outside": 0,
            "antialias": 0}


def scales_and_lengths(x: tuple, scales, sizes, axes: list[int],
                       policy: str = "stretch") -> list[tuple[int, float, int]]:
    """(axis, scale, output length) of each of ``axes`` of an input of shape ``x``, from
    Resize's scales (None or empty: absent) or sizes, under keep_aspect_ratio_policy."""
    if scales is not None and len(scales):
        return [(a, float(s), int(np.floor(x[a] * float(s)))) for a, s in zip(axes, scales)]
    ratios = [float(s) / x[a] for s, a in zip(sizes, axes)]
    if policy == "stretch":
        return [(a, r, int(s)) for a, r, s in zip(axes, ratios, sizes)]
    r = min(ratios) if policy == "not_larger" else max(ratios)
    return [(a, r, int(r * x[a] + 0.5)) for a in axes]


def plan(shape: tuple, scales, sizes, attrs: dict,
         out_shape: tuple | None = None) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(axis, indices, weights) of each axis a Resize of an input of ``shape`` changes (its
    length or its scale), in axis order; ``attrs`` ONNX's (absent or None: the defaults);
    ``out_shape``: the output's declared shape, else computed."""
    axes = [a % len(shape) for a in attrs.get("axes") or range(len(shape))]
    a = {k: attrs.get(k) if attrs.get(k) is not None else v for k, v in DEFAULTS.items()}
    steps = []
    for axis, scale, n_out in scales_and_lengths(
            shape, scales, sizes, axes, attrs.get("keep_aspect_ratio_policy") or "stretch"):
        n_out = n_out if out_shape is None else out_shape[axis]
        if n_out != shape[axis] or not np.isclose(scale, 1.0):
            steps.append((axis, *axis_taps(shape[axis], n_out, scale, a)))
    return steps


def resize(x: np.ndarray, scales, sizes, attrs: dict) -> np.ndarray:
    """ONNX Resize of ``x`` (float32) an axis at a time, as the compiled program computes it."""
    for axis, idx, w in plan(x.shape, scales, sizes, attrs):
        x = kernels.interp(x, idx, w, axis)
    return x


def _compact(idx: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same map with each row's non-zero weights first and as few taps as the fullest row
    needs (nearest: one)."""
    order = np.argsort(w == 0, axis=1, kind="stable")
    taps = max(int((w != 0).sum(axis=1).max(initial=0)), 1)
    keep = order[:, :taps]
    return np.take_along_axis(idx, keep, 1), np.take_along_axis(w, keep, 1)
