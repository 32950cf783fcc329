"""Cell-level write accounting, weight sorting and bit stucking (issue 12: Farias and Kung,
"Efficient Reprogramming of Memristive Crossbars for DNNs: Weight Sorting and Bit Stucking").

A crossbar cell holds one slice digit of one sign of a quantized weight (``isa.cells``); a
write programs the cells whose digit changes, and the timing model counts exactly those.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import cli, fails, model_path, ort_run
from onnx import TensorProto, helper, numpy_helper

from compiler import compile_model
from compiler.context import CompileContext
from isa import Blob, Buffer, ChipGeometry, Instr, IsaError, Port, Program, TensorType
from isa.cells import LowWrite, nominal_digits
from isa.chip import Chip, load_chip
from isa.combiner import sram_pj_per_byte
from isa.timing import simulate, write_cost
from isa.verify import verify
from runtime import run
from runtime.interpreter import Machine
from runtime.semantics import SEMANTICS

CHIP = Chip()
CNN = model_path("digits_cnn")

# One column of three weights; the column's largest magnitude is 127, so (per-column scaling,
# 8-bit weights: 127 levels) each weight is its own integer level.
A = np.array([[127.0], [64.0], [16.0]], np.float32)
B = np.array([[127.0], [64.0], [-16.0]], np.float32)


def _two_tiles(low: LowWrite | None = None, second=B) -> Program:
    """Tile A written in the load phase, then tile ``second`` on the same crossbar."""
    low_attrs = low.attrs() if low else ()
    window = (("xb", 0), ("rows", (0, 3)), ("cols", (0, 1)))
    text = [Instr("write", ("@a",), window), Instr("barrier", (), (("label", "inference"),)),
            Instr("write", ("@b",), window + low_attrs), Instr("fill", ("%y",), (("value", 0.0),)),
            Instr("mvm", ("%y", "%x"), window + (("vecs", (0, 1)),)), Instr("halt", ())]
    buffers = [Buffer("x", TensorType("f32", (1, 3))), Buffer("y", TensorType("f32", (1, 1)))]
    return Program(ChipGeometry(xbars=1), 1, True, [Port("input", "x", "x"),
                   Port("output", "y", "y")], buffers, text,
                   [Blob("a", A), Blob("b", np.asarray(second, np.float32))])


def test_digits_by_hand():
    """Balanced digits, most significant slice (x64) first, each the rounded remainder:
    127 = 2x64 - 1, 64 = 1x64, 16 = 1x16; a negative weight's digits sit on the n side."""
    d = nominal_digits(np.concatenate([A, B], axis=1), CHIP, 127.0)  # [sign, slice, row, col]
    assert d[0, :, 0, 0].tolist() == [0, 0, 0, 2] and d[1, :, 0, 0].tolist() == [1, 0, 0, 0]
    assert d[0, :, 1, 0].tolist() == [0, 0, 0, 1] and d[1, :, 1, 0].tolist() == [0, 0, 0, 0]
    assert d[0, :, 2, 0].tolist() == [0, 0, 1, 0] and d[1, :, 2, 0].tolist() == [0, 0, 0, 0]
    assert d[0, :, 2, 1].tolist() == [0, 0, 0, 0] and d[1, :, 2, 1].tolist() == [0, 0, 1, 0]


def test_a_write_is_charged_for_the_cells_whose_digit_changes():
    """A then B on one crossbar: only row 2 differs, in its x16 slice, p 1 -> 0 and n 0 -> 1:
    2 cells in 1 row (a weight-level count would have charged all 8 cells of the weight)."""
    st = run(_two_tiles(), mode="timing").stats
    assert st["cells_written"] == 2 and st["rows_written"] == 1
    assert st["load"]["cells_written"] == 3 * 8  # nothing known before: every cell
    ns, pj = write_cost(CHIP, 1, 2)
    assert ns == 1 * 2 * 8 * (50 + 20)  # a row x SET/RESET x 8 iterations x (pulse + verify)
    assert pj == pytest.approx(2 * 8 * 1.38 + 1 * 2 * 8 * (128 * 1.56 + 30))
    open_loop = load_chip("neurosim-open-loop")  # no verify read, so none charged
    assert write_cost(open_loop, 1, 2) == pytest.approx((1 * 2 * 60 * 50, 2 * 60 * 1.38))
    events = [e for e in simulate(_two_tiles(), CHIP).events if e.op == "write"]
    fetch = 3 * sram_pj_per_byte(3)  # its 3 weights read from a 3-byte weight store (B)
    assert (events[1].end - events[1].start, events[1].energy) == pytest.approx((ns, pj + fetch))
    x = np.array([[0.0, 0.0, 1.0]], np.float32)
    quantized = run(_two_tiles(), x, mode="quantized")
    assert quantized.stats["cells_changed"] == 24 + 2  # the runtime programs the same cells
    assert quantized.outputs["y"][0, 0] == pytest.approx(-16.0, rel=0.02)


