"""The workload lower bound (issue 12): one per model, chip and batch, under every schedule."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import model_path

from compiler import compile_model
from isa import Blob, Buffer, ChipGeometry, Instr, Port, Program, TensorType
from isa.chip import Chip, load_chip
from isa.timing import mvm_cost, tile_write_cost
from runtime.bound import workload_bound_ns
from runtime.report import timing_report

# (max_xbars, schedule); None: weight-stationary on as many crossbars as tiles, 64: spares
SCHEDULES = [(2, "naive"), (2, "optimized"), (4, "naive"), (4, "optimized"),
             (8, "naive"), (8, "optimized"), (None, "optimized"), (64, "optimized")]


def _reports(path, chip, batch, xbars_list):
    out = {}
    for n, s in SCHEDULES:
        if n not in xbars_list:
            continue
        kw = {} if n is None else {"max_xbars": n}
        program = compile_model(path, schedule=s, chip_config=chip, batch=batch, **kw)
        out[(program.chip.xbars, s, n)] = timing_report(program, chip)[0]
    return out


def _check(reports):
    by_xbars: dict[int, list] = {}
    for (xbars, _, _), r in reports.items():
        by_xbars.setdefault(xbars, []).append(r)
        assert 0 < r["schedule_efficiency"] <= 1 + 1e-12
        assert r["lower_bound_cycles"] <= r["cycles_per_inference"] * (1 + 1e-12)
    for rs in by_xbars.values():
        bounds = {round(r["lower_bound_cycles"], 6) for r in rs}
        assert len(bounds) == 1, bounds
        assert max(bounds) <= min(r["cycles_per_inference"] for r in rs) * (1 + 1e-12)


@pytest.mark.parametrize("chip_name", ["default", "slow-shared-write"])
@pytest.mark.parametrize("batch", [1, 4])
def test_digits_every_schedule_shares_the_bound(chip_name, batch):
    _check(_reports(model_path("digits_cnn"), load_chip(chip_name), batch,
                    [2, 4, 8, None, 64]))


# -- a hand-made tiny case: 3 tiles of 128 rows on 2 crossbars ------------------------------

ROWS, COLS = 128, 4
WIN = (("rows", (0, ROWS)), ("cols", (0, COLS)))


def _tiny(drivers: int) -> tuple[Program, Chip]:
    rng = np.random.default_rng(0)
    blobs = [Blob(n, rng.normal(size=(ROWS, COLS)).astype(np.float32)) for n in "abc"]

    def write(blob, xb):
        return Instr("write", (f"@{blob}",), (("xb", xb),) + WIN)

    def mvm(dst, xb):
        return Instr("mvm", (f"%{dst}", "%x"), (("xb", xb),) + WIN + (("vecs", (0, 1)),))

    text = [write("a", 0), write("b", 1), Instr("barrier", (), (("label", "inference"),))]
    for y in "yzw":
        text.append(Instr("fill", (f"%{y}",), (("value", 0.0),)))
    text += [mvm("y", 0), mvm("z", 1), write("c", 0), mvm("w", 0), Instr("halt", ())]
    bufs = [Buffer("x", TensorType("f32", (1, ROWS)))] + [
        Buffer(n, TensorType("f32", (1, COLS))) for n in "yzw"]
    program = Program(ChipGeometry(xbars=2), 1, True, [Port("input", "x", "x"),
                      Port("output", "w", "w")], bufs, text, blobs)
    chip = dataclasses.replace(Chip(), arch=program.chip)
    chip = dataclasses.replace(chip, timing=dataclasses.replace(chip.timing,
                                                                write_drivers=drivers))
    return program, chip


@pytest.mark.parametrize("drivers", [0, 1])
def test_tiny_case_by_hand(drivers):
    program, chip = _tiny(drivers)
    write = 128 * 2 * 8 * (50 + 20)   # rows x phases x iterations x (pulse + verify)
    mvm = 1 * (8 + 2) * 100            # one vector x (input bits + 2 steps) x 100 ns
    assert tile_write_cost(chip, ROWS, COLS)[0] == write
    assert mvm_cost(chip, ROWS, COLS, 1)[0] == mvm
    report, tl = timing_report(program, chip)
    terms = workload_bound_ns(program, chip, tl)
    # 3 distinct tiles, 2 crossbars: one whole write is unavoidable
    assert terms["crossbars"] == (3 * mvm + write) / 2
    assert terms["one_write"] == write + mvm           # the write is not split over 2 xbars
    assert terms.get("write_drivers", 0.0) == (write if drivers else 0.0)
    bound = write + mvm
    assert report["lower_bound_cycles"] == pytest.approx(bound * chip.timing.clock_ghz)
    # the old formula split the write: (mvm work + write) / crossbars
    assert (3 * mvm + write) / 2 < bound <= tl.body_ns
    assert report["schedule_efficiency"] == pytest.approx(bound / tl.body_ns)


def test_a_shared_row_need_not_be_rewritten():
    """Rows a tile shares (same index and values) with another tile may already be in place:
    the floor of its write does not count them, so the bound stays below any schedule."""
    program, chip = _tiny(0)
    shared = program.blob_map()
    shared["c"].data[:100] = shared["a"].data[:100]
    _, tl = timing_report(program, chip)
    terms = workload_bound_ns(program, chip, tl)
    assert terms["one_write"] == 28 * 2 * 8 * 70 + 1000
    assert max(terms.values()) <= tl.body_ns


def test_resnet18_cifar_shares_the_bound(zoo_dir):
    """A deeper model (tools/make_zoo.py), one size only to keep it cheap."""
    from tools import make_zoo
    path = make_zoo.ensure("resnet18-cifar100", zoo_dir)
    _check(_reports(path, load_chip("default"), 1, [8]))
