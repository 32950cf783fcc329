"""Every bad input gets one clear message and exit status 2, no traceback (issue 3, point 5)."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import onnx
import pytest
from conftest import MODELS, ROOT, cli, fails, model_path
from onnx import TensorProto, helper, numpy_helper


def _save(model, path):
    onnx.save(model, str(path))
    return str(path)


def _graph_model(nodes, inputs, outputs, inits=(), opset=13):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.fixture(scope="module")
def cnn_program(tmp_path_factory):
    path = tmp_path_factory.mktemp("prog") / "cnn.cim"
    assert cli("cimc", model_path("digits_cnn"), "-o", str(path), "-q").returncode == 0
    return path


# --- cimc -------------------------------------------------------------------------------
def test_missing_model_file(tmp_path):
    fails(cli("cimc", str(tmp_path / "nope.onnx")), "nope.onnx: no such file")


def test_truncated_model(tmp_path):
    data = open(model_path("digits_cnn"), "rb").read()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 3])
    fails(cli("cimc", str(tmp_path / "t.onnx")), "not a valid ONNX model")


def test_not_onnx(tmp_path):
    (tmp_path / "x.onnx").write_text("this is a text file, not a model\n" * 10)
    fails(cli("cimc", str(tmp_path / "x.onnx")), "not a valid ONNX model")


def test_missing_external_data(tmp_path):
    model = onnx.load(model_path("digits_mlp"))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    os.remove(tmp_path / "weights.bin")
    fails(cli("cimc", str(tmp_path / "ext.onnx")), "external data file is missing",
           "weights.bin")


def test_external_data_present_compiles(tmp_path):
    model = onnx.load(model_path("digits_mlp"))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    r = cli("cimc", str(tmp_path / "ext.onnx"), "-q")
    assert r.returncode == 0, r.stderr


def test_unsupported_ops_listed_all_at_once(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Tan", ["x"], ["a"], name="first_tan"),
             helper.make_node("Relu", ["a"], ["b"], name="ok_relu"),
             helper.make_node("Atan", ["b"], ["y"], name="second_atan")]
    path = _save(_graph_model(nodes, [x], [y]), tmp_path / "u.onnx")
    fails(cli("cimc", path), "2 problem(s)", "first_tan: operator Tan is not supported",
           "second_atan: operator Atan is not supported")


def test_dynamic_non_batch_dimension(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "width"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "width"])
    path = _save(_graph_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y]),
                 tmp_path / "d.onnx")
    fails(cli("cimc", path), "dynamic dimension 1 (width)")


def test_dynamic_weight_rejected(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    path = _save(_graph_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc",
                                                transB=1)], [x, w], [y]), tmp_path / "w.onnx")
    fails(cli("cimc", path), "fc: input 1 (w) of Gemm must be a constant")


def test_integer_inputs_that_are_computed_with_are_rejected(tmp_path):
    """Integers that are only gathered, moved, compared or cast are held as float32; one
    that a Mul reads is refused, with what an integer input may do."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Mul", ["ids", "ids"], ["sq"], name="m"),
             helper.make_node("Cast", ["sq"], ["y"], name="c", to=1)]
    path = _save(_graph_model(nodes, [ids], [y]), tmp_path / "ids.onnx")
    fails(cli("cimc", path), "tensor 'ids' is int64", "token ids that Gather reads from a "
                                                      "constant table, or, not both, values "
                                                      "that are moved, compared or cast to "
                                                      "float")


def test_integer_tensors_rejected(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.INT32, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 4])
    path = _save(_graph_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [x], [y]),
                 tmp_path / "i.onnx")
    fails(cli("cimc", path), "tensor 'x' is int32")


def test_bad_option_value(tmp_path):
    fails(cli("cimc", model_path("digits_mlp"), "--batch", "0"), "--batch must be at least 1")
    fails(cli("cimc", model_path("digits_mlp"), "--passes", "canonicalize,nonsense"),
           "unknown pass(es) nonsense")


def test_bad_chip_options(tmp_path):
    fails(cli("cimc", model_path("digits_cnn"), "--xbars", "0", "-o", str(tmp_path / "p.cim")),
           "--xbars must be at least 1")
    assert not (tmp_path / "p.cim").exists()
    (tmp_path / "chip.toml").write_text("[timing]\nt_pulse_ns = -5\n")
    fails(cli("cimc", model_path("digits_cnn"), "--chip", str(tmp_path / "chip.toml")),
           "timing.t_pulse_ns = -5.0 is out of range")
    (tmp_path / "chip.toml").write_text("[timing\n")
    fails(cli("cimc", model_path("digits_cnn"), "--chip", str(tmp_path / "chip.toml")),
           "not valid TOML")


