"""The scheduler estimates with the simulator's own costs and rules (issue 11).

The schedule pass issues the instructions codegen will emit on an ``isa.timing.Machine`` with
``isa.timing``'s cost functions, so for every program it produces, its planned crossbar
instructions are the program's, in program order, and each starts and ends when
``isa.timing.simulate`` says. The one thing it cannot know is which rows a write really
changes: it charges every row of the tile, the simulator only the rows whose cells change.
So the estimate equals the simulation whenever every write changes all its rows (asserted as
the premise, from the rows the simulator counted), and is never below it otherwise.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
from conftest import model_path
from onnx import TensorProto, helper, numpy_helper

from compiler import CompileContext, compile_model
from compiler.frontend import import_model
from compiler.passes import PASSES, PIPELINE
from isa.chip import Chip, load_chip
from isa.timing import mvm_cost, simulate, tile_write_cost

# (chip preset, crossbars, schedule); None crossbars: as many as the model has tiles
CASES = [
    ("default", None, "optimized"),       # weight-stationary
    ("default", 18, "optimized"),         # weight-stationary, spare crossbars hold replicas
    ("default", 2, "naive"), ("default", 4, "naive"),
    ("default", 2, "optimized"), ("default", 4, "optimized"),
    ("slow-shared-write", None, "optimized"),  # one write driver shared by all crossbars
    ("slow-shared-write", 2, "naive"), ("slow-shared-write", 4, "naive"),
    ("slow-shared-write", 2, "optimized"), ("slow-shared-write", 4, "optimized"),
]


def _compile(model, chip: Chip, xbars, schedule: str):
    """The program and the scheduler's Estimate."""
    ctx = CompileContext(chip=chip.arch, chip_config=chip, max_xbars=xbars, schedule=schedule)
    program = compile_model(model, ctx=ctx)
    return program, ctx.stats["schedule"]


def _simulated(program, chip: Chip):
    """The timeline, and its crossbar events with their instructions, in program order."""
    tl = simulate(program, dataclasses.replace(chip, arch=program.chip))
    return tl, [(e, program.text[e.index]) for e in tl.events if e.op in ("write", "mvm")]


def _same_instructions(planned, events) -> None:
    got = [(p.op, p.origin, p.xb, p.rows, p.cols, p.vecs) for p in planned]
    want = [(ins.op, ins.note, ins.attr("xb"), ins.attr("rows"), ins.attr("cols"),
             ins.attr("vecs") if ins.op == "mvm" else None) for _, ins in events]
    assert got == want


@pytest.mark.parametrize("preset, xbars, schedule", CASES)
def test_estimate_is_the_simulation(preset, xbars, schedule):
    chip = load_chip(preset)
    program, est = _compile(model_path("digits_cnn"), chip, xbars, schedule)
    tl, events = _simulated(program, chip)
    _same_instructions(est.planned, events)
    # the premise: every write changed every row of its tile (trained weights differ)
    assert tl.rows_written == sum(p.rows[1] - p.rows[0] for p in est.planned if p.op == "write")
    batch = program.batch
    for p, (e, _) in zip(est.planned, events):
        (r0, r1), (c0, c1) = p.rows, p.cols
        cost = tile_write_cost(chip, r1 - r0, c1 - c0) if p.op == "write" else \
            mvm_cost(chip, r1 - r0, c1 - c0, batch * (p.vecs[1] - p.vecs[0]))
        assert p.end - p.start == e.end - e.start == cost[0]
        assert (p.start, p.end) == (e.start, e.end)
    assert (est.load_ns, est.total_ns) == (tl.load_ns, tl.total_ns)


def test_estimate_on_branches_is_the_simulation(zoo_dir):
    """ResNet-18: residual branches compete for the vector and buffer units."""
    from tools import make_zoo
    chip = load_chip("default")
    program, est = _compile(make_zoo.ensure("resnet18-cifar100", zoo_dir), chip, 64,
                            "optimized")
    tl, events = _simulated(program, chip)
    _same_instructions(est.planned, events)
    assert tl.rows_written == sum(p.rows[1] - p.rows[0] for p in est.planned if p.op == "write")
    assert [(p.start, p.end) for p in est.planned] == [(e.start, e.end) for e, _ in events]
    assert (est.load_ns, est.total_ns) == (tl.load_ns, tl.total_ns)


def _twin_layers():
    """Two 16 x 16 MatMuls with the same weights: on one crossbar, the second write finds the
    tile already there and changes no row."""
    w = np.random.default_rng(3).standard_normal((16, 16)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w"], ["y"], name="mm2")]
    g = helper.make_graph(nodes, "twins",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("schedule", ["naive", "optimized"])
def test_unchanged_rows_make_the_simulation_faster_than_the_estimate(schedule):
    chip = load_chip("default")
    program, est = _compile(_twin_layers(), chip, 1, schedule)
    tl, events = _simulated(program, chip)
    _same_instructions(est.planned, events)
    writes = [(p, e) for p, (e, _) in zip(est.planned, events) if p.op == "write"]
    assert [e.end - e.start for _, e in writes] == [writes[0][0].end - writes[0][0].start, 0.0]
    for p, (e, _) in zip(est.planned, events):
        assert e.end - e.start <= p.end - p.start and e.end <= p.end
        if p.op == "mvm":
            assert e.end - e.start == p.end - p.start
    assert tl.total_ns < est.total_ns


def test_schedule_gives_ops_new_attributes_and_leaves_the_old_ones():
    graph, ctx = import_model(model_path("digits_cnn")), CompileContext(max_xbars=3)
    for name in PIPELINE[:PIPELINE.index("schedule")]:
        graph = PASSES[name].run(graph, ctx)
    before = {op.id: op.attrs for op in graph.ops()}
    kept = copy.deepcopy(before)
    graph = PASSES["schedule"].run(graph, ctx)
    for op in graph.ops():
        assert before[op.id] == kept[op.id]  # the dict the op had is untouched
        if op.kind == "xbar_matmul":
            assert op.attrs is not before[op.id]
            assert op.attrs == {**kept[op.id], "placement": op.attrs["placement"],
                                "resident": op.attrs["resident"]}
