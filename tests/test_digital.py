"""The digital MAC unit (issue 12): ``dmatmul`` and ``cimc --digital``. Layers mapped onto it
match onnxruntime in ideal mode and keep float accuracy in quantized mode (no ADC); its
arithmetic, costs and resources match hand arithmetic; bad ``--digital`` values are usage
errors; programs with dmatmul round-trip through the .cim text."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import onnx
import pytest
from conftest import DIGITS, MODELS, cli, fails, model_path, ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper

import isa
from compiler import compile_model
from compiler.basis import BasisSet
from compiler.context import CompileContext
from isa import Blob, Buffer, ChipGeometry, Instr, Port, Program, TensorType
from isa.chip import Chip, load_chip, with_overrides
from isa.resources import resources
from isa.timing import dmatmul_cost, simulate
from runtime import run

TOL = 1e-5
LAYERS = {"digits_mlp": ["fc0", "fc1", "fc2"], "digits_cnn": ["conv1", "dw", "pw", "conv4", "fc"]}


def _ops(program: Program, op: str) -> list[str]:
    """The notes (ONNX node names) of the program's ``op`` instructions, in order."""
    return [ins.note for ins in program.text if ins.op == op]


# -- compiled models against onnxruntime -----------------------------------------------------

@pytest.mark.parametrize("name", DIGITS)
def test_digital_all_matches_onnxruntime(name, digits_test):
    x, _ = digits_test
    program = compile_model(model_path(name), digital="all", verify_each=True)
    assert _ops(program, "dmatmul") == LAYERS[name]
    assert not _ops(program, "mvm") and not _ops(program, "write")
    (want,) = ort_run(model_path(name), {"image": x})
    assert rel_err(run(program, x).outputs["logits"], want) < TOL


@pytest.mark.parametrize("name", DIGITS)
def test_digital_first_last_matches_onnxruntime(name, digits_test):
    x, _ = digits_test
    program = compile_model(model_path(name), digital="first,last", verify_each=True)
    first, *middle, last = LAYERS[name]
    assert _ops(program, "dmatmul") == [first, last]
    assert set(_ops(program, "mvm")) == set(middle)
    (want,) = ort_run(model_path(name), {"image": x})
    assert rel_err(run(program, x).outputs["logits"], want) < TOL


@pytest.mark.parametrize("name", DIGITS)
def test_quantized_digital_keeps_float_accuracy(name, digits_test):
    """No ADC and no noise: 8-bit weights and inputs cost at most a point of accuracy, and
    analog mode is quantized mode (nothing analog is left)."""
    x, y = digits_test
    program = compile_model(model_path(name), digital="all")
    (want,) = ort_run(model_path(name), {"image": x})
    quantized = run(program, x, mode="quantized").outputs["logits"]
    assert (quantized.argmax(1) == y).mean() >= (want.argmax(1) == y).mean() - 0.01
    analog = run(program, x, mode="analog", seed=3).outputs["logits"]
    assert np.array_equal(analog, quantized)


def test_basis_leaves_digital_layers_alone(digits_test):
    """A trained BasisN model with its first and last layers digital: the others combine, and
    the whole still computes what the ONNX model does."""
    x, _ = digits_test
    basis = BasisSet.load(os.path.join(MODELS, "digits_cnn_basis4.basis.npz"))
    path = model_path("digits_cnn_basis4")
    program = compile_model(path, basis=basis, max_xbars=8, digital="first,last")
    assert _ops(program, "dmatmul") == ["conv1", "fc"]
    assert _ops(program, "combine") == ["dw", "pw", "conv4"]
    (want,) = ort_run(path, {"image": x})
    assert rel_err(run(program, x).outputs["logits"], want) < TOL


