"""What each opcode computes, in ideal (float32) arithmetic: one small function per opcode.

Each function takes the machine and the instruction, reads its operands with ``m.read`` and
stores results with ``m.store``. ``SEMANTICS`` maps every mnemonic of ``isa.OPCODES`` to its
function; ``m.shape(ref)`` is a buffer's declared shape with the batch axis scaled to the run.
The arithmetic of the vector, window and combiner opcodes is ``isa.kernels`` (one definition,
shared with the compiler's IR evaluator); that of ``mvm`` is ``mvm_groups``; ``dmatmul`` is
``kernels.matmul`` in ideal mode and ``runtime.digital`` (integer arithmetic) otherwise.
"""

from __future__ import annotations

import numpy as np

from isa import cells, kernels
from isa import windows as win

from .digital import quantized_matmul
from .dynamic import digital_bmm, written_bmm
from .mvm_groups import as_vectors, execute_group
from .noise import DYNAMIC

F32 = np.float32


def _dst(ins):
    return ins.operands[0]


def _write_args(m, ins) -> tuple:
    r0, r1 = ins.attr("rows")
    c0, c1 = ins.attr("cols")
    blob = m.read(ins.operands[0])
    return (ins.attr("xb"), blob[r0:r1, c0:c1], m.blob_max(ins.operands[0]),
            cells.LowWrite.of(ins))


def write(m, ins):
    """Program crossbar xb with the blob window; its bit stucking (``low_*`` attributes,
    ``isa.cells.LowWrite``) applies in quantized and analog modes."""
    write_group(m, [ins])


def write_group(m, group: list) -> None:
    """A run of writes, in order (``Machine.program_xbars`` may program several at once)."""
    m.program_xbars([_write_args(m, ins) for ins in group])


def mvm(m, ins):
    """A lone mvm is a group of one: ``mvm_groups`` holds the arithmetic of every mode."""
    execute_group(m, [ins])


def combine(m, ins):
    """BasisN: dst += proj @ (levels * scale), exact digital arithmetic in every mode."""
    dst = m.read(ins.operands[0])
    y = kernels.combine(*(m.read(r) for r in ins.operands[1:4]))
    m.store(_dst(ins), (dst + y.reshape(dst.shape)).astype(F32))


def dmatmul(m, ins):
    """The digital unit: dst = src @ weight (+ bias), float32 in ideal mode; in quantized and
    analog modes on integer weights and inputs, accumulated exactly (``runtime.digital``)."""
    x = as_vectors(m.read(ins.operands[1]))
    weight = m.read(ins.operands[2])
    bias = m.read(ins.operands[3]) if len(ins.operands) > 3 else None
    if m.mode == "ideal":
        y = kernels.matmul(x, weight, bias)
    else:
        y = quantized_matmul(x, m.input_range(ins.operands[1], x), weight, bias, m.chip,
                             m.blob_max(ins.operands[2]))
    m.store(_dst(ins), y.reshape(m.shape(_dst(ins))))


def _bmm_range(m, ins) -> np.ndarray:
    """The DAC range of a computed product's first operand, per sample [B, 1, 1]."""
    a = m.read(ins.operands[1])
    return m.input_range(ins.operands[1], a.reshape(a.shape[0], -1, a.shape[-1]))


def dbmm(m, ins):
    """The digital unit on two computed operands: float32 in ideal mode, else exact integer
    products of quantized operands (``runtime.dynamic``)."""
    a, b = m.read(ins.operands[1]), m.read(ins.operands[2])
    y = kernels.bmm(a, b) if m.mode == "ideal" else digital_bmm(a, b, _bmm_range(m, ins),
                                                                  m.chip)
    m.store(_dst(ins), y)


