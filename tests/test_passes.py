"""Each pass does its rewrite and keeps the numbers: checked on small hand-built graphs."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from conftest import MODELS, cli, model_path, ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper

from compiler import CompileContext, CompileError, compile_model
from compiler.frontend import import_model
from compiler.passes import PASSES, PIPELINE
from compiler.passes.lower_to_crossbar import conv_matrix, tile
from compiler.printer import format_graph
from compiler.verify import verify
from runtime import run

RNG = np.random.default_rng(7)


def _f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _model(nodes, x_shape, y_shape, inits, opset=13):
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _run_passes(model, upto: str):
    graph, ctx = import_model(model), CompileContext()
    for name in PIPELINE[: PIPELINE.index(upto) + 1]:
        graph = PASSES[name].run(graph, ctx)
        verify(graph, after=name)
    return graph


def _kinds(graph):
    return [op.kind for op in graph.ops()]


def _check_numbers(model, x):
    got = run(compile_model(model, verify_each=True), x).outputs["y"]
    (want,) = ort_run(model, {"x": x})
    assert rel_err(got, want) < 1e-5


def _bn_inits(prefix, c):
    return {f"{prefix}.s": RNG.uniform(0.5, 1.5, c).astype(np.float32),
            f"{prefix}.b": _f32(c), f"{prefix}.m": _f32(c),
            f"{prefix}.v": RNG.uniform(0.5, 1.5, c).astype(np.float32)}


def test_canonicalize_folds_shape_computations():
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("ConstantOfShape", ["one"], ["minus"], value=numpy_helper.from_array(
                 np.array([-1], np.int64))),
             helper.make_node("Concat", ["n1", "minus"], ["target"], axis=0),
             helper.make_node("Identity", ["x"], ["xi"]),
             helper.make_node("Reshape", ["xi", "target"], ["y"])]
    model = _model(nodes, [2, 3, 4], [2, 12], {"zero": np.array(0, np.int64),
                                                "axes": np.array([0], np.int64),
                                                "one": np.array([1], np.int64)})
    graph = _run_passes(model, "canonicalize")
    assert _kinds(graph) == ["reshape"]
    _check_numbers(model, _f32(2, 3, 4))


def test_fold_batchnorm_into_conv_and_standalone():
    inits = {"w": _f32(4, 3, 3, 3), **_bn_inits("bn1", 4), **_bn_inits("bn0", 3)}
    nodes = [helper.make_node("BatchNormalization", ["x", "bn0.s", "bn0.b", "bn0.m", "bn0.v"],
                              ["a"]),
             helper.make_node("Conv", ["a", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "bn1.s", "bn1.b", "bn1.m", "bn1.v"],
                              ["y"])]
    model = _model(nodes, [1, 3, 5, 5], [1, 4, 5, 5], inits)
    graph = _run_passes(model, "fold-batchnorm")
    assert _kinds(graph) == ["mul", "add", "conv"]  # the first BN has no producer to fold into
    _check_numbers(model, _f32(1, 3, 5, 5))


def test_fuse_activation_only_for_single_use():
    inits = {"w1": _f32(8, 6), "w2": _f32(6, 8)}
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["g"], transB=1),
             helper.make_node("Sigmoid", ["g"], ["s"]),
             helper.make_node("Add", ["s", "g"], ["y"])]  # g has two users: no fusion
    model = _model(nodes, [2, 6], [2, 6], inits)
    graph = _run_passes(model, "fuse-activation")
    assert _kinds(graph) == ["matmul", "matmul", "sigmoid", "add"]
    assert graph.ops()[0].attrs["act"] == ("relu", {})
    _check_numbers(model, _f32(2, 6))


def test_pipeline_without_fusion_gives_same_numbers():
    x = np.load(os.path.join(MODELS, "digits_test_x.npy"))[:32]
    fused = compile_model(model_path("digits_cnn"))
    plain = compile_model(model_path("digits_cnn"),
                          passes=[p for p in PIPELINE if p != "fuse-activation"])
    def in_place(program):  # a fused activation runs in place on the crossbar accumulator
        return sum(i.op == "relu" and i.operands[0] == i.operands[1] for i in program.text)
    assert (in_place(fused), in_place(plain)) == (3, 0)
    a, b = run(fused, x).outputs["logits"], run(plain, x).outputs["logits"]
    assert rel_err(a, b) < 1e-6


def test_conv_matrix_is_the_convolution():
    w = _f32(6, 2, 3, 3)  # 6 outputs, groups=2 (3 inputs per group)... C=4 inputs
    x = _f32(1, 4, 5, 5)
    mat = conv_matrix(w, group=2)
    assert mat.shape == (4 * 9, 6)
    assert not mat[:18, 3:].any() and not mat[18:, :3].any()  # block diagonal
    from numpy.lib.stride_tricks import sliding_window_view
    patches = sliding_window_view(np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)]), (3, 3),
                                  axis=(2, 3))  # [1,4,5,5,3,3]
    patches = patches.transpose(0, 2, 3, 1, 4, 5).reshape(25, 36)
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4, group=2)],
                   [1, 4, 5, 5], [1, 6, 5, 5], {"w": w})
    (want,) = ort_run(model, {"x": x})
    assert rel_err((patches @ mat).T.reshape(1, 6, 5, 5), want) < 1e-5


def test_depthwise_tiles_skip_all_zero_blocks():
    mat = conv_matrix(_f32(64, 1, 3, 3), group=64)  # [576, 64]
    tiles = tile(mat, 128, 16)
    # 16 channels a column block = 144 rows, which straddle two 128-row tiles: 2 per block.
    assert len(tiles) == 8 and len(tiles) < (576 // 128 + 1) * 4
    covered = np.zeros_like(mat, bool)
    for r0, r1, c0, c1 in tiles:
        assert r1 - r0 <= 128 and c1 - c0 <= 16
        covered[r0:r1, c0:c1] = True
    assert covered[mat != 0].all()


@pytest.mark.parametrize("rows,cols", [(16, 16), (128, 128), (32, 64)])
def test_geometry_changes_tiles_not_numbers(rows, cols):
    from isa import ChipGeometry
    x = np.load(os.path.join(MODELS, "digits_test_x.npy"))[:16]
    program = compile_model(model_path("digits_cnn"), chip=ChipGeometry(rows=rows, cols=cols))
    for ins in program.text:
        if ins.op == "mvm":
            assert ins.attr("rows")[1] - ins.attr("rows")[0] <= rows
            assert ins.attr("cols")[1] - ins.attr("cols")[0] <= program.chip.weights_per_row
    (want,) = ort_run(model_path("digits_cnn"), {"image": x})
    assert rel_err(run(program, x).outputs["logits"], want) < 1e-4


def test_batch_mixing_program_runs_in_chunks():
    model = _model([helper.make_node("Softmax", ["x"], ["y"], axis=0)], [2, 3], [2, 3], {})
    program = compile_model(model)
    assert not program.batch_free
    x = _f32(6, 3)
    with pytest.warns(RuntimeWarning, match="softmax mixes samples of the batch: 6 samples "
                                            "run as 3 passes"):
        got = run(program, x).outputs["y"]
    want = np.concatenate([ort_run(model, {"x": x[i:i + 2]})[0] for i in (0, 2, 4)])
    assert rel_err(got, want) < 1e-6


def test_cimrun_gives_the_runtimes_warnings_as_its_own_lines(tmp_path):
    model = _model([helper.make_node("Softmax", ["x"], ["y"], axis=0)], [2, 3], [2, 3], {})
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert cli("cimc", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.cim"), "-q"
               ).returncode == 0
    np.save(tmp_path / "x.npy", _f32(6, 3))
    r = cli("cimrun", str(tmp_path / "m.cim"), "--input", str(tmp_path / "x.npy"), "-q")
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("cimrun: warning: line ") and "softmax mixes samples" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "RuntimeWarning" not in r.stderr


def test_a_constant_expanded_over_a_fixed_batch_does_not_mix_samples():
    """A class token Expand-ed to the batch folds, at --batch 4, into a blob of four alike
    rows: concat and add read it as one row, so 12 samples run as one pass, and a blob whose
    rows differ still runs as passes of the batch."""
    shape = np.array([4, 1, 3], np.int64)
    nodes = [helper.make_node("Expand", ["t", "s"], ["e"]),
             helper.make_node("Concat", ["e", "x"], ["c"], axis=1),
             helper.make_node("Add", ["c", "e"], ["y"])]
    model = _model(nodes, [4, 2, 3], [4, 3, 3], {"t": _f32(1, 1, 3), "s": shape})
    program = compile_model(model)
    x = _f32(12, 2, 3)
    result = run(program, x)
    assert result.stats["passes"] == 1
    want = np.concatenate([ort_run(model, {"x": x[i:i + 4]})[0] for i in (0, 4, 8)])
    assert rel_err(result.outputs["y"], want) < 1e-6
    model = _model(nodes, [4, 2, 3], [4, 3, 3], {"t": _f32(4, 1, 3), "s": shape})
    program = compile_model(model)
    with pytest.warns(RuntimeWarning, match="concat mixes samples"):
        result = run(program, x)
    want = np.concatenate([ort_run(model, {"x": x[i:i + 4]})[0] for i in (0, 4, 8)])
    assert result.stats["passes"] == 3 and rel_err(result.outputs["y"], want) < 1e-6


def test_rows_alike_but_for_the_sign_of_zero_still_differ():
    """0.0 and -0.0 compare equal but divide to +inf and -inf: rows are alike bit for bit."""
    from isa.verify import same_for_every_sample
    k = np.array([[0.0, 1, 2], [-0.0, 1, 2]], np.float32)
    assert not same_for_every_sample(k) and same_for_every_sample(np.array([k[0], k[0]]))
    nan = np.array([[np.nan, 1], [np.nan, 1]], np.float32)
    assert same_for_every_sample(nan)  # the same bits: the same for every sample
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Div", ["h", "k"],
                                                                             ["y"])]
    model = _model(nodes, [2, 3], [2, 3], {"w": np.eye(3, dtype=np.float32), "k": k})
    program = compile_model(model, batch=2)
    x = np.ones((2, 3), np.float32)
    with pytest.warns(RuntimeWarning, match="mixes samples"):
        got = run(program, np.concatenate([x, x])).outputs["y"]
    want = ort_run(model, {"x": x})[0]
    assert np.array_equal(got, np.concatenate([want, want]))
    assert np.isneginf(got[1, 0]) and np.isposinf(got[0, 0])


def test_old_opset_is_converted():
    nodes = [helper.make_node("Clip", ["x"], ["c"], min=-0.5, max=0.5),
             helper.make_node("Pad", ["c"], ["p"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=2.0),
             helper.make_node("Unsqueeze", ["p"], ["u"], axes=[0]),
             helper.make_node("Squeeze", ["u"], ["y"], axes=[0])]
    model = _model(nodes, [1, 2, 3, 3], [1, 2, 5, 5], {}, opset=9)
    _check_numbers(model, _f32(1, 2, 3, 3))


def test_ir_printer_shows_types_attributes_and_provenance():
    graph = _run_passes(onnx.load(model_path("digits_cnn")), "lower-to-crossbar")
    text = format_graph(graph, "lower-to-crossbar")
    assert "graph(batch=1) level=crossbar {" in text
    assert "%r1: f32[1,16,8,8] = unpatch(%conv1.cols)  # onnx: conv1" in text
    assert "%conv1.patches: f32[1,64,9] = im2col(%image) {kernel=3x3 strides=1x1 " \
           "pads=[1,1,1,1] dilations=1x1}  # onnx: conv1" in text
    assert "xbar_matmul(%conv1.patches, @conv1.matrix, @conv1.b) {tiles=1:[0:9,0:16] " \
           "act=relu}" in text
    assert "{tiles=4:[0:128,0:16],[128:144,0:16],[0:128,16:32],... act=relu}" in text
    graph = PASSES["allocate-buffers"].run(PASSES["schedule"].run(graph, CompileContext()),
                                           CompileContext())
    text = format_graph(graph)
    assert "placement=2:xb1@0:64,xb2@0:64 resident=2/2}  # onnx: dw; offset " in text


def test_dump_ir_writes_every_stage(tmp_path):
    r = cli("cimc", model_path("digits_mlp"), "-o", str(tmp_path / "p.cim"), "--dump-ir",
            str(tmp_path / "ir"))
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "ir").iterdir())
    stages = ["import"] + PIPELINE
    assert names == sorted([f"{i:02d}-{s}.{e}" for i, s in enumerate(stages)
                            for e in ("ir", "dot")])
    assert (tmp_path / "ir" / "01-canonicalize.ir").read_text().count("matmul(") == 3
    assert (tmp_path / "ir" / "00-import.dot").read_text().startswith("digraph")
    r = cli("cimc", model_path("digits_mlp"), "-o", str(tmp_path / "q.cim"), "--dump-ir", "-")
    assert r.stdout.count("graph(batch=1)") == len(stages)


def test_unsupported_matmul_shape_is_a_compile_error():
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm3")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                          [numpy_helper.from_array(_f32(4), "w")])
    with pytest.raises(CompileError, match=r"mm3: MatMul needs operands of rank >= 2 \(a 1-D "):
        compile_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))


def test_a_batched_constant_matmul_is_a_product_of_two_operands():
    """A 3-D constant operand is no crossbar weight: it compiles as a dynamic product."""
    w = _f32(2, 4, 5)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm3")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])],
                          [numpy_helper.from_array(w, "w")])
    program = compile_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]),
                            batch=2)
    assert [i.op for i in program.text if i.op in ("dbmm", "mvm")] == ["dbmm"]
    x = _f32(2, 3, 4)
    np.testing.assert_allclose(run(program, x).outputs["y"], x @ w, rtol=1e-5, atol=1e-6)


def _probe(graph, ctx):
    """A pass that always changes the graph (it adds a constant)."""
    graph.add_constant(graph.fresh("probe"), np.zeros(1, np.float32))
    return graph


def test_pass_manager_records_which_passes_changed_the_graph():
    from compiler.context import CompileContext
    ctx = CompileContext()
    compile_model(model_path("digits_cnn"), ctx=ctx)
    assert "canonicalize" in ctx.stats["changed"] and "lower-to-crossbar" in ctx.stats["changed"]
    assert "basis-decompose" not in ctx.stats["changed"]  # no --basis: nothing to decompose


def test_fixed_point_passes_repeat_until_the_graph_settles(monkeypatch):
    import dataclasses

    from compiler import driver, frontend
    from compiler.context import CompileContext
    from compiler.passes import PASSES
    runs = []

    def settles_after_two(graph, ctx):
        runs.append(1)
        return _probe(graph, ctx) if len(runs) <= 2 else graph
    spec = dataclasses.replace(PASSES["fold-batchnorm"], run=settles_after_two, fixed_point=True)
    monkeypatch.setitem(PASSES, "fold-batchnorm", spec)
    graph = frontend.import_model(model_path("digits_mlp"))
    _, changed = driver._run_pass(graph, "fold-batchnorm", CompileContext())
    assert changed and len(runs) == 3  # two changing rounds, one that proves the fixed point
    monkeypatch.setitem(PASSES, "fold-batchnorm", dataclasses.replace(spec, run=_probe))
    with pytest.raises(RuntimeError, match="did not reach a fixed point in 8 rounds"):
        driver._run_pass(graph, "fold-batchnorm", CompileContext())
