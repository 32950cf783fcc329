"""The device model against closed forms, and the modes on the digits models (issue 4)."""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np
import pytest
from conftest import DIGITS, MODELS, cli, model_path, ort_run, rel_err

import isa
from compiler import compile_model
from isa import ChipGeometry
from isa.chip import SECTIONS, Chip, from_dict, load_chip, presets, with_overrides
from runtime import RunError, device, encoding, kernels, run
from runtime import noise as nz
from runtime.analog import crossbar_mvm


def _chip(*sets, arch=None):
    return with_overrides(dataclasses.replace(Chip(), arch=arch or Chip().arch), list(sets))


@pytest.mark.parametrize("name", presets())
def test_a_chip_as_data_is_its_sections_and_round_trips(name):
    """``Chip.to_dict`` (every run's report carries it) gives each section as
    ``dataclasses.asdict`` does, in a dict of its own, and ``from_dict`` of it is the chip."""
    chip = load_chip(name)
    data = chip.to_dict()
    assert data == {"name": chip.name,
                    **{s: dataclasses.asdict(getattr(chip, s)) for s in SECTIONS}}
    assert from_dict(data) == chip
    data["arch"]["rows"] = -1  # a new dict each call: the chip is untouched
    assert chip.to_dict()["arch"]["rows"] == chip.arch.rows


def test_programming_spread_matches_sigma():
    chip = _chip("mapping.slice_compensation=0")
    d, top = chip.device, 3
    step = (d.g_max_us - d.g_min_us) / top
    g0, sigma = d.g_min_us / step, d.program_sigma * d.g_max_us / step
    rng = np.random.default_rng(0)
    residuals = []
    for i in range(24):  # 24 x 16384 cells, about 1.3e5 of them at a non-zero digit
        tile = rng.standard_normal((128, 16))
        prog = device.program(tile, chip, nz.stream_key(0, nz.PROGRAM, i),
                              np.full((2, 4, 128, 16), -1, np.int8), 0.0)
        ok = prog.target >= 1  # digit-0 cells can clip at zero conductance
        residuals.append((prog.cells - (g0 + prog.target))[ok])
    residuals = np.concatenate(residuals)
    assert len(residuals) > 1e5
    assert abs(residuals.std() / sigma - 1) < 0.05
    assert abs(residuals.mean()) < 3 * sigma / np.sqrt(len(residuals))


def test_stuck_rates_within_statistical_bounds():
    chip = _chip("device.stuck_at_gmin=0.002", "device.stuck_at_gmax=0.001")
    mask = device.stuck_mask(nz.stream_key(3, nz.STUCK, 0), (1000, 1000), chip)
    for value, p in ((0, 0.002), (1, 0.001)):
        n, k = mask.size, (mask == value).sum()
        assert abs(k - n * p) < 5 * np.sqrt(n * p * (1 - p))


def _hand_programmed(cells_pos, full):
    cells = np.zeros((2, 1, len(cells_pos), 1), np.float32)
    cells[0, 0, :, 0] = cells_pos
    return device.Programmed(cells=cells, target=cells.astype(np.int64), scale=np.ones(1),
                             gain=np.ones((2, 1, 1), np.float32),
                             full_scale=np.array([[[full]], [[1.0]]], np.float32), offset=0.0)


@pytest.mark.parametrize("x,full,expected", [
    ([1, 1], 3.0, 3.0),        # current 3 of full scale 3: top code, exact
    ([1, 1], 2.0, 2.0),        # current 3 clipped at full scale 2
    ([1, 0], 2.0, 4.0 / 3.0),  # current 1 of 2 with 3 codes: 1.5 rounds (to even) to 2 -> 4/3
    ([0, 1], 3.0, 2.0),        # current 2 of 3: code 2 -> 2
])
def test_adc_clipping_and_rounding(x, full, expected):
    arch = ChipGeometry(cell_bits=2, weight_bits=2, input_bits=1, adc_bits=2)
    chip = _chip("device.g_min_us=0", arch=arch)
    prog = _hand_programmed([1.0, 2.0], full)
    y = crossbar_mvm(np.array([x], np.float32), np.ones((1, 1), np.float32), prog, chip, None)
    assert y[0, 0] == pytest.approx(expected)


