"""Operators added after issue 11 by the recipe in docs/design-notes.md, against
onnxruntime at every IR stage and in cimrun's ideal mode: elementwise math and activations
(fused into a convolution's epilogue; quantized mode exact but for the crossbars), Max, Min,
PRelu (an opset-6 per-channel slope too), the Reduce family, LogSoftmax, RMSNormalization,
CastLike; Resize and Upsample, ConvTranspose (on the crossbars); booleans (comparisons, logic,
Where) and integer inputs held as float32 (an int64 attention mask)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import cli, fails, ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper

import isa
from compiler import CompileError, compile_model
from compiler import resize as rs
from compiler.basis.fit import fit
from compiler.basis.layers import layer_matrices
from compiler.conv_transpose import insert_zeros
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


def _standalone(nodes, inputs: dict, opset: int, inits=None) -> onnx.ModelProto:
    """A model of ``nodes`` with float inputs {name: shape} and output y."""
    return onnx.shape_inference.infer_shapes(helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v)
                     for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()]),
        opset_imports=[helper.make_opsetid("", opset)]))


@pytest.mark.parametrize("op", ["ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum",
                                "ReduceMax", "ReduceLogSumExp"])
def test_a_reduction_over_no_axes_keeps_its_elementwise_step(op):
    """noop_with_empty_axes and no axes: L1 and L2 still take |x|, SumSquare x^2, LogSum
    log x (the spec, as onnxruntime computes it); the others leave x."""
    model = _standalone([helper.make_node(op, ["x"], ["y"], noop_with_empty_axes=1)],
                        {"x": [2, 3, 4]}, 18)
    x = RNG.uniform(-2, 2, (2, 3, 4)).astype(np.float32)
    x = np.abs(x) if op == "ReduceLogSum" else x
    (want,) = ort_run(model, {"x": x})
    got = run(compile_model(model, batch=2, verify_each=True), x, mode="ideal",
              timing=False).outputs["y"]
    assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("a_shape,x_shape,crossbars", [
    ((4, 5), (3, 5, 8), True), ((1, 4, 5), (3, 5, 8), True), ((2, 4, 5), (3, 2, 5, 8), False),
    ((4, 5), (5, 8), True)])
def test_a_constant_left_operand_of_matmul_is_the_weight_side(a_shape, x_shape, crossbars):
    """MatMul(W, x) with a constant W: y = (x^T W^T)^T, so W is the weight side, on crossbars
    when it is one matrix (a stack of ones broadcasts away), and quantized mode reads it (it
    had been a dbmm whose constant first operand quantized and analog modes could not
    run). A 2-D x has its samples on the contracted axis."""
    w = RNG.standard_normal(a_shape).astype(np.float32)
    model = _standalone([helper.make_node("MatMul", ["w", "x"], ["y"])], {"x": list(x_shape)},
                        13, {"w": w})
    # samples of different scales (so of different DAC ranges), where they lead the product
    scales = np.arange(1, x_shape[0] + 1).reshape((-1,) + (1,) * (len(x_shape) - 1)) \
        if len(x_shape) >= 3 else 1.0
    x = (RNG.standard_normal(x_shape) * scales).astype(np.float32)
    (want,) = ort_run(model, {"x": x})
    program = compile_model(model, batch=x_shape[0], verify_each=True)
    ops = [i.op for i in program.text]
    assert ("mvm" in ops, "dbmm" in ops) == (crossbars, not crossbars)
    assert rel_err(run(program, x, timing=False).outputs["y"], want) < 1e-6
    assert rel_err(run(program, x, mode="quantized", timing=False).outputs["y"], want) < 0.02


def test_a_constant_left_operand_deeper_than_the_computed_one_is_refused():
    """W [2, 4, 5] @ x [5, 8]: W's leading axis would come before the samples (the program
    had run with the wrong samples' DAC ranges or failed in cimrun)."""
    model = _standalone([helper.make_node("MatMul", ["w", "x"], ["y"], name="mm")],
                        {"x": [5, 8]}, 13, {"w": np.ones((2, 4, 5), np.float32)})
    with pytest.raises(CompileError, match=r"mm: MatMul of a constant \[2, 4, 5\] by a "
                                           r"computed \[5, 8\]: a constant of more axes"):
        compile_model(model, batch=5)


@pytest.mark.parametrize("op", ["Relu", "LpNormalization"])
def test_an_input_returned_as_an_output_keeps_its_batch(op):
    """outputs [x, op(x)] with a symbolic batch: the output x's declared [N, ...] had stood
    for the input in shape inference, so op(x) got no static shape and cimc refused it
    (LpNormalization: also after the rewrite into ops the compiler has)."""
    sym = ["N", 4, 8]
    model = helper.make_model(helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, sym)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, sym) for n in ("x", "y")]),
        opset_imports=[helper.make_opsetid("", 13)])
    x = RNG.standard_normal((3, 4, 8)).astype(np.float32)
    out = run(compile_model(model), x, timing=False).outputs
    np.testing.assert_array_equal(out["x"], x)
    (want,) = ort_run(model, {"x": x})[1:]
    assert rel_err(out["y"], want) < 1e-6


@pytest.mark.parametrize("op,extra", [("MaxPool", {}), ("AveragePool", {}),
                                      ("AveragePool", {"count_include_pad": 1})])