# --- cimrun -----------------------------------------------------------------------------
def test_missing_program(tmp_path):
    fails(cli("cimrun", str(tmp_path / "p.cim"), "--input", "x.npy"), "p.cim: no such file")


def test_missing_input_file(cnn_program, tmp_path):
    fails(cli("cimrun", str(cnn_program), "--input", str(tmp_path / "none.npy")),
           "none.npy: no such file")


def test_wrong_input_shape(cnn_program, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 9, 9), np.float32))
    fails(cli("cimrun", str(cnn_program), "--input", str(tmp_path / "x.npy")),
           "input 'image' has shape [1, 1, 9, 9]", "compiled for [1, 1, 8, 8]")


def test_wrong_input_dtype(cnn_program, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.int64))
    fails(cli("cimrun", str(cnn_program), "--input", str(tmp_path / "x.npy")),
           "dtype int64; expected float32")


def test_pickled_input_refused(cnn_program, tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    fails(cli("cimrun", str(cnn_program), "--input", str(tmp_path / "x.npy")),
           "pickled Python objects")


def test_not_an_array_file(cnn_program, tmp_path):
    (tmp_path / "x.npy").write_text("hello")
    fails(cli("cimrun", str(cnn_program), "--input", str(tmp_path / "x.npy")),
           "x.npy: not a")


def test_corrupted_program(cnn_program, tmp_path):
    text = cnn_program.read_text().replace("mvm %conv1", "mvm %conv2", 1)
    (tmp_path / "bad.cim").write_text(text)
    fails(cli("cimrun", str(tmp_path / "bad.cim"), "--input",
               os.path.join(MODELS, "digits_sample.npy")), "checksum mismatch")


def test_truncated_program(cnn_program, tmp_path):
    text = cnn_program.read_text()
    (tmp_path / "bad.cim").write_text(text[: len(text) // 2])
    fails(cli("cimrun", str(tmp_path / "bad.cim"), "--input",
               os.path.join(MODELS, "digits_sample.npy")), "truncated program")


def test_binary_garbage_program(tmp_path):
    (tmp_path / "bad.cim").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff" * 50)
    fails(cli("cimrun", str(tmp_path / "bad.cim"), "--input",
               os.path.join(MODELS, "digits_sample.npy")), "bad.cim")


def test_failed_run_keeps_existing_output(cnn_program, tmp_path):
    out = tmp_path / "out.npy"
    np.save(out, np.arange(3))
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 9, 9), np.float32))
    fails(cli("cimrun", str(cnn_program), "--input", str(tmp_path / "x.npy"), "-o", str(out)))
    assert np.array_equal(np.load(out), np.arange(3))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_npz_input_by_name(cnn_program, tmp_path):
    x = np.load(os.path.join(MODELS, "digits_sample.npy"))
    np.savez(tmp_path / "x.npz", image=x)
    r = cli("cimrun", str(cnn_program), "--input", str(tmp_path / "x.npz"), "-o",
            str(tmp_path / "o.npy"))
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr
    np.savez(tmp_path / "z.npz", image=x, labels=np.zeros(len(x)))  # an extra array: said
    r = cli("cimrun", str(cnn_program), "--input", str(tmp_path / "z.npz"), "-o",
            str(tmp_path / "o2.npy"))
    assert r.returncode == 0, r.stderr
    assert f"cimrun: warning: --input {tmp_path / 'z.npz'}: array(s) labels are not inputs of " \
           "the program (image); ignored" in r.stderr
    assert np.array_equal(np.load(tmp_path / "o2.npy"), np.load(tmp_path / "o.npy"))
    np.savez(tmp_path / "y.npz", picture=x)
    fails(cli("cimrun", str(cnn_program), "--input", str(tmp_path / "y.npz")),
           "missing input(s): image")


# --- cimrun: every flag validated before the run, outputs only after it (issue 10) ---------
SAMPLE = os.path.join(MODELS, "digits_sample.npy")


def _existing_output(tmp_path):
    out = tmp_path / "out.npy"
    np.save(out, np.arange(3))
    return out


