"""lower_to_crossbar: conv and matmul become crossbar matrix products over tiled weights.

Before: canonical ops with batchnorm folded and activations fused.
After (level ``crossbar``): no conv or matmul remains (the canonical kinds whose row in
``compiler.ops`` ends at the canonical level, each lowered by its function in ``LOWER``).
A conv is ``im2col`` (patches [B, P, C*prod(k)]), then ``xbar_matmul`` against a
[C*prod(k), M] weight matrix (block-diagonal over groups, so depthwise and grouped convs share
one matrix), then ``unpatch`` back to [B, M, *spatial].
A matmul is an ``xbar_matmul`` directly. Every ``xbar_matmul`` has ``tiles``: the
(row0, row1, col0, col1) windows of its weight that hold any non-zero weight, each at most
chip.rows x chip.weights_per_row; an all-zero tile is never mapped (its product is zero).
The matrices' total size, predicted from shapes, must be within ``ctx.limits`` before any is
built (grouped convolutions become block-diagonal matrices larger than their kernels).
``weight_matrix`` (weight -> matrix, for IR kinds and ONNX op types) and its inverse
``matrix_weight`` are also how BasisN lowers ONNX weights (``compiler.basis.layers``).

A conv or matmul whose ONNX node is in ``ctx.digital`` (``cimc --digital``, resolved by
``digital_layers``) is lowered the same way with a ``digital_matmul`` (the digital MAC unit,
opcode ``dmatmul``) in place of the ``xbar_matmul``; it has no tiles, and its bias becomes one
value per output column (a bias that varies along other axes is an ``add`` after it, before
the fused activation).

A product of two computed operands (``dynmatmul``: attention's Q K^T and weights x V) is
mapped by the policy ``ctx.dynamic`` (``cimc --dynamic``): ``digital`` makes it a
``dyn_digital`` (the digital MAC unit, opcode ``dbmm``), ``write`` a ``dyn_write`` (its second
operand written into crossbars at every inference, opcode ``wbmm``; schedule gives it its
crossbars); one ``--digital`` names by its node is a ``dyn_digital`` whatever the policy.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx

from ..errors import CompileError
from ..frontend import node_name
from ..ir import Graph, Op
from ..limits import F32
from ..ops import CROSSBAR
from ..progress import bar


def conv_matrix(w: np.ndarray, group: int) -> np.ndarray:
    """[M, C/g, *k] conv weight -> [C*prod(k), M] matrix matching im2col's C-major patches."""
    m, cg = w.shape[:2]
    kk = int(np.prod(w.shape[2:], dtype=np.int64))
    mg = m // group
    mat = np.zeros((cg * group * kk, m), dtype=np.float32)
    for g in range(group):
        block = w[g * mg:(g + 1) * mg].reshape(mg, cg * kk).T
        mat[g * cg * kk:(g + 1) * cg * kk, g * mg:(g + 1) * mg] = block
    return mat


def conv_weight(mat: np.ndarray, shape, group: int) -> np.ndarray:
    """Inverse of ``conv_matrix``: the diagonal blocks of ``mat`` as a weight of ``shape``."""
    m, cg = shape[:2]
    kk, mg = int(np.prod(shape[2:], dtype=np.int64)), m // group
    blocks = [mat[g * cg * kk:(g + 1) * cg * kk, g * mg:(g + 1) * mg].T for g in range(group)]
    return np.concatenate(blocks).reshape(shape)


def _group(attrs: dict) -> int:
    return int(attrs.get("group", 1))


def _trans_b(attrs: dict) -> bool:
    return bool(attrs.get("transB", 0))


# kind -> (weight -> matrix, (matrix, weight shape) -> weight), given the op's attributes
LAYOUTS = {
    "conv": (lambda w, a: conv_matrix(w, _group(a)),
             lambda mat, shape, a: conv_weight(mat, shape, _group(a))),
    "gemm": (lambda w, a: w.T if _trans_b(a) else w,
             lambda mat, shape, a: mat.T if _trans_b(a) else mat),
    "matmul": (lambda w, a: w, lambda mat, shape, a: mat),
}


