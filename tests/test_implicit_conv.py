"""Ideal mode runs a convolution's im2col, layer step and unpatch as one onnxruntime Conv."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import MODELS, assert_alone_as_in_runs
from onnx import TensorProto, helper, numpy_helper

from compiler import compile_model
from isa import Instr
from isa.printer import text_line
from runtime import RunError, implicit_conv, interpreter, run
from runtime.epilogues import fuse
from runtime.implicit_conv import ConvStep, fuse_convs
from runtime.mvm_groups import plan


@pytest.fixture(autouse=True)
def convolutions_alone(monkeypatch):
    """These tests are of ConvSteps run as sessions of their own: ideal_graph, which runs
    runs of them as one graph, is off (tests/test_ideal_graph.py has it on)."""
    monkeypatch.setattr(interpreter, "fuse_graphs", lambda steps, program: steps)


@pytest.fixture(scope="module")
def cnn():
    return compile_model(os.path.join(MODELS, "digits_cnn.onnx"))


def _steps(program):
    return fuse_convs(fuse(plan(program.text), program), program)


def _unfused(monkeypatch, program, x, **kw):
    """The outputs of an ideal run whose convolutions go through im2col and products."""
    with monkeypatch.context() as patch:
        patch.setattr(interpreter, "fuse_convs", lambda steps, program: steps)
        return run(program, x, timing=False, **kw).outputs


def test_every_convolution_of_the_digits_cnn_is_one_step(cnn):
    convs = [s for s in _steps(cnn) if isinstance(s, ConvStep)]
    assert [s.unpatch.operands[0] for s in convs] == ["%r1", "%r2", "%bn3.out", "%r4"]
    assert [s.layer.act.op if s.layer.act else None for s in convs] == [
        "relu", "relu", None, "relu"]


def test_the_depthwise_layer_is_a_grouped_convolution_and_the_others_dense(cnn):
    m = interpreter.Machine(cnn, 1)
    interpreter._steps(m, plan(cnn.text)[:1], Counter(), None)  # the crossbar writes
    channels = {"%r1": 1, "%r2": 16, "%bn3.out": 16, "%r4": 16}
    groups = {}
    for step in (s for s in _steps(cnn) if isinstance(s, ConvStep)):
        c = channels[step.unpatch.operands[0]]
        matrix, bias = implicit_conv.layer_matrix(m, step, c)
        weight, _, groups[step.unpatch.operands[0]] = implicit_conv.conv_weight(
            step, matrix, bias)
        assert weight.shape[1] == c // groups[step.unpatch.operands[0]]
    assert groups == {"%r1": 1, "%r2": 16, "%bn3.out": 1, "%r4": 1}


def test_fused_runs_match_the_unfused_ones_and_onnxruntime(cnn, digits_test, monkeypatch):
    x = digits_test[0][:64]
    got = run(cnn, x, timing=False, threads=2).outputs["logits"]
    want = _unfused(monkeypatch, cnn, x, threads=2)["logits"]
    ref = ort.InferenceSession(os.path.join(MODELS, "digits_cnn.onnx"),
                               providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    # another order of the same float32 sums: rounding apart, and the same classes
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-5 * scale
    assert np.abs(got - ref).max() <= 1e-5 * scale
    assert np.array_equal(got.argmax(1), want.argmax(1))


def test_a_samples_outputs_do_not_depend_on_its_run(cnn, digits_test):
    assert_alone_as_in_runs(cnn, digits_test[0][:70], (0, 33, 69), "logits")


def test_layers_with_weights_as_inputs_compute_alike(cnn, digits_test, monkeypatch):
    """Layers above CONSTANT_BYTES run on a session that takes the weights as inputs: every
    layer here, forced; the same outputs within rounding, and a sample's do not depend on
    its run either."""
    x = digits_test[0][:40]
    constant = run(cnn, x, timing=False).outputs["logits"]
    monkeypatch.setattr(implicit_conv, "CONSTANT_BYTES", 0)
    inputs = assert_alone_as_in_runs(cnn, x, (0, 39), "logits")
    assert np.abs(inputs - constant).max() <= 1e-5 * np.abs(constant).max()


def test_patches_read_after_the_layer_keep_it_unfused(cnn):
    steps = fuse(plan(cnn.text), cnn)
    at = next(i for i, s in enumerate(steps) if getattr(s, "op", "") == "unpatch"
              and s.operands[0] == "%r2")
    steps.insert(at + 1, Instr("copy", ("%spare", "%dw.patches")))
    fused = fuse_convs(steps, cnn)
    assert [s.unpatch.operands[0] for s in fused if isinstance(s, ConvStep)] == [
        "%r1", "%bn3.out", "%r4"]


def test_an_output_port_on_the_layers_columns_keeps_it_unfused(cnn):
    port = dataclasses.replace(cnn.outputs[0], buffer="conv4.cols")
    program = dataclasses.replace(cnn, ports=cnn.inputs + [port])
    assert [s.unpatch.operands[0] for s in _steps(program) if isinstance(s, ConvStep)] == [
        "%r1", "%r2", "%bn3.out"]


def test_a_layer_whose_crossbars_hold_new_weights_is_rebuilt(digits_test, monkeypatch):
    program = compile_model(os.path.join(MODELS, "digits_cnn.onnx"))
    x = digits_test[0][:16]
    before = run(program, x, timing=False).outputs["logits"]
    blob = next(b for b in program.blobs if b.name == "conv4.matrix")
    blob.data[:] = -blob.data  # the same program and instructions, other weights
    after = run(program, x, timing=False).outputs["logits"]
    want = _unfused(monkeypatch, program, x)["logits"]
    assert not np.allclose(after, before)
    assert np.abs(after - want).max() <= 1e-5 * np.abs(want).max()


def _conv_model(x_shape, w, group, **attrs) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=group, **attrs)
    relu = helper.make_node("Relu", ["y"], ["out"])
    graph = helper.make_graph(
        [node, relu], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             ["N", *x_shape[1:]])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                       [f"d{i}" for i in range(len(x_shape))])],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.linspace(-1, 1, w.shape[0]).astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("x_shape, w_shape, group, attrs", [
    ((2, 4, 9, 7), (6, 2, 3, 2), 2, {"strides": [2, 1], "pads": [1, 0, 1, 1]}),
    ((2, 6, 11), (6, 1, 3), 6, {"dilations": [2], "pads": [2, 2]}),
    ((1, 3, 5, 5, 4), (4, 3, 2, 2, 2), 1, {"strides": [1, 2, 1]}),
])
def test_grouped_strided_dilated_and_3d_convolutions_match_onnxruntime(
        x_shape, w_shape, group, attrs):
    rng = np.random.default_rng(1)
    w = rng.standard_normal(w_shape).astype(np.float32)
    model = _conv_model(x_shape, w, group, **attrs)
    program = compile_model(model)
    assert any(isinstance(s, ConvStep) for s in _steps(program))
    x = rng.standard_normal((3,) + x_shape[1:]).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = next(iter(run(program, x, timing=False).outputs.values()))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_permuted_rows_and_channels_are_unpermuted(cnn, digits_test, monkeypatch):
    """conv4 rewritten as weight sorting writes a layer (its patches' columns and its output
    channels in another order, the matrix and bias permuted to match) computes the same."""
    rng = np.random.default_rng(0)
    rows, cols = rng.permutation(144), rng.permutation(32)
    blobs = {b.name: b for b in cnn.blobs}
    matrix = np.empty_like(blobs["conv4.matrix"].data)
    matrix[:, cols] = blobs["conv4.matrix"].data[rows]
    bias = np.empty_like(blobs["conv4.b"].data)
    bias[..., cols] = blobs["conv4.b"].data
    text = [dataclasses.replace(i, attrs=i.attrs + (("perm", list(rows)),))
            if i.op == "im2col" and i.operands[0] == "%conv4.patches" else
            dataclasses.replace(i, attrs=i.attrs + (("perm", list(cols)),))
            if i.op == "unpatch" and i.operands[0] == "%r4" else i for i in cnn.text]
    swapped = {"conv4.matrix": matrix, "conv4.b": bias}
    permuted = dataclasses.replace(cnn, text=text, blobs=[
        dataclasses.replace(b, data=swapped.get(b.name, b.data)) for b in cnn.blobs])
    assert sum(isinstance(s, ConvStep) for s in _steps(permuted)) == 4
    x = digits_test[0][:16]
    want = run(cnn, x, timing=False).outputs["logits"]
    got = run(permuted, x, timing=False).outputs["logits"]
    unfused = _unfused(monkeypatch, permuted, x)["logits"]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert np.abs(unfused - want).max() <= 1e-5 * np.abs(want).max()


def test_an_error_in_a_fused_convolution_names_its_im2col_line(cnn, digits_test):
    text = [i for i in cnn.text if not (i.op == "unpatch" and i.operands[0] == "%r1")]
    broken = dataclasses.replace(cnn, text=text)  # %r1, the dw layer's input, never written
    im2col = next(n for n, i in enumerate(text) if i.op == "im2col" and i.operands[1] == "%r1")
    with pytest.raises(RunError, match=rf"line {text_line(broken, im2col)} \(im2col\): %r1 "
                                       "is read before anything was written"):
        run(broken, digits_test[0][:2], timing=False)


def _small_conv():
    rng = np.random.default_rng(3)
    model = _conv_model((2, 3, 6, 6), rng.standard_normal((8, 3, 3, 3)).astype(np.float32), 1,
                        pads=[1, 1, 1, 1])
    return compile_model(model), rng.standard_normal((2, 3, 6, 6)).astype(np.float32)


def test_a_program_sharing_an_im2col_with_another_permutes_its_own_channels():
    """A copy of a program with unpatch's channels reversed shares the im2col instruction
    (and so its id) with the original: the session built for one must not serve the other."""
    program, x = _small_conv()
    plain = next(iter(run(program, x, timing=False).outputs.values()))
    text = [dataclasses.replace(i, attrs=i.attrs + (("perm", list(range(8))[::-1]),))
            if i.op == "unpatch" else i for i in program.text]
    reversed_ = dataclasses.replace(program, text=text)
    got = next(iter(run(reversed_, x, timing=False).outputs.values()))
    assert np.array_equal(got, plain[:, ::-1])


def test_an_unpatch_into_another_shape_or_a_bias_per_position_stays_unfused(monkeypatch):
    program, x = _small_conv()
    buffers = {b.name: b for b in program.buffers}
    step = next(s for s in _steps(program) if isinstance(s, ConvStep))
    assert [isinstance(s, ConvStep) for s in _steps(program)].count(True) == 1
    y = step.unpatch.operands[0][1:]
    flat = dataclasses.replace(buffers[y], type=dataclasses.replace(
        buffers[y].type, shape=buffers[y].type.shape[:2] + (36,)))
    flattened = dataclasses.replace(program, buffers=[flat if b.name == y else b
                                                      for b in program.buffers])
    assert not any(isinstance(s, ConvStep) for s in _steps(flattened))
    bias = step.layer.copy.operands[1][1:]
    per_position = dataclasses.replace(program, blobs=[
        dataclasses.replace(b, data=np.tile(b.data.reshape(1, -1), (36, 1)))
        if b.name == bias else b for b in program.blobs])
    assert not any(isinstance(s, ConvStep) for s in _steps(per_position))
    row = dataclasses.replace(program, blobs=[
        dataclasses.replace(b, data=b.data.reshape(1, -1)) if b.name == bias else b
        for b in program.blobs])  # [1, M]: one value a column, fused
    assert any(isinstance(s, ConvStep) for s in _steps(row))
    want = _unfused(monkeypatch, program, x)
    for variant in (row, per_position):
        got = run(variant, x, timing=False).outputs
        assert all(np.abs(got[k] - want[k]).max() <= 1e-5 * np.abs(want[k]).max()
                   for k in want)


def test_sessions_of_programs_no_one_holds_are_given_up():
    import gc
    program, x = _small_conv()
    run(program, x, timing=False)
    key = id(next(s for s in _steps(program) if isinstance(s, ConvStep)).im2col)
    assert key in implicit_conv._SESSIONS
    del program
    gc.collect()
    other, _ = _small_conv()
    run(other, x, timing=False)  # a build, which drops what no program holds
    assert all(h.im2col() is not None for h in implicit_conv._SESSIONS.values())
    assert key not in implicit_conv._SESSIONS or \
        implicit_conv._SESSIONS[key].im2col() is not None
