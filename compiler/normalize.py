"""ONNX op -> canonical IR op: one small function per ONNX type, found through ``NORMALIZERS``
(the ONNX rows of ``compiler.ops`` whose ``rewrite`` is ``normalize``).

Each takes (graph, op) and returns (kind, inputs, attrs) of the canonical op with every
attribute explicit and numeric (auto_pad resolved to pads, negative axes made positive,
defaults filled in), or None when the op was rewritten into other ops itself.
"""

from __future__ import annotations

import numpy as np

from . import conv_transpose as ct
from . import resize as rs
from .errors import CompileError
from .ir import Graph, Op
from .ops import LOGIC, MATH, ONNX_ACTIVATIONS, ONNX_ARGS, ONNX_REDUCTIONS


def _spatial(graph: Graph, op: Op):
    return graph.shape(op.inputs[0])[2:], graph.shape(op.outputs[0])[2:]


def resolve_pads(op: Op, in_sp, out_sp, kernel, strides, dilations) -> list[int]:
    """Explicit [begin..., end...] pads, resolving ONNX auto_pad."""
    auto = op.attrs.get("auto_pad", "NOTSET")
    n = len(in_sp)
    if auto in ("NOTSET", "") or auto is None:
        return list(op.attrs.get("pads", [0] * 2 * n))
    if auto == "VALID":
        return [0] * 2 * n
    total = [max((o - 1) * s + (k - 1) * d + 1 - i, 0)
             for i, o, k, s, d in zip(in_sp, out_sp, kernel, strides, dilations)]
    small = [t // 2 for t in total]
    big = [t - t // 2 for t in total]
    return small + big if auto == "SAME_UPPER" else big + small


def _window(graph: Graph, op: Op, kernel) -> dict:
    in_sp, out_sp = _spatial(graph, op)
    n = len(in_sp)
    strides = list(op.attrs.get("strides", [1] * n))
    dil = list(op.attrs.get("dilations", [1] * n))
    pads = resolve_pads(op, in_sp, out_sp, kernel, strides, dil)
    return {"kernel": list(kernel), "strides": strides, "pads": pads, "dilations": dil}


def _axis(graph: Graph, name: str, axis: int) -> int:
    return axis % len(graph.shape(name))


def conv(graph, op):
    w = graph.constants[op.inputs[1]]
    attrs = _window(graph, op, w.shape[2:])
    attrs["group"] = int(op.attrs.get("group", 1))
    return "conv", op.inputs[:3], attrs


def conv_transpose(graph, op):
    """ConvTranspose as a stride-1 convolution of the spread input (``compiler.conv_transpose``:
    an ``interp`` op per spatial axis to spread, then a conv)."""
    x, y = graph.shape(op.inputs[0]), graph.shape(op.outputs[0])
    plan = ct.plan(x[2:], graph.constants[op.inputs[1]], op.attrs)
    if tuple(y[2:]) != tuple(plan.out_spatial):
        raise CompileError(f"{op.origin or op.id}: ConvTranspose computes spatial size "
                           f"{plan.out_spatial}, as onnxruntime does, but onnx's shape "
                           f"inference declares {list(y)} (an output_shape below the natural "
                           "size, or auto_pad with output_padding)")
    spread = _interp_steps(graph, op, op.inputs[0], plan.spreads)
    weight = graph.add_constant(graph.fresh(f"{op.origin or op.id}.weight"), plan.weight)
    n = len(x) - 2
    return "conv", [spread, weight, *op.inputs[2:3]], {
        "kernel": list(plan.weight.shape[2:]), "strides": [1] * n, "pads": [0] * 2 * n,
        "dilations": plan.dilations, "group": plan.group}


def gemm(graph, op):
    a = op.attrs
    w = graph.constants[op.inputs[1]].astype(np.float32)
    w = (w.T if a.get("transB", 0) else w) * np.float32(a.get("alpha", 1.0))
    x = op.inputs[0]
    if a.get("transA", 0):
        x = graph.add_value(graph.fresh("xT"), graph.shape(x)[::-1])
        graph.add_op("transpose", [op.inputs[0]], [x], {"perm": [1, 0]}, op.origin)
    ins = [x, graph.add_constant(graph.fresh(f"{op.origin or op.id}.w"), w)]
    if len(op.inputs) > 2 and op.inputs[2]:
        c = graph.constants[op.inputs[2]].astype(np.float32) * np.float32(a.get("beta", 1.0))
        ins.append(graph.add_constant(graph.fresh(f"{op.origin or op.id}.b"), c))
    return "matmul", ins, {}


def _as_matrix(graph, name: str, other: str):
    """The constant ``name`` as a 2-D matrix if it is one, or a stack of one matrix
    ([1, .., 1, K, M]) no deeper than ``other`` (its leading ones broadcast away); else None."""
    c = graph.constants.get(name)
    if c is None or c.ndim < 2 or c.ndim > len(graph.shape(other)) or \
            any(d != 1 for d in c.shape[:-2]):
        return None
    return c.reshape(c.shape[-2:])


def _swap_perm(rank: int) -> list[int]:
    """The permutation that swaps the last two of ``rank`` axes."""
    return list(range(rank - 2)) + [rank - 1, rank - 2]


def _swap_last(graph, op, name: str) -> str:
    """A transpose of ``name``'s last two axes, added before ``op``'s result."""
    shape = graph.shape(name)
    out = graph.add_value(graph.fresh(f"{name}.T"), shape[:-2] + (shape[-1], shape[-2]))
    graph.add_op("transpose", [name], [out], {"perm": _swap_perm(len(shape))}, op.origin)
    return out


def matmul(graph, op):
    """A constant b that is one matrix: crossbar weights (x of rank >= 2). A constant a with
    a computed b: y = (b^T a^T)^T, two transposes around the product, so the constant is
    the weight side (crossbar weights if it is one matrix); a computed b of rank 2 has its
    samples on the contracted axis, so its transposes mix samples as the product does.
    Anything else is a product of two operands of rank >= 2 that the chip computes
    per inference (``support.RESTRICTIONS``)."""
    a, b = op.inputs[:2]
    weight = _as_matrix(graph, b, a)
    if weight is not None:
        name = b if graph.constants[b].ndim == 2 else \
            graph.add_constant(graph.fresh(f"{op.origin or op.id}.w"), weight)
        return "matmul", [a, name], {}
    if a in graph.constants and b not in graph.constants:
        c = graph.constants[a]
        if c.ndim > len(graph.shape(b)):
            raise CompileError(f"{op.origin or op.id}: MatMul of a constant {list(c.shape)} "
                               f"by a computed {list(graph.shape(b))}: a constant of more "
                               "axes than the computed operand would put its own axes before "
                               "the samples; not supported")
        at = graph.add_constant(graph.fresh(f"{op.origin or op.id}.wT"),
                                np.ascontiguousarray(np.swapaxes(c, -1, -2)))
        bt = _swap_last(graph, op, b)
        shape = graph.shape(op.outputs[0])
        yt = graph.add_value(graph.fresh(f"{op.origin or op.id}.yT"),
                             shape[:-2] + (shape[-1], shape[-2]))
        inner = Op(op.id, "MatMul", [bt, at], [yt], {}, op.origin)
        kind, ins, attrs = matmul(graph, inner)
        graph.add_op(kind, ins, [yt], attrs, op.origin)
        return "transpose", [yt], {"perm": _swap_perm(len(shape))}
    return "dynmatmul", [a, b], {}


def layernorm(graph, op):
    """LayerNormalization over the axes from ``axis`` on; a missing bias is zeros."""
    axis = _axis(graph, op.inputs[0], op.attrs.get("axis", -1))
    scale = graph.constants[op.inputs[1]]
    bias = op.inputs[2] if len(op.inputs) > 2 and op.inputs[2] else \
        graph.add_constant(graph.fresh(f"{op.origin or op.id}.bias"), np.zeros_like(scale))
    return "layernorm", [op.inputs[0], op.inputs[1], bias], \
        {"axis": axis, "epsilon": float(op.attrs.get("epsilon", 1e-5))}


def rmsnorm(graph, op):
    """RMSNormalization over the axes from ``axis`` on (the mean of squares in float32, the
    default stash type)."""
    axis = _axis(graph, op.inputs[0], op.attrs.get("axis", -1))
    return "rmsnorm", op.inputs[:2], {"axis": axis,
                                      "epsilon": float(op.attrs.get("epsilon", 1e-5))}


def gelu(graph, op):
    return "gelu", op.inputs[:1], {"approximate": op.attrs.get("approximate", "none")}


def gather(graph, op):
    """Gather along ``axis``; constant indices become non-negative float32 (as buffers hold
    them); dynamic ones are token ids the program validates on input."""
    data, idx = op.inputs[:2]
    axis = _axis(graph, data, op.attrs.get("axis", 0))
    if idx in graph.constants:
        n = graph.shape(data)[axis]
        i = np.asarray(graph.constants[idx]).astype(np.int64)
        idx = graph.add_constant(graph.fresh(f"{op.origin or op.id}.indices"),
                                 np.where(i < 0, i + n, i).astype(np.float32))
    return "gather", [data, idx], {"axis": axis}


def _const_ints(graph: Graph, op: Op, pos: int) -> list[int] | None:
    if len(op.inputs) > pos and op.inputs[pos]:
        return [int(v) for v in np.asarray(graph.constants[op.inputs[pos]]).reshape(-1)]
    return None


def slice_(graph, op):
    """Slice with every axis explicit: python range (start, stop, step) per axis, stop -1
    meaning past the front for a negative step."""
    shape = graph.shape(op.inputs[0])
    starts, ends = _const_ints(graph, op, 1), _const_ints(graph, op, 2)
    if starts is None:  # opset < 10: attributes
        starts, ends = list(op.attrs["starts"]), list(op.attrs["ends"])
    axes = _const_ints(graph, op, 3) or op.attrs.get("axes") or list(range(len(starts)))
    steps = _const_ints(graph, op, 4) or [1] * len(starts)
    full = [[0, d, 1] for d in shape]
    for ax, s, e, st in zip(axes, starts, ends, steps):
        ax %= len(shape)
        full[ax] = _onnx_range(s, e, st, shape[ax])
    return "slice", op.inputs[:1], {k: [f[i] for f in full]
                                     for i, k in enumerate(("starts", "ends", "steps"))}


def _onnx_range(start: int, end: int, step: int, dim: int) -> list[int]:
    """ONNX Slice's clamping of one axis (a negative bound counts from the end; then, for a
    positive step, both within [0, dim]; for a negative one the start within [0, dim - 1]
    and the end within [-1, dim - 1], -1 running past the front). Python's slice.indices
    differs for a start below -dim with a negative step (it gives an empty range)."""
    start, end = (v + dim if v < 0 else v for v in (start, end))
    if step > 0:
        return [min(max(start, 0), dim), min(max(end, 0), dim), step]
    return [min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step]


def split(graph, op):
    """Split into consecutive slices along ``axis``: sizes from the split input or attribute,
    else as equal as ONNX makes them (the last smaller)."""
    shape = graph.shape(op.inputs[0])
    axis = op.attrs.get("axis", 0) % len(shape)
    for out in op.outputs:
        start = sum(graph.shape(o)[axis] for o in op.outputs[:op.outputs.index(out)])
        size = graph.shape(out)[axis]
        starts, ends, steps = [0] * len(shape), list(shape), [1] * len(shape)
        starts[axis], ends[axis] = start, start + size
        graph.add_op("slice", op.inputs[:1], [out], {"starts": starts, "ends": ends,
                                                     "steps": steps}, op.origin)
    return None


# What a reduction over no axes (noop_with_empty_axes) leaves: its elementwise step; the
# others a copy.
_NO_AXES = {"reducel1": ("abs", 1), "reducel2": ("abs", 1), "reducesumsquare": ("mul", 2),
            "reducelogsum": ("log", 1)}


def reduce(kind):
    """ReduceX as ``kind`` over its axes (an input, else an attribute; none: all axes, or
    with noop_with_empty_axes the reduction's elementwise step alone); a boolean's max and
    min over an empty set clipped to false and true."""
    def normalise(graph, op):
        rank = len(graph.shape(op.inputs[0]))
        axes = _const_ints(graph, op, 1)
        axes = axes if axes is not None else op.attrs.get("axes")
        if not axes:
            axes = [] if op.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
        if not axes:
            step, operands = _NO_AXES.get(kind, ("copy", 1))
            return step, op.inputs[:1] * operands, {}
        attrs = {"axes": sorted({int(a) % rank for a in axes}),
                 "keepdims": int(op.attrs.get("keepdims", 1))}
        if op.inputs[0] in graph.booleans and kind in ("reducemax", "reducemin"):
            # over an empty set a boolean's max is false and its min true, not -inf and inf
            mid = graph.add_value(graph.fresh(kind), graph.shape(op.outputs[0]))
            graph.add_op(kind, op.inputs[:1], [mid], attrs, op.origin)
            return "clip", [mid], {"min": 0.0, "max": 1.0}
        return kind, op.inputs[:1], attrs
    return normalise


def arg(kind):
    """ArgMax / ArgMin as ``kind`` along one axis; select_last_index as the first extreme of
    the axis reversed, counted from its end (n - 1 - i)."""
    def normalise(graph, op):
        shape = graph.shape(op.inputs[0])
        axis = op.attrs.get("axis", 0) % len(shape)
        attrs = {"axes": [axis], "keepdims": int(op.attrs.get("keepdims", 1))}
        if not op.attrs.get("select_last_index", 0):
            return kind, op.inputs[:1], attrs
        n = shape[axis]
        starts, ends, steps = [0] * len(shape), list(shape), [1] * len(shape)
        starts[axis], ends[axis], steps[axis] = n - 1, -1, -1
        flipped = graph.add_value(graph.fresh(f"{kind}.reversed"), shape)
        graph.add_op("slice", op.inputs[:1], [flipped],
                     {"starts": starts, "ends": ends, "steps": steps}, op.origin)
        first = graph.add_value(graph.fresh(kind), graph.shape(op.outputs[0]))
        graph.add_op(kind, [flipped], [first], attrs, op.origin)
        last = graph.add_constant(graph.fresh(f"{op.origin or op.id}.last"), np.float32(n - 1))
        return "sub", [last, first], {}
    return normalise


def resize(graph, op):
    """Resize as one ``interp`` op per axis whose length or scale changes
    (``compiler.resize.plan``); a copy when none does."""
    x, y = graph.shape(op.inputs[0]), graph.shape(op.outputs[0])
    scales, sizes = (graph.constants[op.inputs[i]].reshape(-1) if len(op.inputs) > i and
                     op.inputs[i] else None for i in (2, 3))
    steps = rs.plan(x, scales, sizes, op.attrs, y)
    _interp_steps(graph, op, op.inputs[0], steps, op.outputs[0])
    return None


def _interp_steps(graph, op, src: str, steps, out: str | None = None) -> str:
    """``steps`` ((axis, indices, weights), as ``resize.plan`` gives them) as a chain of
    ``interp`` ops from ``src``; returns the last result: ``out`` if given (a copy of src
    when there are no steps), else a new value. A step whose weights are all non-negative
    (a weighted mean, zeros inserted) keeps its input's calibrated range; cubic's may not."""
    acc, shape = src, list(graph.shape(src))
    for i, (axis, idx, w) in enumerate(steps):
        shape[axis] = len(idx)
        nxt = out if out is not None and i == len(steps) - 1 else \
            graph.add_value(graph.fresh(op.kind.lower()), tuple(shape))
        names = [graph.add_constant(graph.fresh(f"{op.origin or op.id}.{k}{axis}"),
                                    v.astype(np.float32)) for k, v in (("index", idx),
                                                                       ("weight", w))]
        graph.add_op("interp", [acc, *names], [nxt], {"axis": axis}, op.origin)
        if acc in graph.ranges and (w >= 0).all():
            graph.ranges.setdefault(nxt, graph.ranges[acc])
        acc = nxt
    if out is not None and not steps:
        graph.add_op("copy", [acc], [out], {}, op.origin)
        acc = out
    return acc


def copy(graph, op):
    """Expand (to the declared, broadcast shape): a copy."""
    return "copy", op.inputs[:1], {}


def cast(graph, op):
    """Cast and CastLike between float32 and bool (which the chip holds as float32 0 and 1):
    to bool ``tobool``, else a copy."""
    return ("tobool" if op.outputs[0] in graph.booleans else "copy"), op.inputs[:1], {}


def batchnorm(graph, op):
    """Inference mode only (``support.RESTRICTIONS``)."""
    return "batchnorm", op.inputs[:5], {"epsilon": float(op.attrs.get("epsilon", 1e-5))}


def clip(graph, op):
    lo, hi = -np.inf, np.inf
    if len(op.inputs) > 1 and op.inputs[1]:
        lo = float(graph.constants[op.inputs[1]])
    if len(op.inputs) > 2 and op.inputs[2]:
        hi = float(graph.constants[op.inputs[2]])
    lo, hi = op.attrs.get("min", lo), op.attrs.get("max", hi)
    return "clip", op.inputs[:1], {"min": float(lo), "max": float(hi)}


def pad(graph, op):
    rank = len(graph.shape(op.inputs[0]))
    pads = _const_ints(graph, op, 1)
    pads = list(op.attrs.get("pads")) if pads is None else pads
    axes = _const_ints(graph, op, 3)
    if axes is not None:
        axes = [a % rank for a in axes]
        full = [0] * 2 * rank
        for i, ax in enumerate(axes):
            full[ax], full[rank + ax] = pads[i], pads[len(axes) + i]
        pads = full
    value = 0.0
    if len(op.inputs) > 2 and op.inputs[2]:
        value = float(graph.constants[op.inputs[2]].reshape(-1)[0])
    return "pad", op.inputs[:1], {"pads": pads, "mode": op.attrs.get("mode", "constant"),
                                  "value": value}


def pool(kind):
    def normalise(graph, op):
        a = op.attrs  # storage_order only orders the Indices output, which is never computed
        attrs = _window(graph, op, a["kernel_shape"])
        attrs["ceil"] = int(a.get("ceil_mode", 0))
        if kind == "avgpool":
            attrs["count_pad"] = int(a.get("count_include_pad", 0))
        return kind, op.inputs[:1], attrs
    return normalise


def reshape(graph, op):
    return "reshape", op.inputs[:1], {}


def chain(kind):
    """A variadic ONNX op (Sum, Max, Min) as a chain of the binary ``kind``, each partial
    result of its two operands' broadcast shape; one input is a copy."""
    def normalise(graph, op):
        acc = op.inputs[0]
        for i, other in enumerate(op.inputs[1:]):
            last = i == len(op.inputs) - 2
            shape = np.broadcast_shapes(graph.shape(acc), graph.shape(other))
            out = op.outputs[0] if last else graph.add_value(graph.fresh(kind), shape)
            graph.add_op(kind, [acc, other], [out], {}, op.origin)
            acc = out
        if len(op.inputs) == 1:
            graph.add_op("copy", [acc], op.outputs, {}, op.origin)
        return None
    return normalise


def simple(kind, **defaults):
    def normalise(graph, op):
        attrs = {k: type(v)(op.attrs.get(k, v)) for k, v in defaults.items()}
        return kind, op.inputs, attrs
    return normalise


def axis_op(kind, default):
    def normalise(graph, op):
        name = op.inputs[0] if kind in ("softmax", "logsoftmax") else op.outputs[0]
        return kind, op.inputs, {"axis": _axis(graph, name, op.attrs.get("axis", default))}
    return normalise


def transpose(graph, op):
    rank = len(graph.shape(op.inputs[0]))
    perm = op.attrs.get("perm", list(range(rank))[::-1])
    return "transpose", op.inputs, {"perm": [int(p) for p in perm]}


def lrn(graph, op):
    a = op.attrs
    return "lrn", op.inputs, {"size": int(a["size"]), "alpha": float(a.get("alpha", 1e-4)),
                              "beta": float(a.get("beta", 0.75)), "bias": float(a.get("bias", 1.0))}


NORMALIZERS = {
    "Conv": conv, "Gemm": gemm, "MatMul": matmul, "BatchNormalization": batchnorm,
    "Clip": clip, "Pad": pad, "MaxPool": pool("maxpool"), "AveragePool": pool("avgpool"),
    "Flatten": reshape, "Reshape": reshape, "Squeeze": reshape, "Unsqueeze": reshape,
    "Sum": chain("add"), "Max": chain("max"), "Min": chain("min"), "Transpose": transpose,
    "LRN": lrn,
    "Relu": simple("relu"), "Sigmoid": simple("sigmoid"), "Tanh": simple("tanh"),
    "LeakyRelu": simple("leakyrelu", alpha=0.01),
    "HardSigmoid": simple("hardsigmoid", alpha=0.2, beta=0.5),
    "Add": simple("add"), "Sub": simple("sub"), "Mul": simple("mul"), "Div": simple("div"),
    "GlobalAveragePool": simple("gavgpool"), "GlobalMaxPool": simple("gmaxpool"),
    "Concat": axis_op("concat", 0), "Softmax": axis_op("softmax", -1),
    "LayerNormalization": layernorm, "RMSNormalization": rmsnorm, "Gelu": gelu,
    "Gather": gather, "Slice": slice_,
    "Split": split, "Expand": copy, "Cast": cast, "CastLike": cast,
    **{k: simple(kind) for k, kind in LOGIC.items()}, "Not": simple("not"),
    "Where": simple("where"),
    "LogSoftmax": axis_op("logsoftmax", -1), "PRelu": simple("prelu"), "Resize": resize,
    "ConvTranspose": conv_transpose,
    **{k: reduce(kind) for k, kind in ONNX_REDUCTIONS.items()},
    **{k: arg(kind) for k, kind in ONNX_ARGS.items()},
    **{k: simple(kind) for k, kind in MATH.items()},
    **{k: simple(kind, **defaults) for k, (kind, defaults) in ONNX_ACTIVATIONS.items()},
    "Erf": simple("erf"), "Sqrt": simple("sqrt"), "Reciprocal": simple("reciprocal"),
    "Exp": simple("exp"), "Neg": simple("neg"), "Pow": simple("pow"),
}
