"""The IR evaluator: run a ``Graph`` at any stage of the pipeline on numpy inputs.

``evaluate(graph, feeds)`` computes every op in topological order and returns the graph's
outputs by their ONNX names. It is what makes each pass testable differentially: the outputs
after a pass must equal those before it (and onnxruntime's).

- Straight after import an op is an ONNX node (its NodeProto in ``op.proto``): it runs
  on ONNX's reference evaluator, alone, at the graph's opset (with LRN corrected, see ``LRN``).
- Every other op is looked up by kind in ``KINDS``: one small function per canonical or
  crossbar-level kind of the op table (``compiler.ops``; tests/test_ops.py checks both have
  the same kinds) stating its semantics in numpy, in float32 like the chip's ideal mode.
  Where the runtime computes the same thing (windows, pooling, pad, softmax, LRN, activations,
  unpatch, the BasisN combiner, the digital unit's product), both call ``isa.kernels`` /
  ``isa.windows``.
- An op with ``attrs["act"] = Act(kind, attrs)`` (a fused epilogue: conv, matmul,
  xbar_matmul, digital_matmul, combine) applies that activation to its result.

Crossbar ops compute with the whole weight; ``xbar_matmul`` first checks that its ``tiles``
lie inside the weight, do not overlap and cover every non-zero weight (the chip multiplies by
the tiles only). Every result must have its value's declared shape. Any violation, and an op
of an unknown kind, raises CompileError naming the op.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from isa import kernels
from isa import windows as win

from .errors import CompileError
from .ir import Graph, Op
from .onnx_reference import reference_evaluator

F32 = np.float32

# fn(op, inputs, declared output shape) -> the op's (single) output
Kind = Callable[[Op, list, tuple], np.ndarray]


def _name(op: Op) -> str:
    return f"{op.kind} op {op.id}" + (f" (onnx: {op.origin})" if op.origin else "")


def _window(op: Op) -> list:
    return [op.attrs[k] for k in ("kernel", "strides", "pads", "dilations")]


def _conv(op: Op, ins: list, shape: tuple) -> np.ndarray:
    _, strides, pads, dilations = _window(op)
    bias = ins[2] if len(ins) > 2 else None
    return kernels.conv(ins[0], ins[1], bias, strides, pads, dilations, op.attrs["group"])


def _matmul(op: Op, ins: list, shape: tuple) -> np.ndarray:
    """x @ w (+ b): w is [K, M], x [..., K], b broadcasts against [..., M]."""
    y = ins[0] @ ins[1]
    if len(ins) > 2 and ins[2] is not None:
        y = y + ins[2]
    return y.astype(F32)


def _batchnorm(op: Op, ins: list, shape: tuple) -> np.ndarray:
    """Inference batch normalisation over axis 1: (x - mean) / sqrt(var + eps) * scale + bias."""
    x, scale, bias, mean, var = ins
    per_channel = (-1,) + (1,) * (x.ndim - 2)
    scale, bias, mean, var = (t.reshape(per_channel) for t in (scale, bias, mean, var))
    return ((x - mean) / np.sqrt(var + F32(op.attrs["epsilon"])) * scale + bias).astype(F32)


def _maxpool(op: Op, ins: list, shape: tuple) -> np.ndarray:
    """Max over the windows (padding never wins), output spatial size as declared (ceil)."""
    return kernels.maxpool(ins[0], *_window(op), shape[2:])


def _avgpool(op: Op, ins: list, shape: tuple) -> np.ndarray:
    """Mean over the windows; ``count_pad``: explicit padding counts in the divisor."""
    return kernels.avgpool(ins[0], *_window(op), shape[2:], op.attrs["count_pad"])


def _check_tiles(op: Op, w: np.ndarray) -> None:
    """The tiles lie inside w, are disjoint, and hold every non-zero weight."""
    k, m = w.shape
    cover = np.zeros(w.shape, np.int32)
    for r0, r1, c0, c1 in op.attrs["tiles"]:
        if not (0 <= r0 < r1 <= k and 0 <= c0 < c1 <= m):
            raise CompileError(f"{_name(op)}: tile rows {r0}:{r1} cols {c0}:{c1} lie outside "
                               f"its {k} x {m} weight")
        cover[r0:r1, c0:c1] += 1
    if (cover > 1).any():
        r, c = np.argwhere(cover > 1)[0]
        raise CompileError(f"{_name(op)}: tiles overlap (weight row {r}, column {c} is in "
                           f"{cover[r, c]} tiles, and the chip would add it that often)")
    missed = (w != 0) & (cover == 0)
    if missed.any():
        r, c = np.argwhere(missed)[0]
        raise CompileError(f"{_name(op)}: {int(missed.sum())} non-zero weight(s) are in no "
                           f"tile (the first at row {r}, column {c})")


def _xbar_matmul(op: Op, ins: list, shape: tuple) -> np.ndarray:
    """x @ w (+ b) with w [K, M] the whole weight matrix, once its tiles are checked."""
    _check_tiles(op, ins[1])
    return _matmul(op, ins, shape)


def _basis_project(op: Op, ins: list, shape: tuple) -> np.ndarray:
    """x [..., G*h*L] in ``groups`` G of h*L rows, each times the [h*L, h*N] basis tile
    (h ``copies`` of the [L, N] basis on the diagonal): y [..., G*h*N]."""
    x, tile = ins
    a = op.attrs
    rows, cols = tile.shape
    if rows != a["unit"] * a["copies"] or x.shape[-1] != a["groups"] * rows:
        raise CompileError(f"{_name(op)}: a {rows}-row basis tile and a {x.shape[-1]}-wide "
                           f"input disagree with unit={a['unit']} copies={a['copies']} "
                           f"groups={a['groups']}")
    y = x.reshape(x.shape[:-1] + (a["groups"], rows)) @ tile
    return y.reshape(x.shape[:-1] + (a["groups"] * cols,)).astype(F32)


def _combine(op: Op, ins: list, shape: tuple) -> np.ndarray:
    """proj @ (levels * scale) (+ b): BasisN's combination of basis projections, with levels
    [J, M] integers within +-(2**(bits-1) - 1) (the combiner applies them bit-plane by
    bit-plane) and J the projections' width."""
    proj, levels, qmax = ins[0], ins[1], 2 ** (op.attrs["bits"] - 1) - 1
    if (levels != np.rint(levels)).any() or np.abs(levels).max(initial=0) > qmax:
        raise CompileError(f"{_name(op)}: coefficient levels must be integers within "
                           f"+-{qmax} for {op.attrs['bits']} bits")
    if proj.shape[-1] != levels.shape[0]:
        raise CompileError(f"{_name(op)}: {proj.shape[-1]} projections, {levels.shape[0]} "
                           "rows of coefficient levels")
    y = kernels.combine(proj, levels, ins[2])
    if len(ins) > 3 and ins[3] is not None:
        y = y + ins[3]
    return y.astype(F32)