def _untouched(out):
    assert np.array_equal(np.load(out), np.arange(3))
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".tmp")] == []


def test_usage_errors_are_one_line(cnn_program):
    fails(cli("cimrun", str(cnn_program), "--input", SAMPLE, "--seed", "-1"),
           "argument --seed: '-1' is not a non-negative integer")
    for flag, value, message in (("--seed", "abc", "is not a non-negative integer"),
                                 ("--first-sample", "1.5", "is not a non-negative integer"),
                                 ("--memory-limit", "inf", "is not a positive number of MB"),
                                 ("--memory-limit", "abc", "is not a positive number of MB")):
        fails(cli("cimrun", str(cnn_program), "--input", SAMPLE, flag, value),
              f"argument {flag}: '{value}' {message}")
    fails(cli("cimrun", str(cnn_program), "--mode", "fast"), "argument --mode")
    fails(cli("cimrun", str(cnn_program), "--input", SAMPLE, "--first-sample",
              str(2 ** 64 - 1)), f"argument --first-sample: {2 ** 64 - 1} is above 2**62")


def test_timing_mode_refuses_labels_and_reference(cnn_program, tmp_path):
    np.save(tmp_path / "y.npy", np.arange(3))
    fails(cli("cimrun", str(cnn_program), "--mode", "timing", "--labels",
               str(tmp_path / "y.npy")), "--labels needs outputs; --mode timing computes none")
    fails(cli("cimrun", str(cnn_program), "--mode", "timing", "--reference",
               model_path("digits_cnn")), "--reference needs outputs")