def test_quantized_converges_to_ideal_with_wide_adc_and_many_levels(digits_test):
    x = digits_test[0][:64]
    wide = ChipGeometry(cell_bits=8, weight_bits=16, input_bits=16, adc_bits=16)
    program = compile_model(model_path("digits_cnn"), chip=wide)
    ideal = run(program, x, timing=False).outputs["logits"]
    quant = run(program, x, mode="quantized", timing=False).outputs["logits"]
    assert rel_err(quant, ideal) < 1e-3
    default = compile_model(model_path("digits_cnn"))
    coarse = run(default, x, mode="quantized", timing=False).outputs["logits"]
    assert rel_err(coarse, ideal) > rel_err(quant, ideal)


@pytest.mark.parametrize("name", DIGITS)
def test_quantized_and_analog_accuracy(name, digits_test):
    x, y = digits_test
    (ref,) = ort_run(model_path(name), {"image": x})
    float_acc = (ref.argmax(1) == y).mean()
    program = compile_model(model_path(name))
    quant = run(program, x, mode="quantized", timing=False).outputs["logits"]
    assert abs((quant.argmax(1) == y).mean() - float_acc) <= 0.005
    analog = run(program, x, mode="analog", seed=1, timing=False).outputs["logits"]
    assert abs((analog.argmax(1) == y).mean() - float_acc) <= 0.02


def test_mitigations_are_what_keeps_the_cnn_accurate(digits_test):
    x, y = digits_test[0][:200], digits_test[1][:200]
    program = compile_model(model_path("digits_cnn"))
    off = _chip(*(f"mapping.{m}=0" for m in ("stuck_aware", "slice_compensation",
                                             "raw_calibration", "per_column_scaling")),
                arch=program.chip)
    bare = run(program, x, mode="analog", chip=off, timing=False).outputs["logits"]
    assert (bare.argmax(1) == y).mean() < 0.8


def test_analog_is_deterministic_per_seed(digits_test):
    x = digits_test[0][:32]
    program = compile_model(model_path("digits_mlp"))
    a = run(program, x, mode="analog", seed=7, timing=False).outputs["logits"]
    b = run(program, x, mode="analog", seed=7, timing=False).outputs["logits"]
    c = run(program, x, mode="analog", seed=8, timing=False).outputs["logits"]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_offset_encoding_in_quantized_mode(digits_test):
    x, y = digits_test
    program = compile_model(model_path("digits_mlp"))
    chip = _chip("mapping.differential=0", arch=program.chip)
    out = run(program, x, mode="quantized", chip=chip, timing=False).outputs["logits"]
    (ref,) = ort_run(model_path("digits_mlp"), {"image": x})
    assert abs((out.argmax(1) == y).mean() - (ref.argmax(1) == y).mean()) <= 0.005


def test_calibration_sets_input_ranges(tmp_path, digits_test):
    np.save(tmp_path / "cal.npy", digits_test[0][:50])
    prog = tmp_path / "p.cim"
    r = cli("cimc", model_path("digits_cnn"), "-o", str(prog), "--calibrate",
            str(tmp_path / "cal.npy"))
    assert r.returncode == 0, r.stderr
    program = isa.load(prog)
    ranges = {b.name: b.range for b in program.buffers if b.range}
    assert ranges["conv1.patches"] == pytest.approx(1.0)  # the images span [0, 1]
    assert set(ranges) == {i.operands[1][1:] for i in program.text if i.op == "mvm"}
    r = cli("cimrun", str(prog), "--input", os.path.join(MODELS, "digits_test_x.npy"),
            "--mode", "quantized", "--labels", os.path.join(MODELS, "digits_test_y.npy"))
    assert r.returncode == 0 and "top-1 accuracy 0.99" in r.stdout, r.stdout + r.stderr