def _activation(kind: str) -> Kind:
    return lambda op, ins, shape: kernels.activation(kind, ins[0], op.attrs)


def _binary(kind: str) -> Kind:
    return lambda op, ins, shape: kernels.binary(kind, ins[0], ins[1])


def _reduce(kind: str) -> Kind:
    return lambda op, ins, shape: kernels.reduce(kind, ins[0], op.attrs["axes"],
                                                 op.attrs["keepdims"])


KINDS: dict[str, Kind] = {
    "conv": _conv, "matmul": _matmul, "batchnorm": _batchnorm,
    **{k: _activation(k) for k in kernels.ACTIVATIONS},
    **{k: _binary(k) for k in kernels.BINARY},
    "maxpool": _maxpool, "avgpool": _avgpool,
    "gavgpool": lambda op, ins, shape: kernels.gavgpool(ins[0]),
    "gmaxpool": lambda op, ins, shape: kernels.gmaxpool(ins[0]),
    "reshape": lambda op, ins, shape: ins[0].reshape(shape),
    "transpose": lambda op, ins, shape: np.ascontiguousarray(ins[0].transpose(op.attrs["perm"])),
    "concat": lambda op, ins, shape: np.concatenate(ins, op.attrs["axis"]),
    "pad": lambda op, ins, shape: kernels.pad(ins[0], *(op.attrs[k] for k in
                                                       ("pads", "mode", "value"))),
    "softmax": lambda op, ins, shape: kernels.softmax(ins[0], op.attrs["axis"]),
    "logsoftmax": lambda op, ins, shape: kernels.logsoftmax(ins[0], op.attrs["axis"]),
    "interp": lambda op, ins, shape: kernels.interp(*ins, op.attrs["axis"]),
    "where": lambda op, ins, shape: np.broadcast_to(kernels.where(*ins), shape).astype(F32),
    "lrn": lambda op, ins, shape: kernels.lrn(ins[0], *(op.attrs[k] for k in
                                                       ("size", "alpha", "beta", "bias"))),
    "copy": lambda op, ins, shape: np.broadcast_to(ins[0], shape).astype(F32),
    "im2col": lambda op, ins, shape: kernels.permute(win.im2col(ins[0], *_window(op)),
                                                     op.attrs.get("perm")),
    "rmsnorm": lambda op, ins, shape: kernels.rmsnorm(*ins, op.attrs["axis"],
                                                     op.attrs["epsilon"]),
    "layernorm": lambda op, ins, shape: kernels.layernorm(*ins, op.attrs["axis"],
                                                         op.attrs["epsilon"]),
    **{k: _reduce(k) for k in kernels.REDUCE},
    "slice": lambda op, ins, shape: kernels.slice_axes(ins[0], *(op.attrs[k] for k in
                                                                ("starts", "ends", "steps"))),
    "gather": lambda op, ins, shape: kernels.gather(ins[0], ins[1], op.attrs["axis"]),
    **{k: lambda op, ins, shape: kernels.bmm(*ins)
       for k in ("dynmatmul", "dyn_digital", "dyn_write")},
    "xbar_matmul": _xbar_matmul,
    "digital_matmul": lambda op, ins, shape: kernels.matmul(*ins),
    "unpatch": lambda op, ins, shape: kernels.unpatch(kernels.permute(ins[0],
                                                                      op.attrs.get("perm")),
                                                      shape),
    "permute": lambda op, ins, shape: kernels.permute(ins[0], ins[1]),
    "basis_project": _basis_project,
    "combine": _combine,
}


