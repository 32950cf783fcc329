"""What each opcode computes, in ideal (float32) arithmetic: one small function per opcode.

Each function takes the machine and the instruction, reads its operands with ``m.read`` and
stores results with ``m.store``. ``SEMANTICS`` maps every mnemonic of ``isa.OPCODES`` to its
function; ``m.shape(ref)`` is a buffer's declared shape with the batch axis scaled to the run.
"""

from __future__ import annotations

import numpy as np

from isa import windows as win

from .mvm_groups import execute_group

F32 = np.float32


def _dst(ins):
    return ins.operands[0]


def write(m, ins):
    r0, r1 = ins.attr("rows")
    c0, c1 = ins.attr("cols")
    blob = m.read(ins.operands[0])
    m.program_xbar(ins.attr("xb"), blob[r0:r1, c0:c1], m.blob_max(ins.operands[0]))


def mvm(m, ins):
    """A lone mvm is a group of one: ``mvm_groups`` holds the arithmetic of every mode."""
    execute_group(m, [ins])


def combine(m, ins):
    """BasisN: dst += proj @ (levels * scale), exact digital arithmetic in every mode."""
    dst, proj = m.read(ins.operands[0]), m.read(ins.operands[1])
    coef = m.read(ins.operands[2]) * m.read(ins.operands[3])
    y = proj.reshape(proj.shape[0], -1, proj.shape[-1]) @ coef
    m.store(_dst(ins), (dst + y.reshape(dst.shape)).astype(F32))


def fill(m, ins):
    m.store(_dst(ins), np.full(m.shape(_dst(ins)), ins.attr("value"), F32))


def copy(m, ins):
    m.store(_dst(ins), np.broadcast_to(m.read(ins.operands[1]), m.shape(_dst(ins))).astype(F32))


def im2col(m, ins):
    x = m.read(ins.operands[1])
    k, s, p, d = (ins.attr(a) for a in ("kernel", "strides", "pads", "dilations"))
    m.store(_dst(ins), win.im2col(x, k, s, p, d).reshape(m.shape(_dst(ins))))


def unpatch(m, ins):
    m.store(_dst(ins), m.read(ins.operands[1]).transpose(0, 2, 1).reshape(m.shape(_dst(ins))))


def _pool(m, ins, reduce):
    x = m.read(ins.operands[1])
    k, s, p, d = (ins.attr(a) for a in ("kernel", "strides", "pads", "dilations"))
    out = m.shape(_dst(ins))[2:]
    pads = win.pad_for(x.shape[2:], out, k, s, p, d)
    return reduce(x, k, s, d, out, pads)


def _max_reduce(x, k, s, d, out, pads):
    xp = np.pad(x, [(0, 0), (0, 0)] + pads, constant_values=-np.inf)
    return win.windows(xp, k, s, d, out).max(axis=tuple(range(-len(k), 0)))


def maxpool(m, ins):
    m.store(_dst(ins), _pool(m, ins, _max_reduce))


def avgpool(m, ins):
    n = len(ins.attr("kernel"))
    explicit = ins.attr("pads")

    def reduce(x, k, s, d, out, pads):
        xp = np.pad(x, [(0, 0), (0, 0)] + pads)
        total = win.windows(xp, k, s, d, out).sum(axis=tuple(range(-n, 0)))
        mask = np.zeros([1, 1] + [a + b + c for a, (b, c) in zip(x.shape[2:], pads)], F32)
        inner = tuple(slice(b, b + a) for a, (b, _) in zip(x.shape[2:], pads))
        if ins.attr("count_pad"):
            inner = tuple(slice(0, b + a + explicit[n + i])
                          for i, (a, (b, _)) in enumerate(zip(x.shape[2:], pads)))
        mask[(0, 0) + inner] = 1
        count = win.windows(mask, k, s, d, out).sum(axis=tuple(range(-n, 0)))
        return total / np.maximum(count, 1)
    m.store(_dst(ins), _pool(m, ins, reduce).astype(F32))


