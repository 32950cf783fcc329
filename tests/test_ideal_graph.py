"""Ideal mode runs consecutive convolutions and the vector steps between them as one
onnxruntime graph (runtime/ideal_graph.py)."""

from __future__ import annotations

import dataclasses
import gc
import os

import numpy as np
import onnxruntime as ort
import pytest
from conftest import MODELS, assert_alone_as_in_runs
from onnx import TensorProto, helper, numpy_helper

from compiler import compile_model
from isa import Instr
from isa.program import Blob
from runtime import ideal_graph, implicit_conv, interpreter, run
from runtime.epilogues import fuse
from runtime.ideal_graph import GraphStep, fuse_graphs
from runtime.implicit_conv import fuse_convs
from runtime.mvm_groups import plan


@pytest.fixture(scope="module")
def cnn():
    return compile_model(os.path.join(MODELS, "digits_cnn.onnx"))


def _steps(program):
    return fuse_graphs(fuse_convs(fuse(plan(program.text), program), program), program)


def _ungraphed(monkeypatch, program, x, **kw):
    """An ideal run with every convolution a session of its own (implicit_conv alone)."""
    with monkeypatch.context() as patch:
        patch.setattr(interpreter, "fuse_graphs", lambda steps, program: steps)
        return run(program, x, timing=False, **kw).outputs


