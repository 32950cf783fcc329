"""Issue 12: the combiner as hardware (coefficient SRAM, fetch, accumulators), write and
verify energy from sourced figures, and the ``resources`` every report carries."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest
from conftest import cli, model_path

from compiler import compile_model
from compiler.basis import BasisSet
from isa import Blob, Buffer, ChipGeometry, Instr, Port, Program, TensorType, save
from isa.chip import Chip, load_chip
from isa.combiner import CombinerSize, combine_work, combiner_size, sram_pj_per_64b
from isa.resources import coef_fetch_bytes, resources
from isa.timing import combine_cost, verify_row_pj, write_cost
from runtime import run


@pytest.fixture(scope="module")
def basis_program():
    stem = os.path.splitext(model_path("digits_cnn_basis4"))[0]
    basis = BasisSet.load(f"{stem}.basis.npz")
    return compile_model(f"{stem}.onnx", basis=basis, max_xbars=2)


def test_sram_energy_is_horowitz():
    """Horowitz ISSCC 2014, 64-bit reads: 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ; log-log in
    between, the end segments' slopes outside (8 KB -> 32 KB: sqrt, so 2 KB is 5 pJ)."""
    assert sram_pj_per_64b(8192) == pytest.approx(10.0)
    assert sram_pj_per_64b(32768) == pytest.approx(20.0)
    assert sram_pj_per_64b(1 << 20) == pytest.approx(100.0)
    assert sram_pj_per_64b(2048) == pytest.approx(5.0)
    assert sram_pj_per_64b(0) == 0.0


def test_combine_cost_by_hand():
    """Levels [[1, 2, 3], [3, 0, -1]] (one unit, N = 2 columns, M = 3 kernels) at 3 bits:
    plane 0 selects (k0, k2) on both columns, plane 1 (k1, k2) on column 0 and k0 on column 1.
    Merged reads 2 + 2 = 4, adds 7, accumulations 2 + 3 = 5; 6 levels x 3 bits = 3 bytes."""
    levels = np.array([[[1, 2, 3], [3, 0, -1]]])
    work = combine_work(levels, 3)
    assert (work.merged_reads, work.adds, work.accumulations, work.ideal_reads) == (4, 7, 5, 4)
    assert (work.coef_bytes, work.kernels) == (3, 3)
    chip = Chip()
    chip = dataclasses.replace(chip, timing=dataclasses.replace(
        chip.timing, combiner_lanes=2, combiner_acc_bits=16))
    # An 8 KB coefficient SRAM (1.25 pJ a byte) and 4096 16-bit accumulators a lane (8 KB:
    # a read + write of 16 bits is 2 x 16/64 x 10 = 5 pJ).
    size = CombinerSize(coef_bytes=8192, kernels=4096, unit=2)
    ns, pj = combine_cost(chip, 5, work, size)
    # 5 vectors x 4 merged reads on 2 lanes = 10 cycles; 3 lane groups fetch 3 x 3 bytes.
    assert ns == 10.0
    assert pj == pytest.approx(5 * (4 * 0.1 + 7 * 0.05 + 5 * (0.1 + 5.0)) + 9 * 1.25)
    # The fetch binds at 1 byte a cycle on 16 lanes: reads take 2 cycles, the fetch 3.
    narrow = dataclasses.replace(chip, timing=dataclasses.replace(
        chip.timing, combiner_lanes=16, combiner_coef_bytes_per_cycle=1))
    assert combine_cost(narrow, 5, work, size)[0] == 3.0


