"""ONNX frontend: file -> checked, shape-inferred ``ir.Graph``.

After ``import_model``: every non-constant tensor has a static shape (symbolic batch
dimensions fixed to ``batch``) and is float32, or a boolean or an integer the chip holds as
float32 (``graph.booleans``; token ids ``graph.index_inputs`` and other integer inputs
``graph.int_inputs``, whose ports say so); initializers and Constant nodes are
``graph.constants``; operators ONNX defines as functions of supported ones are their bodies
(``expand_functions``); every remaining node is an op of its ONNX type (attributes decoded,
NodeProto kept for folding, trailing outputs nobody reads dropped), and every operator that
is neither supported nor foldable (``compiler.support``) has been reported, all at once. The
caller's ModelProto is never modified.

Opsets: a model older than ``CANONICAL_OPSET`` is upgraded by onnx's version converter. It
converts opset 7 and newer (onnxruntime's own floor), and older models when it has an adapter
for every op on the way (it has none for e.g. opset-1 Pad); a model it cannot convert is an
error.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper, shape_inference, version_converter

from . import expand_functions, rewrite_nodes
from .errors import CompileError
from .ir import Graph
from .limits import Limits, check_model, initializer_bytes
from .onnx_fold import fold_constants
from .onnx_reference import model_inputs
from .support import (
    DOMAINS,
    DTYPES,
    INDEX_DTYPES,
    RESTRICTIONS,
    SUPPORTED,
    constant_tensors,
    constant_values,
    held_integers,
    index_inputs,
    used_tensors,
)

CANONICAL_OPSET = 13  # older models are converted up to this (Clip, Pad, Squeeze inputs...)


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise CompileError("model imports no default-domain (ai.onnx) opset")


def load_model(path: str, limits: Limits | None = None) -> onnx.ModelProto:
    """Read an ONNX file (with external data) or raise one clear CompileError; with
    ``limits``, the initializers' size is checked before external data is read."""
    if os.path.isdir(path):
        raise CompileError(f"{path}: is a directory, not an ONNX model file")
    if not os.path.isfile(path):
        raise CompileError(f"{path}: no such file")
    try:
        model = onnx.load(path, load_external_data=False)
    except MemoryError:
        raise
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
    if limits is not None:
        limits.check_weights(initializer_bytes(model), "the model (its initializers)")
    try:
        onnx.load_external_data_for_model(model, base)
    except MemoryError:
        raise
    except Exception as exc:
        raise CompileError(f"{path}: external data cannot be read: {exc}") from None
    return model


def symbolic_batch(model: onnx.ModelProto) -> bool:
    """Whether some input (not an initializer) has a symbolic first dimension, which
    ``--batch`` fixes."""
    return any(dims and not dims[0].HasField("dim_value")
               for dims in (i.type.tensor_type.shape.dim for i in model_inputs(model)))


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
    # an input returned as an output: its declared output type would stand for the input
    # in shape inference, symbolic batch and all
    inputs = {i.name: i for i in model.graph.input}
    for out in model.graph.output:
        if out.name in inputs:
            out.type.CopyFrom(inputs[out.name].type)


