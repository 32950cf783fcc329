"""The IR op table (issue 11): the tables that read it agree with it, the verifier holds every
bundled model to it after every pass and rejects a graph breaking each of its rules with a
message naming the op, its ONNX origin and the rule, and HardSigmoid, added by the recipe in
docs/design-notes.md, matches onnxruntime through cimc and cimrun."""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import onnx
import pytest
from conftest import MODELS, cli, model_path, ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper

from compiler import compile_model
from compiler.backend import DIRECT, RULES
from compiler.basis import BasisSet
from compiler.evaluate import KINDS, evaluate
from compiler.ir import Graph
from compiler.normalize import NORMALIZERS
from compiler.ops import ACTIVATIONS, ATTR_TYPES, CANONICAL, CROSSBAR, LEVELS, ONNX, OPS
from compiler.passes import PASSES, PIPELINE
from compiler.passes.lower_to_crossbar import LOWER
from compiler.printer import FORMATS, format_graph
from compiler.verify import VerifyError, verify
from isa import OPCODES
from runtime import run
from tools import conformance

RNG = np.random.default_rng(11)


def _rows(level: str) -> set[str]:
    return {k for k, row in OPS.items() if row.level == level}


# -- the tables that read the op table agree with it ------------------------------------------

def test_every_ir_kind_has_an_evaluator_function_and_every_function_a_row():
    assert set(KINDS) == _rows(CANONICAL) | _rows(CROSSBAR)


def test_every_normalized_onnx_row_has_a_normalizer_and_every_normalizer_a_row():
    assert set(NORMALIZERS) == {k for k in _rows(ONNX) if OPS[k].rewrite == "normalize"}
    assert {OPS[k].rewrite for k in _rows(ONNX)} == {"normalize", "drop", "fold"}


def test_a_named_opcode_takes_the_rows_operands_and_attributes():
    isa_type = {"dims": "ints", "ints": "ints", "int": "int", "float": "float", "str": "str"}
    for kind, row in OPS.items():
        if not row.opcode:
            continue
        op = OPCODES[row.opcode]
        assert op.operands[0] == "dst", kind
        srcs, variadic = op.operands[1:], op.variadic
        assert len(srcs) == len(row.operands) and variadic == row.operands[-1].variadic, kind
        assert {a.name: isa_type[a.type] for a in row.attrs} == op.attrs, kind


def test_codegen_handles_every_kind_that_reaches_it():
    """Every kind allowed at the crossbar level is an opcode or a codegen rule, except
    batchnorm, which fold-batchnorm (a pass codegen requires) removes."""
    at_crossbar = {k for k, row in OPS.items() if row.allowed_at(CROSSBAR)}
    assert DIRECT | set(RULES) == at_crossbar - {"batchnorm"}
    assert not DIRECT & set(RULES)


def test_lowering_columns_match_the_passes():
    assert set(LOWER) == {k for k, row in OPS.items() if row.level == row.until == CANONICAL}
    fusable = {k for k, row in OPS.items() if row.fusable}
    assert fusable == {"relu", "leakyrelu", "clip", "sigmoid", "tanh", "hardsigmoid", "gelu",
                       *ACTIVATIONS}
    assert all(OPS[k].opcode == k and len(OPS[k].operands) == 1 for k in fusable)
    epilogue = {k for k, row in OPS.items() if row.epilogue}
    assert epilogue == {"conv", "matmul", "xbar_matmul", "digital_matmul", "combine"}
    assert {k for k, row in OPS.items() if row.bn_fold} == {"conv", "matmul"}


def test_every_attribute_type_prints_and_every_rule_states_itself():
    assert set(FORMATS) == set(ATTR_TYPES)
    used = {a.type for row in OPS.values() for a in row.attrs or ()}
    assert used == set(ATTR_TYPES)
    for kind, row in OPS.items():
        assert (row.shape is None) == (row.level == ONNX), kind
        assert row.shape is None or row.shape.__doc__, kind


# -- every bundled model, after every pass ---------------------------------------------------

@pytest.mark.parametrize("name, basis", [("digits_mlp", None), ("digits_cnn", None),
                                         ("digits_cnn_basis4", "digits_cnn_basis4.basis.npz")])