def test_bad_mapping_flag_is_rejected(tmp_path):
    prog = tmp_path / "p.cim"
    assert cli("cimc", model_path("digits_mlp"), "-o", str(prog)).returncode == 0
    r = cli("cimrun", str(prog), "--mode", "analog", "--input",
            os.path.join(MODELS, "digits_sample.npy"), "--set", "mapping.differential=2")
    assert r.returncode == 2 and "must be 0 or 1" in r.stderr


def test_drift_and_ir_drop_closed_forms():
    chip = _chip("device.drift_nu=0.1", "device.drift_seconds=1e4")
    cells = np.full((2, 4, 3, 2), 2.0)
    assert np.allclose(device.read_conditions(cells, chip), 2.0 * (1 + 1e4) ** -0.1)
    chip = _chip("device.wire_ohm=2.0")
    got = device.read_conditions(cells, chip)
    step_s = (40.0 - 1.0) / 3 * 1e-6
    # row 0, sign 0, slice 0, column 0: physical column 0, so 1 + 3 segments to driver and ADC
    assert got[0, 0, 0, 0] == pytest.approx(2.0 / (1 + 2.0 * 4 * 2.0 * step_s))
    # farther cells lose more: physical column grows with the logical column
    assert got[0, 0, 0, 1] < got[0, 0, 0, 0] and got[0, 0, 2, 0] > got[0, 0, 0, 0]


def test_endurance_failures_under_reprogramming(digits_test):
    x = digits_test[0][:16]
    program = compile_model(model_path("digits_cnn"), max_xbars=3)
    worn = _chip("device.endurance_writes=1", arch=program.chip)
    fresh = run(program, x, mode="analog", timing=False).stats
    tired = run(program, x, mode="analog", chip=worn, timing=False).stats
    assert fresh["endurance_failed_cells"] == 0 and tired["endurance_failed_cells"] > 0


@pytest.mark.parametrize("per_step", [1, 0])
@pytest.mark.parametrize("dac_bits", [1, 2, 3, 8])
def test_multi_bit_dac_errs_only_by_its_adc_rounding(dac_bits, per_step):
    """With Gmin = 0 and no noise, a column's current at each DAC step is an integer, so the
    only error against the exact integer product is the ADC's rounding: at most half a level
    of the step's full scale (the cells' sum times 2**dac_bits - 1) per physical column and
    step, weighted as the digital side shift-adds it. With ``adc_per_step`` 0 it is half a
    level of one conversion of the steps' weighted analog sum, whose full scale is as many
    times larger: the same bound (issue 14: dac_bits, ADC after analog shift-add)."""
    from runtime.analog import input_levels
    arch = dataclasses.replace(Chip().arch, dac_bits=dac_bits, adc_bits=10,
                               adc_per_step=per_step)
    chip = _chip("device.g_min_us=0", arch=arch)
    rng = np.random.default_rng(dac_bits)
    w = rng.standard_normal((20, 5)).astype(np.float32)
    x = rng.standard_normal((4, 20)).astype(np.float32)
    x_range = np.abs(x).max(axis=1, keepdims=True)
    stuck = np.full((2, arch.slices) + w.shape, -1, np.int8)
    prog = device.program(w, chip, None, stuck, float(np.abs(w).max()))
    got = crossbar_mvm(x, x_range, prog, chip, None)
    levels = 2 ** arch.input_bits - 1
    q, scale = device.quantize_weights(w, chip, 0.0)
    exact = (input_levels(x, arch.input_bits, x_range) @ q) * (x_range / levels) * scale
    top, adc = 2 ** dac_bits - 1, 2 ** arch.adc_bits - 1
    step_weights = ((2.0 ** dac_bits) ** np.arange(arch.input_steps)).sum()
    slice_weights = (2.0 ** arch.cell_bits) ** np.arange(arch.slices)
    per_column = (prog.full_scale * top / (2 * adc) * slice_weights[None, :, None]).sum((0, 1))
    bound = 2 * step_weights * per_column * (x_range / levels) * scale  # two input signs
    assert (np.abs(got - exact) <= bound * (1 + 1e-5) + 1e-6).all()