@pytest.mark.parametrize("opset", [11, 19])
def test_a_ceil_mode_window_starting_in_the_end_padding_is_dropped(op, extra, opset):
    """5 x 5, kernel 3, stride 3, pads 1, ceil mode: onnx's shape inference counts a third
    window starting at 5, in the end padding (-inf or 0 on every row); onnxruntime and
    onnx's reference drop it. The compiled model takes onnxruntime's 2 x 2 through the
    Flatten after it, even where the model declares onnx's 3 x 3."""
    n = helper.make_node
    model = onnx.shape_inference.infer_shapes(helper.make_model(helper.make_graph(
        [n(op, ["x"], ["p"], kernel_shape=[3, 3], strides=[3, 3], pads=[1, 1, 1, 1],
           ceil_mode=1, **extra), n("Flatten", ["p"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
        opset_imports=[helper.make_opsetid("", opset)]))
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim][1:] == \
        [18]  # onnx's count, 2 x 3 x 3, declared
    x = RNG.standard_normal((3, 2, 5, 5)).astype(np.float32)
    (want,) = ort_run(model, {"x": x})
    assert want.shape == (3, 8)
    got = run(compile_model(model, batch=3, verify_each=True), x, timing=False).outputs["y"]
    assert got.shape == want.shape and rel_err(got, want) < 1e-6


def test_an_ir3_model_takes_the_rewrites_constants():
    """IR 3 (opset 7-8 era) allows no initializer that is not a graph input, and the
    constants the rewrites add are not: LpNormalization and CumSum failed in shape
    inference on compiler-made nodes. An IR-3 model's initializers are inputs too."""
    n = helper.make_node
    axis = numpy_helper.from_array(np.array(1, np.int64), "a")
    model = helper.make_model(helper.make_graph(
        [n("LpNormalization", ["x"], ["l"], axis=-1), n("CumSum", ["l", "a"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5]),
         helper.make_tensor_value_info("a", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])], [axis]),
        opset_imports=[helper.make_opsetid("", 11)], ir_version=3)
    x = RNG.standard_normal((2, 3, 5)).astype(np.float32)
    (want,) = ort_run(model, {"x": x})
    got = run(compile_model(model, batch=2), x, timing=False).outputs["y"]
    assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_a_ceil_mode_valid_pool_drops_a_window_past_its_input(op):
    """auto_pad VALID, 6 x 6, kernel 2, stride 3, ceil mode: onnx's shape inference counts
    a third window starting at 6, past the input; onnxruntime gives 2 x 2."""
    model = _standalone([helper.make_node(op, ["x"], ["y"], kernel_shape=[2, 2],
                                          strides=[3, 3], auto_pad="VALID", ceil_mode=1)],
                        {"x": [1, 2, 6, 6]}, 19)
    x = RNG.standard_normal((1, 2, 6, 6)).astype(np.float32)
    (want,) = ort_run(model, {"x": x})
    got = run(compile_model(model), x, timing=False).outputs["y"]
    assert want.shape == got.shape == (1, 2, 2, 2) and rel_err(got, want) < 1e-6


def test_max_and_min_of_operands_that_broadcast_step_by_step():
    """Each step of the chain has its own operands' broadcast shape (the IR is verified
    after every pass)."""
    model = _standalone([helper.make_node("Max", ["a", "b", "c"], ["m"]),
                         helper.make_node("Min", ["m", "a", "k"], ["y"])],
                        {"a": [2, 1, 1], "b": [3, 1], "c": [4]}, 13,
                        {"k": RNG.standard_normal((1, 4)).astype(np.float32)})
    feeds = {"a": RNG.standard_normal((2, 1, 1)), "b": RNG.standard_normal((3, 1)),
             "c": RNG.standard_normal(4)}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    (want,) = ort_run(model, feeds)
    got = run(compile_model(model, batch=2, verify_each=True), feeds, mode="ideal",
              timing=False).outputs["y"]
    np.testing.assert_array_equal(got, want)


def test_opset_6_prelu_slope_from_a_constant_node_is_per_channel():
    slope = np.array([0.1, 0.2, 0.3], np.float32)
    nodes = [helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(slope)),
             helper.make_node("PRelu", ["x", "s"], ["y"])]
    model = _standalone(nodes, {"x": [2, 3, 3]}, 6)  # C = 3 = the last axis: no error
    x = RNG.standard_normal((2, 3, 3)).astype(np.float32)
    got = run(compile_model(model, batch=2), x, mode="ideal", timing=False).outputs["y"]
    np.testing.assert_allclose(got, np.where(x >= 0, x, x * slope[None, :, None]), rtol=1e-6)


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


# -- Resize and ConvTranspose: per-axis resampling (compiler/resize.py) -----------------------

def test_axis_taps_by_hand():
    """Linear 2x at half_pixel: output o reads (o + 0.5) / 2 - 0.5, clamped at the edges;
    nearest at asymmetric with floor: o // 2; zero insertion by 2 with one zero before."""
    linear = dict(mode="linear", coordinate_transformation_mode="half_pixel",
                  nearest_mode="round_prefer_floor", cubic_coeff_a=-0.75, exclude_outside=0,
                  antialias=0)
    idx, w = rs.axis_taps(3, 6, 2.0, linear)
    dense = np.zeros((6, 3))
    np.add.at(dense, (np.arange(6)[:, None], idx), w)
    np.testing.assert_allclose(dense, [[1, 0, 0], [.75, .25, 0], [.25, .75, 0], [0, .75, .25],
                                       [0, .25, .75], [0, 0, 1]])
    idx, w = rs.axis_taps(3, 6, 2.0, dict(linear, mode="nearest", nearest_mode="floor",
                                          coordinate_transformation_mode="asymmetric"))
    assert idx.tolist() == [[0], [0], [1], [1], [2], [2]] and (w == 1).all()
    idx, w = insert_zeros(3, 2, 1, 0)
    assert (idx[:, 0] * w[:, 0]).tolist() == [0, 0, 0, 1, 0, 2] and w[:, 0].tolist() == \
        [0, 1, 0, 1, 0, 1]


def _resize(mode: str, **attrs):
    scales = np.array([1, 1, 2, 1.5], np.float32)
    return [helper.make_node("Resize", ["c", "", "scales"], ["y"], mode=mode, name="resize",
                             **attrs)], {"scales": scales}


RESIZE = {  # name -> (nodes, initializers, output shape)
    "nearest_asymmetric_floor": (*_resize("nearest", coordinate_transformation_mode="asymmetric",
                                          nearest_mode="floor"), ("N", C, 10, 7)),
    "nearest_half_pixel": (*_resize("nearest"), ("N", C, 10, 7)),
    "linear_half_pixel": (*_resize("linear"), ("N", C, 10, 7)),
    "linear_align_corners": (*_resize("linear", coordinate_transformation_mode="align_corners"),
                             ("N", C, 10, 7)),
    "linear_pytorch_half_pixel": (*_resize(
        "linear", coordinate_transformation_mode="pytorch_half_pixel"), ("N", C, 10, 7)),
    "cubic_exclude_outside": (*_resize("cubic", exclude_outside=1, cubic_coeff_a=-0.5),
                              ("N", C, 10, 7)),
    "linear_down_sizes": ([helper.make_node("Resize", ["c", "", "", "sizes"], ["y"],
                                            mode="linear", name="resize")],
                          {"sizes": np.array([3, C, 3, 4], np.int64)}, (3, C, 3, 4)),
}


@pytest.mark.parametrize("name", sorted(RESIZE))
def test_resize_matches_onnxruntime_at_every_stage(name):
    nodes, inits, shape = RESIZE[name]
    model = _model(nodes, inits, 13, shape)
    x = 2 * RNG.standard_normal((3, 2, 5, 5)).astype(np.float32)
    (want,) = ort_run(model, {"x": x})
    errors = {}
    program = compile_model(model, batch=3, verify_each=True, dump=lambda stage, g: errors.update(
        {stage: rel_err(evaluate(g, {"x": x})["y"], want)}))
    assert max(errors.values()) < 1e-5, errors
    assert [i.attr("axis") for i in program.text if i.op == "interp"] == [2, 3]
    assert rel_err(run(program, x, mode="ideal", timing=False).outputs["y"], want) < 1e-5


LEGACY = [("Upsample", 9, "nearest", [1, 1, 1.7, 1.3]), ("Upsample", 9, "linear", [1, 1, 1.7, 1.3]),
          ("Upsample", 9, "nearest", [1, 1, 2, 3]), ("Resize", 10, "nearest", [1, 1, 0.6, 0.5]),
          ("Resize", 10, "linear", [1, 1, 0.6, 1.5])]


@pytest.mark.parametrize("op, opset, mode, scales", LEGACY)
def test_upsample_and_resize_10_match_onnxruntime(op, opset, mode, scales):
    """Upsample (opsets 7-9; older PyTorch exports of nn.Upsample) and Resize-10 reach the
    compiler as Resize through onnx's version converter, with their own coordinates
    (x / scale) and nearest rule restored."""
    x = RNG.standard_normal((1, 2, 5, 6)).astype(np.float32)
    out = [1, 2] + [int(np.floor(d * s)) for d, s in zip((5, 6), scales[2:])]
    model = helper.make_model(helper.make_graph(
        [helper.make_node(op, ["x", "scales"], ["y"], mode=mode)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
        [numpy_helper.from_array(np.array(scales, np.float32), "scales")]),
        opset_imports=[helper.make_opsetid("", opset)])
    (want,) = ort_run(model, {"x": x})
    got = run(compile_model(model), x, mode="ideal", timing=False).outputs["y"]
    assert rel_err(got, want) < 1e-6


def test_a_constant_tf_crop_and_resize_folds():
    """tf_crop_and_resize is not lowered, but on constants it folds (onnx's reference)."""
    roi = np.array([0, 0, 0.2, 0.1, 1, 1, 0.9, 0.8], np.float32)
    nodes = [helper.make_node("Resize", ["k", "roi", "", "sizes"], ["r"], mode="linear",
                              coordinate_transformation_mode="tf_crop_and_resize"),
             helper.make_node("Add", ["x", "r"], ["y"])]
    model = _standalone(nodes, {"x": [1, 1, 3, 3]}, 13, {
        "k": RNG.standard_normal((1, 1, 4, 4)).astype(np.float32), "roi": roi,
        "sizes": np.array([1, 1, 3, 3], np.int64)})
    x = RNG.standard_normal((1, 1, 3, 3)).astype(np.float32)
    (want,) = ort_run(model, {"x": x})
    got = run(compile_model(model), x, mode="ideal", timing=False).outputs["y"]
    assert rel_err(got, want) < 1e-6


def _conv_transpose(**attrs) -> onnx.ModelProto:
    """x [N, 4, 4, 5] -> ConvTranspose (w [4, 6 / group, 3, 2]) -> y."""
    group = attrs.get("group", 1)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="deconv", **attrs)
    inits = [numpy_helper.from_array(RNG.standard_normal((4, 6 // group, 3, 2))
                                     .astype(np.float32), "w"),
             numpy_helper.from_array(RNG.standard_normal(6).astype(np.float32), "b")]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 4, 4, 5])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


CONV_TRANSPOSE = {
    "stride_2": dict(strides=[2, 2]),
    "stride_2_pads_output_padding": dict(strides=[2, 3], pads=[1, 0, 1, 1],
                                         output_padding=[1, 2]),
    "group_2_dilation_2": dict(group=2, dilations=[2, 2], strides=[1, 2]),
    "output_shape": dict(strides=[2, 2], output_shape=[8, 10]),
    "pads_past_the_kernel": dict(pads=[3, 0, 0, 2]),  # crops more than the kernel reaches
    "same_upper_stride_past_the_kernel": dict(auto_pad="SAME_UPPER", strides=[4, 3]),
    "same_lower": dict(auto_pad="SAME_LOWER", strides=[2, 2]),
}


@pytest.mark.parametrize("name", sorted(CONV_TRANSPOSE))
def test_conv_transpose_matches_onnxruntime_at_every_stage(name):
    model = _conv_transpose(**CONV_TRANSPOSE[name])
    x = RNG.standard_normal((2, 4, 4, 5)).astype(np.float32)
    (want,) = ort_run(model, {"x": x})
    errors = {}
    program = compile_model(model, batch=2, verify_each=True, dump=lambda stage, g: errors.update(
        {stage: rel_err(evaluate(g, {"x": x})["y"], want)}))
    assert max(errors.values()) < 1e-5, errors
    assert any(i.op == "mvm" for i in program.text)  # on the crossbars
    assert rel_err(run(program, x, mode="ideal", timing=False).outputs["y"], want) < 1e-5


def test_conv_transpose_in_quantized_mode_is_the_crossbars_convolution():
    """Quantized mode runs the equivalent stride-1 convolution on the crossbars: the same
    numbers as that convolution written out by hand (input spread by numpy, kernel flipped
    and its channel axes swapped), compiled and run quantized."""
    model = _conv_transpose(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
    w, b = (numpy_helper.to_array(i) for i in model.graph.initializer)
    x = RNG.standard_normal((3, 4, 4, 5)).astype(np.float32)
    # the kernel's reach less the pads: rows (kernel 3) 1 before, 1 + 1 (output padding)
    # after; columns (kernel 2) none before, 0 + 1 after
    spread = np.zeros((3, 4, 1 + 7 + 2, 9 + 1), np.float32)
    spread[:, :, 1:8:2, 0:9:2] = x
    conv = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["s", "k", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", *spread.shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8, 9])],
        [numpy_helper.from_array(np.flip(w.swapaxes(0, 1), (2, 3)).copy(), "k"),
         numpy_helper.from_array(b, "b")]), opset_imports=[helper.make_opsetid("", 13)])
    (want,) = ort_run(model, {"x": x})
    np.testing.assert_allclose(ort_run(conv, {"s": spread})[0], want, rtol=1e-5, atol=1e-5)
    got = run(compile_model(model), x, mode="quantized", timing=False).outputs["y"]
    ref = run(compile_model(conv), spread, mode="quantized", timing=False).outputs["y"]
    assert rel_err(got, want) > 1e-4  # quantization shows
    np.testing.assert_array_equal(got, ref)


def test_conv_transpose_refusals_and_digital_placement():
    """An output_shape below the natural size is refused (shape inference cannot give the
    output's shape); BasisN refuses ConvTranspose layers, and --digital takes them."""
    with pytest.raises(CompileError, match="ConvTranspose computes spatial size"):
        compile_model(_conv_transpose(strides=[2, 2], output_shape=[3, 3]))
    conv = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("ConvTranspose", ["c", "w2"], ["y"], strides=[2, 2],
                             name="deconv")]
    model = _standalone(conv, {"x": [1, 2, 4, 4]}, 13, {
        "w1": RNG.standard_normal((4, 2, 3, 3)).astype(np.float32),
        "w2": RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)})
    basis = fit(layer_matrices(model), 9, 9, 8)
    with pytest.raises(CompileError, match=r"not ConvTranspose \(deconv\); --digital deconv"):
        compile_model(model, basis=basis)
    program = compile_model(model, basis=basis, digital="deconv")
    assert [i.op for i in program.text if i.op in ("dmatmul", "combine")] == \
        ["combine", "dmatmul"]


