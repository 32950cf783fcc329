"""What the vector-unit, window, combiner and digital-unit opcodes compute, as numpy functions.

One definition shared by the runtime's ideal semantics (``runtime.semantics``, which reads the
operands of an instruction and stores the result) and the compiler's IR evaluator
(``compiler.evaluate``, which runs the same kinds on graph values). Each kernel takes arrays
and attribute values (never a machine or an instruction) and returns a float32 array. Where a
result's shape is not implied by the inputs (pooling with ``ceil``, ``unpatch``), the caller
passes the declared output shape. im2col and the sliding windows are ``isa.windows``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from . import windows as win

F32 = np.float32


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow for large -x."""
    return np.exp(-np.logaddexp(0, -x))


def _log(x: np.ndarray) -> np.ndarray:
    """log x, -inf at 0 (ONNX's value over an empty set) and NaN below, without numpy's
    warnings: the values are the answer, as onnxruntime gives them."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, from the complementary one's Chebyshev fit (Numerical Recipes,
    ``erfcc``: fractional error below 1.2e-7 everywhere), in float64."""
    z = np.abs(x.astype(np.float64))
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (
        0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (
            1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    return np.sign(x) * (1.0 - t * np.exp(poly))


def gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    """x Phi(x): exactly (``none``, through erf) or by the tanh formula (``tanh``)."""
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


# Elementwise activations, fn(x, attrs) with the opcode's attributes by name; call ``activation``.
# Each returns a new array (``activation`` does not copy it again).
ACTIVATIONS: dict[str, Callable[[np.ndarray, Mapping], np.ndarray]] = {
    "relu": lambda x, a: np.maximum(x, 0),
    "leakyrelu": lambda x, a: np.where(x >= 0, x, x * a["alpha"]),
    "clip": lambda x, a: np.clip(x, a["min"], a["max"]),
    "sigmoid": lambda x, a: _sigmoid(x),
    "tanh": lambda x, a: np.tanh(x),
    "hardsigmoid": lambda x, a: np.clip(x * a["alpha"] + a["beta"], 0, 1),
    "gelu": lambda x, a: gelu(x, a["approximate"]),
    "erf": lambda x, a: erf(x),
    "sqrt": lambda x, a: np.sqrt(x),
    "reciprocal": lambda x, a: np.reciprocal(x),
    "exp": lambda x, a: np.exp(x),
    "neg": lambda x, a: np.negative(x),
    "elu": lambda x, a: np.where(x > 0, x, a["alpha"] * np.expm1(np.minimum(x, 0))),
    "selu": lambda x, a: a["gamma"] * np.where(x > 0, x,
                                               a["alpha"] * np.expm1(np.minimum(x, 0))),
    "celu": lambda x, a: np.maximum(x, 0) + a["alpha"] * np.expm1(
        np.minimum(x, 0) / a["alpha"]),
    "softplus": lambda x, a: np.logaddexp(0, x),
    "softsign": lambda x, a: x / (1 + np.abs(x)),
    "hardswish": lambda x, a: x * np.clip(x / 6 + 0.5, 0, 1),
    "mish": lambda x, a: x * np.tanh(np.logaddexp(0, x)),
    "thresholdedrelu": lambda x, a: np.where(x > a["alpha"], x, 0),
    "shrink": lambda x, a: np.where(x < -a["lambd"], x + a["bias"],
                                    np.where(x > a["lambd"], x - a["bias"], 0)),
    "abs": lambda x, a: np.abs(x),
    "log": lambda x, a: _log(x),
    "floor": lambda x, a: np.floor(x),
    "ceil": lambda x, a: np.ceil(x),
    "round": lambda x, a: np.rint(x),  # halves to even, as ONNX's Round
    "sign": lambda x, a: np.sign(x),
    "sin": lambda x, a: np.sin(x),
    "cos": lambda x, a: np.cos(x),
    "not": lambda x, a: (x == 0).astype(F32),
    "tobool": lambda x, a: (x != 0).astype(F32),
}

# Broadcasting binary ops; call ``binary``.
BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "pow": np.power, "max": np.maximum, "min": np.minimum,
    "prelu": lambda x, slope: np.where(x >= 0, x, x * slope),
    # comparisons and logic: booleans as float32 0 and 1 (any non-zero is true)
    "less": np.less, "lessorequal": np.less_equal, "greater": np.greater,
    "greaterorequal": np.greater_equal, "equal": np.equal,
    "and": lambda a, b: (a != 0) & (b != 0), "or": lambda a, b: (a != 0) | (b != 0),
    "xor": lambda a, b: (a != 0) ^ (b != 0),
}


def where(cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a where cond is non-zero (true), else b, all three broadcast."""
    return np.where(cond != 0, a, b).astype(F32, copy=False)


def activation(kind: str, x: np.ndarray, attrs: Mapping) -> np.ndarray:
    """The activation ``kind`` (a key of ACTIVATIONS) of x with its attributes."""
    return ACTIVATIONS[kind](x, attrs).astype(F32, copy=False)


def binary(kind: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The binary op ``kind`` (a key of BINARY) of a and b, broadcast; x / 0, 0 / 0 and
    overflows give IEEE's infinities and NaNs without numpy's warnings (as ``_log``)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return BINARY[kind](a, b).astype(F32, copy=False)


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, strides, pads, dilations,
         group: int) -> np.ndarray:
    """Grouped N-d convolution (+ b): y[b, g*M/G + m, *o] = sum over the C/G channels c of
    group g and the kernel offsets k of w[g*M/G + m, c, *k] * x_padded[b, g*C/G + c, o*s + k*d]."""
    kernel = w.shape[2:]
    n, (nb, c), m, g = len(kernel), x.shape[:2], w.shape[0], group
    out = tuple(win.out_size(x.shape[2:], kernel, strides, pads, dilations))
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[n + i]) for i in range(n)])
    v = win.windows(xp, kernel, strides, dilations, out)  # [B, C, *out, *kernel]
    v = v.reshape((nb, g, c // g) + v.shape[2:])
    o, k = "pqr"[:n], "ijk"[:n]
    y = np.einsum(f"bgc{o}{k},gmc{k}->bgm{o}", v, w.reshape((g, m // g) + w.shape[1:]),
                  optimize=True).reshape((nb, m) + out)
    if b is not None:
        y = y + b.reshape((m,) + (1,) * n)
    return y.astype(F32)


def unpatch(cols: np.ndarray, shape) -> np.ndarray:
    """Per-patch outputs [B, P, M] -> [B, M, *S] of ``shape`` (P = prod(S))."""
    return cols.transpose(0, 2, 1).reshape(shape)


def maxpool(x: np.ndarray, kernel, strides, pads, dilations, out) -> np.ndarray:
    """Max over windows of [B, C, *S] into spatial size ``out``; padding never wins (-inf),
    and ``out`` beyond the explicit padding (ceil mode) reads more -inf."""
    widths = win.pad_for(x.shape[2:], out, kernel, strides, pads, dilations)
    xp = np.pad(x, [(0, 0), (0, 0)] + widths, constant_values=-np.inf) \
        if any(map(any, widths)) else x  # (np.pad copies even when it pads nothing)
    result = None
    for _, view in win.offset_views(xp, kernel, strides, dilations, out):
        result = view.copy() if result is None else np.maximum(result, view, out=result)
    return result


def avgpool(x: np.ndarray, kernel, strides, pads, dilations, out, count_pad) -> np.ndarray:
    """Mean over windows of [B, C, *S] into spatial size ``out``. The divisor counts the input
    elements a window covers, plus the explicit padding when ``count_pad`` (never the extra
    padding ceil mode adds)."""
    n = len(kernel)
    widths = win.pad_for(x.shape[2:], out, kernel, strides, pads, dilations)
    xp = np.pad(x, [(0, 0), (0, 0)] + widths)
    total = win.windows(xp, kernel, strides, dilations, out).sum(axis=tuple(range(-n, 0)))
    mask = np.zeros([1, 1] + [a + b + c for a, (b, c) in zip(x.shape[2:], widths)], F32)
    inner = tuple(slice(b, b + a) for a, (b, _) in zip(x.shape[2:], widths))
    if count_pad:
        inner = tuple(slice(0, b + a + pads[n + i])
                      for i, (a, (b, _)) in enumerate(zip(x.shape[2:], widths)))
    mask[(0, 0) + inner] = 1
    count = win.windows(mask, kernel, strides, dilations, out).sum(axis=tuple(range(-n, 0)))
    return (total / np.maximum(count, 1)).astype(F32)


def gavgpool(x: np.ndarray) -> np.ndarray:
    """Mean over all spatial axes of [B, C, *S], kept as size-1 axes."""
    return np.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True).astype(F32)


def gmaxpool(x: np.ndarray) -> np.ndarray:
    """Max over all spatial axes of [B, C, *S], kept as size-1 axes."""
    return np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True).astype(F32)


def pad(x: np.ndarray, pads, mode: str, value: float) -> np.ndarray:
    """ONNX Pad: ``pads`` = begins then ends per axis (negative crops); mode constant (with
    ``value``), edge, reflect or wrap."""
    n = x.ndim
    crop = tuple(slice(max(-pads[i], 0), x.shape[i] - max(-pads[n + i], 0)) for i in range(n))
    widths = [(max(pads[i], 0), max(pads[n + i], 0)) for i in range(n)]
    x = x[crop]
    if mode == "constant":
        y = np.pad(x, widths, constant_values=value)
    else:
        y = np.pad(x, widths, mode={"edge": "edge", "reflect": "reflect", "wrap": "wrap"}[mode])
    return y.astype(F32)


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """exp(x) / sum exp(x) along ``axis``, shifted by the max for range."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(F32)


def logsoftmax(x: np.ndarray, axis: int) -> np.ndarray:
    """log(softmax(x)) along ``axis`` as x - max - log(sum exp(x - max)): no log of an
    underflowed zero."""
    d = x - x.max(axis=axis, keepdims=True)
    return (d - np.log(np.exp(d).sum(axis=axis, keepdims=True))).astype(F32)


def lrn(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """ONNX LRN over the channel axis of [B, C, ...]: x / (bias + alpha / size * sum of x^2
    over the ``size`` channels around each one) ** beta; the sum in float64."""
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = np.pad(x.astype(np.float64) ** 2, [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2))
    csum = np.concatenate([np.zeros_like(sq[:, :1]), np.cumsum(sq, axis=1)], axis=1)
    window = csum[:, size:] - csum[:, :-size]
    return (x / (bias + alpha / size * window) ** beta).astype(F32)


def matmul(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """The digital unit's product in float32 (``dmatmul``, IR ``digital_matmul``): x
    [B, ..., K] @ weight [K, M] (+ bias broadcasting to [B, ..., M])."""
    y = x.reshape(x.shape[0], -1, x.shape[-1]) @ weight
    y = y.reshape(x.shape[:-1] + weight.shape[-1:])
    return (y if bias is None else y + bias).astype(F32)


def permute(x: np.ndarray, perm) -> np.ndarray:
    """x[..., perm]: a gather along the last axis (``permute``, and the optional ``perm`` of
    ``im2col`` and ``unpatch``; weight sorting's orders); ``perm`` a permutation of its
    indices (float32 integers in a blob, or ints); None: x itself."""
    if perm is None:
        return x
    return x[..., np.asarray(perm).astype(np.int64)].astype(F32, copy=False)


def combine(proj: np.ndarray, levels: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """BasisN's combiner: projections [B, ..., J] times coefficients levels [J, M] * scale [M]
    -> [B, ..., M] (the bias, if any, is the caller's)."""
    y = proj.reshape(proj.shape[0], -1, proj.shape[-1]) @ (levels * scale)
    return y.reshape(proj.shape[:-1] + y.shape[-1:])


def layernorm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, axis: int,
              epsilon: float) -> np.ndarray:
    """(x - mean) / sqrt(var + epsilon) * scale + bias over the axes from ``axis`` on; mean and
    (biased) variance in float32, as onnxruntime computes them."""
    axes = tuple(range(axis, x.ndim))
    mean = x.mean(axis=axes, keepdims=True, dtype=F32)
    d = x - mean
    var = (d * d).mean(axis=axes, keepdims=True, dtype=F32)
    return (d / np.sqrt(var + F32(epsilon)) * scale + bias).astype(F32)


def rmsnorm(x: np.ndarray, scale: np.ndarray, axis: int, epsilon: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + epsilon) * scale over the axes from ``axis`` on; the mean in
    float32 (ONNX's default stash type)."""
    axes = tuple(range(axis, x.ndim))
    ms = (x * x).mean(axis=axes, keepdims=True, dtype=F32)
    return (x / np.sqrt(ms + F32(epsilon)) * scale).astype(F32)


def _logsumexp(x: np.ndarray, axis: tuple, keepdims: bool) -> np.ndarray:
    """log(sum(exp(x))) shifted by the maximum for range; -inf over an empty set."""
    top = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    top = np.where(np.isfinite(top), top, 0)
    y = _log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return y if keepdims else np.squeeze(y, axis)


# Reductions, fn(x, axis tuple, keepdims); call ``reduce``. Over an empty set each gives
# ONNX's value (max -inf, min inf, sum 0, prod 1, log-sum -inf; mean is NaN).
REDUCE: dict[str, Callable[[np.ndarray, tuple, bool], np.ndarray]] = {
    "reducemean": lambda x, ax, kd: np.mean(x, axis=ax, keepdims=kd),
    "reducesum": lambda x, ax, kd: np.sum(x, axis=ax, keepdims=kd),
    "reducemax": lambda x, ax, kd: np.max(x, axis=ax, keepdims=kd, initial=-np.inf),
    "reducemin": lambda x, ax, kd: np.min(x, axis=ax, keepdims=kd, initial=np.inf),
    "reduceprod": lambda x, ax, kd: np.prod(x, axis=ax, keepdims=kd),
    "reducel1": lambda x, ax, kd: np.sum(np.abs(x), axis=ax, keepdims=kd),
    "reducel2": lambda x, ax, kd: np.sqrt(np.sum(x * x, axis=ax, keepdims=kd)),
    "reducesumsquare": lambda x, ax, kd: np.sum(x * x, axis=ax, keepdims=kd),
    "reducelogsum": lambda x, ax, kd: _log(np.sum(x, axis=ax, keepdims=kd)),
    "reducelogsumexp": _logsumexp,
    # the index of the first maximum / minimum along one axis, held as float32
    "argmax": lambda x, ax, kd: np.argmax(x, axis=ax[0], keepdims=kd),
    "argmin": lambda x, ax, kd: np.argmin(x, axis=ax[0], keepdims=kd),
}


def reduce(kind: str, x: np.ndarray, axes, keepdims: int) -> np.ndarray:
    """The reduction ``kind`` (a key of REDUCE) of x over ``axes``."""
    return np.asarray(REDUCE[kind](x, tuple(axes), bool(keepdims)), F32)


def interp(x: np.ndarray, index: np.ndarray, weight: np.ndarray, axis: int) -> np.ndarray:
    """Resampling along ``axis``: y[..., o, ...] = sum_t weight[o, t] x[..., index[o, t], ...],
    the taps added in order; one tap of weight 1 everywhere is a gather."""
    idx = index.astype(np.intp)
    shape = (1,) * axis + (-1,) + (1,) * (x.ndim - axis - 1)
    if idx.shape[1] == 1 and (weight == 1).all():
        return np.take(x, idx[:, 0], axis=axis).astype(F32, copy=False)
    y = np.take(x, idx[:, 0], axis=axis) * weight[:, 0].reshape(shape)
    for t in range(1, idx.shape[1]):
        y += np.take(x, idx[:, t], axis=axis) * weight[:, t].reshape(shape)
    return y.astype(F32, copy=False)


def slice_axes(x: np.ndarray, starts, ends, steps) -> np.ndarray:
    """x[start:end:step] on every axis; an end of -1 (with a negative step) runs past the
    front."""
    key = tuple(slice(s, None if e < 0 else e, st) for s, e, st in zip(starts, ends, steps))
    return np.ascontiguousarray(x[key], dtype=F32)


def gather(data: np.ndarray, indices: np.ndarray, axis: int) -> np.ndarray:
    """data's entries at ``indices`` (non-negative integers, held as floats) along ``axis``."""
    return np.take(data, indices.astype(np.int64), axis=axis).astype(F32)


def bmm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [..., M, K] @ b [..., K, N], leading axes broadcast, in float32."""
    return np.matmul(a, b, dtype=F32)