def weight_matrix(kind: str, w: np.ndarray, attrs: dict) -> np.ndarray:
    """The [K, M] matrix the crossbars hold for the weight ``w`` of a conv, gemm or matmul
    with attributes ``attrs`` (``group``; ``transB``). ``kind`` is the IR kind (conv, matmul:
    after canonicalize, whose matmul weights are already [K, M]) or the ONNX op type (Conv,
    Gemm, MatMul), so BasisN lowers ONNX weights exactly as this pass lowers IR ones."""
    return LAYOUTS[kind.lower()][0](w, attrs)


def matrix_weight(kind: str, mat: np.ndarray, shape, attrs: dict) -> np.ndarray:
    """Inverse of ``weight_matrix``: a [K, M] matrix back into a weight of ``shape``."""
    return LAYOUTS[kind.lower()][1](mat, tuple(shape), attrs)


# the ONNX ops this pass lowers to matrix products (ConvTranspose as a Conv)
MATRIX_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def matrix_layers(model: onnx.ModelProto) -> list[str]:
    """The names (their ops' ``origin``) of the model's Conv, ConvTranspose, Gemm and MatMul
    nodes, in graph order: the layers ``--digital`` can name."""
    return [node_name(n) for n in model.graph.node if n.op_type in MATRIX_OPS]


def digital_layers(entries: Iterable[str], layers: list[str]) -> frozenset[str]:
    """The layers of ``layers`` (graph order) that ``--digital`` entries name: ``all``,
    ``first``, ``last`` or layer names. Raises CompileError for an empty entry or an unknown
    name (the message lists the valid ones), and for a model with no such layer."""
    entries = list(entries)
    words = {"all": layers, "first": layers[:1], "last": layers[-1:]}
    if not layers:
        raise CompileError("--digital: the model has no Conv, Gemm or MatMul layer to map onto "
                           "the digital unit")
    unknown = [e for e in entries if e not in words and e not in layers]
    if unknown or not entries:
        what = f"no layer named {', '.join(map(repr, unknown))}" if unknown else "no layer given"
        raise CompileError(f"--digital: {what}; give all, first, last or comma-separated "
                           f"layer names of the model: {', '.join(layers)}")
    return frozenset(name for e in entries for name in words.get(e, [e]))