@pytest.mark.parametrize("mode", ["quantized", "analog"])
@pytest.mark.parametrize("differential", [1, 0])
def test_a_stack_of_tiles_programs_as_each_tile_alone(mode, differential):
    """``device.program_many`` (one numpy pass over a stack) gives every tile exactly what
    ``device.program`` gives it alone, with previous states and bit stucking too."""
    import dataclasses as dc

    from runtime import device
    chip = Chip()
    chip = dc.replace(chip, mapping=dc.replace(chip.mapping, differential=differential))
    a, rng = chip.arch, np.random.default_rng(11)
    shape = (2, a.slices, 20, 6)
    writes = []
    for t in range(4):
        tile = rng.standard_normal((20, 6)).astype(np.float32)
        stuck = device.stuck_mask(nz.stream_key(11, nz.STUCK, t), shape, chip) \
            if mode == "analog" else \
            np.full(shape, -1, np.int8)
        cells = (2 if differential else 1,) + shape[1:]  # the encoding's cell state
        prev = (rng.integers(-1, 4, cells), 3 * rng.random(cells)) if t % 2 else None
        select = rng.random(cells) < 0.5 if t % 2 else None  # bit stucking's choice
        writes.append((tile, chip, None, stuck, 1.5, prev, select))
    def fresh(t):  # each write's own noise stream, the same for both ways
        return nz.stream_key(5, nz.PROGRAM, t) if mode == "analog" else None
    with_prev = [w for w in writes if w[5] is not None]
    without = [w for w in writes if w[5] is None]
    for group in (with_prev, without):
        stacked = device.program_many([w[:2] + (fresh(t),) + w[3:] for t, w in enumerate(group)])
        alone = [device.program(*(w[:2] + (fresh(t),) + w[3:])) for t, w in enumerate(group)]
        for s, o in zip(stacked, alone):
            for field in ("cells", "target", "scale", "gain", "full_scale", "held"):
                assert np.array_equal(getattr(s, field), getattr(o, field)), field
            assert s.offset == o.offset


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("gmin, gmax", [(0.001, 0.001), (0.3, 0.2), (0.0, 0.5), (0.0, 0.0)])
def test_stuck_masks_follow_their_definition(gmin, gmax, compiled, monkeypatch):
    """u < stuck_at_gmin: stuck at Gmin (0); below both fractions together: at Gmax (1);
    else free (-1), for the stream's uniform draws u (numpy's definition, C order)."""
    chip = Chip()
    chip = dataclasses.replace(chip, device=dataclasses.replace(
        chip.device, stuck_at_gmin=gmin, stuck_at_gmax=gmax))
    if not compiled:  # the numpy fallback (CIMSTACK_NUMBA=0)
        monkeypatch.setattr(kernels, "_kernel", None)
    key = nz.stream_key(4, nz.STUCK, 9)
    counters = np.arange(2 * 4 * 32 * 8, dtype=np.uint64) + np.uint64(1)
    u = nz.uniform_from_bits(nz.mix64(key + counters * nz.GAMMA)).reshape(2, 4, 32, 8)
    assert 0 <= u.min() < 0.01 and 0.99 < u.max() < 1
    want = np.where(u < gmin, 0, np.where(u < gmin + gmax, 1, -1))
    got = device.stuck_mask(key, u.shape, chip)
    assert got.dtype == np.int8 and np.array_equal(got, want)


