"""BasisN (issue 6): exact decompositions, program semantics, combiner cost by hand, no writes."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import onnx
import pytest
from conftest import MODELS, cli, model_path, ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper

from compiler import CompileContext, CompileError, compile_model
from compiler.basis import BasisLayer, BasisSet, reconstruct
from compiler.basis.fit import fit
from compiler.basis.layers import apply, layer_matrices, node_weight
from compiler.basis.refine import layer_inputs
from compiler.frontend import import_model
from compiler.passes import PASSES
from compiler.passes.lower_to_crossbar import matrix_weight, weight_matrix
from isa import Blob, Buffer, ChipGeometry, Instr, Port, Program, TensorType
from isa.chip import Chip
from isa.combiner import combine_work
from runtime import run

RNG = np.random.default_rng(7)
TUNED = os.path.join(MODELS, "digits_cnn_basis4")


def _known_basis_model(n=3, unit=9, bits=4):
    """Conv3x3 (4 -> 6 channels) + Gemm (18 -> 5) whose weights are exact sparse combinations
    of a known basis; returns (model, the true BasisSet)."""
    basis = np.linalg.qr(RNG.standard_normal((unit, n)))[0].astype(np.float32)
    q = 2 ** (bits - 1) - 1
    true = BasisSet(basis, bits)
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1])
    gemm = helper.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1)
    nodes = [conv, helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f0"], name="flat"),
             helper.make_node("Concat", ["f0", "f0", "f0"], ["f"], name="cat", axis=1),
             gemm]
    inits = {"b": RNG.standard_normal(6).astype(np.float32)}
    for node, shape_k, m, wname in ((conv, 36, 6, "w"), (gemm, 18, 5, "fw")):
        u = -(-shape_k // unit)
        levels = RNG.integers(-q, q + 1, (u, n, m)) * (RNG.random((u, n, m)) < 0.5)
        scales = RNG.uniform(0.5, 2, m).astype(np.float32)
        true.layers[node.name] = BasisLayer(levels.astype(np.int32), scales, shape_k)
        shape = (6, 4, 3, 3) if wname == "w" else (m, shape_k)
        inits[wname] = node_weight(node, true.matrix(node.name), shape).astype(np.float32)
    graph = helper.make_graph(
        nodes, "known", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), true


def test_known_sparse_basis_is_recovered_up_to_quantization():
    model, true = _known_basis_model()
    mats = layer_matrices(model)
    for name in mats:
        np.testing.assert_allclose(mats[name], true.matrix(name), atol=1e-5)
    fitted = fit(mats, 3, bits=8)
    # the fitted basis spans the true one: projecting the truth onto it leaves nothing
    proj = fitted.basis @ np.linalg.pinv(fitted.basis) @ true.basis
    assert np.abs(proj - true.basis).max() < 1e-4
    for name, w in mats.items():
        err = np.linalg.norm(fitted.matrix(name) - w) / np.linalg.norm(w)
        assert err < 2.0 / 127  # 8-bit coefficients: within a couple of quantization steps


def test_true_basis_file_compiles_exactly(tmp_path):
    model, true = _known_basis_model()
    path = tmp_path / "known.npz"
    true.save(str(path))
    loaded = BasisSet.load(str(path))
    x = RNG.standard_normal((2, 4, 5, 5)).astype(np.float32)
    program = compile_model(model, basis=loaded, max_xbars=3)
    got = run(program, {"x": x}, mode="ideal", timing=False).outputs["y"]
    assert rel_err(got, ort_run(model, {"x": x})[0]) < 1e-5


def test_quantized_program_matches_ideal_of_decomposed_model(digits_test):
    model = onnx.load(model_path("digits_cnn"))
    basis = fit(layer_matrices(model), 9, bits=8)
    x = digits_test[0][:64]
    program = compile_model(model, basis=basis, max_xbars=2, batch=len(x))
    want = ort_run(apply(model, basis), {"image": x})[0]
    ideal = run(program, {"image": x}, mode="ideal", timing=False).outputs["logits"]
    assert rel_err(ideal, want) < 1e-5
    quant = run(program, {"image": x}, mode="quantized", timing=False).outputs["logits"]
    assert rel_err(quant, want) < 0.06  # weight-stationary quantized vs float here: 0.0575
    assert np.mean(quant.argmax(1) == want.argmax(1)) >= 0.98


LEVELS = np.array([[[1, 3, 0],      # unit 0, basis column 0: levels for kernels 0, 1, 2
                    [2, 1, -3]]])   # basis column 1


def test_combine_work_by_hand():
    # plane 0 (bit 0): column 0 read by kernels {0, 1}, column 1 by {1, 2}: 2 cycles
    # plane 1 (bit 1): column 0 by {1}, column 1 by {0, 2}: 2 cycles
    work = combine_work(LEVELS, bits=3)
    assert work.merged_reads == 4
    assert work.adds == 7               # 2 + 2 + 1 + 2 set bits
    assert work.accumulations == 6      # every kernel selects something in both planes
    assert work.ideal_reads == 4        # ceil(4/2) + ceil(3/2)
    assert work.contest == 1.0


def test_contest_counts_the_busiest_column():
    levels = np.zeros((1, 2, 4), int)
    levels[0, 0] = 1  # all four kernels want column 0 in plane 0
    work = combine_work(levels, bits=2)
    assert (work.merged_reads, work.ideal_reads, work.contest) == (4, 2, 2.0)


def test_combine_timing_and_energy_by_hand():
    """5 vectors x 4 merged reads on 2 lanes = 10 cycles; energy per vector 4 reads x 0.1 +
    7 adds x 0.05 + 6 accumulations x (0.1 + a 24-bit read and write of the 9-byte accumulator
    file: 2 x 24/64 of a 64-bit SRAM read), plus the layer's 3 bytes of levels fetched once per
    group of 2 lanes (3 groups for 5 vectors: 9 bytes) from a 3-byte coefficient SRAM. It
    starts after the 1-cycle fill of its destination (15 floats = 60 bytes through the 64-byte
    port, 1.25 pJ a byte)."""
    coef = Blob("coef", LEVELS.reshape(2, 3).astype(np.float32))
    scale = Blob("scale", np.ones(3, np.float32))
    text = [Instr("barrier", (), (("label", "inference"),)),
            Instr("fill", ("%y",), (("value", 0.0),)),
            Instr("combine", ("%y", "%p", "@coef", "@scale"), (("bits", 3), ("unit", 2))),
            Instr("halt", ())]
    bufs = [Buffer("p", TensorType("f32", (1, 5, 2))), Buffer("y", TensorType("f32", (1, 5, 3)))]
    program = Program(ChipGeometry(xbars=1), 1, True, [Port("input", "p", "p"),
                      Port("output", "y", "y")], bufs, text, [coef, scale])
    chip = Chip()
    chip = dataclasses.replace(chip, arch=program.chip,
                               timing=dataclasses.replace(chip.timing, combiner_lanes=2))
    stats = run(program, mode="timing", chip=chip).stats
    assert stats["cycles_per_inference"] == 1 + 10
    from isa.combiner import sram_pj_per_64b, sram_pj_per_byte
    assert stats["energy_pj_per_inference"] == pytest.approx(
        60 * 1.25 + 5 * (4 * 0.1 + 7 * 0.05 + 6 * (0.1 + 2 * 24 / 64 * sram_pj_per_64b(9)))
        + 9 * sram_pj_per_byte(3))
    p = RNG.standard_normal((1, 5, 2)).astype(np.float32)
    y = run(program, {"p": p}, mode="ideal", timing=False).outputs["y"]
    np.testing.assert_allclose(y, p @ LEVELS.reshape(2, 3), rtol=1e-6)


@pytest.mark.parametrize("xbars", [1, 2, 16])
def test_basis_programs_never_write_during_inference(xbars):
    model = onnx.load(model_path("digits_cnn"))
    program = compile_model(model, basis=fit(layer_matrices(model), 4), max_xbars=xbars)
    stats = run(program, mode="timing").stats
    assert stats["writes_per_inference"] == 0 and stats["cells_written"] == 0
    loads = [i for i in program.text if i.op == "write"]
    assert len(loads) == xbars and len({i.operands for i in loads}) == 1  # one basis tile


def test_tuned_model_and_basis_file_compile_exactly(tmp_path, digits_test):
    out = tmp_path / "t.cim"
    res = cli("cimc", TUNED + ".onnx", "--basis", TUNED + ".basis.npz", "--xbars", "2", "-o",
              str(out), "--dump-ir", "-")
    assert res.returncode == 0, res.stderr
    assert "# basis: N=4 unit=9 coef_bits=4" in res.stdout
    assert "rel_err mean=0.0000 max=0.0000" in res.stdout  # the trained weights, exactly
    x, y = digits_test
    res = cli("cimrun", str(out), "--input", os.path.join(MODELS, "digits_test_x.npy"),
              "--mode", "quantized", "--labels", os.path.join(MODELS, "digits_test_y.npy"),
              "--reference", model_path("digits_cnn"), "--report", str(tmp_path / "r.json"),
              "-q")
    assert res.returncode == 0, res.stderr
    import json
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["accuracy"] >= report["reference_accuracy"] - 0.01  # within 1 point of float


def test_basis_auto_finds_an_n_within_budget(tmp_path):
    res = cli("cimc", model_path("digits_cnn"), "--basis", "auto", "--accuracy-budget", "1",
              "--calibrate", os.path.join(MODELS, "digits_calib_x.npy"), "--calibrate-labels",
              os.path.join(MODELS, "digits_calib_y.npy"), "--basis-out",
              str(tmp_path / "auto.npz"), "-o", str(tmp_path / "a.cim"))
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("basis auto: N=")]
    base = float(res.stderr.split("float accuracy ")[1].split(" %")[0])
    accs = [float(ln.split(": ")[2].rstrip(" %")) for ln in lines]
    assert accs[-1] >= base - 1 and all(a < base - 1 for a in accs[:-1])
    assert BasisSet.load(str(tmp_path / "auto.npz")).n == len(lines)


@pytest.mark.parametrize("args, message", [
    (["--basis", "auto"], "--basis auto needs --calibrate"),
    (["--basis", "many"], "expected a number of basis vectors"),
    (["--basis", "missing.npz"], "--basis missing.npz: no such file"),
    (["--basis", "20"], "does not fit a crossbar"),
    (["--basis", "4", "--coef-bits", "1"], "--coef-bits must be at least 2 and at most 8"),
])
def test_basis_errors(tmp_path, args, message):
    res = cli("cimc", model_path("digits_cnn"), "-o", str(tmp_path / "x.cim"), *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_basis_file_without_a_layer_is_an_error(tmp_path):
    model = onnx.load(model_path("digits_cnn"))
    basis = fit(layer_matrices(model), 4)
    del basis.layers["fc"]
    basis.save(str(tmp_path / "b.npz"))
    res = cli("cimc", model_path("digits_cnn"), "--basis", str(tmp_path / "b.npz"), "-o",
              str(tmp_path / "x.cim"))
    assert res.returncode == 2 and "'fc' has no coefficients" in res.stderr


def test_basis_layers_are_the_pipelines_crossbar_matrices():
    """BasisN lowers the ONNX weights with lower-to-crossbar's own function: the matrices
    equal the crossbar weights of the lowered graph (no batchnorm or alpha to fold here)."""
    model, _ = _known_basis_model()
    graph, ctx = import_model(model), CompileContext()
    for name in ("canonicalize", "lower-to-crossbar"):
        graph = PASSES[name].run(graph, ctx)
    lowered = {op.origin: graph.constants[op.inputs[1]] for op in graph.ops()
               if op.kind == "xbar_matmul"}
    mats = layer_matrices(model)
    assert set(lowered) == set(mats) == {"conv", "fc"}
    for name, w in mats.items():
        np.testing.assert_array_equal(lowered[name], w)


@pytest.mark.parametrize("kind, shape, attrs", [
    ("Conv", (6, 2, 3, 3), {"group": 2}), ("conv", (4, 1, 3), {"group": 4}),
    ("Gemm", (5, 7), {"transB": 1}), ("Gemm", (7, 5), {}), ("MatMul", (7, 5), {})])
def test_matrix_weight_inverts_weight_matrix(kind, shape, attrs):
    w = RNG.standard_normal(shape).astype(np.float32)
    mat = weight_matrix(kind, w, attrs)
    assert mat.ndim == 2 and mat.size >= w.size  # grouped convs: block-diagonal
    np.testing.assert_array_equal(matrix_weight(kind, mat, shape, attrs), w)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_layer_inputs_are_the_crossbar_inputs_with_auto_pad(auto_pad):
    """Inputs x @ the crossbar matrix = the Conv's output, however auto_pad pads it."""
    w = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", auto_pad=auto_pad,
                            strides=[2, 2])
    graph = helper.make_graph(
        [conv], "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 6, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = RNG.standard_normal((2, 2, 6, 7)).astype(np.float32)
    (y,) = ort_run(model, {"x": x})
    got = layer_inputs(model, x, ["conv"])["conv"] @ layer_matrices(model)["conv"]
    np.testing.assert_allclose(got, y.transpose(0, 2, 3, 1).reshape(-1, 3), rtol=1e-5,
                               atol=1e-5)


def test_reconstruct_pads_and_trims():
    basis = np.eye(3, dtype=np.float32)
    coef = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    np.testing.assert_array_equal(reconstruct(basis, coef, 5), coef.reshape(6, 2)[:5])


def test_unnamed_nodes_are_decomposed_too():
    """Basis sets and compiled ops name an unnamed node the same way (op type and outputs)."""
    model, _ = _known_basis_model()
    for node in model.graph.node:
        node.name = ""
    basis = fit(layer_matrices(model), 3, bits=8)
    assert set(basis.layers) == {"Conv(c)", "Gemm(y)"}
    x = RNG.standard_normal((2, 4, 5, 5)).astype(np.float32)
    program = compile_model(model, basis=basis, max_xbars=2)
    got = run(program, {"x": x}, mode="ideal", timing=False).outputs["y"]
    assert rel_err(got, ort_run(apply(model, basis), {"x": x})[0]) < 1e-5


def test_basis_auto_judges_on_samples_the_fit_never_saw(monkeypatch):
    """--basis auto refines on one half of the labelled samples and judges on the other."""
    from compiler.basis import auto
    x = np.load(os.path.join(MODELS, "digits_calib_x.npy"))[:40]
    y = np.load(os.path.join(MODELS, "digits_calib_y.npy"))[:40]
    seen = {"fit": [], "judge": []}
    real_decomposition, real_accuracy = auto.decomposition, auto.accuracy

    def decomposition(model, n, *args, **kwargs):
        seen["fit"].append(args[3])
        return real_decomposition(model, n, *args, **kwargs)

    def accuracy(model, samples, labels):
        seen["judge"].append(samples)
        return real_accuracy(model, samples, labels)
    monkeypatch.setattr(auto, "decomposition", decomposition)
    monkeypatch.setattr(auto, "accuracy", accuracy)
    auto.choose(onnx.load(model_path("digits_cnn")), x, y, 100.0, 9, 4, 0.0)
    rows = {tuple(r.ravel()) for r in x.reshape(len(x), -1)}
    fitted = {tuple(r.ravel()) for r in seen["fit"][0].reshape(len(seen["fit"][0]), -1)}
    judged = {tuple(r.ravel()) for s in seen["judge"] for r in s.reshape(len(s), -1)}
    assert fitted | judged == rows and not fitted & judged
    assert len(seen["fit"][0]) == 20 and all(len(s) == 20 for s in seen["judge"])
    with pytest.raises(CompileError, match="needs at least 2 labelled"):
        auto.choose(onnx.load(model_path("digits_cnn")), x[:1], y[:1], 1.0, 9, 4, 0.0)