def tile(weight: np.ndarray, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    k, n = weight.shape
    nonzero = weight != 0
    return [(r, min(r + rows, k), c, min(c + cols, n))
            for c in range(0, n, cols) for r in range(0, k, rows)
            if nonzero[r:r + rows, c:c + cols].any()]


def _product(graph: Graph, op: Op, x: str, weight: np.ndarray, out: str, ctx) -> None:
    """out = x @ weight (+ op's bias, then its fused activation): an ``xbar_matmul`` over
    the weight's non-zero tiles, or a ``digital_matmul`` if op's node is in ``ctx.digital``."""
    w = graph.add_constant(graph.fresh(f"{op.origin or op.id}.matrix"), weight)
    ins = [x, w] + ([op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] else [])
    if op.origin in ctx.digital:
        _digital_matmul(graph, op, ins, out)
        return
    tiles = tile(weight, ctx.chip.rows, ctx.chip.weights_per_row)
    graph.add_op("xbar_matmul", ins, [out], {"tiles": tiles, "act": op.attrs.get("act")},
                 op.origin)


def _digital_matmul(graph: Graph, op: Op, ins: list[str], out: str) -> None:
    """A ``digital_matmul`` of ``ins`` (x, weight [K, M], bias?) into ``out``, its bias as
    [M]; a bias that varies along other axes is added after it, then the activation."""
    name, act = op.origin or op.id, op.attrs.get("act")
    m = graph.shape(ins[1])[1]
    b = graph.constants[ins[2]] if len(ins) > 2 else None
    if b is None or b.size in (1, m) and b.size == int(np.prod(b.shape[-1:])):
        if b is not None:
            ins[2] = graph.add_constant(graph.fresh(f"{name}.bias"),
                                        np.broadcast_to(b.reshape(-1), (m,)).astype(np.float32))
        graph.add_op("digital_matmul", ins, [out], {"act": act}, op.origin)
        return
    y = graph.add_value(graph.fresh(f"{name}.product"), graph.shape(out))
    graph.add_op("digital_matmul", ins[:2], [y], {"act": None}, op.origin)
    z = graph.add_value(graph.fresh(f"{name}.biased"), graph.shape(out)) if act else out
    graph.add_op("add", [y, ins[2]], [z], {}, op.origin)
    if act:
        graph.add_op(act[0], [z], [out], dict(act[1]), op.origin)


def _lower_conv(graph: Graph, op: Op, ctx) -> None:
    x, out = op.inputs[0], op.outputs[0]
    w = graph.constants[op.inputs[1]].astype(np.float32)
    b, m = graph.shape(x)[0], w.shape[0]
    out_sp = graph.shape(out)[2:]
    p = int(np.prod(out_sp, dtype=np.int64))
    k = graph.shape(x)[1] * int(np.prod(w.shape[2:], dtype=np.int64))
    patches = graph.add_value(graph.fresh(f"{op.origin or op.id}.patches"), (b, p, k))
    window = {key: op.attrs[key] for key in ("kernel", "strides", "pads", "dilations")}
    graph.add_op("im2col", [x], [patches], window, op.origin)
    if x in graph.ranges:
        graph.ranges[patches] = graph.ranges[x]
    cols = graph.add_value(graph.fresh(f"{op.origin or op.id}.cols"), (b, p, m))
    _product(graph, op, patches, weight_matrix(op.kind, w, op.attrs), cols, ctx)
    graph.add_op("unpatch", [cols], [out], {}, op.origin)


def matrix_bytes(graph: Graph, op: Op) -> int:
    """Bytes of the [K, M] crossbar matrix of a conv or matmul, from shapes alone."""
    w = graph.shape(op.inputs[1])
    if op.kind == "conv":
        return graph.shape(op.inputs[0])[1] * int(np.prod(w[2:], dtype=np.int64)) * w[0] * F32
    return int(np.prod(w, dtype=np.int64)) * F32


def _lower_matmul(graph: Graph, op: Op, ctx) -> None:
    w = graph.constants[op.inputs[1]].astype(np.float32)
    _product(graph, op, op.inputs[0], weight_matrix(op.kind, w, op.attrs), op.outputs[0], ctx)


# cimc --dynamic: how a product of two computed operands (dynmatmul) is mapped
DYNAMIC = {"digital": "dyn_digital", "write": "dyn_write"}


def _lower_dynamic(graph: Graph, op: Op, ctx) -> None:
    """The policy ``ctx.dynamic`` (a key of ``DYNAMIC``, checked by ``compile_model``), or
    the digital unit for a product ``--digital`` names by its node (``ctx.digital_named``;
    ``all``, ``first`` and ``last`` leave products to the policy)."""
    policy = "digital" if op.origin in ctx.digital_named else ctx.dynamic
    graph.add_op(DYNAMIC[policy], op.inputs, op.outputs, {}, op.origin)


LOWER = {"conv": _lower_conv, "matmul": _lower_matmul, "dynmatmul": _lower_dynamic}


def run(graph: Graph, ctx) -> Graph:
    ops = [o for o in graph.ops() if o.kind in LOWER]
    ctx.limits.check_weights(sum(matrix_bytes(graph, op) for op in ops
                                 if op.kind != "dynmatmul"),
                             "the model (its crossbar weight matrices)")
    for op in bar(ops, ctx.progress, "lower-to-crossbar", "layer"):
        graph.remove_op(op)
        LOWER[op.kind](graph, op, ctx)
    graph.drop_dead()
    graph.level = CROSSBAR
    ctx.stats["tiles"] = sum(len(o.attrs["tiles"]) for o in graph.ops()
                             if o.kind == "xbar_matmul")
    ctx.stats["digital_layers"] = sum(o.kind == "digital_matmul" for o in graph.ops())
    ctx.stats["dynamic_products"] = sum(o.kind in DYNAMIC.values() for o in graph.ops())
    return graph