def test_calibrated_range_reaches_the_spread_input(tmp_path):
    """The zeros ConvTranspose inserts keep its input's calibrated range, which sets the DAC
    full scale of the convolution's patches (none would fall back to each sample's max)."""
    model = _conv_transpose(strides=[2, 2])
    samples = RNG.standard_normal((16, 4, 4, 5)).astype(np.float32)
    program = compile_model(model, calibrate=samples)
    read = {i.operands[1][1:] for i in program.text if i.op == "mvm"}
    ranges = {b.name: b.range for b in program.buffers if b.name in read}
    assert ranges and all(r == pytest.approx(np.abs(samples).max(), rel=1e-6)
                          for r in ranges.values()), ranges


# -- booleans: comparisons, logic, Where, casts (held as float32 0 and 1) ----------------------

def test_comparisons_logic_and_where_match_onnxruntime():
    """A mask computed from the input (the way exporters write attention masks), logic on
    it, Where, casts both ways and a boolean output: every stage and ideal mode against
    onnxruntime, the boolean output as 0 and 1."""
    f = helper.make_node
    nodes = [f("Less", ["x", "k"], ["lt"]), f("GreaterOrEqual", ["x", "z"], ["ge"]),
             f("Equal", ["r", "z"], ["eq"]), f("Not", ["eq"], ["ne"]),
             f("And", ["lt", "ne"], ["both"]), f("Or", ["both", "ge"], ["any"]),
             f("Xor", ["any", "lt"], ["odd"]),
             f("Where", ["odd", "x", "big"], ["w"]), f("Cast", ["w"], ["wb"], to=TensorProto.BOOL),
             f("Cast", ["both"], ["bf"], to=TensorProto.FLOAT),
             f("CastLike", ["wb", "x"], ["wf"]), f("Add", ["wf", "bf"], ["s"]),
             f("Add", ["s", "w"], ["y"]),
             f("Greater", ["x", "r"], ["gt"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 4])
                     for n in ("x", "r")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4]),
         helper.make_tensor_value_info("gt", TensorProto.BOOL, ["N", 3, 4])],
        [numpy_helper.from_array(v, k) for k, v in {
            "k": np.float32(0.5), "z": np.zeros((1, 4), np.float32),
            "big": np.float32(-1e9)}.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    x[0, 0], x[1, 0] = 0.5, 0.0  # ties with the constants: < against <=, zeros for casts
    r = RNG.integers(0, 2, (2, 3, 4)).astype(np.float32)
    want = ort_run(model, {"x": x, "r": r})
    assert 0 < want[1].mean() < 1 and 0 < (want[0] < -1e8).mean() < 1
    errors = {}
    program = compile_model(model, batch=2, verify_each=True, dump=lambda stage, g: errors.update(
        {stage: rel_err(evaluate(g, {"x": x, "r": r})["y"], want[0])}))
    assert max(errors.values()) < 1e-6, errors
    got = run(program, {"x": x, "r": r}, mode="ideal", timing=False).outputs
    np.testing.assert_array_equal(got["y"], want[0])
    np.testing.assert_array_equal(got["gt"], want[1].astype(np.float32))


@pytest.mark.parametrize("op, value", [("ReduceMax", 0), ("ReduceMin", 1)])
def test_a_boolean_reduction_over_an_empty_set(op, value):
    """Over no values a boolean's max is false and its min true (not -inf and inf)."""
    model = _standalone([helper.make_node("Less", ["x", "x"], ["b"]),
                         helper.make_node(op, ["b", "axes"], ["m"], keepdims=0),
                         helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT)],
                        {"x": [2, 0]}, 18, {"axes": np.array([1], np.int64)})
    got = run(compile_model(model, batch=2), np.zeros((2, 0), np.float32), mode="ideal",
              timing=False).outputs["y"]
    np.testing.assert_array_equal(got, [value, value])