def _written_digits(program: Program, mode: str = "quantized") -> np.ndarray:
    """The digits crossbar 0 holds after every write of ``program`` ran."""
    m = Machine(program, 1, mode)
    for ins in program.text:
        if ins.op == "write":
            SEMANTICS["write"](m, ins)
    return m.xbars[0].target


@pytest.mark.parametrize("slices, kept", [(3, True), (2, False)])
def test_bit_stucking_at_fraction_zero_keeps_the_low_slices(slices, kept):
    """Row 2's change is in slice 2 (x16): bit stucking at fraction 0 over the 3 lowest
    slices keeps A's digit there (no cell written, the crossbar still reads +16); over the 2
    lowest it does not reach slice 2, so the write is as before."""
    program = _two_tiles(LowWrite(slices, 0.0, seed=5))
    digits = _written_digits(program)
    want = nominal_digits(A if kept else B, CHIP, 127.0)
    assert np.array_equal(digits, want)
    st = run(program, mode="timing").stats
    assert (st["cells_written"], st["rows_written"]) == ((0, 0) if kept else (2, 1))
    y = run(program, np.array([[0.0, 0.0, 1.0]], np.float32), mode="quantized").outputs["y"]
    assert y[0, 0] == pytest.approx(16.0 if kept else -16.0, rel=0.02)


def test_bit_stucking_never_touches_higher_slices():
    """A tile that differs from A everywhere: at fraction 0 over 2 slices, slices 0-1 keep A's
    digits and slices 2-3 take the new ones; the cells counted are exactly those."""
    other = np.array([[-127.0], [-37.0], [90.0]], np.float32)
    digits = _written_digits(_two_tiles(LowWrite(2, 0.0), other))
    old, new = nominal_digits(A, CHIP, 127.0), nominal_digits(other, CHIP, 127.0)
    assert np.array_equal(digits[:, :2], old[:, :2]) and np.array_equal(digits[:, 2:], new[:, 2:])
    st = run(_two_tiles(LowWrite(2, 0.0), other), mode="timing").stats
    assert st["cells_written"] == int((old[:, 2:] != new[:, 2:]).sum())


def _cells_after(program: Program, writes: int, mode: str = "analog") -> np.ndarray:
    """Crossbar 0's cell values after the first ``writes`` writes of ``program``."""
    m = Machine(program, 1, mode, seed=3)
    for ins in [i for i in program.text if i.op == "write"][:writes]:
        SEMANTICS["write"](m, ins)
    return m.xbars[0].cells


@pytest.mark.parametrize("second, low", [(A, None), (B, LowWrite(4, 0.0))])
def test_cells_a_write_leaves_keep_their_value_and_noise(second, low):
    """Analog mode: rewriting the same tile, or bit stucking at fraction 0 over every slice,
    programs no cell, so the cells keep their programming noise (none is drawn again)."""
    program = _two_tiles(low, second)
    assert np.array_equal(_cells_after(program, 1), _cells_after(program, 2))
    assert not np.array_equal(_cells_after(_two_tiles(None, B), 1),
                              _cells_after(_two_tiles(None, B), 2))


def test_verifier_rules_for_bit_stucking():
    good = _two_tiles(LowWrite(2, 0.5, 1))
    verify(good)
    bad = dataclasses.replace(good, text=list(good.text))
    bad.text[0] = Instr("write", ("@a",), bad.text[0].attrs + LowWrite(1, 0.5).attrs())
    with pytest.raises(IsaError, match="load-phase writes are full"):
        verify(bad)
    bad.text[0] = good.text[0]
    bad.text[2] = Instr("write", ("@b",), good.text[2].attrs[:-1])  # no low_seed
    with pytest.raises(IsaError, match="low_slices, low_write, low_seed together"):
        verify(bad)
    bad.text[2] = Instr("write", ("@b",), good.text[0].attrs + LowWrite(5, 0.5).attrs())
    with pytest.raises(IsaError, match="low_slices=5 must be within 1..4"):
        verify(bad)


@pytest.mark.parametrize("sorting", [False, True])
def test_timing_counts_the_cells_the_runtime_programs(sorting, digits_test):
    """With bit stucking's random choice too: the timing model draws the same cells."""
    x = digits_test[0][:8]
    for stucking in (None, "0.25:2"):
        program = compile_model(CNN, max_xbars=2, weight_sorting=sorting, bit_stucking=stucking)
        got = run(program, x, mode="quantized")
        assert got.stats["cells_changed"] == got.stats["cells_written"] + \
            got.stats["load"]["cells_written"]