def test_analog_combiner_cost_by_hand():
    """The same levels under the analog reading (isa.combiner): 64 columns hold 8 weights a
    row, 8 // 2 = 4 units a read, so each vector takes ceil(4 / 4) = 1 re-read of 8 + 2 steps,
    on 2 crossbars; 5 accumulations x 8 input bits = 40 conversions a vector, each an ADC
    conversion and a shift-add (acc 0.1 pJ + a 16-bit read and write of a 32 KB file:
    2 x 16/64 x 20 = 10 pJ)."""
    levels = np.array([[[1, 2, 3], [3, 0, -1]]])
    work = combine_work(levels, 3)
    chip = Chip()
    chip = dataclasses.replace(
        chip, arch=ChipGeometry(rows=16, cols=64, xbars=2),
        timing=dataclasses.replace(chip.timing, combiner_analog=1, combiner_lanes=2,
                                   combiner_acc_bits=16))
    size = CombinerSize(coef_bytes=8192, kernels=16384, unit=2)
    ns, pj = combine_cost(chip, 5, work, size)
    assert chip.arch.weights_per_row == 8  # 64 columns / (4 slices x 2 signs)
    reads = 5 * 1  # 5 vectors, one re-read each
    assert ns == reads * 10 * 100.0 / 2
    read_pj = 10 * 30.0 + 8 * 16 * 0.39  # 10 array steps, 16 rows' DACs on the 8 input steps
    assert pj == pytest.approx(reads * read_pj + 5 * 40 * (1.56 + 0.1 + 10.0) + 9 * 1.25)


def test_digits_basis_combiner_storage_and_fetch(basis_program):
    """Coefficient levels [16,16], [64,16], [16,16], [64,32], [16,10] at 4 bits:
    (256 + 1024 + 256 + 2048 + 160) / 2 = 1872 bytes. Per inference on 32 lanes the three
    64-vector layers fetch twice, conv4 (16 vectors) and fc (1) once:
    2 x (128 + 512 + 128) + 1024 + 80 = 2640 bytes, at 10 x sqrt(1872 / 8192) / 8 pJ a byte."""
    chip = load_chip()
    assert chip.timing.combiner_lanes == 32
    assert combiner_size(basis_program) == CombinerSize(1872, 32, 4)
    assert coef_fetch_bytes(basis_program, chip) == 2640
    res = resources(basis_program, chip)
    assert res["sram_bytes"]["coefficients"] == 1872
    assert res["coef_fetch_pj_per_inference"] == pytest.approx(
        2640 * 10 * math.sqrt(1872 / 8192) / 8)
    assert res["adders"]["combiner"] == 32 * 4
    assert res["accumulator_bytes"] == 32 * 32 * 3  # lanes x widest layer's kernels x 24 bits
    a = chip.area
    assert res["area_mm2_by_component"]["combiner_adders"] == pytest.approx(128 * a.adder_mm2)
    assert res["area_mm2_by_component"]["coefficient_sram"] == pytest.approx(
        1872 * a.sram_mm2_per_byte)


def test_default_combiner_width_follows_the_stated_rule():
    """The widest power of two whose adders (N = 4 a lane) stay within 10 % of 64 crossbars'
    array + ADC area (design-notes, issue 12)."""
    chip = load_chip()
    a = chip.area
    budget = 0.1 * 64 * (a.xbar_mm2 + a.adcs_per_xbar * a.adc_mm2)
    lanes = 2 ** int(math.log2(budget / (4 * a.adder_mm2)))
    assert chip.timing.combiner_lanes == Chip().timing.combiner_lanes == lanes == 32


def test_area_components_sum_to_total(basis_program):
    ws = compile_model(model_path("digits_cnn"), max_xbars=8)
    for program in (ws, basis_program):
        res = resources(program, load_chip())
        assert res["area_mm2"] == pytest.approx(sum(res["area_mm2_by_component"].values()))
        assert res["area_mm2"] > 0 and res["adcs"] == program.chip.xbars
    assert resources(ws, load_chip())["adders"]["combiner"] == 0


