"""Einsum (compiler/expand_einsum.py) against onnxruntime at every IR stage and in cimrun's
ideal mode: attention's batched products, linear layers with a constant operand (on the
crossbars), transposes, sums, outer products, ellipses and implicit outputs; what it
leaves (diagonals, three operands) is named by the support check."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper

from compiler import CompileError, compile_model
from compiler.evaluate import evaluate
from compiler.expand_einsum import parse
from runtime import run

RNG = np.random.default_rng(5)


def _model(equation: str, shapes: list[tuple], consts: dict) -> onnx.ModelProto:
    """Einsum of x0, x1, ... (``shapes``, the batch axis first unless the operand is one of
    ``consts``), then Relu (so the product is not the program's output by itself)."""
    names = [f"x{i}" for i in range(len(shapes))]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", *s[1:]])
              for n, s in zip(names, shapes) if n not in consts]
    nodes = [helper.make_node("Einsum", names, ["e"], equation=equation, name="einsum"),
             helper.make_node("Relu", ["e"], ["y"], name="relu")]
    parsed = parse(equation, [len(s) for s in shapes])
    rank = len(parsed[1]) if parsed else len(shapes[0]) - 1
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             [f"d{i}" for i in range(rank)])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


W = RNG.standard_normal((7, 6)).astype(np.float32)
CASES = {  # equation -> (operand shapes with a batch of 3, constant operands)
    "bhqd,bhkd->bhqk": ([(3, 2, 4, 5), (3, 2, 6, 5)], {}),   # attention scores
    "bhqk,bhkd->bhqd": ([(3, 2, 4, 6), (3, 2, 6, 5)], {}),   # attention's weighted values
    "bld,hd->blh": ([(3, 4, 6), (7, 6)], {"x1": W}),        # a linear layer, W on crossbars
    "b...d,dh->b...h": ([(3, 2, 4, 7), (7, 6)], {"x1": W}),
    "bij->bji": ([(3, 4, 5)], {}),
    "bij->bj": ([(3, 4, 5)], {}),
    "bij,bjk": ([(3, 4, 5), (3, 5, 2)], {}),                  # implicit output: bik
    "bi,bi->b": ([(3, 7), (3, 7)], {}),
    "bi,bj->bij": ([(3, 4), (3, 5)], {}),
    "bij,bkj->bk": ([(3, 4, 5), (3, 2, 5)], {}),              # i summed in one operand
    "...i,Aj->...ij": ([(3, 4), (5, 6)], {"x1": RNG.standard_normal((5, 6)).astype(
        np.float32)}),                                         # A: a summed capital
    "bI,IJ->bJ": ([(3, 7), (7, 6)], {"x1": W}),
}


@pytest.mark.parametrize("equation", sorted(CASES))
def test_every_stage_and_ideal_mode_match_onnxruntime(equation):
    shapes, consts = CASES[equation]
    model = _model(equation, shapes, consts)
    feeds = {f"x{i}": RNG.standard_normal(s).astype(np.float32)
             for i, s in enumerate(shapes) if f"x{i}" not in consts}
    (want,) = ort_run(model, feeds)
    assert np.ptp(want) > 0
    errors = {}
    program = compile_model(model, batch=3, verify_each=True, dump=lambda stage, g: errors.update(
        {stage: rel_err(evaluate(g, feeds)["y"], want)}))
    assert max(errors.values()) < 1e-5, errors
    assert rel_err(run(program, feeds, mode="ideal", timing=False).outputs["y"], want) < 1e-5
    if consts:  # the constant operand is a crossbar matrix
        assert any(i.op == "mvm" for i in program.text)


def test_a_linear_einsum_runs_on_more_samples_than_compiled():
    model = _model("bld,hd->blh", [(1, 4, 6), (7, 6)], {"x1": W})
    x = RNG.standard_normal((5, 4, 6)).astype(np.float32)
    (want,) = ort_run(model, {"x0": x})
    program = compile_model(model)
    assert rel_err(run(program, {"x0": x}, timing=False).outputs["y"], want) < 1e-5


@pytest.mark.parametrize("equation, ranks, want", [
    ("ij,jk->ik", [2, 2], (["ij", "jk"], "ik")),
    ("ij,jk", [2, 2], (["ij", "jk"], "ik")),
    ("...ij,...jk->...ik", [4, 3], (["αβij", "βjk"], "αβik")),
    ("b...,b...->b", [2, 2], (["bα", "bα"], "b")),
    ("b...,b...", [3, 3], (["bαβ", "bαβ"], "αβ")),  # implicit: the ellipsis (b is twice)
    ("...i,Aj->...ij", [2, 2], (["αi", "Aj"], "αij")),  # capitals are indices too
    ("Bi,i", [2, 1], (["Bi", "i"], "B")),  # implicit: ASCII order, capitals included
    (" ij -> ji ", [2], (["ij"], "ji")),
    ("ii->i", [2], None),            # a diagonal
    ("ij,jk,kl->il", [2, 2, 2], None),  # three operands
    ("ijk->ij", [2], None),          # more letters than axes
    ("ij->ik", [2], None),           # an output index no operand has
])
def test_parse(equation, ranks, want):
    assert parse(equation, ranks) == want


def test_a_diagonal_is_named_unsupported():
    model = _model("bii->bi", [(3, 4, 4)], {})
    with pytest.raises(CompileError, match="operator Einsum is not supported"):
        compile_model(model)


def test_an_implicit_output_keeps_capital_indices_as_numpy_does():
    """"Bi,i": with no "->" the output is every index that appears once, in ASCII order
    (here B, a capital); onnxruntime refuses capitals without "->", so numpy is the oracle."""
    w = RNG.standard_normal(4).astype(np.float32)
    model = _model("Bi,i", [(3, 4), (4,)], {"x1": w})
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    got = run(compile_model(model), {"x0": x}, timing=False).outputs["y"]
    assert rel_err(got, np.maximum(np.einsum("Bi,i", x, w), 0)) < 1e-5