def test_every_bundled_model_verifies_after_every_pass(name, basis):
    seen = []
    compile_model(model_path(name), verify_each=True, warn=lambda message: None,
                  basis=BasisSet.load(os.path.join(MODELS, basis)) if basis else None,
                  dump=lambda stage, graph: seen.append((stage, graph.level)))
    level = {"import": ONNX, "canonicalize": CANONICAL, "match-patterns": CANONICAL,
             "fold-batchnorm": CANONICAL,
             "fuse-activation": CANONICAL}
    assert seen == [(s, level.get(s, CROSSBAR)) for s in ["import"] + PIPELINE]


def test_verify_each_names_the_pass_that_broke_a_shape(monkeypatch):
    """A lower-to-crossbar that gives conv1's im2col a 2x2 kernel but keeps its 3x3 patches."""
    lower = PASSES["lower-to-crossbar"]

    def broken(graph, ctx):
        graph = lower.run(graph, ctx)
        next(op for op in graph.ops() if op.kind == "im2col").attrs["kernel"] = [2, 2]
        return graph
    monkeypatch.setitem(PASSES, lower.name, dataclasses.replace(lower, run=broken))
    with pytest.raises(VerifyError, match=re.escape(
            "(onnx: conv1): declares %conv1.patches [1,64,9], but its shape rule gives "
            "[1,81,4] from image [1,1,8,8] (rule: x [B, C, *S] -> patches [B, prod(out), "
            "C*prod(kernel)], out as for conv) (after lower-to-crossbar)")):
        compile_model(model_path("digits_cnn"), verify_each=True)


# -- a graph that breaks a rule is rejected, naming the op and the rule -----------------------

GOOD = [("matmul", ["x", "w", "b"], ["h"], {}), ("relu", ["h"], ["y"], {})]


def _graph(ops, level: str = CANONICAL, shapes: dict | None = None) -> Graph:
    """x [2, 5], constants w [5, 4] and b [4]; each op (kind, inputs, outputs, attrs) with
    origin fc7 and results of ``shapes`` (default [2, 4]); the last op's result is the
    output."""
    g = Graph()
    g.level = level
    g.inputs = [g.add_value("x", (2, 5))]
    g.add_constant("w", RNG.standard_normal((5, 4)).astype(np.float32))
    g.add_constant("b", np.zeros(4, np.float32))
    for kind, ins, outs, attrs in ops:
        for o in outs:
            g.add_value(o, (shapes or {}).get(o, (2, 4)))
        attrs = dict(attrs)
        g.add_op(kind, ins, outs, attrs, origin="fc7", proto=attrs.pop("_proto", None))
    g.outputs = g.output_names = [ops[-1][2][0]]
    return g


BROKEN = [
    ([("frobnicate", ["x"], ["y"], {})], {},
     "kind 'frobnicate' is not in the op table"),
    (GOOD, {"level": CROSSBAR}, "matmul is a kind of level canonical; this graph is at level "
                                "crossbar"),
    ([("relu", ["x"], ["y"], {})], {"level": ONNX},
     "relu is a kind of level canonical to crossbar; this graph is at level onnx"),
    ([("matmul", ["x"], ["y"], {})], {}, "takes 2 to 3 operands (%x, @w, @b?), got 1"),
    ([("relu", ["x"], ["h"], {}), ("matmul", ["x", "h"], ["y"], {})], {"shapes": {"h": (2, 5)}},
     "operand 1 (@w) must be a constant, and %h is computed"),
    ([("matmul", ["x", "w", ""], ["y"], {})], {}, 'operand 2 (@b?) is omitted ("")'),
    ([("leakyrelu", ["x"], ["y"], {})], {"shapes": {"y": (2, 5)}},
     "missing attribute alpha (a float)"),
    ([("leakyrelu", ["x"], ["y"], {"alpha": 1})], {"shapes": {"y": (2, 5)}},
     "attribute alpha must be a float, got 1"),
    ([("relu", ["x"], ["y"], {"colour": 3})], {}, "unknown attribute colour (the schema has: "
                                                  "none)"),
    ([("matmul", ["x", "w"], ["y"], {"act": ("softmax", {"axis": 1})})], {},
     "attribute act: softmax is not a fusable activation"),
    ([("matmul", ["x", "w"], ["y"], {"act": ("leakyrelu", {})})], {},
     "attribute act: missing attribute alpha"),
    ([("relu", ["x"], ["y", "y2"], {})], {"shapes": {"y": (2, 5), "y2": (2, 5)}},
     "has 2 results; a relu has one"),
    ([("matmul", ["x", "w"], ["y"], {})], {"shapes": {"y": (2, 3)}},
     "declares %y [2,3], but its shape rule gives [2,4] from x [2,5], w [5,4] (rule: x [..., "
     "K] @ w [K, M] (+ b broadcasting to the result) -> [..., M])"),
    ([("matmul", ["x", "w"], ["h"], {}), ("add", ["h", "x"], ["y"], {})], {},
     "operands h [2,4], x [2,5] break the shape rule: [2,4] and [2,5] do not broadcast"),
    ([("conv", ["x", "w"], ["y"], {"kernel": [4], "strides": [1], "pads": [0, 0],
                                   "dilations": [1], "group": 1})], {},
     "operands x [2,5], w [5,4] break the shape rule: x [2,5] and weight [5,4] disagree "
     "(group 1, kernel [4]) (rule: x [B, C, *S], w [M, C/group, *kernel], b [M] -> "),
    ([("Relu", ["x"], ["y"], {})], {"level": ONNX, "shapes": {"y": (2, 5)}},
     r"an ONNX op must carry its NodeProto (a Relu) in op.proto"),
    ([("Gemm", ["x", "x"], ["y"], {"_proto": helper.make_node("Gemm", ["x", "x"], ["y"])})],
     {"level": ONNX}, "operand 1 (@w) must be a constant, and %x is computed"),
]