def _global(reduce):
    def run(m, ins):
        x = m.read(ins.operands[1])
        m.store(_dst(ins), reduce(x, axis=tuple(range(2, x.ndim)), keepdims=True).astype(F32))
    return run


def _binary(fn):
    def run(m, ins):
        a, b = m.read(ins.operands[1]), m.read(ins.operands[2])
        m.store(_dst(ins), np.broadcast_to(fn(a, b), m.shape(_dst(ins))).astype(F32))
    return run


def _unary(fn):
    def run(m, ins):
        m.store(_dst(ins), fn(m.read(ins.operands[1]), ins).astype(F32))
    return run


def reshape(m, ins):
    m.store(_dst(ins), m.read(ins.operands[1]).reshape(m.shape(_dst(ins))))


def transpose(m, ins):
    m.store(_dst(ins), np.ascontiguousarray(m.read(ins.operands[1]).transpose(ins.attr("perm"))))


def concat(m, ins):
    m.store(_dst(ins), np.concatenate([m.read(r) for r in ins.operands[1:]], ins.attr("axis")))


def pad(m, ins):
    x = m.read(ins.operands[1])
    pads, mode = ins.attr("pads"), ins.attr("mode")
    n = x.ndim
    crop = tuple(slice(max(-pads[i], 0), x.shape[i] - max(-pads[n + i], 0)) for i in range(n))
    widths = [(max(pads[i], 0), max(pads[n + i], 0)) for i in range(n)]
    x = x[crop]
    if mode == "constant":
        y = np.pad(x, widths, constant_values=ins.attr("value"))
    else:
        y = np.pad(x, widths, mode={"edge": "edge", "reflect": "reflect", "wrap": "wrap"}[mode])
    m.store(_dst(ins), y.astype(F32))


def softmax(m, ins):
    x = m.read(ins.operands[1])
    e = np.exp(x - x.max(axis=ins.attr("axis"), keepdims=True))
    m.store(_dst(ins), (e / e.sum(axis=ins.attr("axis"), keepdims=True)).astype(F32))


def lrn(m, ins):
    x = m.read(ins.operands[1])
    size = ins.attr("size")
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = np.pad(x.astype(np.float64) ** 2, [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2))
    csum = np.concatenate([np.zeros_like(sq[:, :1]), np.cumsum(sq, axis=1)], axis=1)
    window = csum[:, size:] - csum[:, :-size]
    denom = (ins.attr("bias") + ins.attr("alpha") / size * window) ** ins.attr("beta")
    m.store(_dst(ins), (x / denom).astype(F32))


def halt(m, ins):
    m.halted = True


def _sigmoid(x, ins):
    return np.exp(-np.logaddexp(0, -x))


SEMANTICS = {
    "write": write, "mvm": mvm, "combine": combine, "fill": fill, "copy": copy, "im2col": im2col,
    "unpatch": unpatch, "maxpool": maxpool, "avgpool": avgpool,
    "gavgpool": _global(np.mean), "gmaxpool": _global(np.max),
    "add": _binary(np.add), "sub": _binary(np.subtract), "mul": _binary(np.multiply),
    "div": _binary(np.divide),
    "relu": _unary(lambda x, ins: np.maximum(x, 0)),
    "leakyrelu": _unary(lambda x, ins: np.where(x >= 0, x, x * ins.attr("alpha"))),
    "clip": _unary(lambda x, ins: np.clip(x, ins.attr("min"), ins.attr("max"))),
    "sigmoid": _unary(_sigmoid), "tanh": _unary(lambda x, ins: np.tanh(x)),
    "reshape": reshape, "transpose": transpose, "concat": concat, "pad": pad,
    "softmax": softmax, "lrn": lrn, "halt": halt,
}


def barrier(m, ins):
    """Ordering only: it has no effect on values."""


SEMANTICS["barrier"] = barrier
