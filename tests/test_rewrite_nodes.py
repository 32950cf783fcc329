"""CumSum and LpNormalization (compiler/rewrite_nodes.py), written as operators the compiler
has, against onnxruntime at every IR stage and in ideal mode (ONNX's own CumSum cases are
all float64 or int32; its LpNormalization cases pass in tools.conformance)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper

from compiler import CompileError, compile_model
from compiler.evaluate import evaluate
from runtime import run

RNG = np.random.default_rng(11)


def _model(node: onnx.NodeProto, shape: list, inits: dict) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *shape])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _matches_onnxruntime(model: onnx.ModelProto, x: np.ndarray):
    (want,) = ort_run(model, {"x": x})
    errors = {}
    program = compile_model(model, batch=len(x), verify_each=True, dump=lambda stage, g:
                            errors.update({stage: rel_err(evaluate(g, {"x": x})["y"], want)}))
    assert max(errors.values()) < 1e-5, errors
    assert rel_err(run(program, x, timing=False).outputs["y"], want) < 1e-5
    return program


@pytest.mark.parametrize("axis", [1, 2, -1])
@pytest.mark.parametrize("exclusive, reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumsum_is_a_product_with_a_triangle_of_ones(axis, exclusive, reverse):
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=exclusive,
                            reverse=reverse)
    model = _model(node, [4, 5], {"axis": np.array(axis, np.int64)})
    program = _matches_onnxruntime(model, RNG.standard_normal((3, 4, 5)).astype(np.float32))
    assert any(i.op == "mvm" for i in program.text)  # the triangle on the crossbars


def test_a_computed_cumsum_axis_is_refused_by_name():
    node = helper.make_node("CumSum", ["x", "axis"], ["y"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                      helper.make_tensor_value_info("axis", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    with pytest.raises(CompileError, match="operator CumSum is not supported"):
        compile_model(model)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [1, -1])
def test_lp_normalization_divides_by_the_norm_and_keeps_zero_lines_zero(p, axis):
    node = helper.make_node("LpNormalization", ["x"], ["y"], p=p, axis=axis)
    x = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    x[0, :, 0] = 0  # a zero line along axis 1
    x[1, 0, :] = 0  # and along the last
    program = _matches_onnxruntime(_model(node, [4, 5], {}), x)
    y = run(program, x, timing=False).outputs["y"]
    assert np.isfinite(y).all()


def test_lp_normalization_of_values_too_small_to_square_is_zero():
    """x around 1e-25: x * x underflows in float32, the norm is 0, and the output 0 (ONNX's
    reference and onnxruntime), not x itself."""
    node = helper.make_node("LpNormalization", ["x"], ["y"], p=2, axis=-1)
    x = np.full((2, 4, 5), 1e-25, np.float32)
    model = _model(node, [4, 5], {})
    (want,) = ort_run(model, {"x": x})
    got = run(compile_model(model, batch=2), x, timing=False).outputs["y"]
    assert np.array_equal(got, want) and not got.any()