def upgrade(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself at ``CANONICAL_OPSET`` or newer; an older one upgraded (a new
    ModelProto, opset-6 PRelu slopes made per-channel first), or one CompileError."""
    opset = _opset(model)
    if opset > onnx.defs.onnx_opset_version():
        raise CompileError(f"the model imports opset {opset}; the installed onnx "
                           f"({onnx.__version__}) defines opsets up to "
                           f"{onnx.defs.onnx_opset_version()}, so its operators' meaning at "
                           f"opset {opset} is unknown")
    if opset >= CANONICAL_OPSET:
        return model
    _refuse_old_training(model, opset)
    converted = _convert(_per_channel_prelu(model) if opset < 7 else model)
    return _legacy_resize(converted, model) if opset <= 10 else converted


def _refuse_old_training(model: onnx.ModelProto, opset: int) -> None:
    """Before opset 14 a BatchNormalization with its mean and variance outputs is in training
    mode (it normalises with the batch's statistics); onnx's version converter drops those
    outputs and so the mode. One CompileError naming the node."""
    if opset >= 14:
        return
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx") and \
                any(node.output[1:]):
            raise CompileError(f"{node_name(node)}: BatchNormalization with mean and variance "
                               f"outputs is in training mode at opset {opset} (it normalises "
                               "with the batch's statistics): not supported (inference only)")


def _legacy_resize(converted: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """Upsample (opsets 7-9) and Resize-10 map output position x to input position x / scale
    and take the nearest pixel by truncation, or by rounding up when downsampling (as
    onnxruntime runs them); onnx's version converter writes them as a Resize that leaves
    both at Resize-11's defaults (half_pixel, round_prefer_floor). ``converted`` with them
    restored: asymmetric, and the nearest mode ``simple`` (``compiler.resize``)."""
    legacy = {n.output[0] for n in original.graph.node if n.op_type in ("Upsample", "Resize")}
    for node in converted.graph.node:
        if node.op_type == "Resize" and node.output[0] in legacy:
            kept = [a for a in node.attribute
                    if a.name not in ("coordinate_transformation_mode", "nearest_mode")]
            del node.attribute[:]
            node.attribute.extend(kept + [
                onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                onnx.helper.make_attribute("nearest_mode", "simple")])
    return converted


def _convert(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model upgraded to ``CANONICAL_OPSET`` (a new ModelProto), or one CompileError."""
    opset = _opset(model)
    try:
        return version_converter.convert_version(model, CANONICAL_OPSET)
    except Exception as exc:
        reason = re.sub(r"^.*Assertion `.*` failed: ", "", str(exc).splitlines()[0])
        reason = reason.replace("$", "")  # "No Adapter From Version $5 for Tile"
        raise CompileError(f"onnx's version converter cannot upgrade this opset-{opset} model "
                           f"to opset {CANONICAL_OPSET} ({reason}); export it at opset "
                           f"{CANONICAL_OPSET} or newer, which compiles as it is") from None


def _per_channel_prelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """Before opset 7 a PRelu slope of C values applied along the channel axis (axis 1);
    since, it broadcasts from the right, and onnx's version converter keeps slopes as they
    are. A copy of ``model`` with an Unsqueeze to [C, 1, ...] before every PRelu whose slope
    (of any origin) holds its input's C channels, C > 1, at rank 3 or more."""
    model = _copy(model)
    graph = shape_inference.infer_shapes(model).graph
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*graph.value_info, *graph.input, *graph.output)}
    dims.update({i.name: list(i.dims) for i in model.graph.initializer})
    nodes = []
    for node in model.graph.node:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        x, slope = (dims.get(n) for n in node.input[:2]) if node.op_type == "PRelu" else ((),) * 2
        if x and slope and len(x) >= 3 and len(slope) == 1 and slope[0] == x[1] > 1:
            name = f"{node.input[1]}_per_channel_{len(nodes)}"
            nodes.append(onnx.helper.make_node("Unsqueeze", [node.input[1]], [name],
                                               axes=list(range(1, len(x) - 1))))
            node.input[1] = name
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except MemoryError:
        raise
    except Exception as exc:
        raise CompileError(f"shape inference failed: {str(exc).splitlines()[0]}") from None


def _unknown_shapes(model: onnx.ModelProto, dims: dict) -> bool:
    """True when a tensor some node reads (or the graph returns) has no static shape: one the
    chip would compute, or a constant whose shape only its value gives (ConstantOfShape)."""
    inits = {i.name for i in model.graph.initializer}
    return any(name not in dims for name in used_tensors(model) - inits)