def _gemm_model() -> onnx.ModelProto:
    """y = MatMul(Relu(Gemm(x, W, C)), V): C is [2, 4] (one bias row per sample of the batch
    of 2, so not one value per column), the MatMul has no bias."""
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((5, 4)), "C": rng.standard_normal((2, 4)),
             "V": rng.standard_normal((4, 3))}
    nodes = [helper.make_node("Gemm", ["x", "W", "C"], ["h"], name="gemm"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "V"], ["y"], name="mm")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     [2, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                          [numpy_helper.from_array(v.astype(np.float32), k)
                           for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_bias_per_sample_and_no_bias():
    """A bias that is not one value per column is added after the dmatmul, before the fused
    relu; a matmul without bias gives a dmatmul without one."""
    model = _gemm_model()
    program = compile_model(model, digital="all", verify_each=True)
    ops = [ins.op for ins in program.text if ins.op not in ("barrier", "halt")]
    assert ops == ["dmatmul", "add", "relu", "dmatmul"]
    assert [len(i.operands) for i in program.text if i.op == "dmatmul"] == [3, 3]
    x = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    (want,) = ort_run(model, {"x": x})
    assert rel_err(run(program, x).outputs["y"], want) < TOL


# -- the quantized arithmetic by hand ----------------------------------------------------------

def _program(x_shape, weight, bias=None, x_range=0.0, **geometry) -> Program:
    """barrier, dmatmul %y, %x, @w[, @b], halt; x's calibrated range ``x_range``."""
    k, m = weight.shape
    y_shape = tuple(x_shape[:-1]) + (m,)
    blobs = [Blob("w", weight.astype(np.float32))]
    operands = ("%y", "%x", "@w")
    if bias is not None:
        blobs.append(Blob("b", np.asarray(bias, np.float32)))
        operands += ("@b",)
    return Program(chip=ChipGeometry(xbars=1, **geometry), batch=x_shape[0], batch_free=True,
                   ports=[Port("input", "x", "x"), Port("output", "y", "y")],
                   buffers=[Buffer("x", TensorType("f32", tuple(x_shape)), 0, x_range),
                            Buffer("y", TensorType("f32", y_shape), 64)],
                   text=[Instr("barrier", (), (("label", "inference"),)),
                         Instr("dmatmul", operands), Instr("halt", ())],
                   blobs=blobs)


def test_quantized_dmatmul_by_hand():
    """2-bit inputs against range 1: 0.6 -> rint(1.8) = 2, -0.25 -> rint(-0.75) = -1 (of 3).
    3-bit weights, column scale 1/3: 1.0 -> 3, -0.6 -> rint(-1.8) = -2. Integer sum
    2*3 + (-1)(-2) = 8, times (1/3) (1/3), plus the bias 0.25."""
    program = _program((1, 2), np.array([[1.0], [-0.6]]), [0.25], x_range=1.0,
                       weight_bits=3, input_bits=2)
    x = np.array([[0.6, -0.25]], np.float32)
    got = run(program, x, mode="quantized").outputs["y"]
    assert got[0, 0] == pytest.approx(8 / 9 + 0.25, rel=1e-6)
    assert run(program, x).outputs["y"][0, 0] == pytest.approx(0.6 + 0.15 + 0.25, rel=1e-6)


# -- costs, timing report and resources by hand -------------------------------------------------

def test_dmatmul_cost_by_hand():
    """6 vectors x [4, 5]: 120 MACs on 36 MACs = 4 cycles; 20 weight bytes on a 64-byte port
    = 1 cycle. Energy: 120 x 0.3 pJ, and 20 bytes at Horowitz's SRAM energy for a 20-byte
    SRAM (extrapolated from 8 KB 10 pJ / 64 bit with the 8-32 KB slope, 1/2)."""
    chip = Chip()
    sram_byte = 10 * math.sqrt(20 / 8192) / 8
    ns, pj = dmatmul_cost(chip, 6, 4, 5, 20)
    assert ns == 4.0 and pj == pytest.approx(120 * 0.3 + 20 * sram_byte)
    slow = with_overrides(chip, ["timing.digital_weight_bytes_per_cycle=1"])
    assert dmatmul_cost(slow, 6, 4, 5, 20)[0] == 20.0  # fetch-bound: 20 bytes a byte a cycle
    four_bit = dataclasses.replace(chip, arch=dataclasses.replace(chip.arch, weight_bits=4))
    assert dmatmul_cost(four_bit, 6, 4, 5, 10)[1] == pytest.approx(
        120 * 0.3 + 10 * 10 * math.sqrt(10 / 8192) / 8)


def test_timing_report_by_hand():
    """The program above at batch 2, 3 vectors a sample: 4 ns for the batch, so 2 cycles and
    half the energy per inference; the weight SRAM holds the 20 bytes."""
    program = _program((2, 3, 4), np.arange(20).reshape(4, 5) / 10, np.ones(5))
    stats = run(program, mode="timing").stats
    sram_byte = 10 * math.sqrt(20 / 8192) / 8
    assert stats["cycles_per_inference"] == 2.0
    assert stats["energy_pj_per_inference"] == pytest.approx((120 * 0.3 + 20 * sram_byte) / 2)
    assert stats["utilization"]["digital"] == 1.0
    assert stats["lower_bound_cycles"] == 2.0


def test_resources_count_the_digital_unit():
    chip = load_chip()
    program = _program((2, 3, 4), np.ones((4, 5)))
    res = resources(program, chip)
    area = res["area_mm2_by_component"]
    assert res["digital_macs"] == chip.timing.digital_macs == 36
    assert res["sram_bytes"]["digital_weights"] == 20
    assert res["digital_fetch_bytes_per_inference"] == 20 / 2
    assert area["digital_macs"] == pytest.approx(36 * chip.area.digital_mac_mm2)
    assert area["digital_weight_sram"] == pytest.approx(20 * chip.area.sram_mm2_per_byte)
    assert res["area_mm2"] == pytest.approx(sum(area.values()))
    plain = resources(compile_model(model_path("digits_mlp")), chip)
    assert plain["digital_macs"] == 0 and plain["sram_bytes"]["digital_weights"] == 0
    assert plain["area_mm2_by_component"]["digital_macs"] == 0


def test_default_digital_unit_follows_the_stated_rule():
    """A MAC is Horowitz's 8-bit multiplier (282 um2) and 32-bit adder (137 um2) scaled from
    45 to 32 nm; the default unit has as many MACs as fit the default combiner's adders
    (32 lanes x N = 4 at adder_mm2): 'the same adders'."""
    chip = load_chip()
    a = chip.area
    assert a.digital_mac_mm2 == Chip().area.digital_mac_mm2 == pytest.approx(
        (282 + 137) * 1e-6 * (32 / 45) ** 2, rel=1e-3)
    budget = chip.timing.combiner_lanes * 4 * a.adder_mm2
    assert chip.timing.digital_macs == Chip().timing.digital_macs == \
        int(budget / a.digital_mac_mm2) == 36
    assert chip.energy.digital_mac_pj == Chip().energy.digital_mac_pj == pytest.approx(0.2 + 0.1)


def test_schedule_estimate_is_the_simulation():
    ctx = CompileContext()
    program = compile_model(model_path("digits_cnn"), digital="first,last", ctx=ctx, batch=4)
    tl = simulate(program, dataclasses.replace(Chip(), arch=program.chip))
    assert ctx.stats["schedule"].total_ns == pytest.approx(tl.total_ns)
    assert any(e.unit == "digital" for e in tl.events)


# -- the flag and the text format ----------------------------------------------------------------

@pytest.mark.parametrize("value,needles", [
    ("conv9", ["--digital: no layer named 'conv9'", "conv1, dw, pw, conv4, fc"]),
    ("first,conv9,fc7", ["no layer named 'conv9', 'fc7'"]),
    ("", ["--digital: no layer named ''", "give all, first, last"]),
    ("first,", ["no layer named ''"]),
])
def test_bad_digital_values_are_usage_errors(value, needles, tmp_path):
    out = tmp_path / "p.cim"
    fails(cli("cimc", model_path("digits_cnn"), "-o", str(out), "--digital", value), *needles)
    assert not out.exists()


def test_cli_digital_and_round_trip(tmp_path):
    out = tmp_path / "p.cim"
    r = cli("cimc", model_path("digits_cnn"), "-o", str(out), "--digital", "conv1,fc")
    assert r.returncode == 0, r.stderr
    assert "2 dmatmul" in r.stdout
    text = out.read_text()
    program = isa.load(str(out))
    assert _ops(program, "dmatmul") == ["conv1", "fc"]
    assert isa.print_program(program) == text
    assert isa.parse(isa.print_program(program)) == program
