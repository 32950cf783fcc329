"""The IR evaluator (issue 11, point 2): after import and after every pass, the IR's outputs
match onnxruntime, for every bundled model, the smallest zoo model and two small hand-built
ones; a deliberately broken pass is reported at that pass.

Tolerance: 1e-5 relative (max abs error over max abs reference), the issue's bound. Both sides
compute in float32 (unit roundoff u = 6e-8) and differ only in summation order; the rounding
error of a K-term dot product grows like a random walk, about u * sqrt(K) of its terms'
magnitude: 4e-6 for the largest K here (4608, ResNet-18's last convs), and non-linearities
and pooling do not amplify it. The broken passes below move the outputs by 1e-1 or more.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from conftest import MODELS, model_path, ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper

from compiler import CompileError, backend, compile_model
from compiler.basis import BasisSet, reconstruct
from compiler.basis.layers import apply
from compiler.evaluate import KINDS, evaluate
from compiler.ir import Graph
from compiler.passes import PASSES, PIPELINE
from tools import make_zoo

TOL = 1e-5
STAGES = ["import"] + PIPELINE


class _Diverged(Exception):
    def __init__(self, stage: str, why: str):
        super().__init__(stage, why)
        self.stage, self.why = stage, why


def first_divergence(model, feeds: dict, reference, **options) -> tuple[str | None, str]:
    """Compile ``model`` with ``options``, evaluating the IR on ``feeds`` after import and after
    every pass; ``reference(stage)`` gives the expected outputs by name. Returns (None, "")
    when every stage matches within TOL, else the first stage that does not and why (its
    error, or what the evaluator rejected); the compile stops there."""
    seen = []

    def check(stage, graph):
        seen.append(stage)
        try:
            got = evaluate(graph, feeds)
        except CompileError as exc:
            raise _Diverged(stage, str(exc)) from None
        want = reference(stage)
        err = max(rel_err(got[k], want[k]) for k in want)
        if not err <= TOL:
            raise _Diverged(stage, f"relative error {err:.2e}")

    try:
        compile_model(model, dump=check, **options)
    except _Diverged as d:
        return d.stage, d.why
    assert seen == STAGES
    return None, ""


def _ort(model, feeds: dict) -> dict[str, np.ndarray]:
    proto = onnx.load(model) if isinstance(model, str) else model
    return dict(zip([o.name for o in proto.graph.output], ort_run(model, feeds)))


def _digits(n: int = 3) -> dict:
    return {"image": np.load(f"{MODELS}/digits_test_x.npy")[:n]}


# -- small generated models -----------------------------------------------------------------

class _Random:
    """Seeded float32 tensors: normal, or uniform in [0.5, 1.5) (scales and variances)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def normal(self, *shape) -> np.ndarray:
        return self.rng.standard_normal(shape).astype(np.float32)

    def positive(self, *shape) -> np.ndarray:
        return self.rng.uniform(0.5, 1.5, shape).astype(np.float32)


def _bn(name: str, x: str, c: int, inits: dict, r: _Random) -> onnx.NodeProto:
    names = [f"{name}.{k}" for k in ("scale", "bias", "mean", "var")]
    inits.update(zip(names, (r.positive(c), r.normal(c), r.normal(c), r.positive(c))))
    return helper.make_node("BatchNormalization", [x] + names, [name], name=name)