def prepare(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """Check, convert old opsets, fix the batch dimension, and infer all shapes (folding
    constant subgraphs first where shape inference alone leaves shapes unknown), in a copy
    (``model`` itself is left as it was)."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise CompileError(f"invalid ONNX model: {str(exc).splitlines()[0]}") from None
    upgraded = upgrade(model)
    model = _copy(model) if upgraded is model else upgraded
    # IR 4 lets initializers be something other than graph inputs, as the constants the
    # rewrites and folding add are (an IR-3 model's are all inputs, which IR 4 still reads)
    model.ir_version = max(model.ir_version, 4)
    _fix_batch(model, batch)
    expand_functions.fill_defaults(model, SUPPORTED)
    model = _infer(model)
    const = constant_tensors(model, _static_dims(model))
    expanded = expand_functions.expand(model, SUPPORTED, const)
    if expanded is not model:  # operators ONNX defines as functions of supported ones
        model = _infer(expanded)
    rewritten = rewrite_nodes.expand(model, _static_dims(model), const)
    if rewritten is not model:  # Einsum, CumSum, LpNormalization: as ops the compiler has
        model = _infer(rewritten)
    # each round of folding can make more shapes static (a Shape of a tensor that the last
    # round gave a shape), until nothing more folds
    while _unknown_shapes(model, dims := _static_dims(model)):
        nodes = len(model.graph.node)
        model = fold_constants(model, dims, _opset(model))
        del model.graph.value_info[:]  # inference keeps stale symbolic dims it once guessed
        model = _infer(model)
        if len(model.graph.node) == nodes:
            break
    return model


def _shape_and_dtype(shape_and_type) -> tuple[tuple[int, ...], str]:
    """A value's shape and the dtype its ONNX type is (numpy's name: float32, int64, bool,
    ...), which the IR printer shows before canonicalize makes every value float32."""
    shape, elem = shape_and_type
    return shape, str(onnx.helper.tensor_dtype_to_np_dtype(elem))


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], int]]:
    """Tensor name -> (static shape, ONNX element type): initializers, and every value whose
    shape is fully known."""
    g = model.graph
    out = {i.name: (tuple(i.dims), i.data_type) for i in g.initializer}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = tt.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = (tuple(d.dim_value for d in dims), tt.elem_type)
    return out


def _static_dims(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Tensor name -> static shape (``_static_shapes`` without the element types)."""
    return {k: v[0] for k, v in _static_shapes(model).items()}


class _Facts(NamedTuple):
    """What ``check_supported`` knows about a model, computed once."""
    shapes: dict  # name -> (static shape, element type)
    dims: dict    # name -> static shape
    const: set    # compile-time constants
    used: set     # tensors some node reads or the graph returns
    values: dict  # initializers and Constant outputs as arrays
    ids: dict     # integer inputs holding token ids -> rows they may index
    ints: set     # other integer tensors held as float32 (``support.held_integers``)


class Problem(NamedTuple):
    """One thing that keeps a node from compiling: ``reason`` in a few words (how the
    conformance tool lists a case), ``detail`` as cimc says it after the node's name.
    ``declared``: outside what ``compiler.support`` declares (an operator, a restriction, a
    dtype); False for a shape left unknown, which a prepared model should not have."""
    node: str
    reason: str
    detail: str
    declared: bool = True


def _dtype_problems(name: str, tensors: list[str], facts: _Facts) -> list[Problem]:
    problems = []
    for t in tensors:
        if t not in facts.shapes:
            why = f"tensor {t!r} has an unknown or dynamic shape"
            problems.append(Problem(name, why, why, declared=False))
        elif facts.shapes[t][1] not in DTYPES and t not in facts.ids and t not in facts.ints:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(facts.shapes[t][1])
            ids = " (an integer input, or an ArgMax's index, may only be token ids that " \
                "Gather reads from a constant table, or, not both, values that are moved, " \
                "compared or cast to float)" if facts.shapes[t][1] in INDEX_DTYPES else ""
            problems.append(Problem(name, f"tensor {t!r} is {dtype}",
                                    f"tensor {t!r} is {dtype}; the chip computes float32 "
                                    f"(and boolean) tensors only{ids}"))
    return problems


def _node_problems(node: onnx.NodeProto, facts: _Facts) -> list[Problem]:
    """What keeps ``node`` (not folded away) from compiling."""
    name, op = node_name(node), node.op_type
    if node.domain not in DOMAINS:
        return [Problem(name, f"operator {node.domain}.{op}",
                        f"operator {node.domain}.{op} is not supported")]
    if op not in SUPPORTED:
        return [Problem(name, f"operator {op}", f"operator {op} is not supported")]
    problems = [Problem(name, f"input {pos} of {op} is computed, not a constant",
                        f"input {pos} ({node.input[pos]}) of {op} must be a constant "
                        "(crossbars hold static weights)")
                for pos in sorted(SUPPORTED[op])
                if pos < len(node.input) and node.input[pos]
                and node.input[pos] not in facts.const]
    restriction = RESTRICTIONS.get(op)
    why = restriction(node, facts.dims, facts.values) if restriction else None
    if why:
        problems.append(Problem(name, why, why))
    tensors = [i for i in node.input if i and i not in facts.const]
    tensors += [o for o in node.output if o in facts.used and o not in facts.const]
    return problems + _dtype_problems(name, tensors, facts)


