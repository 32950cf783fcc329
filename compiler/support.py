"""Which ONNX models the compiler accepts: operators, their constant inputs, restrictions, dtypes.

The operators and their constant inputs are the ONNX rows of the op table (``compiler.ops``);
this module adds what the table cannot say: restrictions of supported operators, dtypes,
domains, and what folds.

Crossbars hold static weights, so e.g. a Conv's weight must be an initializer (or fold to one).
Any operator whose inputs are all constants is folded at compile time, whatever its type
(``constant_tensors``), and outputs nobody reads do not matter. An operator outside the table
that ONNX defines as a function of others is replaced by its body first
(``compiler.expand_functions``). Tensors are float32, or booleans and some integers held as
float32 (``DTYPES``, ``index_inputs``, ``held_integers``). The frontend enforces these
declarations; ``tools/conformance.py`` calls a test case unsupported only by them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from .ops import ONNX, OPS
from .resize import COORDINATES

# ONNX op type -> input positions that must be compile-time constants: the ONNX rows of the
# op table and their ``const`` operands.
SUPPORTED: dict[str, frozenset[int]] = {
    name: frozenset(i for i, o in enumerate(row.operands) if o.role == "const")
    for name, row in OPS.items() if row.level == ONNX}

# Operator domains the compiler knows (ONNX's default domain, under both its names).
DOMAINS = frozenset({"", "ai.onnx"})

# The element types the chip computes (every tensor that is not a compile-time constant):
# float32, and booleans (comparisons make them; Where, Not, And, Or, Xor read them) held as
# float32 0 and 1, which is also what a run takes and returns for them.
DTYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL})

# Ops never folded even when their inputs are constant (they are random or have effects).
NOT_FOLDABLE = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike",
                          "RandomUniformLike", "Multinomial", "Bernoulli", "If", "Loop", "Scan"})

# Ops whose output is a constant as soon as their input's shape is static.
SHAPE_OPS = frozenset({"Shape", "Size"})

Shapes = dict[str, tuple[int, ...]]
Values = dict[str, np.ndarray]


def dropout_is_random(ratio: float, training: bool) -> bool:
    """Dropout drops (randomly) only in training mode with a ratio above zero."""
    return training and ratio > 0


def _dropout(node: onnx.NodeProto, shapes: Shapes, values: Values) -> str | None:
    ins = list(node.input) + ["", ""]
    attr = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    ratio = float(values[ins[1]]) if ins[1] in values else attr.get("ratio", 0.5)
    training = bool(values[ins[2]]) if ins[2] in values else False
    if dropout_is_random(ratio, training):
        return "Dropout in training mode is not supported (inference only)"
    return None


def _batchnorm(node: onnx.NodeProto, shapes: Shapes, values: Values) -> str | None:
    if any(a.name == "training_mode" and a.i for a in node.attribute):
        return "BatchNormalization in training mode is not supported (inference only)"
    return None


def _matmul(node: onnx.NodeProto, shapes: Shapes, values: Values) -> str | None:
    x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
    if x is not None and w is not None and (len(w) < 2 or len(x) < 2):
        return (f"MatMul needs operands of rank >= 2 (a 1-D operand is not supported), got "
                f"{tuple(x)} x {tuple(w)}")
    return None


def _layernorm(node: onnx.NodeProto, shapes: Shapes, values: Values) -> str | None:
    if any(node.output[1:]):
        return "LayerNormalization's Mean and InvStdDev outputs (training) are not supported"
    return None


def _cast_to(node: onnx.NodeProto) -> int | None:
    """A Cast's target element type."""
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _cast(node: onnx.NodeProto, shapes: Shapes, values: Values) -> str | None:
    if _cast_to(node) not in DTYPES:
        return "Cast of a computed tensor is supported to float32 and bool only"
    return None


def _resize(node: onnx.NodeProto, shapes: Shapes, values: Values) -> str | None:
    """Every coordinate transformation ``compiler.resize`` lowers (not tf_crop_and_resize,
    a crop by roi with an extrapolation value, which is no linear map)."""
    mode = next((a.s.decode() for a in node.attribute
                 if a.name == "coordinate_transformation_mode"), "half_pixel")
    if mode not in COORDINATES:
        return f"Resize's coordinate_transformation_mode {mode!r} is not supported"
    interpolation = next((a.s.decode() for a in node.attribute if a.name == "mode"),
                         "nearest")
    if interpolation not in ("nearest", "linear", "cubic"):
        return (f"Resize's mode {interpolation!r} is not one of ONNX's (nearest, linear, "
                "cubic)")
    return None


def _prelu(node: onnx.NodeProto, shapes: Shapes, values: Values) -> str | None:
    """The slope broadcasts to x (onnx's shape inference does not check it; before opset 7
    a slope of C values was per channel, which ``frontend`` makes so)."""
    x, slope = shapes.get(node.input[0]), shapes.get(node.input[1])
    if x is not None and slope is not None:
        try:
            fits = np.broadcast_shapes(tuple(x), tuple(slope)) == tuple(x)
        except ValueError:
            fits = False
        if not fits:
            return (f"PRelu's slope {list(slope)} does not broadcast to its input "
                    f"{list(x)} (a slope per channel is [C, 1, ...] since opset 7)")
    return None


