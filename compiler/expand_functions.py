"""ONNX operators the compiler lacks but ONNX defines as functions, replaced by their bodies.

Many ONNX operators (Attention, and others added since opset 18) come with a function body in
their schema: the same computation written in simpler operators. ``expand`` replaces each
node whose operator the compiler does not support natively by that body, so that it compiles
whenever the body's operators do (onnx's own inliner does the renaming and attribute
binding). A context-dependent body (one that depends on the input types, as Attention's)
is asked of the schema with the node's inferred input types; a node whose input types are
unknown is left as it is (the support check then names it).
"""

from __future__ import annotations

from collections.abc import Container

import onnx
import onnx.defs
import onnx.inliner
from onnx import helper

from .support import DOMAINS

DOMAIN = "cimc.expanded"  # the model-local functions the bodies become, then inlined


def _types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    g = model.graph
    types = {v.name: v.type for v in (*g.value_info, *g.input, *g.output)}
    types.update({i.name: helper.make_tensor_type_proto(i.data_type, i.dims)
                  for i in g.initializer})
    return types


def _schema(node: onnx.NodeProto, opset: int):
    try:
        return onnx.defs.get_schema(node.op_type, opset)
    except onnx.defs.SchemaError:
        return None


def fill_defaults(model: onnx.ModelProto, native: Container[str]) -> None:
    """Give each node ``expand`` may replace every attribute its schema has a default for,
    in place: a body reads attributes by reference and some declare no defaults of their
    own (onnx's shape inference of MeanVarianceNormalization without axes fails on this)."""
    opset = next(o.version for o in model.opset_import if o.domain in DOMAINS)
    for node in model.graph.node:
        schema = None if node.domain not in DOMAINS or node.op_type in native \
            else _schema(node, opset)
        if schema is None or not (schema.has_function or schema.has_context_dependent_function):
            continue
        present = {a.name for a in node.attribute}
        node.attribute.extend(a.default_value for name, a in schema.attributes.items()
                              if name not in present and a.default_value.name)


def _body(node: onnx.NodeProto, opset: int, types: dict) -> onnx.FunctionProto | None:
    """The function body ONNX defines for ``node`` at ``opset``, or None."""
    schema = _schema(node, opset)
    if schema is None:
        return None
    if schema.has_context_dependent_function:
        if not all(i == "" or i in types for i in node.input):
            return None
        ins = [(types[i] if i else onnx.TypeProto()).SerializeToString() for i in node.input]
        body = schema.get_context_dependent_function_with_opset_version(
            opset, node.SerializeToString(), ins)
    elif schema.has_function:
        body = schema.get_function_with_opset_version(opset)
    else:
        return None
    body = onnx.FunctionProto.FromString(body) if isinstance(body, bytes) else body
    return body if body is not None and len(body.node) else None


def expand(model: onnx.ModelProto, native: Container[str],
           const: Container[str]) -> onnx.ModelProto:
    """``model`` (shapes inferred) with every default-domain node whose op is not in
    ``native`` and has a function body replaced by it, but those whose inputs are all in
    ``const`` (they fold as they are: Range's body is a Loop); ``model`` itself when none
    is replaced."""
    opset = next(o.version for o in model.opset_import if o.domain in DOMAINS)
    types = _types(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    count = 0
    for node in out.graph.node:
        if node.domain not in DOMAINS or node.op_type in native or \
                all(not i or i in const for i in node.input):
            continue
        body = _body(node, opset, types)
        if body is None:
            continue
        fn = onnx.FunctionProto()
        fn.CopyFrom(body)
        fn.name, fn.domain = f"{node.op_type}_{count}", DOMAIN
        # the body is the one for the model's opset; the inliner wants the model's version
        kept = [o for o in fn.opset_import if o.domain not in DOMAINS]
        del fn.opset_import[:]
        fn.opset_import.extend(kept + [helper.make_opsetid("", opset)])
        out.functions.append(fn)
        node.op_type, node.domain = fn.name, DOMAIN
        count += 1
    if not count:
        return model
    out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return onnx.inliner.inline_selected_functions(out, [(DOMAIN, f.name) for f in
                                                        out.functions if f.domain == DOMAIN])