def test_a_boolean_input_and_a_constant_condition_through_the_cli(tmp_path):
    """A bool input (a padding mask) through cimc and cimrun, Where with a constant
    condition, in quantized mode behind a crossbar product, and --reference feeding
    onnxruntime the bool it declares."""
    f = helper.make_node
    nodes = [f("MatMul", ["x", "w"], ["p"]), f("Where", ["keep", "p", "low"], ["masked"]),
             f("Where", ["fixed", "masked", "x"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                     helper.make_tensor_value_info("keep", TensorProto.BOOL, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(v, k) for k, v in {
            "w": RNG.standard_normal((4, 4)).astype(np.float32), "low": np.float32(-100),
            "fixed": np.array([True, True, False, True])}.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = RNG.standard_normal((6, 4)).astype(np.float32)
    keep = RNG.integers(0, 2, (6, 4)).astype(bool)
    (want,) = ort_run(model, {"x": x, "keep": keep})
    path, prog, feeds = tmp_path / "b.onnx", tmp_path / "b.cim", tmp_path / "in.npz"
    onnx.save(model, path)
    np.savez(feeds, x=x, keep=keep)
    assert cli("cimc", str(path), "--batch", "6", "-o", str(prog)).returncode == 0
    assert 'input "keep" %keep bools=1' in prog.read_text()
    np.savez(tmp_path / "half.npz", x=x, keep=keep * 0.5)
    fails(cli("cimrun", str(prog), "--input", str(tmp_path / "half.npz")),
          "input 'keep' is boolean: give a bool array (or 0 and 1)")
    for mode, bound in (("ideal", 1e-6), ("quantized", 0.05)):
        out, report = tmp_path / f"{mode}.npy", tmp_path / f"{mode}.json"
        r = cli("cimrun", str(prog), "--input", str(feeds), "--mode", mode, "-o", str(out),
                "--reference", str(path), "--report", str(report))
        assert r.returncode == 0, r.stderr
        assert "cimrun: against the float model: largest relative error y " in r.stdout
        got = np.load(out)
        assert rel_err(got, want) < bound
        np.testing.assert_array_equal(got[~keep & [True, True, False, True]], -100)


def _int_mask_model() -> onnx.ModelProto:
    """An int64 attention mask as exporters write it: unsqueezed, cast to float, turned into
    an additive bias before a softmax; and compared with 0."""
    f = helper.make_node
    nodes = [f("Unsqueeze", ["mask", "ax"], ["m1"]),
             f("Cast", ["m1"], ["mf"], to=TensorProto.FLOAT),
             f("Sub", ["one", "mf"], ["inv"]), f("Mul", ["inv", "neg"], ["bias"]),
             f("Add", ["x", "bias"], ["s"]), f("Softmax", ["s"], ["y"], axis=-1),
             f("Equal", ["mask", "zero"], ["pad"]),
             f("Cast", ["pad"], ["padf"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5]),
                     helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 5]),
         helper.make_tensor_value_info("padf", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in {
            "ax": np.array([1], np.int64), "one": np.float32(1), "neg": np.float32(-1e4),
            "zero": np.int64(0)}.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_an_int64_attention_mask_is_held_as_float32(tmp_path):
    """Through cimc and cimrun as a user runs it: the program declares the mask ints=1, the
    outputs match onnxruntime, and a float mask or one beyond 2**24 is refused."""
    model = _int_mask_model()
    x = RNG.standard_normal((3, 2, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.int64)
    want = ort_run(model, {"x": x, "mask": mask})
    path, prog, feeds, out = (tmp_path / n for n in ("m.onnx", "m.cim", "in.npz", "out.npz"))
    onnx.save(model, path)
    assert cli("cimc", str(path), "--batch", "3", "-o", str(prog)).returncode == 0
    assert 'input "mask" %mask ints=1' in prog.read_text()
    np.savez(feeds, x=x, mask=mask)
    r = cli("cimrun", str(prog), "--input", str(feeds), "-o", str(out))
    assert r.returncode == 0, r.stderr
    got = np.load(out)
    assert rel_err(got["y"], want[0]) < 1e-6
    np.testing.assert_array_equal(got["padf"], want[1])
    for bad, says in ((mask.astype(np.float32), "must be an integer array"),
                      (mask * 2 ** 25, "beyond 2**24")):
        np.savez(feeds, x=x, mask=bad)
        fails(cli("cimrun", str(prog), "--input", str(feeds)), says)


def test_an_integer_input_that_is_computed_with_is_refused():
    """Integer arithmetic is not float arithmetic (division truncates): an integer input that
    an Add reads stays unsupported, with the reason."""
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["i", "i"], ["s"]),
         helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT)], "g",
        [helper.make_tensor_value_info("i", TensorProto.INT64, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])]),
        opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(CompileError, match="tensor 'i' is int64.*moved, compared or cast"):
        compile_model(model)