@pytest.mark.parametrize("compiled", [True, False])
def test_stuck_masks_at_a_rate_equal_to_a_draw(compiled, monkeypatch):
    """A draw equal to stuck_at_gmin is not below it (free, or at Gmax), one a unit of
    2**-53 under it is: the compiled fill compares integers (``kernels._units_above``) and
    must draw the same line as the float definition."""
    if not compiled:
        monkeypatch.setattr(kernels, "_kernel", None)
    key = nz.stream_key(4, nz.STUCK, 9)
    u = nz.stream_uniforms(key, np.arange(64, dtype=np.uint64))
    for gmin in (u[5], np.nextafter(u[5], 1.0), u[5] + 2.0 ** -53):
        for gmax in (0.0, u[7] - gmin if u[7] > gmin else 0.0):
            chip = Chip()
            chip = dataclasses.replace(chip, device=dataclasses.replace(
                chip.device, stuck_at_gmin=float(gmin), stuck_at_gmax=float(gmax)))
            want = np.where(u < gmin, 0, np.where(u < gmin + gmax, 1, -1))
            assert np.array_equal(device.stuck_mask(key, (64,), chip), want)
    m = np.arange(2 ** 40 - 3, 2 ** 40 + 3, dtype=np.uint64)
    for rate in (2.0 ** -13, 2.0 ** -13 + 2.0 ** -60, np.nextafter(2.0 ** -13, 0), 1.5):
        assert np.array_equal(m < kernels._units_above(rate),
                              m.astype(np.float64) * 2.0 ** -53 < rate)


@pytest.mark.parametrize("compiled", [True, False])
def test_programming_noise_is_each_tiles_stream_in_cell_order(compiled, monkeypatch):
    """Tile t's cell j (C order) gets sigma x draw j of stream t (numpy's definition; the
    compiled fill and the numpy fallback must agree with it bit for bit)."""
    if not compiled:
        monkeypatch.setattr(kernels, "_kernel", None)
    keys = np.array([nz.stream_key(1, nz.PROGRAM, t) for t in range(3)])
    want = np.stack([nz.stream_normals(k, np.arange(120)).astype(np.float64) * 0.07
                     for k in keys]).reshape(3, 2, 4, 5, 3)
    assert np.array_equal(device._normals(keys, 0.07, (3, 2, 4, 5, 3)), want)


def test_one_stream_key_in_python_ints_is_numpys():
    for fields in ((7, nz.PROGRAM, 3, 1), (-5, nz.STUCK, 2 ** 40), (0, nz.READ)):
        assert nz.stream_key(*fields) == nz.stream_keys(*fields)[0]