def test_bit_stucking_at_fraction_one_is_plain_reprogramming(digits_test):
    x = digits_test[0][:32]
    plain = run(compile_model(CNN, max_xbars=2), x, mode="quantized")
    full = run(compile_model(CNN, max_xbars=2, bit_stucking="1.0:4"), x, mode="quantized")
    assert np.array_equal(plain.outputs["logits"], full.outputs["logits"])
    assert plain.stats["cells_written"] == full.stats["cells_written"]


def test_bit_stucking_writes_fewer_cells_and_only_on_rotating_tiles(digits_test):
    program = compile_model(CNN, max_xbars=3, bit_stucking="0.25:2")
    writes = [i for i in program.text if i.op == "write"]
    start = next(k for k, i in enumerate(program.text) if i.attr("label") == "inference")
    assert all(LowWrite.of(i) is None for i in program.text[:start] if i.op == "write")
    assert any(LowWrite.of(i) == LowWrite(2, 0.25, 0) for i in writes)
    plain = run(compile_model(CNN, max_xbars=3), mode="timing").stats["cells_written"]
    assert run(program, mode="timing").stats["cells_written"] < plain
    # ideal mode holds float tiles: bit stucking does not change its results
    x = digits_test[0][:16]
    assert np.array_equal(run(program, x).outputs["logits"],
                          run(compile_model(CNN, max_xbars=3), x).outputs["logits"])


def test_weight_sorting_is_exact_in_ideal_mode(digits_test):
    x = digits_test[0][:64]
    program = compile_model(CNN, max_xbars=2, weight_sorting=True)
    assert any(i.attr("perm") is not None for i in program.text if i.op == "im2col")
    (want,) = ort_run(CNN, {"image": x})
    got = run(program, x).outputs["logits"]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def _rows_twice(seed: int = 4):
    """A 256 x 16 MatMul whose rows 128..255 are rows 0..127 in another order: two tiles
    holding the same rows. Sorting deals equal rows to the same offset of both tiles, so the
    second tile is the first one and rewriting it changes nothing."""
    rng = np.random.default_rng(seed)
    half = rng.standard_normal((128, 16)).astype(np.float32)
    w = np.concatenate([half, half[rng.permutation(128)]])
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph([node], "rows_twice",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_weight_sorting_aligns_tiles_that_share_rows():
    model = _rows_twice()
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    plain = compile_model(model, max_xbars=1)
    sorted_ = compile_model(model, max_xbars=1, weight_sorting=True)
    assert any(i.op == "permute" for i in sorted_.text)  # no im2col to carry the order
    cells = [run(p, mode="timing").stats["cells_written"] for p in (plain, sorted_)]
    assert cells[1] == 128 * 16 * 8  # the first tile's write; the second changes nothing
    assert cells[0] > 1.3 * cells[1]
    (want,) = ort_run(model, {"x": x})
    assert np.abs(run(sorted_, x).outputs["y"] - want).max() <= 1e-4 * np.abs(want).max()


def test_weight_sorting_on_digits_cnn_stays_near_plain():
    """On trained weights whole-row and column orders cannot align the low-order digits,
    which change about as often as independent digits do: sorting keeps the cells written
    within 1 % of plain reprogramming (design notes, issue 12)."""
    plain = run(compile_model(CNN, max_xbars=2), mode="timing").stats["cells_written"]
    sorted_ = run(compile_model(CNN, max_xbars=2, weight_sorting=True),
                  mode="timing").stats["cells_written"]
    assert sorted_ <= 1.01 * plain


def test_with_weight_sorting_the_estimate_is_the_simulation():
    """The plan tracks every crossbar's cells, so it charges each write the rows it changes,
    as the simulator does."""
    ctx = CompileContext(max_xbars=3)
    program = compile_model(CNN, ctx=ctx, weight_sorting=True)
    est, tl = ctx.stats["schedule"], simulate(program, CHIP)
    got = [(p.op, p.xb, p.start, p.end) for p in est.planned]
    want = [(e.op, program.text[e.index].attr("xb"), e.start, e.end) for e in tl.events
            if e.op in ("write", "mvm")]
    assert got == want and est.total_ns == tl.total_ns


def test_sorting_and_stucking_warn_when_nothing_is_rewritten(tmp_path):
    r = cli("cimc", CNN, "-o", str(tmp_path / "p.cim"), "--weight-sorting",
            "--bit-stucking", "0.5")
    assert r.returncode == 0 and "do nothing: no crossbar is rewritten" in r.stderr


@pytest.mark.parametrize("value", ["1.5", "-0.1", "0.5:0", "0.5:5", "half", "0.5:1:2", "nan"])
def test_bad_bit_stucking_values(tmp_path, value):
    fails(cli("cimc", CNN, "-o", str(tmp_path / "p.cim"), "--xbars", "2",
              f"--bit-stucking={value}"),
          "--bit-stucking must be FRACTION[:SLICES]", "within 0..1", "1..4", value)