@pytest.mark.parametrize("old, new, says", [
    ('%mask ints=1', '%mask ints=2', "the port attributes are ids=N"),
    ('%mask ints=1', '%mask ids=3 ints=1', "the port attributes are ids=N"),
    ('output "y" %y', 'output "y" %y bools=1', "only an input can hold"),  # ints=1: indices
])
def test_an_integer_port_is_parsed_and_checked(old, new, says):
    text = isa.print_program(compile_model(_int_mask_model(), batch=3))
    assert old in text
    with pytest.raises(isa.IsaError, match=says):
        isa.parse(text.replace(old, new), check_sum=False)


# -- operators ONNX defines as functions (compiler/expand_functions.py) ------------------------

def test_operators_defined_as_functions_compile_as_their_bodies():
    """Attention (opset 23, a context-dependent function) and MeanVarianceNormalization have
    no kernel here: their ONNX function bodies compile instead, with onnxruntime's numbers;
    a function op the compiler has natively (LayerNormalization) stays one op."""
    f = helper.make_node
    model = helper.make_model(helper.make_graph(
        [f("Attention", ["q", "k", "v"], ["a"]),
         f("MeanVarianceNormalization", ["a"], ["m"], axes=[2, 3]),
         f("LayerNormalization", ["m", "scale"], ["y"], axis=-1)], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2, 5, 4]) for n in "qkv"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 5, 4])],
        [numpy_helper.from_array(RNG.uniform(0.5, 1.5, 4).astype(np.float32), "scale")]),
        opset_imports=[helper.make_opsetid("", 23)])
    feeds = {n: RNG.standard_normal((2, 2, 5, 4)).astype(np.float32) for n in "qkv"}
    (want,) = ort_run(model, feeds)
    program = compile_model(model, batch=2, verify_each=True)
    assert sum(i.op == "layernorm" for i in program.text) == 1
    assert any(i.op == "softmax" for i in program.text)  # from Attention's body
    got = run(program, feeds, mode="ideal", timing=False).outputs["y"]
    assert rel_err(got, want) < 1e-5


