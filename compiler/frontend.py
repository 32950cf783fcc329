"""ONNX frontend: file -> checked, shape-inferred ``ir.Graph``.

After ``import_model``: every non-constant tensor is float32 with a static shape (symbolic
batch dimensions fixed to ``batch``), initializers and Constant nodes are ``graph.constants``,
every remaining node is an op of its ONNX type (attributes decoded, NodeProto kept for folding),
and every operator that is neither supported nor foldable has been reported, all at once.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper, shape_inference, version_converter

from .errors import CompileError
from .ir import Graph
from .support import NOT_FOLDABLE, SUPPORTED

MIN_OPSET = 9
CANONICAL_OPSET = 13  # older models are converted up to this (Clip, Pad, Squeeze inputs...)


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise CompileError("model imports no default-domain (ai.onnx) opset")


def load_model(path: str) -> onnx.ModelProto:
    """Read an ONNX file (with external data) or raise one clear CompileError."""
    if not os.path.isfile(path):
        raise CompileError(f"{path}: no such file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise CompileError(f"{path}: not a valid ONNX model (truncated or not ONNX: "
                           f"{type(exc).__name__})") from None
    if not model.graph.node and not model.graph.input:
        raise CompileError(f"{path}: not a valid ONNX model (no graph)")
    base = os.path.dirname(os.path.abspath(path))
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            location = external_data_helper.ExternalDataInfo(tensor).location
            if not os.path.isfile(os.path.join(base, location)):
                raise CompileError(f"{path}: external data file is missing ({location}, needed "
                                   f"by tensor {tensor.name!r}); keep it beside the model")
    try:
        onnx.load_external_data_for_model(model, base)
    except Exception as exc:
        raise CompileError(f"{path}: external data cannot be read: {exc}") from None
    return model


def _fix_batch(model: onnx.ModelProto, batch: int) -> None:
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if d.HasField("dim_value"):
                continue
            if i != 0:
                raise CompileError(f"input {inp.name!r} has a dynamic dimension {i} "
                                   f"({d.dim_param or '?'}); only the batch (first) dimension "
                                   "may be symbolic: export the model with static shapes")
            d.Clear()
            d.dim_value = batch


def prepare(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """Check, convert old opsets, fix the batch dimension, and infer all shapes."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise CompileError(f"invalid ONNX model: {str(exc).splitlines()[0]}") from None
    opset = _opset(model)
    if opset < CANONICAL_OPSET:
        try:
            model = version_converter.convert_version(model, CANONICAL_OPSET)
        except Exception as exc:
            raise CompileError(f"cannot convert opset {opset} to {CANONICAL_OPSET} "
                               f"(opsets from {MIN_OPSET} are supported, older ones when onnx's "
                               f"version converter can convert them): "
                               f"{str(exc).splitlines()[0]}") from None
    _fix_batch(model, batch)
    try:
        return shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise CompileError(f"shape inference failed: {str(exc).splitlines()[0]}") from None


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], int]]:
    out = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = tt.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = (tuple(d.dim_value for d in dims), tt.elem_type)
    return out


def _constants(model: onnx.ModelProto, shapes) -> set[str]:
    """Names of tensors that are compile-time constants (initializers and what folds from them)."""
    const = {i.name for i in model.graph.initializer} | {""}
    for node in model.graph.node:
        foldable = node.op_type not in NOT_FOLDABLE and all(i in const for i in node.input)
        if node.op_type in ("Shape", "Size") and node.input[0] in shapes:
            foldable = True
        if foldable:
            const.update(node.output)
    return const


def check_supported(model: onnx.ModelProto) -> None:
    """Raise one CompileError listing every problem: unsupported ops, dtypes, dynamic shapes."""
    shapes = _static_shapes(model)
    const = _constants(model, shapes)
    problems = []
    for node in model.graph.node:
        name = node_name(node)
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{name}: operator {node.domain}.{node.op_type} is not supported")
            continue
        if all(o in const for o in node.output):
            continue
        if node.op_type not in SUPPORTED:
            problems.append(f"{name}: operator {node.op_type} is not supported")
            continue
        for pos in SUPPORTED[node.op_type]:
            if pos < len(node.input) and node.input[pos] not in const:
                problems.append(f"{name}: input {pos} ({node.input[pos]}) of {node.op_type} "
                                "must be a constant (crossbars hold static weights)")
        for t in [i for i in node.input if i not in const] + [o for o in node.output if o]:
            if t not in shapes:
                problems.append(f"{name}: tensor {t!r} has an unknown or dynamic shape")
            elif shapes[t][1] != onnx.TensorProto.FLOAT:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(shapes[t][1])
                problems.append(f"{name}: tensor {t!r} is {dtype}; the chip computes float32 "
                                "tensors only")
    if problems:
        unique = list(dict.fromkeys(problems))
        raise CompileError(f"{len(unique)} problem(s) in the model: " + "; ".join(unique))


def node_name(node: onnx.NodeProto) -> str:
    """A node's name in messages and as its ops' ``origin`` (unnamed: op type and outputs)."""
    return node.name or f"{node.op_type}({', '.join(node.output)})"


def node_attrs(node: onnx.NodeProto) -> dict:
    """A node's attributes as Python values (strings decoded, tensors as arrays)."""
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list):
            v = [x.decode("utf-8") if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


def to_graph(model: onnx.ModelProto) -> Graph:
    shapes = _static_shapes(model)
    g = model.graph
    inits = {i.name for i in g.initializer}
    first = next((i for i in g.input if i.name not in inits), None)
    batch = shapes[first.name][0][0] if first is not None and shapes[first.name][0] else 1
    batch = max(batch, 1)  # a zero-size input still runs as one pass
    graph = Graph(batch)
    graph.opset = _opset(model)
    for init in g.initializer:
        try:
            graph.add_constant(init.name, numpy_helper.to_array(init))
        except Exception as exc:
            raise CompileError(f"initializer {init.name!r} cannot be read: {exc}") from None
    for inp in g.input:
        if inp.name not in inits:
            graph.add_value(inp.name, shapes[inp.name][0])
            graph.inputs.append(inp.name)
    for node in g.node:
        outs = [o for o in node.output if o]
        if node.op_type == "Constant":
            graph.add_constant(outs[0], _constant_value(node))
            continue
        for o in outs:
            if o in shapes:
                graph.add_value(o, shapes[o][0])
        attrs = node_attrs(node)
        attrs["_proto"] = node
        graph.add_op(node.op_type, [i for i in node.input], outs, attrs, node_name(node))
    graph.outputs = [o.name for o in g.output]
    graph.output_names = list(graph.outputs)
    return graph


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    a = node_attrs(node)
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            dtype = np.float32 if "float" in key else np.int64
            return np.asarray(a[key], dtype=None if key == "value" else dtype)
    raise CompileError(f"Constant node {node.name!r}: unsupported value attribute")


def import_model(path_or_model, batch: int = 1, calibrate=None) -> Graph:
    """Load (if a path), check and import an ONNX model; with ``calibrate`` samples, record
    activation ranges in ``graph.ranges``. Raises CompileError on user errors."""
    if batch < 1:
        raise CompileError(f"--batch must be at least 1, got {batch}")
    model = load_model(path_or_model) if isinstance(path_or_model, str) else path_or_model
    model = prepare(model, batch)
    check_supported(model)
    graph = to_graph(model)
    if calibrate is not None:
        from .calibrate import tensor_ranges
        graph.ranges = tensor_ranges(model, calibrate)
    return graph