def support_problems(model: onnx.ModelProto) -> list[Problem]:
    """Every problem that keeps ``model`` (prepared: shapes inferred, constants folded) from
    compiling, node by node: unsupported operators, restrictions, constants the op table
    wants, dtypes, dynamic shapes. Nodes that fold to constants, and outputs nobody reads,
    are not checked."""
    shapes = _static_shapes(model)
    dims = {k: v[0] for k, v in shapes.items()}
    const = constant_tensors(model, dims)
    ids = index_inputs(model, const, dims)
    facts = _Facts(shapes, dims, const, used_tensors(model), constant_values(model), ids,
                   held_integers(model, const, ids))
    problems = [p for node in model.graph.node if not all(o in facts.const for o in node.output)
                for p in _node_problems(node, facts)]
    made = {o for node in model.graph.node for o in node.output}
    passed = [o.name for o in model.graph.output if o.name not in made | const]
    return problems + _dtype_problems("graph", passed, facts)  # inputs returned as they are


def check_supported(model: onnx.ModelProto) -> None:
    """Raise one CompileError listing every problem ``support_problems`` finds; problems
    whose details share an explanation (after "; ") give it once, after the last of them."""
    messages = list(dict.fromkeys(f"{p.node}: {p.detail}" for p in support_problems(model)))
    if not messages:
        return
    groups: dict[str, list[str]] = {}
    for m in messages:
        head, _, why = m.partition("; ")
        groups.setdefault(why, []).append(head)
    text = "; ".join("; ".join(heads + ([why] if why else [])) for why, heads in groups.items())
    raise CompileError(f"{len(messages)} problem(s) in the model: {text}")


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


def _read_outputs(node: onnx.NodeProto, used: set[str]) -> list[str]:
    """A node's outputs without the trailing ones nobody reads (e.g. an unused Dropout mask)."""
    outs = list(node.output)
    while len(outs) > 1 and outs[-1] not in used:
        outs.pop()
    return [o for o in outs if o]


def to_graph(model: onnx.ModelProto) -> Graph:
    """The IR of a prepared, checked model (see the module docstring)."""
    shapes = _static_shapes(model)
    used = used_tensors(model)
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
    dims = {k: v[0] for k, v in shapes.items()}
    const = constant_tensors(model, dims)
    graph.index_inputs = index_inputs(model, const, dims)
    held = held_integers(model, const, graph.index_inputs)
    graph.int_inputs = held & {i.name for i in g.input}
    graph.int_outputs = held & {o.name for o in g.output}
    graph.booleans = {k for k, (_, t) in shapes.items() if t == onnx.TensorProto.BOOL}
    for inp in g.input:
        if inp.name not in inits:
            graph.add_value(inp.name, *_shape_and_dtype(shapes[inp.name]))
            graph.inputs.append(inp.name)
    for node in g.node:
        outs = _read_outputs(node, used)
        if node.op_type == "Constant":
            graph.add_constant(outs[0], _constant_value(node))
            continue
        for o in outs:
            if o in shapes:
                graph.add_value(o, *_shape_and_dtype(shapes[o]))
        graph.add_op(node.op_type, [i for i in node.input], outs, node_attrs(node),
                     node_name(node), proto=node)
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


def accept(path_or_model, batch: int = 1, limits: Limits | None = None) -> onnx.ModelProto:
    """Load (if a path), prepare and check a model: supported, and within ``limits`` (default
    ``Limits()``) before anything is allocated for it. Returns the prepared copy; raises
    CompileError on user errors."""
    if batch < 1:
        raise CompileError(f"--batch must be at least 1, got {batch}")
    model = load_model(path_or_model) if isinstance(path_or_model, str) else path_or_model
    model = prepare(model, batch)
    check_supported(model)
    check_model(model, _static_dims(model), limits or Limits())
    return model


def import_model(path_or_model, batch: int = 1, calibrate=None,
                 limits: Limits | None = None) -> Graph:
    """``accept`` a model and import it; with ``calibrate`` samples, record activation ranges
    in ``graph.ranges``. Raises CompileError on user errors."""
    model = accept(path_or_model, batch, limits)
    graph = to_graph(model)
    if calibrate is not None:
        from .calibrate import tensor_ranges
        graph.ranges = tensor_ranges(model, calibrate)
    return graph