def _onnx(graph: Graph, op: Op, ins: list) -> list[np.ndarray]:
    """An ONNX node on ONNX's reference evaluator; its outputs in ``op.outputs`` order."""
    proto = op.proto
    feeds = {name: x for name, x in zip(proto.input, ins) if name}
    if proto.op_type == "Gather":  # token ids arrive as float32, like every input
        feeds[proto.input[1]] = np.asarray(feeds[proto.input[1]]).astype(np.int64)
    try:
        results = reference_evaluator(proto, opsets={"": graph.opset}).run(None, feeds)
    except Exception as exc:
        raise CompileError(f"{_name(op)}: ONNX's reference evaluator failed: {exc}") from None
    by_name = dict(zip(proto.output, results))
    return [np.asarray(by_name[o]) for o in op.outputs]


def evaluate_op(graph: Graph, op: Op, ins: list) -> list[np.ndarray]:
    """The results of one op of ``graph`` on operand values ``ins`` (None for an omitted
    one). Raises CompileError as ``evaluate``."""
    return _run(graph, op, ins)


def _run(graph: Graph, op: Op, ins: list) -> list[np.ndarray]:
    if op.kind in KINDS:
        out = graph.values.get(op.outputs[0])
        try:
            y = KINDS[op.kind](op, ins, out.shape if out is not None else None)
        except (ValueError, IndexError, KeyError, TypeError) as exc:  # operands that disagree
            raise CompileError(f"{_name(op)}: cannot evaluate: {exc!r}") from None
        if op.attrs.get("act"):
            kind, attrs = op.attrs["act"]
            y = kernels.activation(kind, y, attrs)
        return [y]
    if op.proto is not None:
        return _onnx(graph, op, ins)
    raise CompileError(f"{_name(op)}: the IR evaluator has no rule for kind {op.kind!r} "
                       f"(known: {', '.join(KINDS)}, and ONNX nodes straight after import)")


def _inputs(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [n for n in graph.inputs if n not in feeds]
    if missing:
        raise CompileError(f"evaluate: missing input(s) {', '.join(missing)}")
    env = {}
    for name in graph.inputs:
        x = np.asarray(feeds[name], F32)
        if x.shape != graph.shape(name):
            raise CompileError(f"evaluate: input {name!r} has shape {list(x.shape)}, the graph "
                               f"takes {list(graph.shape(name))}")
        env[name] = x
    return env


def evaluate(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs of ``graph`` on ``feeds`` (by input name, each of the input's declared
    shape, converted to float32), keyed by ``graph.output_names``. The graph is not changed.
    Raises CompileError naming the op on an unknown kind, bad tiles or a wrong result shape."""
    env = {**graph.constants, **_inputs(graph, feeds)}
    for op in graph.ops():
        results = _run(graph, op, [env[i] if i else None for i in op.inputs])
        for name, y in zip(op.outputs, results):
            want = graph.values[name].shape if name in graph.values else y.shape
            if y.shape != want:
                raise CompileError(f"{_name(op)}: computes {name} of shape {list(y.shape)}, "
                                   f"declared {list(want)}")
            env[name] = y
    return {name: env[value] for name, value in zip(graph.output_names, graph.outputs)}