@pytest.mark.parametrize("cell_bits", [1, 2, 4])
@pytest.mark.parametrize("aware, compensate", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("mode", ["quantized", "analog"])
@pytest.mark.parametrize("cols", [7, 1])
@pytest.mark.parametrize("reads", [(), ("device.drift_nu=0.05", "device.drift_seconds=3600",
                                        "device.wire_ohm=2.5")])
def test_the_compiled_programming_gives_numpys_cells(cell_bits, aware, compensate, mode,
                                                     cols, reads, monkeypatch):
    """``encoding.program_fresh`` (numba: noise drawn in place, digits, cells and column
    sums in one pass) against numpy's way (``isa.cells.encode`` on ``_normals``' draws),
    field by field, with stuck cells at a rate that exercises every branch; its float64
    column sums add rows in numpy's way's order (``column_sums``), one-column tiles too;
    with drift and IR drop too (applied after either)."""
    if encoding._compiled is None:
        pytest.skip("numba is not installed (or CIMSTACK_NUMBA=0)")
    chip = _chip("device.stuck_at_gmin=0.1", "device.stuck_at_gmax=0.1",
                 f"mapping.stuck_aware={aware}", f"mapping.slice_compensation={compensate}",
                 *reads, arch=ChipGeometry(cell_bits=cell_bits))
    rng = np.random.default_rng(cell_bits)
    shape = (2, chip.arch.slices, 40, cols)
    writes = [(rng.standard_normal((40, cols)).astype(np.float32), chip,
               nz.stream_key(3, nz.PROGRAM, t) if mode == "analog" else None,
               device.stuck_mask(nz.stream_key(3, nz.STUCK, t), shape, chip), 2.5, None, None)
              for t in range(5)]
    fused = device.program_many(writes)
    q = np.stack([device.quantize_weights(w[0], chip, np.float64(2.5))[0] for w in writes])
    keys = None if mode == "quantized" else np.array([w[2] for w in writes])
    g0 = device.gmin_levels(chip)
    digits, _, conductances, ideal, actual = encoding.program_fresh(
        q, np.stack([w[3] for w in writes]), keys, 0.3, chip, aware, compensate, g0)
    assert np.array_equal(actual, device.column_sums(conductances))
    assert np.array_equal(ideal, device.column_sums(g0 + digits))
    monkeypatch.setattr(device, "program_fresh", lambda *a, **k: None)
    for f, n in zip(fused, device.program_many(writes)):
        for field in ("cells", "target", "scale", "gain", "full_scale", "held", "grid_bound"):
            a, b = getattr(f, field), getattr(n, field)
            assert np.array_equal(a, b) and np.asarray(a).dtype == np.asarray(b).dtype, field
    noisy = any((f.held != np.rint(f.held)).any() for f in fused)  # values off the levels
    assert noisy == (mode == "analog")


@pytest.mark.parametrize("cell_bits,sets", [
    (1, ()), (2, ()), (4, ()),
    (2, ("device.drift_nu=0.05", "device.drift_seconds=3600", "device.wire_ohm=2.5"))])
def test_analog_conductances_are_resolved_to_the_grid(cell_bits, sets):
    """Analog programming rounds conductances to 2**-GRID_BITS of a level step (nearest),
    after drift and IR drop, and bounds every column sum (``Programmed.grid_bound``);
    quantized cells are not rounded (their Gmin stays exact)."""
    chip = _chip(*sets, arch=ChipGeometry(cell_bits=cell_bits))
    rng = np.random.default_rng(cell_bits)
    tile = rng.standard_normal((40, 6)).astype(np.float32)
    stuck = np.full((2, chip.arch.slices, 40, 6), -1, np.int8)
    noisy = device.program(tile, chip, nz.stream_key(0, nz.PROGRAM, 0), stuck, 3.0)
    step = 2.0 ** -device.GRID_BITS
    assert np.array_equal(noisy.cells / step, np.rint(noisy.cells / step))
    assert noisy.grid_bound >= (noisy.cells / step).sum(axis=-2).max() > 0
    unrounded = device.read_conditions(
        np.maximum(device.gmin_levels(chip) + noisy.held, 0.0), chip).astype(np.float32)
    assert np.abs(noisy.cells - unrounded).max() <= step / 2
    exact = device.program(tile, chip, None, stuck, 3.0)
    assert exact.grid_bound is None
    assert np.array_equal(exact.cells, (device.gmin_levels(chip) + exact.target).astype(
        np.float32))


def test_an_open_loop_chip_has_no_verify_driven_mitigations(digits_test):
    """neurosim-open-loop has no verify reads (t_verify_ns 0), so the mitigations they drive
    are off in the preset; a chip without verify reads that keeps them on warns."""
    open_loop = load_chip("neurosim-open-loop")
    assert open_loop.timing.t_verify_ns == 0
    assert not (open_loop.mapping.stuck_aware or open_loop.mapping.slice_compensation
                or open_loop.mapping.raw_calibration)
    program = compile_model(model_path("digits_mlp"))
    x = digits_test[0][:4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no warning)
        run(program, x, mode="analog", chip=open_loop, timing=False)
    unverified = load_chip("default", ["timing.t_verify_ns=0"])
    with pytest.warns(RuntimeWarning, match="no verify reads .* mapping.stuck_aware"):
        run(program, x, mode="analog", chip=unverified, timing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quantized mode: no noise, no stuck cells to see
        run(program, x, mode="quantized", chip=unverified, timing=False)


@pytest.mark.parametrize("weight_bits,cell_bits,slices,per_row", [
    (8, 1, 7, 9), (8, 2, 4, 16), (8, 3, 3, 21), (8, 6, 2, 32), (8, 7, 1, 64), (8, 8, 1, 64),
    (2, 1, 1, 64), (16, 8, 2, 32)])
def test_slices_hold_the_magnitude_bits(weight_bits, cell_bits, slices, per_row):
    """A weight's cells of one sign hold its weight_bits - 1 magnitude bits (the differential
    pair carries the sign): ceil((W - 1) / B) slices, 128 / (2 x slices) weights a row."""
    arch = ChipGeometry(weight_bits=weight_bits, cell_bits=cell_bits)
    assert (arch.slices, arch.weights_per_row) == (slices, per_row)


def test_seven_bit_cells_hold_a_weight_in_one_digit(digits_test):
    """At 7 bits a cell a 7-bit magnitude is one cell's digit, so quantized mode reads the
    digits CNN as closely as at 8 bits (it had a second, nearly empty slice of place value
    128 whose ADC error swamped the first: 55 % accuracy)."""
    chip = _chip(arch=ChipGeometry(cell_bits=7))
    q = np.arange(-127, 128)[:, None].astype(np.float64)
    digits = isa.cells.nominal_digits(q, chip, 127.0)
    assert digits.shape == (2, 1, 255, 1)
    assert np.array_equal(digits[0, 0] - digits[1, 0], q)
    x = digits_test[0][:64]
    errs = {}
    for bits in (7, 8):
        program = compile_model(model_path("digits_cnn"), chip=ChipGeometry(cell_bits=bits))
        ideal = run(program, x, timing=False).outputs["logits"]
        errs[bits] = rel_err(run(program, x, mode="quantized", timing=False).outputs["logits"],
                             ideal)
    assert errs[7] <= 1.5 * errs[8]


def test_the_offset_scheme_loses_a_bit_where_the_slices_hold_only_the_magnitude(digits_test):
    """The offset scheme stores q + offset, sign included, in the slices: at 1 bit a cell
    seven slices hold 0..127, so weights round to +-63 around an offset of 64 (and a run
    says so); at 2 bits a cell four slices hold 0..255, weights +-127 around 128."""
    tile = np.linspace(-1.0, 1.0, 255)[:, None]
    for bits, qmax in ((1, 63), (2, 127)):
        chip = _chip("mapping.differential=0", arch=ChipGeometry(cell_bits=bits))
        q, _ = isa.cells.quantize_weights(tile, chip, 1.0)
        digits, offset = isa.cells.to_digits(q, chip)
        assert (q.min(), q.max(), offset) == (-qmax, qmax, qmax + 1)
        places = (2 ** bits) ** np.arange(chip.arch.slices)
        assert np.array_equal(np.tensordot(places, digits[0], 1), q + offset)
    x, offset = digits_test[0][:4], _chip("mapping.differential=0")
    for bits, warns in ((1, True), (2, False)):
        program = compile_model(model_path("digits_mlp"), chip=ChipGeometry(cell_bits=bits))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run(program, x, mode="quantized", chip=offset, timing=False)
        said = [str(w.message) for w in caught if "mapping.differential = 0" in str(w.message)]
        assert said == ([("mapping.differential = 0 at 8-bit weights and 1-bit cells: 7 "
                          "slice(s) hold 7 bit(s), the magnitude and not the offset scheme's "
                          "sign, so its weights are rounded to 7 bits (differential pairs "
                          "keep 8)")] if warns else [])
    two_bit = compile_model(model_path("digits_mlp"), chip=ChipGeometry(cell_bits=1,
                                                                       weight_bits=2))
    with pytest.raises(RunError, match="2-bit weights and 1-bit cells: 1 slice.s. hold 1 "
                                       "bit.s., .* so no magnitude bit is left"):
        run(two_bit, x, mode="quantized", chip=offset, timing=False)
    digital = compile_model(model_path("digits_mlp"), digital="all",
                            chip=ChipGeometry(cell_bits=1, weight_bits=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no crossbar weights: the scheme is not used
        run(digital, x, mode="quantized", chip=offset, timing=False)