def _reference(name: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(os.path.join(MODELS, name), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_the_digits_cnn_up_to_its_classifier_is_one_graph(cnn):
    steps = _steps(cnn)
    graphs = [s for s in steps if isinstance(s, GraphStep)]
    assert len(graphs) == 1
    assert (graphs[0].inputs, graphs[0].outputs) == (["%image"], ["%feat"])
    ops = [i.op for i in graphs[0].instrs]
    assert ops.count("im2col") == 4 and ops[-1] == "reshape"
    assert {"add", "maxpool", "gavgpool"} <= set(ops)


@pytest.mark.parametrize("name", ["digits_cnn.onnx", "digits_resnet20.onnx"])
def test_graphed_runs_match_ungraphed_ones_and_onnxruntime(name, digits_test, monkeypatch):
    program = compile_model(os.path.join(MODELS, name))
    assert any(isinstance(s, GraphStep) for s in _steps(program))
    shape = program.buffer_map()[program.inputs[0].buffer].type.shape[1:]
    x = np.random.default_rng(0).standard_normal((64, *shape)).astype(np.float32)
    got = next(iter(run(program, x, timing=False, threads=2).outputs.values()))
    want = next(iter(_ungraphed(monkeypatch, program, x, threads=2).values()))
    ref = _reference(name, x)
    scale = np.abs(want).max()  # the same float32 sums in another order: rounding apart
    assert np.abs(got - want).max() <= 1e-5 * scale
    assert np.abs(got - ref).max() <= 1e-5 * scale
    assert np.array_equal(got.argmax(1), ref.argmax(1))


def test_a_samples_outputs_do_not_depend_on_its_run(cnn, digits_test):
    x = digits_test[0][:70]
    together = assert_alone_as_in_runs(cnn, x, (0, 33, 69), "logits")
    chunked = run(cnn, x, timing=False, memory_limit=2 * 2 ** 20)
    assert chunked.stats["passes"] > 1
    assert np.array_equal(chunked.outputs["logits"], together)


def test_layers_with_weights_as_inputs_compute_alike(cnn, digits_test, monkeypatch):
    x = digits_test[0][:40]
    constant = run(cnn, x, timing=False).outputs["logits"]
    monkeypatch.setattr(implicit_conv, "CONSTANT_BYTES", 0)
    inputs = run(cnn, x, timing=False, threads=2).outputs["logits"]
    assert np.abs(inputs - constant).max() <= 1e-5 * np.abs(constant).max()
    assert np.array_equal(assert_alone_as_in_runs(cnn, x, (7,), "logits"), inputs)


def test_a_session_serves_only_the_instructions_and_weights_it_was_built_for(cnn, digits_test,
                                                                              monkeypatch):
    x = digits_test[0][:4]
    plain = run(cnn, x, timing=False).outputs["logits"]
    # a copy of the program sharing every instruction but the residual add, which subtracts
    text = [Instr("sub", i.operands, i.attrs, i.line) if i.op == "add" else i
            for i in cnn.text]
    other = dataclasses.replace(cnn, text=text)
    got = run(other, x, timing=False).outputs["logits"]
    want = _ungraphed(monkeypatch, other, x)["logits"]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert not np.allclose(got, plain)
    assert np.array_equal(run(cnn, x, timing=False).outputs["logits"], plain)
    step = next(s for s in _steps(cnn) if isinstance(s, GraphStep))
    held = ideal_graph._SESSIONS[id(step.instrs[0])]  # (cnn's again: the last run's)
    layers = [(h[0], h[1], True) for h in held.layers]
    blobs = interpreter.Machine(cnn, 1).blobs
    assert held.serves(step, layers, blobs)
    changed = [(layers[0][0] * 2, layers[0][1], True)] + layers[1:]
    assert not held.serves(step, changed, blobs)
    as_inputs = [(layers[0][0], layers[0][1], False)] + layers[1:]
    assert not held.serves(step, as_inputs, blobs)
    assert not held.serves(next(s for s in _steps(other) if isinstance(s, GraphStep)), layers,
                           blobs)


def test_steps_onnx_would_compute_otherwise_stay_out(cnn):
    """A binary op broadcast beyond its operands' shapes, or a reshape that moves the sample
    axis, ends the graph: the conv steps around them stay their own."""
    steps = _steps(cnn)
    graph = next(s for s in steps if isinstance(s, GraphStep))
    shapes = {"%" + b.name: b.type.shape for b in cnn.buffers}
    add = next(i for i in graph.instrs if i.op == "add")
    assert ideal_graph._graphable(add, shapes)
    wide = dict(shapes, **{add.operands[0]: (2,) + tuple(shapes[add.operands[0]][1:])})
    assert not ideal_graph._graphable(add, wide)
    reshape = next(i for i in graph.instrs if i.op == "reshape")
    moved = dict(shapes, **{reshape.operands[0]: (shapes[reshape.operands[0]][1],
                                                 shapes[reshape.operands[0]][0])})
    assert not ideal_graph._graphable(reshape, moved)
    assert not ideal_graph._graphable(Instr("sigmoid", ["%feat", "%feat"], (), None), shapes)


def test_sessions_of_programs_no_one_holds_are_given_up(digits_test):
    x = digits_test[0][:2]
    program = compile_model(os.path.join(MODELS, "digits_cnn.onnx"))
    run(program, x, timing=False)
    key = id(next(s for s in _steps(program) if isinstance(s, GraphStep)).instrs[0])
    assert key in ideal_graph._SESSIONS
    del program
    gc.collect()
    other = compile_model(os.path.join(MODELS, "digits_cnn.onnx"))
    run(other, x, timing=False)  # a build, which drops what no program holds
    assert all(h.alive() for h in ideal_graph._SESSIONS.values())


def _model(nodes, x_shape, inits, opset=13):
    """x -> nodes -> y, with float32 initializers ``inits`` (name -> array)."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C", "H", "W"])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _convs(middle, channels=4, more=None):
    """Conv 1x1 -> ``middle`` nodes (reading "a", writing "b") -> Conv 1x1 -> y."""
    rng = np.random.default_rng(5)
    inits = {"w1": rng.standard_normal((channels, 2, 1, 1)) * 0.5, "b1": np.zeros(channels),
             "w2": rng.standard_normal((3, channels, 1, 1)) * 0.5, "b2": np.zeros(3),
             **(more or {})}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"]), *middle,
             helper.make_node("Conv", ["b", "w2", "b2"], ["y"])]
    return nodes, inits


def test_a_max_pool_in_ceil_mode_stays_out_of_the_graph():
    """ONNX's opset-13 shape rule and onnxruntime's kernel disagree on a ceil-mode window
    that starts in the end padding: such a pool runs as the program's own step."""
    nodes, inits = _convs([helper.make_node("MaxPool", ["a"], ["b"], kernel_shape=[1, 2],
                                            strides=[1, 3], pads=[0, 0, 0, 1], ceil_mode=1)])
    program = compile_model(_model(nodes, ["N", 2, 3, 9], inits))
    pools = [s for s in _steps(program) if getattr(s, "op", "") == "maxpool"]
    assert len(pools) == 1 and not any(isinstance(s, GraphStep) for s in _steps(program))
    x = np.random.default_rng(1).standard_normal((2, 2, 3, 9)).astype(np.float32)
    run(program, x, timing=False, threads=2)  # runs (the graphed run had failed)


def test_a_constant_with_a_row_per_sample_stays_out_of_the_graph(monkeypatch):
    """A batch-4 model adding a constant whose four rows differ: each sample reads its own
    row, which a run of samples split over threads cannot take as one constant."""
    rows = np.random.default_rng(2).standard_normal((4, 4, 1, 1))
    nodes, inits = _convs([helper.make_node("Relu", ["a"], ["r"]),
                           helper.make_node("Add", ["r", "k"], ["b"])], more={"k": rows})
    model = _model(nodes, [4, 2, 3, 3], inits)
    program = compile_model(model, batch=4)
    assert not any(isinstance(s, GraphStep) for s in _steps(program))
    x = np.random.default_rng(3).standard_normal((4, 2, 3, 3)).astype(np.float32)
    got = run(program, x, timing=False, threads=2).outputs["y"]
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_a_held_session_does_not_serve_a_copy_with_other_constants(monkeypatch):
    """A copy of a program sharing every instruction but another constant operand."""
    floor = np.random.default_rng(4).standard_normal((4, 1, 1))
    nodes, inits = _convs([helper.make_node("Relu", ["a"], ["r"]),
                           helper.make_node("Max", ["r", "k"], ["b"])], more={"k": floor})
    program = compile_model(_model(nodes, ["N", 2, 3, 3], inits))
    assert any(isinstance(s, GraphStep) for s in _steps(program))
    k = next(i.operands[2][1:] for i in program.text if i.op == "max")
    other = dataclasses.replace(program, blobs=[
        Blob(b.name, b.data + 1 if b.name == k else b.data) for b in program.blobs])
    x = np.random.default_rng(5).standard_normal((2, 2, 3, 3)).astype(np.float32)
    y1 = run(program, x, timing=False).outputs["y"]
    y2 = run(other, x, timing=False).outputs["y"]
    want = _ungraphed(monkeypatch, other, x)["y"]
    assert np.abs(y2 - want).max() <= 1e-5 * np.abs(want).max() and not np.allclose(y1, y2)


def test_runs_that_allow_nonfinite_inputs_keep_the_programs_max_pools(cnn, monkeypatch):
    """onnxruntime's max pools skip a NaN that is not first in its window; the program's
    keep it. A run that allows NaN and Inf runs without graphs, as the program says."""
    x = np.arange(2 * 64, dtype=np.float32).reshape(2, 1, 8, 8) / 64
    x[0, 0, 0, 1] = np.nan
    got = run(cnn, x, timing=False, allow_nonfinite=True).outputs["logits"]
    want = _ungraphed(monkeypatch, cnn, x, allow_nonfinite=True)["logits"]
    assert np.array_equal(got, want, equal_nan=True) and np.isnan(got[0]).all()