@pytest.mark.parametrize("ops, options, message", BROKEN)
def test_a_graph_breaking_a_rule_is_rejected_with_its_rule(ops, options, message):
    verify(_graph(GOOD))
    with pytest.raises(VerifyError, match=r"^\w+#\d+ \(onnx: fc7\): " + re.escape(message) +
                       r".* \(after some-pass\)$"):
        verify(_graph(ops, **options), after="some-pass")


def test_graph_level_rules():
    g = _graph(GOOD)
    g.outputs = ["x"]
    with pytest.raises(VerifyError, match=r"graph output %x is not the result of an op of its "
                                          "own"):
        verify(g)
    g = _graph(GOOD)
    g.level = "lowered"
    with pytest.raises(VerifyError, match=f"unknown IR level 'lowered'.*{', '.join(LEVELS)}"):
        verify(g)


def test_remove_value_refuses_a_value_an_op_still_produces():
    g = _graph(GOOD)
    with pytest.raises(ValueError, match="%h is still produced by matmul#0"):
        g.remove_value("h")


# -- the printer -----------------------------------------------------------------------------

def test_printer_formats_attributes_by_their_schema():
    g = _graph([("matmul", ["x", "w"], ["y"], {"act": ("leakyrelu", {"alpha": 0.1})})])
    assert "= matmul(%x, @w) {act=leakyrelu(alpha=0.1)}  # onnx: fc7" in format_graph(g)
    tiles = [(r, r + 2, 0, 4) for r in range(0, 10, 2)]
    g = _graph([("xbar_matmul", ["x", "w"], ["y"], {"tiles": tiles, "resident": [True] * 5,
                                                    "placement": [[(i, 0, 2)] for i in range(5)],
                                                    "_refit": True})])
    assert "{tiles=5:[0:2,0:4],[2:4,0:4],[4:6,0:4],... placement=5:xb0@0:2,xb1@0:2,xb2@0:2,... " \
           "resident=5/5}" in format_graph(g)
    g = _graph([("relu", ["x"], ["y"], {"colour": (1, "red")})])  # broken: printed plainly
    assert "relu(%x) {colour=[1,red]}" in format_graph(g)


@pytest.mark.parametrize("name", ["digits_cnn", "digits_cnn_basis4"])
def test_printer_shows_no_python_reprs(name):
    basis = BasisSet.load(os.path.join(MODELS, "digits_cnn_basis4.basis.npz")) \
        if name.endswith("basis4") else None
    texts = []
    compile_model(model_path(name), basis=basis, warn=lambda message: None,
                  dump=lambda stage, graph: texts.append(format_graph(graph, stage)))
    for text in texts:
        assert not re.search(r"\(\d+,|'|\bTrue\b|\bFalse\b|\bNone\b|\{\}|<function", text), text


# -- buffers sit where allocate-buffers put them ----------------------------------------------

def test_codegen_reads_the_allocated_offsets_and_outputs_own_their_buffers():
    final = {}
    program = compile_model(model_path("digits_cnn"),
                            dump=lambda stage, graph: final.update(graph.offsets))
    assert {b.name: b.offset for b in program.buffers} == final
    assert len(set(final.values())) > 2
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [inp],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3]), inp]),
        opset_imports=[helper.make_opsetid("", 13)])
    program = compile_model(model, verify_each=True)
    assert len({p.buffer for p in program.ports}) == 3  # the output x is a copy of input x
    x = RNG.standard_normal((1, 3)).astype(np.float32)
    assert np.array_equal(run(program, x).outputs["x"], x)