def test_attention_runs_many_samples_on_a_program_compiled_for_one():
    """Attention's body casts a constant like its input (CastLike of a constant); folded,
    no buffer lacks the batch axis, so three samples run through a batch-1 program."""
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=1)], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2, 5, 4]) for n in "qkv"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 5, 4])]),
        opset_imports=[helper.make_opsetid("", 23)])
    feeds = {n: RNG.standard_normal((3, 2, 5, 4)).astype(np.float32) for n in "qkv"}
    (want,) = ort_run(model, feeds)
    program = compile_model(model)
    assert program.batch_free
    for mode, bound in (("ideal", 1e-6), ("quantized", 0.05)):
        got = run(program, feeds, mode=mode, timing=False).outputs["y"]
        assert rel_err(got, want) < bound, mode


def test_an_input_without_the_batch_axis_says_what_to_do(tmp_path):
    """A mask shared by every sample ([5, 5], no batch axis) fixes the program's batch: a
    run of more samples names the inputs' shapes and cimc --batch."""
    f = helper.make_node
    model = helper.make_model(helper.make_graph(
        [f("Add", ["x", "m"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 5]),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, [5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 5])]),
        opset_imports=[helper.make_opsetid("", 13)])
    path, prog, feeds = tmp_path / "m.onnx", tmp_path / "m.cim", tmp_path / "in.npz"
    onnx.save(model, path)
    assert cli("cimc", str(path), "-o", str(prog)).returncode == 0
    np.savez(feeds, x=np.zeros((2, 5, 5), np.float32), m=np.ones((5, 5), np.float32))
    fails(cli("cimrun", str(prog), "--input", str(feeds)), "x [2, 5, 5], m [5, 5]",
          "compiled for x [1, 5, 5], m [5, 5]", "cimc --batch N")