def test_timing_mode_says_it_ignores_output(cnn_program, tmp_path):
    r = cli("cimrun", str(cnn_program), "--mode", "timing", "-o", str(tmp_path / "o.npy"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "cimrun: warning: -o is ignored: --mode timing computes no outputs"
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize("setting, message", [
    ("timing.clock_ghz=0", "timing.clock_ghz = 0.0 is out of range (must be above 0)"),
    ("mapping.adc_headroom=0", "mapping.adc_headroom = 0.0 is out of range"),
    ("device.read_sigma=1.5", "device.read_sigma = 1.5 is out of range"),
    ("timing.mvm_step_ns=-1", "timing.mvm_step_ns = -1.0 is out of range"),
    ("mapping.stuck_aware=2", "mapping.stuck_aware must be 0 or 1, got 2"),
])
def test_chip_parameters_have_physical_ranges(cnn_program, tmp_path, setting, message):
    out = _existing_output(tmp_path)
    fails(cli("cimrun", str(cnn_program), "--input", SAMPLE, "--set", setting, "-o", str(out)),
           message)
    _untouched(out)


def test_chip_toml_with_out_of_range_geometry(tmp_path):
    (tmp_path / "chip.toml").write_text("[arch]\nweight_bits = 64\n")
    from isa import IsaError
    from isa.chip import load_chip
    with pytest.raises(IsaError, match="weight_bits = 64 is out of range"):
        load_chip(str(tmp_path / "chip.toml"))


def test_nonfinite_inputs_are_an_error_unless_allowed(cnn_program, tmp_path):
    x = np.load(SAMPLE).copy()
    x[0, 0, 0, :2] = [np.nan, np.inf]
    np.save(tmp_path / "x.npy", x)
    out = _existing_output(tmp_path)
    for mode in ("ideal", "quantized"):
        fails(cli("cimrun", str(cnn_program), "--input", str(tmp_path / "x.npy"), "--mode",
                   mode, "-o", str(out)), "input 'image'", "holds 2 NaN or infinite value(s)",
               "--allow-nonfinite")
        _untouched(out)
    r = cli("cimrun", str(cnn_program), "--input", str(tmp_path / "x.npy"), "--allow-nonfinite",
            "-o", str(tmp_path / "nan.npy"))
    assert r.returncode == 0, r.stderr
    assert np.isnan(np.load(tmp_path / "nan.npy")).any()  # ideal mode propagates NaN


@pytest.mark.parametrize("labels, message", [
    ([-1], "1 label(s) outside the output's 10 classes 0..9 (first: -1)"),
    ([100], "outside the output's 10 classes 0..9 (first: 100)"),
    ([1, 2], "2 labels for 1 input samples"),
    ([0.5], "dtype float64; expected a .npy of integer class labels"),
])
def test_labels_checked_against_samples_and_classes(cnn_program, tmp_path, labels, message):
    np.save(tmp_path / "y.npy", np.array(labels))
    out = _existing_output(tmp_path)
    fails(cli("cimrun", str(cnn_program), "--input", SAMPLE, "--labels",
               str(tmp_path / "y.npy"), "-o", str(out)), f"--labels {tmp_path / 'y.npy'}",
           message)
    _untouched(out)


@pytest.mark.parametrize("flag, target, message", [
    ("--report", "missing/r.json", "does not exist"),
    ("--trace", "missing/t.json", "does not exist"),
    ("--report", ".", "is a directory"),
    ("--reference", "nope.onnx", "--reference nope.onnx: no such file"),
    ("--labels", "nope.npy", "--labels nope.npy: no such file"),
])
def test_late_flags_fail_before_the_run_and_keep_outputs(cnn_program, tmp_path, flag, target,
                                                         message):
    out = _existing_output(tmp_path)
    fails(cli("cimrun", str(cnn_program), "--input", SAMPLE, "-o", str(out), flag, target,
               cwd=tmp_path), message)
    _untouched(out)


def test_same_file_for_two_outputs(cnn_program, tmp_path):
    fails(cli("cimrun", str(cnn_program), "--input", SAMPLE, "-o", str(tmp_path / "a.npy"),
               "--report", str(tmp_path / "a.npy")), "must name different files")


def test_outputs_go_to_npy_or_npz(cnn_program, tmp_path):
    fails(cli("cimrun", str(cnn_program), "--input", SAMPLE, "-o", str(tmp_path / "y.txt")),
          f"-o {tmp_path / 'y.txt'}: name a .npy file (or a .npz")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("flag", ["-o", "--report", "--trace"])
def test_an_output_never_replaces_an_input(cnn_program, tmp_path, flag):
    """An output naming the program, the input or the labels (by another path, or a hard
    link) is refused before the run, and the input is left as it was."""
    program = tmp_path / "p.cim"
    program.write_bytes(cnn_program.read_bytes())
    x = tmp_path / "x.npy"
    np.save(x, np.load(SAMPLE))
    labels = tmp_path / "y.npy"
    np.save(labels, np.zeros(len(np.load(SAMPLE)), np.int64))
    os.link(x, tmp_path / "linked.npy")
    before = {p: p.read_bytes() for p in (program, x, labels)}
    for target, source in ((program, "program"), (tmp_path / "." / "x.npy", "--input"),
                           (tmp_path / "linked.npy", "--input"), (labels, "--labels")):
        fails(cli("cimrun", str(program), "--input", str(x), "--labels", str(labels),
                  flag, str(target)), f"{flag} {target} is also the {source} file")
    assert {p: p.read_bytes() for p in before} == before


def test_cimc_output_never_replaces_an_input(tmp_path):
    samples = tmp_path / "cal.npy"
    np.save(samples, np.load(SAMPLE))
    kept = samples.read_bytes()
    fails(cli("cimc", model_path("digits_cnn"), "-o", str(samples), "--calibrate", str(samples)),
          f"-o {samples} is also the --calibrate file")
    assert samples.read_bytes() == kept
    out = tmp_path / "b.cim"
    fails(cli("cimc", model_path("digits_cnn"), "-o", str(out), "--dump-ir", str(out)),
          "-o and --dump-ir must name different files")
    assert not out.exists()


def test_ctrl_c_is_one_line_with_status_130(cnn_program, tmp_path, monkeypatch, capsys):
    """An interrupt during the run or the compile: one line, the shell's status for SIGINT,
    and an existing output left as it was."""
    import compiler.cli
    import runtime.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = _existing_output(tmp_path)
    monkeypatch.setattr(runtime.cli, "run", interrupted)
    assert runtime.cli.main([str(cnn_program), "--input", SAMPLE, "-o", str(out)]) == 130
    assert capsys.readouterr().err == "cimrun: interrupted\n"
    _untouched(out)
    monkeypatch.setattr(compiler.cli, "compile_model", interrupted)
    assert compiler.cli.main([model_path("digits_cnn"), "-o", str(out)]) == 130
    assert capsys.readouterr().err == f"cimc: interrupted; {out} was not written\n"
    _untouched(out)


def test_directory_as_program_or_input(cnn_program, tmp_path):
    fails(cli("cimrun", str(tmp_path)), "is a directory, not a .cim program")
    fails(cli("cimrun", str(cnn_program), "--input", str(tmp_path)),
           f"--input {tmp_path}: is a directory")


def test_outputs_follow_the_umask(cnn_program, tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "runtime.cli", str(cnn_program), "--input", SAMPLE,
                        "-o", "o.npy", "--report", "r.json", "--trace", "t.json", "-q"],
                       cwd=tmp_path, capture_output=True, text=True,
                       preexec_fn=lambda: os.umask(0o022))
    assert r.returncode == 0, r.stderr
    for name in ("o.npy", "r.json", "t.json"):
        assert oct(os.stat(tmp_path / name).st_mode & 0o777) == "0o644", name


def test_summary_and_report_agree_on_writes(cnn_program, tmp_path):
    r = cli("cimrun", str(cnn_program), "--input", SAMPLE, "--report", str(tmp_path / "r.json"),
            "-o", str(tmp_path / "o.npy"))
    assert r.returncode == 0, r.stderr
    import json

    import isa
    text = isa.load(str(cnn_program)).text
    loads = sum(i.op == "write" for i in text[:[i.op for i in text].index("barrier")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["writes_per_inference"] == 0 and report["load"]["tile_writes"] == loads > 0
    assert f"0 crossbar writes (load phase: {loads})" in r.stdout
    assert "tile_writes" not in report  # the old, ambiguous total is gone


# --- cimrun --reference: matched by name, checked before the run, batched as compiled ------
def _two_outputs(path, outputs):
    """x [N, 4] -> a = Relu(x), b = Neg(x), c = x[:, :3]: ``outputs`` in that order."""
    info = {"a": ["N", 4], "b": ["N", 4], "c": ["N", 3]}
    inits = [onnx.numpy_helper.from_array(np.array(v, np.int64), k)
             for k, v in (("s", [0]), ("e", [3]), ("ax", [1]))]
    model = _graph_model(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"]),
         helper.make_node("Slice", ["x", "s", "e", "ax"], ["c"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, info[o]) for o in outputs], inits)
    return _save(model, path)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    d = tmp_path_factory.mktemp("two")
    program = d / "two.cim"
    assert cli("cimc", _two_outputs(d / "two.onnx", "ab"), "-o", str(program), "-q"
               ).returncode == 0
    np.save(d / "x.npy", np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    return d, program


def test_reference_outputs_are_matched_by_name(two, tmp_path):
    d, program = two
    r = cli("cimrun", str(program), "--input", str(d / "x.npy"), "-o", str(tmp_path / "o.npz"),
            "--reference", _two_outputs(tmp_path / "rev.onnx", "ba"))
    assert r.returncode == 0, r.stderr
    assert "largest relative error a 0, b 0" in r.stdout, r.stdout


def test_a_quiet_reference_run_prints_nothing_of_onnxruntimes(tmp_path):
    """onnxruntime's log (here its warning about an initializer no node reads, in colour)
    is not the user's: cimrun -q --reference prints nothing."""
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    unused = numpy_helper.from_array(np.ones(3, np.float32), "unused")
    model = _save(_graph_model([helper.make_node("Relu", ["x"], ["y"])], [x_info],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                               [unused]), tmp_path / "m.onnx")
    program = tmp_path / "m.cim"
    assert cli("cimc", model, "-o", str(program), "-q").returncode == 0
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    r = cli("cimrun", str(program), "--input", str(tmp_path / "x.npy"), "--reference", model,
            "-q", "-o", str(tmp_path / "o.npy"))
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr


def test_a_reference_without_an_output_or_of_another_shape_fails_before_the_run(two, tmp_path):
    d, program = two
    out = tmp_path / "o.npz"
    np.savez(out, keep=np.arange(3))
    fails(cli("cimrun", str(program), "--input", str(d / "x.npy"), "-o", str(out),
              "--reference", _two_outputs(tmp_path / "c.onnx", "ca")),
          "the model has no output 'b'", "'c', 'a'")
    sliced = _graph_model([helper.make_node("Relu", ["x"], ["a"]),
                           helper.make_node("Neg", ["x"], ["n"]),
                           helper.make_node("Flatten", ["n"], ["b"], axis=0)],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                           for o in "ab"])
    fails(cli("cimrun", str(program), "--input", str(d / "x.npy"), "-o", str(out),
              "--reference", _save(sliced, tmp_path / "flat.onnx")),
          "output 'b' is [1, 12]; the program's is [3, 4]")
    assert np.array_equal(np.load(out)["keep"], np.arange(3))


def test_a_reference_of_fixed_batch_runs_in_batches_of_it(tmp_path):
    model = onnx.load(model_path("digits_mlp"))
    for v in (*model.graph.input, *model.graph.output):
        v.type.tensor_type.shape.dim[0].Clear()
        v.type.tensor_type.shape.dim[0].dim_value = 1
    del model.graph.value_info[:]
    path = _save(model, tmp_path / "mlp1.onnx")
    assert cli("cimc", path, "-o", str(tmp_path / "p.cim"), "-q").returncode == 0
    x = np.load(os.path.join(MODELS, "digits_test_x.npy"))[:6]
    np.save(tmp_path / "x.npy", x)
    r = cli("cimrun", str(tmp_path / "p.cim"), "--input", str(tmp_path / "x.npy"),
            "-o", str(tmp_path / "y.npy"), "--reference", path)
    assert r.returncode == 0, r.stderr
    error = float(r.stdout.split("largest relative error")[1].split()[1].rstrip(","))
    assert error < 1e-5, r.stdout


def test_a_run_chip_naming_other_geometry_fails_either_way(cnn_program, tmp_path):
    """A TOML's [arch] keys and --set arch.KEY must match the program's geometry, whether the
    program's is the default or not; a preset leaves the program's geometry alone."""
    (tmp_path / "c64.toml").write_text("[arch]\nrows = 64\n")
    (tmp_path / "c128.toml").write_text("[arch]\nrows = 128\ncols = 128\n")
    p64 = tmp_path / "p64.cim"
    assert cli("cimc", model_path("digits_cnn"), "--chip", str(tmp_path / "c64.toml"), "-o",
               str(p64), "-q").returncode == 0
    fails(cli("cimrun", str(p64), "--input", SAMPLE, "--chip", str(tmp_path / "c128.toml"),
              "-q"), "c128.toml sets rows 128; the program was compiled for rows 64")
    fails(cli("cimrun", str(cnn_program), "--input", SAMPLE, "--chip",
              str(tmp_path / "c64.toml"), "-q"),
          "sets rows 64; the program was compiled for rows 128")
    fails(cli("cimrun", str(p64), "--input", SAMPLE, "--set", "arch.rows=128", "-q"),
          "--set arch.rows=128 sets rows 128")
    for chip in ("default", str(tmp_path / "c64.toml")):
        r = cli("cimrun", str(p64), "--input", SAMPLE, "--chip", chip, "-q")
        assert r.returncode == 0, r.stderr
    r = cli("cimrun", str(p64), "--input", SAMPLE, "--chip", str(tmp_path / "c128.toml"),
            "--set", "arch.rows=64", "-q")  # a later --set has the last word
    assert r.returncode == 0, r.stderr
    fails(cli("cimrun", str(cnn_program), "--input", SAMPLE, "--set", "arch.xbars=3"),
          "--set arch.xbars: a program's crossbars are fixed when it is compiled")


def test_a_set_geometry_matching_the_program_is_checked_against_it(tmp_path):
    """--set arch.cols=4 on a program of 4 columns of 4-bit cells: valid with the program's
    geometry, though not with the default's 2-bit cells."""
    program = tmp_path / "c4.cim"
    assert cli("cimc", model_path("digits_cnn"), "--cols", "4", "--cell-bits", "4", "-o",
               str(program), "-q").returncode == 0
    r = cli("cimrun", str(program), "--input", SAMPLE, "--set", "arch.cols=4", "-q")
    assert r.returncode == 0, r.stderr


def test_an_input_without_samples_says_so(cnn_program, tmp_path):
    np.save(tmp_path / "x0.npy", np.zeros((0, 1, 8, 8), np.float32))
    fails(cli("cimrun", str(cnn_program), "--input", str(tmp_path / "x0.npy")),
          f"input 'image' ({tmp_path / 'x0.npy'}) holds no samples (shape [0, 1, 8, 8])")


def test_a_small_memory_limit_is_named_as_given(cnn_program):
    fails(cli("cimrun", str(cnn_program), "--input", SAMPLE, "--memory-limit", "0.4",
              "--mode", "quantized"), "over --memory-limit 0.4 MB")


def test_cimrun_into_a_closed_pipe_is_quiet(cnn_program, tmp_path):
    """``cimrun ... | true``: the outputs are written, the summary meets a closed pipe: no
    traceback, status 141."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", str(cnn_program), "--input",
                             SAMPLE, "-o", str(tmp_path / "y.npy")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == "", err
    assert np.load(tmp_path / "y.npy").shape == (1, 10)


def test_seeds_are_64_bit(cnn_program):
    fails(cli("cimrun", str(cnn_program), "--input", SAMPLE, "--seed", str(2 ** 64)),
          f"argument --seed: {2 ** 64} is not below 2**64")


# --- the Python API: a user's mistake is a RunError or CompileError, not a deep TypeError ---
def test_api_arguments_are_checked_like_the_flags():
    from compiler import CompileError, compile_model
    from runtime import RunError, run
    model = model_path("digits_cnn")
    for kw, message in ((dict(calibrate="x.npy"), "calibrate must be an array"),
                        (dict(batch=1.5), "batch 1.5: must be an integer"),
                        (dict(max_xbars=0), "max_xbars 0: must be an integer of at least 1"),
                        (dict(max_xbars=True), "max_xbars True"),
                        (dict(chip_config="nochip"), "chip 'nochip': neither a preset")):
        with pytest.raises(CompileError, match=message):
            compile_model(model, **kw)
    program = compile_model(model, chip_config="puma-optimistic")  # a preset by name
    preset = os.path.join(ROOT, "isa", "chips", "puma-optimistic.toml")
    assert compile_model(model, chip_config=pathlib.Path(preset)) == program  # or path
    assert run(program, np.load(SAMPLE), seed=np.int64(3), chip=pathlib.Path(preset),
               mode="analog").outputs["logits"].shape == (1, 10)
    x = np.load(SAMPLE)
    for kw, message in ((dict(inputs=None), "needs inputs"), (dict(threads=0), "threads 0"),
                        (dict(memory_limit=0), "memory_limit 0"), (dict(seed=-1), "seed -1"),
                        (dict(seed=True), "seed True"), (dict(first_sample=0.5), "first_sample"),
                        (dict(memory_limit="1e9"), "memory_limit '1e9'"),
                        (dict(chip=3), "a chip must be an isa.chip.Chip")):
        with pytest.raises(RunError, match=message):
            run(program, **({"inputs": x} | kw))


def test_a_runs_chip_keeps_the_programs_geometry():
    """A preset passed to run() gives its device, timing and energy, never its geometry: a
    program of 4-bit ADCs and 4-bit cells runs as compiled."""
    import dataclasses

    from compiler import compile_model
    from isa import ChipGeometry
    from isa.chip import load_chip
    from runtime import run
    geometry = ChipGeometry(adc_bits=4, cell_bits=4)
    program = compile_model(model_path("digits_cnn"), chip=geometry)
    x = np.load(os.path.join(MODELS, "digits_test_x.npy"))[:20]
    own = run(program, x, mode="quantized").outputs["logits"]
    for chip in (load_chip("puma-optimistic"), "default", load_chip("default")):
        result = run(program, x, mode="quantized", chip=chip)
        assert result.stats["chip"]["arch"] == dataclasses.asdict(program.chip)
    assert np.array_equal(run(program, x, mode="quantized", chip="default").outputs["logits"],
                          own)


def test_a_numpy_warning_names_the_instruction_it_came_from(tmp_path):
    """A softmax over a row masked entirely to -inf: numpy's invalid-value warning is
    cimrun's, with the line and opcode of the instruction that raised it."""
    mask = np.zeros((3, 4), np.float32)
    mask[1] = -np.inf
    model = _graph_model([helper.make_node("Add", ["x", "mask"], ["a"]),
                          helper.make_node("Softmax", ["a"], ["y"], axis=-1)],
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])],
                         [numpy_helper.from_array(mask, "mask")])
    program = tmp_path / "m.cim"
    assert cli("cimc", _save(model, tmp_path / "m.onnx"), "-o", str(program), "-q"
               ).returncode == 0
    line = next(i + 1 for i, t in enumerate(program.read_text().splitlines())
                if t.strip().startswith("softmax"))
    np.save(tmp_path / "x.npy", np.ones((2, 3, 4), np.float32))
    r = cli("cimrun", str(program), "--input", str(tmp_path / "x.npy"), "-q",
            "-o", str(tmp_path / "y.npy"))
    assert r.returncode == 0
    assert f"cimrun: warning: line {line} (softmax): invalid value encountered" in r.stderr