# -- HardSigmoid, added by the recipe --------------------------------------------------------

def _hardsigmoid_model() -> onnx.ModelProto:
    """A conv with a fused HardSigmoid epilogue (alpha 0.3, beta 0.4), then (h - 0.5) * 10 and
    a standalone HardSigmoid with ONNX's defaults (alpha 0.2, beta 0.5)."""
    inits = {"w": RNG.standard_normal((4, 2, 3, 3)).astype(np.float32),
             "b": RNG.standard_normal(4).astype(np.float32),
             "half": np.array(0.5, np.float32), "ten": np.array(10, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("HardSigmoid", ["c"], ["h"], alpha=0.3, beta=0.4, name="hs1"),
             helper.make_node("Sub", ["h", "half"], ["d"], name="sub"),
             helper.make_node("Mul", ["d", "ten"], ["s"], name="mul"),
             helper.make_node("HardSigmoid", ["s"], ["y"], name="hs2")]
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", c, 5, 5])
            for n, c in (("x", 2), ("y", 4)))
    graph = helper.make_graph(nodes, "g", [x], [y],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_hardsigmoid_every_stage_matches_onnxruntime():
    model = _hardsigmoid_model()
    x = 2 * RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)
    (want,) = ort_run(model, {"x": x})
    assert 0 < (want == 0).mean() < 0.5 and 0 < (want == 1).mean() < 0.5  # both clamps bite
    errors = {}
    program = compile_model(model, verify_each=True, dump=lambda stage, graph: errors.update(
        {stage: rel_err(evaluate(graph, {"x": x})["y"], want)}))
    assert max(errors.values()) < 1e-5, errors
    hs = [i for i in program.text if i.op == "hardsigmoid"]
    assert [(i.operands[0] == i.operands[1], i.attr("alpha"), i.attr("beta")) for i in hs] == \
        [(True, pytest.approx(0.3), pytest.approx(0.4)), (False, 0.2, 0.5)]  # fused, alone


def _hardsigmoid(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.clip(alpha * x + beta, 0, 1)


def test_hardsigmoid_through_cimc_and_cimrun_ideal_and_quantized(tmp_path):
    """Ideal: onnxruntime's numbers. Quantized: the crossbars' integer arithmetic makes the
    conv inexact, and nothing else: the output is the float chain after the conv applied to
    the conv's quantized result (that conv alone, compiled and run quantized)."""
    model = _hardsigmoid_model()
    path, prog, xs = tmp_path / "hs.onnx", tmp_path / "hs.cim", tmp_path / "x.npy"
    onnx.save(model, path)
    x = 2 * RNG.standard_normal((8, 2, 5, 5)).astype(np.float32)
    np.save(xs, x)
    r = cli("cimc", str(path), "-o", str(prog))
    assert r.returncode == 0, r.stderr
    got = {}
    for mode in ("ideal", "quantized"):
        r = cli("cimrun", str(prog), "--input", str(xs), "--mode", mode, "-o",
                str(tmp_path / f"{mode}.npy"))
        assert r.returncode == 0, r.stderr
        got[mode] = np.load(tmp_path / f"{mode}.npy")
    (want,) = ort_run(model, {"x": x})
    assert rel_err(got["ideal"], want) < 1e-5
    conv = helper.make_model(helper.make_graph(
        model.graph.node[:1], "conv", model.graph.input,
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 4, 5, 5])],
        model.graph.initializer), opset_imports=model.opset_import)
    c = run(compile_model(conv), x, mode="quantized", timing=False).outputs["c"]
    chain = _hardsigmoid(10 * (_hardsigmoid(c, 0.3, 0.4) - 0.5), 0.2, 0.5)
    assert 0.01 < rel_err(got["quantized"], want) and rel_err(got["quantized"], chain) < 1e-5


def test_hardsigmoid_onnx_conformance_cases_pass():
    """ONNX's HardSigmoid node tests pass, and their expanded forms (Max, Min, CastLike)."""
    outcomes = {o.name: o for o in conformance.run_all("hardsigmoid")}
    cases = {f"node/test_hardsigmoid{s}{e}" for s in ("", "_default", "_example")
             for e in ("", "_expanded_ver18")}
    assert {n for n, o in outcomes.items() if o.status == "passed"} == cases