def test_cimc_lists_the_operators_it_compiles():
    r = cli("cimc", "--operators")
    listed = set(r.stdout.split("\n\n")[0].replace("\n", " ").split(", "))
    assert r.returncode == 0 and {"ConvTranspose", "Resize", "Where", "LogSoftmax"} <= listed
    assert "Attention" not in listed and "Attention" in r.stdout  # by its function body


def test_a_function_operator_on_constants_folds_instead_of_expanding():
    """Range (position ids, torch.arange) has a body built on Loop; on constants (here the
    length comes from a static shape) it folds as before, not expanded into the Loop."""
    f = helper.make_node
    nodes = [f("Shape", ["x"], ["s"]), f("Gather", ["s", "one"], ["n"]),
             f("Range", ["zero", "n", "step"], ["r"]), f("Cast", ["r"], ["rf"], to=1),
             f("Add", ["x", "rf"], ["y"])]
    model = _standalone(nodes, {"x": [2, 5]}, 13, {
        "one": np.array(1, np.int64), "zero": np.array(0, np.int64),
        "step": np.array(1, np.int64)})
    x = RNG.standard_normal((2, 5)).astype(np.float32)
    got = run(compile_model(model, batch=2), x, mode="ideal", timing=False).outputs["y"]
    np.testing.assert_array_equal(got, x + np.arange(5, dtype=np.float32))


@pytest.mark.parametrize("rounding", ["round_prefer_ceil", "round_prefer_floor"])
@pytest.mark.parametrize("transform", ["half_pixel", "half_pixel_symmetric", "asymmetric",
                                       "align_corners"])
def test_nearest_resize_at_near_ties_picks_onnxruntimes_pixel(rounding, transform):
    """Scale 0.3 on 9 pixels puts positions a float32 rounding away from halves; the pick
    follows onnxruntime's float32 positions."""
    model = onnx.shape_inference.infer_shapes(helper.make_model(helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                          nearest_mode=rounding, coordinate_transformation_mode=transform)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1, 1, 1, 0.3], np.float32), "scales")]),
        opset_imports=[helper.make_opsetid("", 19)]))
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 1, 9)
    (want,) = ort_run(model, {"x": x})
    got = run(compile_model(model), x, mode="ideal", timing=False).outputs["y"]
    np.testing.assert_array_equal(got, want)


def test_an_int64_mask_whose_shape_is_read_is_held_too():
    """Shape reads only the mask's shape: the mask is still held as float32."""
    f = helper.make_node
    model = helper.make_model(helper.make_graph(
        [f("Shape", ["mask"], ["s"]), f("Cast", ["mask"], ["mf"], to=1),
         f("Reshape", ["mf", "s"], ["y"])], "g",
        [helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])]),
        opset_imports=[helper.make_opsetid("", 13)])
    mask = RNG.integers(0, 2, (2, 5))
    program = compile_model(model, batch=2)
    assert [p.ints for p in program.inputs] == [True]
    got = run(program, {"mask": mask}, mode="ideal", timing=False).outputs["y"]
    np.testing.assert_array_equal(got, mask)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis, keepdims, last", [(1, 1, 0), (1, 0, 0), (-1, 1, 1), (2, 0, 1)])