def test_one_row_write_energy_by_hand():
    """One row of 16 weights = 128 cells, 8 iterations of 1.38 pJ pulses each; verify reads in
    2 phases x 8 iterations, each 128 conversions at 1.56 pJ plus a 30 pJ array step."""
    chip = Chip()
    assert verify_row_pj(chip) == pytest.approx(128 * 1.56 + 30.0)
    ns, pj = write_cost(chip, 1, 128)
    assert ns == 2 * 8 * (50 + 20)
    assert pj == pytest.approx(128 * 8 * 1.38 + 2 * 8 * (128 * 1.56 + 30.0))
    # The same through the simulator: a one-row write in the load phase.
    w = np.arange(16, dtype=np.float32).reshape(1, 16) + 1
    text = [Instr("write", ("@w",), (("xb", 0), ("rows", (0, 1)), ("cols", (0, 16)))),
            Instr("barrier", (), (("label", "inference"),)), Instr("halt", ())]
    bufs = [Buffer("x", TensorType("f32", (1, 1))), Buffer("y", TensorType("f32", (1, 16)))]
    program = Program(ChipGeometry(xbars=1), 1, True, [Port("input", "x", "x"),
                      Port("output", "y", "y")], bufs, text, [Blob("w", w)])
    stats = run(program, mode="timing", chip=dataclasses.replace(chip, arch=program.chip)).stats
    assert stats["load"]["energy_pj"] == pytest.approx(pj)
    assert stats["load"]["cells_written"] == 128


@pytest.mark.parametrize("kind", ["weight-stationary", "basisn"])
def test_report_carries_resources(tmp_path, kind, basis_program):
    prog, report = tmp_path / "p.cim", tmp_path / "r.json"
    if kind == "basisn":
        save(basis_program, str(prog))
    else:
        assert cli("cimc", model_path("digits_cnn"), "-o", str(prog), "--xbars", "4"
                   ).returncode == 0
    r = cli("cimrun", str(prog), "--mode", "timing", "--report", str(report))
    assert r.returncode == 0, r.stderr
    res = json.loads(report.read_text())["resources"]
    assert res["area_mm2"] == pytest.approx(sum(res["area_mm2_by_component"].values()))
    assert res["crossbars"] == (2 if kind == "basisn" else 4)
    assert (res["sram_bytes"]["coefficients"] > 0) == (kind == "basisn")
    assert (res["adders"]["combiner"] > 0) == (kind == "basisn")


def test_reprogramming_keeps_its_weights_in_a_store():
    """On one crossbar the digits MLP rewrites all three weight matrices every inference:
    64x64 + 64x32 + 32x10 = 6464 weights at 8 bits, as SRAM; weight-stationary writes them
    only at load and needs no store."""
    chip = Chip()
    small = compile_model(model_path("digits_mlp"), max_xbars=1)
    res = resources(small, dataclasses.replace(chip, arch=small.chip))
    assert res["sram_bytes"]["weight_store"] == 6464
    assert res["area_mm2_by_component"]["weight_store"] == pytest.approx(
        6464 * chip.area.sram_mm2_per_byte)
    stationary = compile_model(model_path("digits_mlp"))
    assert resources(stationary, dataclasses.replace(chip, arch=stationary.chip))[
        "sram_bytes"]["weight_store"] == 0


def test_every_rewrite_reads_its_weights_from_the_store(monkeypatch):
    """Each write of the one-crossbar MLP costs its program-and-verify plus its window's
    weights (8 bits each) read from a 6464-byte SRAM at Horowitz's energy for that size:
    without the store (patched to 0 bytes) every write costs exactly that much less."""
    from isa import timing
    program = compile_model(model_path("digits_mlp"), max_xbars=1)
    chip = dataclasses.replace(Chip(), arch=program.chip)
    with_store = [e for e in timing.simulate(program, chip).events if e.op == "write"]
    monkeypatch.setattr(timing, "weight_store_bytes", lambda program: 0)
    without = [e for e in timing.simulate(program, chip).events if e.op == "write"]
    per_byte = sram_pj_per_64b(6464) / 8
    assert len(with_store) == len(without) > 3
    for a, b in zip(with_store, without):
        (r0, r1), (c0, c1) = program.text[a.index].attr("rows"), program.text[a.index].attr("cols")
        assert a.energy - b.energy == pytest.approx((r1 - r0) * (c1 - c0) * per_byte)
