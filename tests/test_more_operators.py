"""Operators added after issue 11 by the recipe in docs/design-notes.md (elementwise math and
activations, Max/Min/PRelu, the Reduce family, LogSoftmax, RMSNormalization, CastLike): each
behind a convolution, every IR stage and cimrun's ideal mode against onnxruntime; activations
fused into the convolution's epilogue; quantized mode exact but for the crossbars; and an
opset-6 PRelu's per-channel slope."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import cli, ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper

from compiler import compile_model
from compiler.evaluate import evaluate
from compiler.ops import ACTIVATIONS
from runtime import run

RNG = np.random.default_rng(23)
C = 4  # the convolution's output channels


def _model(nodes, inits: dict, opset: int, out_shape=("N", C, 5, 5)) -> onnx.ModelProto:
    """x [N, 2, 5, 5] -> Conv (3x3, pads 1) -> c, then ``nodes`` ending in y."""
    inits = {"w": RNG.standard_normal((C, 2, 3, 3)).astype(np.float32),
             "b": RNG.standard_normal(C).astype(np.float32), **inits}
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv")
    graph = helper.make_graph(
        [conv, *nodes], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                            ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _unary(op: str, **attrs):
    return [helper.make_node(op, ["c"], ["y"], name=op.lower(), **attrs)], {}


def _after_abs(op: str):
    """``op`` on |c| + 0.5 (Log needs a positive input)."""
    return [helper.make_node("Abs", ["c"], ["a"], name="abs"),
            helper.make_node("Add", ["a", "half"], ["p"], name="add"),
            helper.make_node(op, ["p"], ["y"], name=op.lower())], {"half": np.float32(0.5)}


def _reduce(op: str):
    return [helper.make_node(op, ["c", "axes"], ["y"], keepdims=1, name=op.lower())], \
        {"axes": np.array([2, 3], np.int64)}


CASES = {  # name -> (nodes, extra initializers, opset, output shape)
    **{op: (*_unary(op), 18, None) for op in (
        "Abs", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Softplus", "Softsign",
        "HardSwish", "Mish")},
    "Elu": (*_unary("Elu", alpha=0.7), 18, None),
    "Selu": (*_unary("Selu"), 18, None),
    "Celu": (*_unary("Celu", alpha=2.0), 18, None),
    "ThresholdedRelu": (*_unary("ThresholdedRelu", alpha=0.4), 18, None),
    "Shrink": (*_unary("Shrink", bias=0.2, lambd=0.6), 18, None),
    "Log": (*_after_abs("Log"), 18, None),
    "LogSoftmax": (*_unary("LogSoftmax", axis=1), 18, None),
    "Max": ([helper.make_node("Neg", ["c"], ["n"], name="neg"),
             helper.make_node("Max", ["c", "n", "k"], ["y"], name="max")],
            {"k": np.float32(0.3)}, 18, None),
    "Min": ([helper.make_node("Min", ["c", "k"], ["y"], name="min")],
            {"k": RNG.standard_normal((C, 1, 1)).astype(np.float32)}, 18, None),
    "PRelu": ([helper.make_node("PRelu", ["c", "slope"], ["y"], name="prelu")],
              {"slope": RNG.uniform(0.05, 0.5, (C, 1, 1)).astype(np.float32)}, 18, None),
    **{op: (*_reduce(op), 18, ("N", C, 1, 1)) for op in (
        "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare",
        "ReduceLogSumExp")},
    "ReduceLogSum": ([helper.make_node("Abs", ["c"], ["a"], name="abs"),
                      helper.make_node("ReduceLogSum", ["a", "axes"], ["y"], name="rls")],
                     {"axes": np.array([2, 3], np.int64)}, 18, ("N", C, 1, 1)),
    "RMSNormalization": ([helper.make_node("RMSNormalization", ["c", "scale"], ["y"], axis=1,
                                           epsilon=1e-3, name="rms")],
                         {"scale": RNG.standard_normal((C, 5, 5)).astype(np.float32)}, 23,
                         None),
    "CastLike": ([helper.make_node("CastLike", ["c", "like"], ["y"], name="castlike")],
                 {"like": np.zeros(1, np.float32)}, 15, None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_stage_and_ideal_mode_match_onnxruntime(name):
    nodes, inits, opset, shape = CASES[name]
    model = _model(nodes, inits, opset, shape or ("N", C, 5, 5))
    x = 2 * RNG.standard_normal((3, 2, 5, 5)).astype(np.float32)
    (want,) = ort_run(model, {"x": x})
    assert np.isfinite(want).all() and np.ptp(want) > 0
    errors = {}
    program = compile_model(model, batch=3, verify_each=True, dump=lambda stage, g: errors.update(
        {stage: rel_err(evaluate(g, {"x": x})["y"], want)}))
    assert max(errors.values()) < 1e-5, errors
    assert rel_err(run(program, x, mode="ideal", timing=False).outputs["y"], want) < 1e-5


@pytest.mark.parametrize("kind", sorted(ACTIVATIONS))
def test_activations_are_fused_and_exact_but_for_the_crossbars_in_quantized_mode(kind):
    """The activation runs in place on the convolution's result (its epilogue), and the
    quantized output is the activation of the quantized convolution's."""
    onnx_type = next(op for op in CASES if op.lower() == kind)
    nodes, inits, opset, _ = CASES[onnx_type]
    model = _model(nodes, inits, opset)
    program = compile_model(model)
    (ins,) = [i for i in program.text if i.op == kind]
    assert ins.operands[0] == ins.operands[1]  # fused: in place on the product
    x = 2 * RNG.standard_normal((4, 2, 5, 5)).astype(np.float32)
    conv = onnx.ModelProto()
    conv.CopyFrom(model)
    del conv.graph.node[1:]
    conv.graph.output[0].name = "c"
    c = run(compile_model(conv), x, mode="quantized", timing=False).outputs["c"]
    act = helper.make_model(helper.make_graph(
        nodes, "act", [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4, C, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, C, 5, 5])]),
        opset_imports=[helper.make_opsetid("", opset)])
    (want,) = ort_run(act, {"c": c})
    got = run(program, x, mode="quantized", timing=False).outputs["y"]
    assert rel_err(got, want) < 1e-5


def test_opset_6_prelu_applies_its_slope_per_channel(tmp_path):
    """Before opset 7 a slope of C values ran along axis 1 (PyTorch's old exports); the
    version converter keeps it as it is, which would broadcast it along the last axis."""
    slope = np.array([0.1, 0.2, 0.3], np.float32)
    node = helper.make_node("PRelu", ["x", "slope"], ["y"])
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, 4]) for n in "xy"]
    model = helper.make_model(helper.make_graph(
        [node], "g", [info[0], helper.make_tensor_value_info("slope", TensorProto.FLOAT, [3])],
        [info[1]], [numpy_helper.from_array(slope, "slope")]),
        opset_imports=[helper.make_opsetid("", 6)], ir_version=3)
    path, prog, xs, out = (tmp_path / n for n in ("p.onnx", "p.cim", "x.npy", "y.npy"))
    onnx.save(model, path)
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    np.save(xs, x)
    assert cli("cimc", str(path), "-o", str(prog)).returncode == 0
    r = cli("cimrun", str(prog), "--input", str(xs), "-o", str(out))
    assert r.returncode == 0, r.stderr
    want = np.where(x >= 0, x, x * slope[None, :, None])
    np.testing.assert_allclose(np.load(out), want, rtol=1e-6)