# Supported ops that are supported only in part: op -> check(node, shapes, values) giving what
# is not supported (None: fine). ``values`` holds initializers and Constant outputs.
RESTRICTIONS: dict[str, Callable[[onnx.NodeProto, Shapes, Values], str | None]] = {
    "Dropout": _dropout, "BatchNormalization": _batchnorm, "MatMul": _matmul, "Cast": _cast,
    "LayerNormalization": _layernorm, "Resize": _resize, "PRelu": _prelu,
}

# Integer element types a graph input may have when it holds token ids (``index_inputs``).
INDEX_DTYPES = frozenset({onnx.TensorProto.INT64, onnx.TensorProto.INT32})


def _readers(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """Tensor name -> (node, input position) of every node that reads it."""
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for pos, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, pos))
    return readers


def index_inputs(model: onnx.ModelProto, const: set[str], shapes: Shapes) -> dict[str, int]:
    """Integer graph inputs that only index constant tables (Gather's indices, as embeddings
    read token ids), each with the number of rows it may index (the smallest such table along
    its gather axis): the program validates ids against it. Buffers hold them as float32,
    exact below 2**24."""
    readers = _readers(model)
    out = {}
    for inp in model.graph.input:
        if inp.type.tensor_type.elem_type not in INDEX_DTYPES or inp.name in const:
            continue
        uses = readers.get(inp.name, [])
        if uses and all(n.op_type == "Gather" and pos == 1 and n.input[0] in const
                        and n.input[0] in shapes for n, pos in uses):
            out[inp.name] = min(shapes[n.input[0]][_gather_axis(n, shapes)] for n, _ in uses)
    return out


# Ops an integer tensor may pass through held as float32 (they move its values, never compute
# new ones: the results are integer tensors held alike), and those that end its integer life
# (a cast to float32 or bool; a comparison, exact on integers below 2**24; Shape and Size,
# which read only its shape).
_INT_MOVES = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Identity",
                        "Transpose", "Slice"})
_INT_ENDS = frozenset({"Cast", "CastLike", "Equal", "Less", "LessOrEqual", "Greater",
                       "GreaterOrEqual", "Shape", "Size"})


# Operators that compute an integer (an index) from floats: their results are held as
# float32 too, and may be program outputs (ports ``ints=1``, returned as int64)
_INT_SOURCES = frozenset({"ArgMax", "ArgMin"})


def held_integers(model: onnx.ModelProto, const: set[str], ids: dict) -> set[str]:
    """Integer tensors the chip holds as float32 (exact to 2**24; a run checks it): integer
    graph inputs other than token ids, and the indices ``_INT_SOURCES`` compute, whose
    readers only move them (``_INT_MOVES``) or end their integer life (``_INT_ENDS``: an
    attention mask cast to float, compared), and the integer tensors those moves make. An
    input's integers never reach an output; an index may."""
    readers = _readers(model)
    returned = {o.name for o in model.graph.output}
    starts = [(i.name, False) for i in model.graph.input
              if i.type.tensor_type.elem_type in INDEX_DTYPES and i.name not in const
              and i.name not in ids]
    starts += [(n.output[0], True) for n in model.graph.node
               if n.op_type in _INT_SOURCES and n.domain in DOMAINS]
    held: set[str] = set()
    for start, may_return in starts:
        path, todo, ok = {start}, [start], True
        while todo and ok:
            for node, pos in readers.get(todo.pop(), []):
                if node.op_type in _INT_MOVES and pos == 0:
                    path.update(node.output)
                    todo.extend(node.output)
                elif node.op_type == "Cast":
                    ok &= _cast_to(node) in DTYPES
                else:
                    ok &= node.op_type in _INT_ENDS
        if ok and (may_return or not path & returned):
            held |= path
    return held


def _gather_axis(node: onnx.NodeProto, shapes: Shapes) -> int:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return axis % len(shapes[node.input[0]])



def constant_tensors(model: onnx.ModelProto, shapes: Shapes) -> set[str]:
    """Names of the tensors that are compile-time constants: initializers, what folds from them
    (``SHAPE_OPS`` of a tensor in ``shapes`` too; never an op of another domain), and the mask
    of an inference-mode Dropout (all ones; training mode is refused by ``RESTRICTIONS``)."""
    const = {i.name for i in model.graph.initializer} | {""}
    for node in model.graph.node:
        folds = node.domain in DOMAINS and node.op_type not in NOT_FOLDABLE and \
            all(i in const for i in node.input)
        if folds or (node.op_type in SHAPE_OPS and node.input[0] in shapes):
            const.update(node.output)
        elif node.op_type == "Dropout" and len(node.output) > 1:
            const.add(node.output[1])
    return const


def used_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors some node reads or the graph returns (an output nobody reads does not matter)."""
    used = {o.name for o in model.graph.output}
    for node in model.graph.node:
        used.update(i for i in node.input if i)
    return used


def constant_values(model: onnx.ModelProto) -> Values:
    """Initializers and the outputs of Constant nodes that hold a tensor, as arrays."""
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(a.t)
    return values