def _model(nodes, inputs: dict, outputs: dict, inits: dict) -> onnx.ModelProto:
    """Inputs and outputs by name with their shapes after the (symbolic) batch."""
    vi, out = ([helper.make_tensor_value_info(k, TensorProto.FLOAT, ["N"] + s)
                for k, s in values.items()] for values in (inputs, outputs))
    graph = helper.make_graph(nodes, "g", vi, out,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def _node(op, ins, out, **attrs):
    return helper.make_node(op, ins, [out], name=out, **attrs)


def convnet(r: _Random) -> onnx.ModelProto:
    """Grouped, depthwise-dilated and strided SAME convs, a foldable and an unfoldable
    BatchNorm, Sum, Clip, LeakyRelu, max/avg pools in ceil mode (with and without counted
    padding), Concat, LRN, asymmetric pads, Tanh, GlobalMaxPool, Gemm with transA/transB/
    alpha/beta, Sigmoid, Softmax; two outputs."""
    i = {"w1": r.normal(8, 2, 3, 3), "b1": r.normal(8), "w2": r.normal(8, 1, 3, 3),
         "w3": r.normal(8, 8, 3, 3), "w4": r.normal(6, 32, 3, 3), "wg": r.normal(5, 6),
         "cg": r.normal(1, 5), "lo": np.array(-1.0, np.float32), "hi": np.array(2.0, np.float32)}
    nodes = [_node("Conv", ["x", "w1", "b1"], "c1", group=2, pads=[1, 1, 1, 1]),
             _node("LeakyRelu", ["c1"], "l1", alpha=0.1),
             _node("Conv", ["l1", "w2"], "c2", group=8, dilations=[2, 2], pads=[2, 2, 2, 2]),
             _bn("bn2", "c2", 8, i, r),  # c2 has two users: not foldable
             _node("Sum", ["bn2", "l1", "c2"], "s"),
             _node("Clip", ["s", "lo", "hi"], "cl"),
             _node("Conv", ["l1", "w3"], "c3", strides=[2, 2], auto_pad="SAME_UPPER"),
             _bn("bn3", "c3", 8, i, r),  # folds into c3
             _node("Relu", ["bn3"], "r3"),
             _node("MaxPool", ["cl"], "mp", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             _node("AveragePool", ["cl"], "ap", kernel_shape=[3, 3], strides=[2, 2],
                   pads=[1, 1, 0, 0], ceil_mode=1),
             _node("AveragePool", ["cl"], "ap1", kernel_shape=[2, 2], strides=[2, 2],
                   pads=[0, 0, 1, 1], count_include_pad=1),
             _node("Concat", ["mp", "ap", "ap1", "r3"], "cat", axis=1),
             _node("LRN", ["cat"], "lrn", size=3, alpha=1e-2, beta=0.75, bias=1.5),
             _node("Conv", ["lrn", "w4"], "c4", strides=[2, 2], pads=[0, 1, 1, 0]),
             _node("Tanh", ["c4"], "t"),
             _node("GlobalMaxPool", ["t"], "gmp"),
             _node("Flatten", ["gmp"], "f"),
             _node("Transpose", ["f"], "ft", perm=[1, 0]),
             _node("Gemm", ["ft", "wg", "cg"], "g", transA=1, transB=1, alpha=0.7, beta=0.3),
             _node("Sigmoid", ["g"], "sg"),
             _node("Softmax", ["sg"], "y", axis=1)]
    return _model(nodes, {"x": [4, 10, 10]}, {"y": [5], "mp": [8, 5, 5]}, i)


def vectornet(r: _Random) -> onnx.ModelProto:
    """BatchNorm on the input (no producer), MatMul + Add, Relu, constant Pad, Gemm (alpha,
    beta, a [1, M] bias), Sub/Mul/Div by constants, Reshape, a strided dilated 1-D conv,
    Transpose, Softmax over the last axis; an Identity as a second output (a copy)."""
    i = {"wm": r.normal(12, 7), "bm": r.normal(7), "pads": np.array([0, 1, 0, 2], np.int64),
         "pv": np.array(0.5, np.float32), "wg": r.normal(10, 8), "cg": r.normal(1, 8),
         "k": r.normal(8), "d": r.positive(8), "shape": np.array([0, 2, 4], np.int64),
         "wc": r.normal(3, 2, 2)}
    nodes = [_bn("bn", "x", 12, i, r),
             _node("MatMul", ["bn", "wm"], "mm"),
             _node("Add", ["mm", "bm"], "a"),
             _node("Relu", ["a"], "r"),
             _node("Identity", ["r"], "feat"),
             _node("Pad", ["r", "pads", "pv"], "p"),
             _node("Gemm", ["p", "wg", "cg"], "g", alpha=1.3, beta=0.6),
             _node("Sub", ["g", "k"], "sub"),
             _node("Mul", ["sub", "k"], "mul"),
             _node("Div", ["mul", "d"], "div"),
             _node("Reshape", ["div", "shape"], "rs"),
             _node("Conv", ["rs", "wc"], "c", strides=[2], dilations=[2], pads=[2, 1]),
             _node("Transpose", ["c"], "tr", perm=[0, 2, 1]),
             _node("Softmax", ["tr"], "y", axis=-1)]
    return _model(nodes, {"x": [12]}, {"y": [3, 3], "feat": [7]}, i)


GENERATED = {"convnet": (convnet, [4, 10, 10]), "vectornet": (vectornet, [12])}


# -- every stage matches onnxruntime --------------------------------------------------------

@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_bundled_model_every_stage_matches_onnxruntime(name):
    path, feeds = model_path(name), _digits()
    want = _ort(path, feeds)
    assert first_divergence(path, feeds, lambda stage: want, batch=3) == (None, "")


def test_basis_model_every_stage_matches_its_decomposition():
    """Up to lower-to-crossbar the IR holds the model's own weights; from basis-decompose on,
    the combination of basis and coefficients, i.e. the model with its weights replaced by the
    decomposition's reconstructions (``basis.layers.apply``)."""
    path, feeds = model_path("digits_cnn_basis4"), _digits()
    basis = BasisSet.load(f"{MODELS}/digits_cnn_basis4.basis.npz")
    own, decomposed = _ort(path, feeds), _ort(apply(onnx.load(path), basis), feeds)
    after = STAGES.index("basis-decompose")

    def reference(stage):
        return decomposed if STAGES.index(stage) >= after else own
    assert first_divergence(path, feeds, reference, batch=3, basis=basis) == (None, "")


@pytest.mark.parametrize("name", GENERATED)
def test_generated_model_every_stage_matches_onnxruntime(name):
    build, shape = GENERATED[name]
    r = _Random(11)
    model, feeds = build(r), {"x": r.normal(3, *shape)}
    want = _ort(model, feeds)
    assert first_divergence(model, feeds, lambda stage: want, batch=3) == (None, "")


def test_zoo_resnet18_every_stage_matches_onnxruntime(zoo_dir):
    """The smallest zoo model (CIFAR shapes): 20 convs with explicit BatchNorms, residuals.
    (DenseNet-121 adds no kind the generated models lack, and ONNX's reference Conv takes
    seconds on it at the import stage.)"""
    path = make_zoo.ensure("resnet18-cifar100", zoo_dir)
    feeds = {"image": _Random(1).normal(1, 3, 32, 32)}
    want = _ort(path, feeds)
    assert first_divergence(path, feeds, lambda stage: want) == (None, "")


# -- a broken pass is caught at that pass ---------------------------------------------------

def _wrong_weight(run):
    """fold-batchnorm, then one folded weight (the largest of the first conv) 1.5x too big."""
    def broken(graph, ctx):
        graph = run(graph, ctx)
        op = next(o for o in graph.ops() if o.kind == "conv")
        w = graph.constants[op.inputs[1]].copy()
        w.flat[np.abs(w).argmax()] *= 1.5
        graph.set_input(op, 1, graph.add_constant(graph.fresh("wrong.w"), w))
        return graph
    return broken


def _dropped_activation(run):
    """fuse-activation, then the first fused activation forgotten."""
    def broken(graph, ctx):
        graph = run(graph, ctx)
        next(o for o in graph.ops() if o.attrs.get("act")).attrs["act"] = None
        return graph
    return broken


def _lost_tile(run):
    """lower-to-crossbar, then the first crossbar matmul's first tile never mapped."""
    def broken(graph, ctx):
        graph = run(graph, ctx)
        op = next(o for o in graph.ops() if o.kind == "xbar_matmul")
        op.attrs["tiles"] = op.attrs["tiles"][1:]
        return graph
    return broken


@pytest.mark.parametrize("model, stage, breaker, why", [
    ("digits_cnn", "fold-batchnorm", _wrong_weight, "relative error"),
    ("digits_mlp", "fuse-activation", _dropped_activation, "relative error"),
    ("digits_cnn", "lower-to-crossbar", _lost_tile, "in no tile"),
])
def test_broken_pass_is_reported_at_that_pass(model, stage, breaker, why, monkeypatch):
    """The broken pass replaces the registered one (``compiler.passes.PASSES[name].run``)."""
    monkeypatch.setitem(PASSES, stage, dataclasses.replace(PASSES[stage],
                                                           run=breaker(PASSES[stage].run)))
    path, feeds = model_path(model), _digits()
    want = _ort(path, feeds)
    found, message = first_divergence(path, feeds, lambda s: want, batch=3)
    assert found == stage and why in message


# -- the evaluator's own checks -------------------------------------------------------------

def _graph(kind: str, w: np.ndarray, attrs: dict) -> Graph:
    """x [2, K] -> ``kind`` with constant w [K, M] -> y [2, M]."""
    g = Graph()
    g.inputs = [g.add_value("x", (2, w.shape[0]))]
    g.add_constant("w", w)
    g.add_value("y", (2, w.shape[1]))
    g.add_op(kind, ["x", "w"], ["y"], attrs, origin="fc7")
    g.outputs, g.output_names = ["y"], ["y"]
    return g


def test_xbar_matmul_is_the_whole_weight_when_its_tiles_cover_it():
    r = _Random(1)
    w, x = r.normal(5, 4), r.normal(2, 5)
    w[:3, 2:] = 0  # a zero block no tile needs to hold
    tiles = [(0, 3, 0, 2), (3, 5, 0, 4)]
    got = evaluate(_graph("xbar_matmul", w, {"tiles": tiles}), {"x": x})["y"]
    np.testing.assert_allclose(got, x @ w, rtol=1e-6)


@pytest.mark.parametrize("tiles, message", [
    ([(0, 3, 0, 4)], r"8 non-zero weight\(s\) are in no tile \(the first at row 3, column 0\)"),
    ([(0, 5, 0, 4), (4, 5, 3, 4)], r"tiles overlap \(weight row 4, column 3 is in 2 tiles"),
    ([(0, 6, 0, 4)], r"tile rows 0:6 cols 0:4 lie outside its 5 x 4 weight"),
])
def test_xbar_matmul_tiles_are_checked(tiles, message):
    r = _Random(2)
    with pytest.raises(CompileError, match=r"xbar_matmul op .* \(onnx: fc7\): " + message):
        evaluate(_graph("xbar_matmul", r.normal(5, 4), {"tiles": tiles}), {"x": r.normal(2, 5)})


def _basis_graph(r: _Random, levels: np.ndarray) -> tuple[Graph, np.ndarray]:
    """x [2, 12] -> basis_project (basis [3, 2], 2 copies a tile, 2 groups) -> combine with
    ``levels`` [8, 5] at 4 bits; also the basis."""
    basis = r.normal(3, 2)
    g = Graph()
    g.inputs = [g.add_value("x", (2, 12))]
    g.add_constant("tile", np.kron(np.eye(2, dtype=np.float32), basis))
    g.add_constant("levels", levels)
    g.add_constant("scale", r.positive(5))
    g.add_value("proj", (2, 8))
    g.add_value("y", (2, 5))
    g.add_op("basis_project", ["x", "tile"], ["proj"], {"unit": 3, "copies": 2, "groups": 2})
    g.add_op("combine", ["proj", "levels", "scale"], ["y"], {"bits": 4, "unit": 2},
             origin="fc7")
    g.outputs, g.output_names = ["y"], ["y"]
    return g, basis


def test_basis_project_then_combine_is_the_reconstructed_weight():
    r = _Random(3)
    levels = r.rng.integers(-7, 8, (8, 5)).astype(np.float32)
    g, basis = _basis_graph(r, levels)
    x = r.normal(2, 12)
    w = reconstruct(basis, levels.reshape(4, 2, 5) * g.constants["scale"], 12)
    np.testing.assert_allclose(evaluate(g, {"x": x})["y"], x @ w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("level", [8.0, 0.5])
def test_combine_levels_are_integers_within_the_bits(level):
    levels = np.zeros((8, 5), np.float32)
    levels[3, 1] = level
    g, _ = _basis_graph(_Random(4), levels)
    with pytest.raises(CompileError, match=r"combine op .* \(onnx: fc7\): coefficient levels "
                                           r"must be integers within \+-7 for 4 bits"):
        evaluate(g, {"x": np.zeros((2, 12), np.float32)})


def test_every_kind_codegen_knows_is_evaluated():
    lowered = set(backend.DIRECT) | set(backend.RULES)
    assert lowered | {"conv", "matmul", "batchnorm"} <= set(KINDS)


def test_unknown_kind_names_the_op():
    r = _Random(5)
    with pytest.raises(CompileError, match=r"frobnicate op frobnicate#0 \(onnx: fc7\): the IR "
                                           r"evaluator has no rule for kind 'frobnicate'"):
        evaluate(_graph("frobnicate", r.normal(5, 4), {}), {"x": r.normal(2, 5)})


def test_wrong_result_shape_names_the_op():
    r = _Random(6)
    g = _graph("matmul", r.normal(5, 4), {})
    g.values["y"].shape = (2, 3)
    with pytest.raises(CompileError, match=r"matmul op .*: computes y of shape \[2, 4\], "
                                           r"declared \[2, 3\]"):
        evaluate(g, {"x": r.normal(2, 5)})