def wbmm(m, ins):
    """Crossbars written per inference: float32 in ideal mode, else b programmed and read as
    write + mvm do, analog with fresh programming noise (``runtime.dynamic``)."""
    a, b = m.read(ins.operands[1]), m.read(ins.operands[2])
    if m.mode == "ideal":
        y = kernels.bmm(a, b)
    else:
        line = m.lines[id(ins)]  # g below: head g % per of sample g // per
        noise = None if m.noise is None else (lambda g, per, use: m.noise.generator(
            DYNAMIC, (line, g % per, use), g // per))
        y = written_bmm(a, b, _bmm_range(m, ins), m.chip, noise, m.read_budget)
    m.store(_dst(ins), y)


def where(m, ins):
    rank = len(m.shape(_dst(ins)))
    cond, a, b = (m.read_per_sample(r, rank) for r in ins.operands[1:])
    y = kernels.where(cond, a, b)
    m.store(_dst(ins), np.broadcast_to(y, m.shape(_dst(ins))).astype(F32))


def interp(m, ins):
    x, index, weight = (m.read(r) for r in ins.operands[1:])
    m.store(_dst(ins), kernels.interp(x, index, weight, ins.attr("axis")))


def rmsnorm(m, ins):
    x, scale = (m.read(r) for r in ins.operands[1:])
    m.store(_dst(ins), kernels.rmsnorm(x, scale, ins.attr("axis"), ins.attr("epsilon")))


def layernorm(m, ins):
    x, scale, bias = (m.read(r) for r in ins.operands[1:4])
    m.store(_dst(ins), kernels.layernorm(x, scale, bias, ins.attr("axis"), ins.attr("epsilon")))


def _reduce(m, ins):
    m.store(_dst(ins), kernels.reduce(ins.op, m.read(ins.operands[1]), ins.attr("axes"),
                                      ins.attr("keepdims")))


def slice_(m, ins):
    """A slice keeping the whole compiled batch keeps the whole run's (a batch-free program
    runs any multiple of it)."""
    x = m.read(ins.operands[1])
    starts, ends, steps = (list(ins.attr(k)) for k in ("starts", "ends", "steps"))
    if (starts[0], ends[0], steps[0]) == (0, m.program.batch, 1):
        ends[0] = x.shape[0]
    m.store(_dst(ins), kernels.slice_axes(x, starts, ends, steps))


def gather(m, ins):
    m.store(_dst(ins), kernels.gather(m.read(ins.operands[1]), m.read(ins.operands[2]),
                                      ins.attr("axis")))


def fill(m, ins):
    m.store(_dst(ins), np.full(m.shape(_dst(ins)), ins.attr("value"), F32))


def copy(m, ins):
    # astype keeps the broadcast's strides (the batch axis innermost), and later elementwise
    # results keep that layout; numpy's reductions (gavgpool) and ideal mode's matmuls round
    # differently on it than on C order. Quantized and analog results are pinned to it.
    m.store(_dst(ins), np.broadcast_to(m.read(ins.operands[1]), m.shape(_dst(ins))).astype(F32))


def window(ins) -> list:
    """A window instruction's kernel, strides, pads and dilations (im2col, the pools)."""
    return [ins.attr(a) for a in ("kernel", "strides", "pads", "dilations")]


def im2col(m, ins):
    x = m.read(ins.operands[1])
    # im2col's patches are a new array, never a view of x: mvms accumulate into their operands
    patches = win.im2col(x, *window(ins)).reshape(m.shape(_dst(ins)))
    m.store(_dst(ins), kernels.permute(patches, ins.attr("perm")))


def unpatch(m, ins):
    cols = kernels.permute(m.read(ins.operands[1]), ins.attr("perm"))
    m.store(_dst(ins), kernels.unpatch(cols, m.shape(_dst(ins))))


def maxpool(m, ins):
    x, out = m.read(ins.operands[1]), m.shape(_dst(ins))[2:]
    m.store(_dst(ins), kernels.maxpool(x, *window(ins), out))


def avgpool(m, ins):
    x, out = m.read(ins.operands[1]), m.shape(_dst(ins))[2:]
    m.store(_dst(ins), kernels.avgpool(x, *window(ins), out, ins.attr("count_pad")))


def _global(kernel):
    def run(m, ins):
        m.store(_dst(ins), kernel(m.read(ins.operands[1])))
    return run


def _binary(m, ins):
    shape = m.shape(_dst(ins))
    y = kernels.binary(ins.op, *(m.read_per_sample(r, len(shape)) for r in ins.operands[1:]))
    fresh = isinstance(y, np.ndarray) and y.shape == shape  # a ufunc's result: a new array
    m.store(_dst(ins), y if fresh else np.broadcast_to(y, shape).astype(F32))


def _unary(m, ins):
    m.store(_dst(ins), kernels.activation(ins.op, m.read(ins.operands[1]), dict(ins.attrs)))


def reshape(m, ins):
    """A copy, not a view: an mvm or combine accumulating into dst must not change src."""
    m.store(_dst(ins), np.array(m.read(ins.operands[1]).reshape(m.shape(_dst(ins)))))


def permute(m, ins):
    m.store(_dst(ins), kernels.permute(m.read(ins.operands[1]), m.read(ins.operands[2])))


def transpose(m, ins):
    m.store(_dst(ins), np.ascontiguousarray(m.read(ins.operands[1]).transpose(ins.attr("perm"))))


def concat(m, ins):
    """A blob joined along another axis than the batch is the same for every sample (a class
    token): it is repeated over the run's samples."""
    batch, axis = m.shape(_dst(ins))[0], ins.attr("axis")
    parts = [m.read_per_sample(r, len(m.shape(_dst(ins)))) for r in ins.operands[1:]]
    if axis % len(m.shape(_dst(ins))):
        parts = [np.broadcast_to(p, (batch,) + p.shape[1:]) if r[0] == "@" else p
                 for r, p in zip(ins.operands[1:], parts)]
    m.store(_dst(ins), np.concatenate(parts, axis))


def pad(m, ins):
    x = m.read(ins.operands[1])
    m.store(_dst(ins), kernels.pad(x, ins.attr("pads"), ins.attr("mode"), ins.attr("value")))


def _along_axis(fn):
    return lambda m, ins: m.store(_dst(ins), fn(m.read(ins.operands[1]), ins.attr("axis")))


def lrn(m, ins):
    x = m.read(ins.operands[1])
    args = [ins.attr(a) for a in ("size", "alpha", "beta", "bias")]
    m.store(_dst(ins), kernels.lrn(x, *args))


def halt(m, ins):
    m.halted = True


SEMANTICS = {
    "write": write, "mvm": mvm, "combine": combine, "dmatmul": dmatmul, "fill": fill,
    "copy": copy, "im2col": im2col,
    "unpatch": unpatch, "maxpool": maxpool, "avgpool": avgpool,
    "gavgpool": _global(kernels.gavgpool), "gmaxpool": _global(kernels.gmaxpool),
    **{op: _binary for op in kernels.BINARY}, **{op: _unary for op in kernels.ACTIVATIONS},
    "reshape": reshape, "transpose": transpose, "permute": permute, "concat": concat, "pad": pad,
    "softmax": _along_axis(kernels.softmax), "logsoftmax": _along_axis(kernels.logsoftmax),
    "lrn": lrn, "halt": halt,
    "dbmm": dbmm, "wbmm": wbmm, "layernorm": layernorm, "rmsnorm": rmsnorm, "interp": interp,
    "where": where, "slice": slice_, "gather": gather,
    **{op: _reduce for op in kernels.REDUCE},
}


def barrier(m, ins):
    """Ordering only: it has no effect on values."""


SEMANTICS["barrier"] = barrier