def test_argmax_and_argmin_return_int64_indices_as_onnxruntime(op, axis, keepdims, last):
    """The index is held as float32 on the chip (a reduction on the vector unit) and the
    output port says ints=1, so a run returns int64; select_last_index is the first extreme
    of the axis reversed (a slice with step -1, whose shape rule a verifier checks at every
    stage), counted from the end."""
    node = helper.make_node(op, ["c"], ["y"], axis=axis, keepdims=keepdims,
                            select_last_index=last, name=op.lower())
    model = _model([node], {}, 13)
    del model.graph.output[:]  # int64, of the shape inference gives it
    model = onnx.shape_inference.infer_shapes(model)
    model.graph.output.extend(v for v in model.graph.value_info if v.name == "y")
    x = RNG.standard_normal((3, 2, 5, 5)).astype(np.float32)
    x[:, :, 1:3, 1:3] = 0.0  # ties: which of equal extremes is first or last matters
    (want,) = ort_run(model, {"x": x})
    program = compile_model(model, batch=3, verify_each=True)
    assert [p.ints for p in program.outputs] == [True]
    again = isa.parse(isa.print_program(program))  # the port's ints=1 survives the file
    got = run(again, x, mode="ideal", timing=False).outputs["y"]
    assert got.dtype == np.int64 and np.array_equal(got, want)


def test_an_argmax_compared_with_labels_stays_on_the_chip():
    """ArgMax then Equal with an int64 label input: both integers held as float32, the
    comparison a boolean, cast to float; no integer reaches the output."""
    w = RNG.standard_normal((C, 2, 3, 3)).astype(np.float32)

    def model(tail: list, outputs: list, inputs: list) -> onnx.ModelProto:
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
             helper.make_node("ArgMax", ["f"], ["k"], axis=1, keepdims=0, name="argmax"),
             *tail],
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5]),
                  *inputs], outputs, [numpy_helper.from_array(w, "w")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = RNG.standard_normal((6, 2, 5, 5)).astype(np.float32)
    (k,) = ort_run(model([], [helper.make_tensor_value_info("k", TensorProto.INT64, ["N"])],
                         []), {"x": x})
    label = np.where(np.arange(6) < 3, k, (k + 1) % (C * 25))  # three hits, three misses
    scored = model([helper.make_node("Equal", ["k", "label"], ["hit"], name="equal"),
                    helper.make_node("Cast", ["hit"], ["y"], to=TensorProto.FLOAT,
                                     name="cast")],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
                   [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])])
    program = compile_model(scored, batch=6)
    assert not any(p.ints for p in program.outputs)
    got = run(program, {"x": x, "label": label}, timing=False).outputs["y"]
    assert np.array_equal(got, [1, 1, 1, 0, 0, 0])


def test_labels_refuse_an_output_of_indices(tmp_path):
    node = helper.make_node("ArgMax", ["c"], ["y"], axis=1, keepdims=1, name="argmax")
    model = _model([node], {}, 13)
    del model.graph.output[:]
    model = onnx.shape_inference.infer_shapes(model)
    model.graph.output.extend(v for v in model.graph.value_info if v.name == "y")
    flat = helper.make_node("Flatten", ["y"], ["z"], name="flatten")  # [N, 25] of indices
    model.graph.node.append(flat)
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.INT64, ["N", 25]))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "x.npy", RNG.standard_normal((2, 2, 5, 5)).astype(np.float32))
    np.save(tmp_path / "y.npy", np.zeros(2, np.int64))
    assert cli("cimc", str(path), "-o", str(tmp_path / "m.cim"), "-q").returncode == 0
    r = cli("cimrun", str(tmp_path / "m.cim"), "--input", str(tmp_path / "x.npy"),
            "--labels", str(tmp_path / "y.npy"))
    assert r.returncode == 2 and "holds integers (an ArgMax's indices)" in r.stderr, r.stderr


@pytest.mark.parametrize("start, end, step", [(-10, -7, -1), (-10, -100, -2), (7, 1, -1),
                                              (-3, -2 ** 63, -1), (-10, 3, 1)])
def test_slice_bounds_clamp_as_onnx_says(start, end, step):
    """ONNX clamps a negative step's start to [0, dim - 1] (Python's slice.indices gives an
    empty range for a start below -dim): the same rows as onnxruntime, verified at every
    stage."""
    inits = {k: np.array([v], np.int64) for k, v in
             (("s", start), ("e", end), ("a", 1), ("st", step))}
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    x = RNG.standard_normal((2, 6, 5)).astype(np.float32)
    (want,) = ort_run(model, {"x": x})
    got = run(compile_model(model, batch=2, verify_each=True), x, timing=False).outputs["y"]
    assert got.shape == want.shape and np.array_equal(got, want)


def test_argmax_takes_exactly_one_axis_in_a_program():
    node = helper.make_node("ArgMax", ["c"], ["y"], axis=1, keepdims=1, name="argmax")
    model = _model([node], {}, 13)
    del model.graph.output[:]
    model = onnx.shape_inference.infer_shapes(model)
    model.graph.output.extend(v for v in model.graph.value_info if v.name == "y")
    text = isa.print_program(compile_model(model))
    assert "axes=[1]" in text
    with pytest.raises(isa.IsaError, match="argmax takes exactly one axis"):
        isa.parse(text.replace("axes=[1]", "axes=[1,2]"), check_sum=False)
