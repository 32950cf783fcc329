"""cimc checks everything before long work, says what is wrong on one line, exits with status 2,
and never replaces an existing output on failure (issue 10); plus issue 11's Dropout mask and
conformance classification."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import MODELS, ROOT, cli, fails, model_path, ort_run, rel_err
from onnx import TensorProto, helper, numpy_helper

import isa
from compiler import CompileError, compile_model
from compiler import cli as cimc
from compiler.backend import REQUIRES
from compiler.basis.fit import fit
from compiler.basis.layers import layer_matrices
from compiler.passes import PIPELINE
from runtime import run
from tools.conformance import declared_unsupported

RNG = np.random.default_rng(11)
CNN = model_path("digits_cnn")
CALIB_X = os.path.join(MODELS, "digits_calib_x.npy")
CALIB_Y = os.path.join(MODELS, "digits_calib_y.npy")
SAMPLE = os.path.join(MODELS, "digits_sample.npy")
OLD = b"an existing program\n"


def _existing(tmp_path):
    out = tmp_path / "old.cim"
    out.write_bytes(OLD)
    return out


def _untouched(out):
    assert out.read_bytes() == OLD
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".tmp")] == []


def _fails_keeping_output(tmp_path, model, *args_and_needles):
    """cimc MODEL -o <existing file> ARGS fails with every needle; the file is untouched."""
    args = [a for a in args_and_needles if not isinstance(a, tuple)]
    needles = [n for a in args_and_needles if isinstance(a, tuple) for n in a]
    out = _existing(tmp_path)
    fails(cli("cimc", str(model), "-o", str(out), *args), *needles)
    _untouched(out)


def _f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _model(nodes, x_shape, y_shape, inits=None, opset=13, outputs=None):
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _save(model, path):
    onnx.save(model, str(path))
    return path


def _ideal_matches_onnxruntime(program, model, x):
    got = run(program, x, timing=False).outputs
    want = ort_run(model, {"x": x})
    for port, expected in zip(program.outputs, want):
        assert rel_err(got[port.name], np.asarray(expected, np.float32)) < 1e-4, port.name


# --- 1. pass contracts ------------------------------------------------------------------------
def _bn(prefix, c):
    return {f"{prefix}.s": RNG.uniform(0.5, 1.5, c).astype(np.float32), f"{prefix}.b": _f32(c),
            f"{prefix}.m": _f32(c), f"{prefix}.v": RNG.uniform(0.5, 1.5, c).astype(np.float32)}


def _pipeline_model():
    """conv -> relu -> batchnorm (after the activation) -> conv -> batchnorm -> relu -> gemm."""
    n = helper.make_node
    bn = ["s", "b", "m", "v"]
    nodes = [n("Conv", ["x", "w1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
             n("Relu", ["c1"], ["r1"], name="r1"),
             n("BatchNormalization", ["r1"] + [f"bn1.{k}" for k in bn], ["b1"], name="bn1"),
             n("Conv", ["b1", "w2", "cb2"], ["c2"], name="c2"),
             n("BatchNormalization", ["c2"] + [f"bn2.{k}" for k in bn], ["b2"], name="bn2"),
             n("Relu", ["b2"], ["r2"], name="r2"),
             n("Flatten", ["r2"], ["f"], name="flat"),
             n("Gemm", ["f", "g", "gb"], ["y"], name="fc", transB=1)]
    inits = {"w1": _f32(4, 3, 3, 3), "w2": _f32(5, 4, 3, 3), "cb2": _f32(5),
             "g": _f32(7, 5 * 4 * 4), "gb": _f32(7), **_bn("bn1", 4), **_bn("bn2", 5)}
    return _model(nodes, [2, 3, 6, 6], [2, 7], inits)


@pytest.mark.parametrize("k", range(len(PIPELINE) + 1))
def test_every_prefix_of_the_default_pipeline(k):
    """Each prefix compiles a correct program or names every pass codegen misses."""
    model, passes = _pipeline_model(), PIPELINE[:k]
    missing = [p for p in REQUIRES if p not in passes]
    if missing:
        with pytest.raises(CompileError) as err:
            compile_model(model, passes=passes)
        them = "it" if len(missing) == 1 else "them"
        assert str(err.value) == f"--passes: codegen needs {', '.join(missing)}; add {them} " \
                                 "to --passes"
    else:
        _ideal_matches_onnxruntime(compile_model(model, passes=passes), model, _f32(2, 3, 6, 6))


@pytest.mark.parametrize("passes", [
    ["canonicalize", "lower-to-crossbar", "fold-batchnorm", "schedule", "allocate-buffers"],
    ["canonicalize", "fuse-activation", "fold-batchnorm", "lower-to-crossbar", "schedule",
     "allocate-buffers"],
    ["canonicalize", "canonicalize", "fold-batchnorm", "lower-to-crossbar", "schedule",
     "allocate-buffers", "schedule", "allocate-buffers"],
    ["canonicalize", "fold-batchnorm", "lower-to-crossbar", "allocate-buffers", "schedule"],
])
def test_other_valid_orders_compile_correct_programs(passes):
    model = _pipeline_model()
    _ideal_matches_onnxruntime(compile_model(model, passes=passes), model, _f32(2, 3, 6, 6))


@pytest.mark.parametrize("passes, message", [
    ("canonicalize", "--passes: codegen needs fold-batchnorm, lower-to-crossbar, schedule, "
                     "allocate-buffers; add them to --passes"),
    ("fold-batchnorm,canonicalize,lower-to-crossbar,schedule,allocate-buffers",
     "fold-batchnorm needs canonicalize to run before it; move canonicalize ahead of "
     "fold-batchnorm"),
    ("canonicalize,fold-batchnorm,schedule,lower-to-crossbar,allocate-buffers",
     "schedule needs lower-to-crossbar to run before it"),
    ("canonicalize,fold-batchnorm,lower-to-crossbar,schedule,allocate-buffers,basis-decompose",
     "codegen needs schedule after basis-decompose, which rewrites the graph"),
    ("canonicalize,fold-batchnorm,lower-to-crossbar,allocate-buffers",
     "codegen needs schedule; add it to --passes"),
    ("canonicalize,basis-decompose", "basis-decompose needs lower-to-crossbar"),
    ("canonicalize,fuse-activation,lower-to-crossbar,schedule,allocate-buffers",
     "codegen needs fold-batchnorm"),
    ("canonicalize,lower-to-crosbar", "unknown pass(es) lower-to-crosbar"),
])
def test_pipelines_missing_a_prerequisite(tmp_path, passes, message):
    _fails_keeping_output(tmp_path, CNN, "--passes", passes, (message,))


def test_basis_without_its_pass_is_refused(tmp_path):
    _fails_keeping_output(tmp_path, CNN, "--basis", "4", "--passes",
                          "canonicalize,fold-batchnorm,lower-to-crossbar,schedule,"
                          "allocate-buffers", ("--basis needs the basis-decompose pass",))


# --- 2. size limits ---------------------------------------------------------------------------
def test_huge_conv_is_refused_from_its_shapes(tmp_path):
    """A 3x3 conv over a 30000 x 30000 image: 32 GB of im2col patches, refused at once."""
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="big", pads=[1, 1, 1, 1])
    path = _save(_model([conv], [1, 1, 30000, 30000], [1, 1, 30000, 30000],
                        {"w": _f32(1, 1, 3, 3)}), tmp_path / "big.onnx")
    _fails_keeping_output(tmp_path, path, ("Conv 'big' (its im2col patches) needs 30899 MB of "
                                           "scratchpad (limit 1024 MB; raise it with "
                                           "--max-scratchpad-mb)",))


def test_program_peak_is_checked_after_allocation(tmp_path):
    """Two live 1 MB tensors: each fits a 1.5 MB limit, the program's peak of 2 MB does not."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["a"], ["y"])]
    path = _save(_model(nodes, [1, 256, 1024], [1, 256, 1024]), tmp_path / "m.onnx")
    _fails_keeping_output(tmp_path, path, "--max-scratchpad-mb", "1.5",
                          ("the program needs 2 MB of scratchpad (limit 1.5 MB; raise it with "
                           "--max-scratchpad-mb)",))
    assert cli("cimc", str(path), "-o", str(tmp_path / "ok.cim"), "--max-scratchpad-mb",
               "2").returncode == 0


@pytest.mark.parametrize("external", [False, True])
def test_large_gemm_weights_are_refused(tmp_path, external):
    """Checked from the initializers' dims, before external data is read."""
    gemm = helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")
    model = _model([gemm], [1, 2048], [1, 1024], {"w": _f32(2048, 1024)})
    path = tmp_path / "gemm.onnx"
    onnx.save(model, str(path), save_as_external_data=external, location="gemm.bin")
    _fails_keeping_output(tmp_path, path, "--max-weights-mb", "4",
                          ("the model (its initializers) needs 8 MB of weights (limit 4 MB; "
                           "raise it with --max-weights-mb)",))


def test_grouped_conv_matrices_are_checked_before_they_are_built(tmp_path):
    """A depthwise conv of 512 channels: 18 KB of kernels, a 9 MB block-diagonal matrix."""
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=512)
    path = _save(_model([conv], [1, 512, 3, 3], [1, 512, 1, 1], {"w": _f32(512, 1, 3, 3)}),
                 tmp_path / "dw.onnx")
    _fails_keeping_output(tmp_path, path, "--max-weights-mb", "1",
                          ("the model (its crossbar weight matrices) needs 9 MB of weights",))


def test_out_of_memory_is_one_line(monkeypatch, capsys, tmp_path):
    def exhausted(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(cimc, "compile_model", exhausted)
    assert cimc.main([CNN, "-o", str(tmp_path / "p.cim")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cimc: error: out of memory compiling") and err.count("\n") == 1
    assert not (tmp_path / "p.cim").exists()


# --- 3. non-finite and unreadable inputs ------------------------------------------------------
@pytest.fixture
def nan_samples(tmp_path):
    x = np.load(CALIB_X)[:40].copy()
    x[0, 0, 0, 0], x[1, 0, 3, 3], x[1, 0, 4, 4] = np.nan, np.inf, -np.inf
    np.save(tmp_path / "nan.npy", x)
    return tmp_path / "nan.npy"


def test_nonfinite_calibration_samples_are_an_error(tmp_path, nan_samples):
    _fails_keeping_output(tmp_path, CNN, "--calibrate", str(nan_samples),
                          (f"--calibrate {nan_samples}: 3 of 2560 values are NaN or infinite",
                           "--allow-nonfinite"))


def test_a_model_of_two_inputs_calibrates_from_a_npz_of_both(tmp_path):
    """y = (x * m) @ W: a .npz of x and m calibrates it, the product's DAC range the largest
    |x * m| over the samples; a .npy (it had crashed in the reference evaluator) or a .npz
    without m is one message, before any work, the output kept."""
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "m"], ["p"]), helper.make_node("MatMul", ["p", "w"], ["y"])],
        "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in "xm"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(_f32(4, 3), "w")])
    model = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]),
                  tmp_path / "two.onnx")
    x, m = _f32(5, 4), _f32(5, 4)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "both.npz", x=x, m=m)
    np.savez(tmp_path / "one.npz", x=x)
    _fails_keeping_output(tmp_path, model, "--calibrate", str(tmp_path / "x.npy"),
                          (f"--calibrate {tmp_path / 'x.npy'}: the model has 2 inputs (x, m); "
                           "give one array per input in a .npz keyed by input name",))
    _fails_keeping_output(tmp_path, model, "--calibrate", str(tmp_path / "one.npz"),
                          (f"--calibrate {tmp_path / 'one.npz'}: the model's inputs are "
                           "['x', 'm']; missing ['m']",))
    _fails_keeping_output(tmp_path, model, "--calibrate", str(tmp_path / "both.npz"),
                          "--basis", "2", ("--basis 2: a basis is fitted on the samples of a "
                                           "model of one input",))
    out = tmp_path / "two.cim"
    assert cli("cimc", str(model), "-o", str(out), "--calibrate", str(tmp_path / "both.npz"),
               "-q").returncode == 0
    ranges = [b.range for b in isa.load(str(out)).buffers if b.range]
    assert ranges == [pytest.approx(float(np.abs(x * m).max()))]
    with pytest.raises(CompileError, match="the model has 2 inputs"):
        compile_model(str(model), calibrate=x)
    program = compile_model(str(model), calibrate={"x": x, "m": m})
    assert [b.range for b in program.buffers if b.range] == ranges


def test_allowed_nonfinite_values_are_left_out_of_the_ranges(tmp_path, nan_samples):
    r = cli("cimc", CNN, "-o", str(tmp_path / "p.cim"), "--calibrate", str(nan_samples),
            "--allow-nonfinite")
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("cimc: warning: ") and "2 sample(s) hold NaN or Inf" in r.stderr
    ranges = {b.name: b.range for b in isa.load(str(tmp_path / "p.cim")).buffers if b.range}
    assert len(ranges) == 5 and all(np.isfinite(v) and v > 0 for v in ranges.values())
    x = np.load(nan_samples)
    assert ranges["conv1.patches"] == pytest.approx(float(np.abs(x[np.isfinite(x)]).max()))


@pytest.mark.parametrize("flag", ["--calibrate", "--calibrate-labels"])
def test_calibration_files_are_read_safely(tmp_path, flag):
    files = {"--calibrate": CALIB_X, "--calibrate-labels": CALIB_Y}
    (tmp_path / "text.npy").write_text("0.1 0.2 0.3\n")
    for bad, needle in [(tmp_path / "text.npy", "not a .npy"), (tmp_path, "is a directory")]:
        args = [a for name, path in files.items() for a in (name, str(bad) if name == flag
                                                            else path)]
        _fails_keeping_output(tmp_path, CNN, "--basis", "auto", *args, (f"{flag} {bad}: {needle}",))


def test_model_directory_is_named_as_such(tmp_path):
    fails(cli("cimc", str(tmp_path), "-o", str(tmp_path / "p.cim")),
           f"{tmp_path}: is a directory, not an ONNX model file")


# --- 4. every flag has a range, checked before the model is read ------------------------------
@pytest.mark.parametrize("args, message", [
    (["--weight-bits", "64"], "--weight-bits must be at least 2 and at most 16 (got 64)"),
    (["--adc-bits", "0"], "--adc-bits must be at least 1 and at most 16 (got 0)"),
    (["--input-bits", "17"], "--input-bits must be at least 1 and at most 16 (got 17)"),
    (["--cell-bits", "9"], "--cell-bits must be at least 1 and at most 8 (got 9)"),
    (["--rows", "0"], "--rows must be at least 1 and at most 8192 (got 0)"),
    (["--cols", "100000"], "--cols must be at least 2 and at most 8192 (got 100000)"),
    (["--xbars", "0"], "--xbars must be at least 1 and at most 1048576 (got 0)"),
    (["--dynamic", "write", "--dynamic-xbars", "0"],
     "--dynamic-xbars must be at least 1 and at most 1048576 (got 0)"),
    (["--batch", "0"], "--batch must be at least 1 and at most 65536 (got 0)"),
    (["--batch", "100000"], "--batch must be at least 1 and at most 65536 (got 100000)"),
    (["--coef-bits", "9"], "--coef-bits must be at least 2 and at most 8 (got 9)"),
    (["--coef-sparsity", "1"], "--coef-sparsity must be at least 0 and below 1 (got 1.0)"),
    (["--coef-sparsity", "-0.1"], "--coef-sparsity must be at least 0 and below 1"),
    (["--accuracy-budget", "-1"], "--accuracy-budget must be at least 0 and at most 100"),
    (["--basis-unit", "0"], "--basis-unit must be at least 1 and at most 8192 (got 0)"),
    (["--basis", "4", "--basis-unit", "200"],
     "--basis-unit must be at most the crossbar's 128 rows (got 200)"),
    (["--max-scratchpad-mb", "0"], "--max-scratchpad-mb must be above 0 (got 0.0)"),
    (["--max-weights-mb", "nan"], "--max-weights-mb must be above 0 (got nan)"),
    (["--cols", "4"], "chip default --cols 4: cols = 4 cannot hold one 8-bit weight"),
    (["--weight-bits", "16", "--cols", "8"], "cols = 8 cannot hold one 16-bit weight"),
])
def test_flag_ranges_are_checked_before_the_model_is_read(tmp_path, args, message):
    _fails_keeping_output(tmp_path, tmp_path / "no-such-model.onnx", *args, (message,))


def test_wide_weights_are_no_longer_accepted_silently(tmp_path):
    _fails_keeping_output(tmp_path, CNN, "--weight-bits", "64", ("--weight-bits must be",))


# --- 5. BasisN sizes and --basis auto's data, checked before fitting --------------------------
@pytest.mark.parametrize("args, message", [
    (["--basis", "10000"], "--basis 10000: a basis of 10000 vectors does not fit a crossbar of "
                           "16 weight columns (128 cells / (2 x 4 slices)); the largest N that "
                           "fits is 16"),
    (["--basis", "5", "--cols", "32"], "the largest N that fits is 4"),
    (["--basis", "0"], "--basis must be at least 1 (got 0)"),
    (["--basis", "auto", "--calibrate", CALIB_X], "--basis auto needs --calibrate SAMPLES.npy "
                                                  "and --calibrate-labels LABELS.npy"),
    (["--basis-out", "b.npz"], "--basis-out needs --basis"),
])
def test_basis_geometry_is_checked_before_the_model_is_read(tmp_path, args, message):
    _fails_keeping_output(tmp_path, tmp_path / "no-such-model.onnx", *args, (message,))


@pytest.mark.parametrize("labels, message", [
    (lambda y: y[:-1], "{m} labels for {n} --calibrate samples"),
    (lambda y: y.astype(np.float32), "expected a 1-D integer .npy array, got float32 [{n}]"),
    (lambda y: y.reshape(-1, 1), "expected a 1-D integer .npy array, got int64 [{n}, 1]"),
    (lambda y: np.where(np.arange(len(y)) == 5, 10, y), "1 label(s) outside the model's 10 "
                                                       "classes 0..9 (first: 10)"),
])
def test_basis_auto_checks_its_labels_before_fitting(tmp_path, labels, message):
    y = np.load(CALIB_Y).astype(np.int64)
    np.save(tmp_path / "y.npy", labels(y))
    message = message.format(n=len(y), m=len(y) - 1)
    _fails_keeping_output(tmp_path, CNN, "--basis", "auto", "--calibrate", CALIB_X,
                          "--calibrate-labels", str(tmp_path / "y.npy"),
                          (f"--calibrate-labels {tmp_path / 'y.npy'}: {message}",))


def test_calibration_samples_must_match_the_input(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 1, 9, 9), np.float32))
    _fails_keeping_output(tmp_path, CNN, "--basis", "auto", "--calibrate",
                          str(tmp_path / "x.npy"), "--calibrate-labels", CALIB_Y,
                          (f"--calibrate {tmp_path / 'x.npy'}: samples of shape [4, 1, 9, 9]; "
                           "the model's input 'image' takes [N, 1, 8, 8]",))


def test_basis_file_with_wrong_contents(tmp_path):
    np.savez(tmp_path / "b.npz", something=np.zeros(3))
    _fails_keeping_output(tmp_path, CNN, "--basis", str(tmp_path / "b.npz"),
                          (f"--basis {tmp_path / 'b.npz'}: not a basis file",))


# --- 6. a poor basis fit is a warning ---------------------------------------------------------
def _warnings(stderr):
    return [line for line in stderr.splitlines() if line.startswith("cimc: warning: ")]


def test_poor_post_training_fit_warns_even_with_q(tmp_path):
    r = cli("cimc", CNN, "--basis", "4", "-q", "-o", str(tmp_path / "p.cim"))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    (line,) = _warnings(r.stderr)
    assert r.stderr == line + "\n"
    assert "the basis of N=4 reconstructs layer" in line
    assert "relative weight error of" in line and "above 0.25" in line
    assert "larger N" in line and "--basis auto" in line and "tools/finetune_basis.py" in line


def test_poor_basis_file_warns(tmp_path):
    fit(layer_matrices(onnx.load(CNN)), 2).save(str(tmp_path / "b2.npz"))
    r = cli("cimc", CNN, "--basis", str(tmp_path / "b2.npz"), "-o", str(tmp_path / "p.cim"))
    assert r.returncode == 0 and len(_warnings(r.stderr)) == 1, r.stderr


def test_exact_basis_file_does_not_warn(tmp_path):
    tuned = os.path.join(MODELS, "digits_cnn_basis4")
    r = cli("cimc", tuned + ".onnx", "--basis", tuned + ".basis.npz", "-o",
            str(tmp_path / "p.cim"))
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_flags_nothing_reads_are_said_to_be_ignored(tmp_path):
    labels = os.path.join(MODELS, "digits_test_y.npy")
    r = cli("cimc", CNN, "-q", "-o", str(tmp_path / "p.cim"), "--calibrate-labels", labels,
            "--dynamic-xbars", "3")
    assert r.returncode == 0 and r.stdout == ""
    assert _warnings(r.stderr) == [
        "cimc: warning: --calibrate-labels is read only with --basis auto; ignored",
        "cimc: warning: --dynamic-xbars is read only with --dynamic write; ignored"]
    r = cli("cimc", CNN, "-q", "-o", str(tmp_path / "p.cim"), "--dynamic", "write",
            "--dynamic-xbars", "3")  # read, but the model has no product for it
    assert r.returncode == 0 and _warnings(r.stderr) == [
        "cimc: warning: --dynamic-xbars does nothing: no product of two computed operands is "
        "written to crossbars"]


def test_basis_fit_flags_without_a_fit_are_said_to_be_ignored(tmp_path):
    """--basis-unit, --coef-bits and --coef-sparsity shape a fit (--basis N or auto), and
    --accuracy-budget only --basis auto's: given otherwise they change nothing."""
    fit = ["--basis-unit", "4", "--coef-bits", "6", "--coef-sparsity", "0.5"]
    r = cli("cimc", CNN, "-q", "-o", str(tmp_path / "p.cim"), *fit, "--accuracy-budget", "3")
    assert r.returncode == 0, r.stderr
    assert _warnings(r.stderr) == [
        "cimc: warning: --accuracy-budget is read only with --basis auto; ignored",
        *(f"cimc: warning: {f} is read only with --basis N or auto (a basis FILE is used as "
          "it is); ignored" for f in fit[::2])]
    tuned = os.path.join(MODELS, "digits_cnn_basis4")
    r = cli("cimc", tuned + ".onnx", "--basis", tuned + ".basis.npz", "-q", "-o",
            str(tmp_path / "f.cim"), "--coef-bits", "6")
    assert r.returncode == 0 and _warnings(r.stderr) == [
        "cimc: warning: --coef-bits is read only with --basis N or auto (a basis FILE is used "
        "as it is); ignored"], r.stderr


def test_library_warning_goes_to_the_callback():
    model, seen = onnx.load(CNN), []
    compile_model(model, basis=fit(layer_matrices(model), 3), warn=seen.append)
    assert len(seen) == 1 and "N=3" in seen[0]


def test_failure_after_fitting_keeps_outputs(tmp_path):
    """The program's peak fails after the basis is fitted: -o and --basis-out stay as they
    were."""
    basis_out = tmp_path / "b.npz"
    basis_out.write_bytes(b"an old basis")
    _fails_keeping_output(tmp_path, CNN, "--basis", "4", "--basis-out", str(basis_out),
                          "--max-scratchpad-mb", "0.04", ("the program needs",))
    assert basis_out.read_bytes() == b"an old basis"


def test_basis_out_and_dump_ir_are_written_on_success(tmp_path):
    r = cli("cimc", CNN, "--basis", "9", "--coef-bits", "8", "--basis-out",
            str(tmp_path / "b.npz"), "--dump-ir", str(tmp_path / "ir"), "-o",
            str(tmp_path / "p.cim"))
    assert r.returncode == 0 and _warnings(r.stderr) == [], r.stderr
    dumps = list((tmp_path / "ir").iterdir())
    assert (tmp_path / "b.npz").is_file() and len(dumps) == 2 * (1 + len(PIPELINE))
    assert [p.name for p in tmp_path.rglob(".tmp*")] == []


# --- 7. valid ONNX with outputs nobody reads, and the Dropout mask ----------------------------
def _dropout_model(mask_use):
    """x -> Dropout (inference) -> y, its mask unused, read by a Cast and Mul, or returned."""
    n = helper.make_node
    drop = n("Dropout", ["x"], ["d", "mask"], name="drop")
    nodes = [drop, n("Relu", ["d"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])]
    if mask_use == "read":
        nodes[1:] = [n("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
                     n("Mul", ["d", "mf"], ["y"])]
    elif mask_use == "returned":
        outputs.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, [2, 6]))
    return _model(nodes, [2, 6], None, outputs=outputs)


@pytest.mark.parametrize("mask_use", ["unused", "read", "returned"])
def test_dropout_mask_output_compiles(mask_use):
    model, x = _dropout_model(mask_use), _f32(2, 6)
    program = compile_model(model)
    got = run(program, x, timing=False).outputs
    for port, want in zip(program.outputs, ort_run(model, {"x": x})):
        np.testing.assert_allclose(got[port.name], np.asarray(want, np.float32), rtol=1e-6)


def test_unused_maxpool_indices_do_not_matter():
    pool = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2])
    model, x = _model([pool], [1, 2, 4, 4], [1, 2, 3, 3]), _f32(1, 2, 4, 4)
    _ideal_matches_onnxruntime(compile_model(model), model, x)


def test_shape_computed_reshape_target_is_folded():
    """Reshape to [N, C*H*W / 2, 2] computed from Shape(x) through Slice, Div and Concat, as
    ONNX function expansions write it: shape inference alone leaves it unknown."""
    n = helper.make_node
    c = {"zero": np.array([0]), "one": np.array([1]), "four": np.array([4]),
         "two": np.array([2]), "big": np.array([1 << 30])}
    nodes = [n("Shape", ["x"], ["s"]), n("Slice", ["s", "zero", "one"], ["nb"]),
             n("Slice", ["s", "one", "big"], ["rest"]),
             n("ReduceProd", ["rest"], ["total"], keepdims=1),
             n("Div", ["total", "two"], ["half"]), n("Concat", ["nb", "half", "two"], ["t"],
                                                    axis=0),
             n("Reshape", ["x", "t"], ["r"]), n("Relu", ["r"], ["y"])]
    model = _model(nodes, [3, 2, 2, 4], [3, 8, 2], {k: v.astype(np.int64) for k, v in c.items()})
    _ideal_matches_onnxruntime(compile_model(model), model, _f32(3, 2, 2, 4))


def test_conformance_calls_unsupported_only_what_support_declares():
    exp = _model([helper.make_node("Tan", ["x"], ["y"])], [2, 6], [2, 6])
    assert declared_unsupported(exp) == "operator Tan"
    ints = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.INT32, [2])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [2])]),
        opset_imports=[helper.make_opsetid("", 13)])
    assert declared_unsupported(ints) == "tensor 'x' is int32"
    training = _model([helper.make_node("Dropout", ["x", "r", "t"], ["y"])], [2, 6], [2, 6],
                      {"r": np.float32(0.5), "t": np.bool_(True)})
    assert "training mode" in declared_unsupported(training)
    for use in ("unused", "read", "returned"):
        assert declared_unsupported(_dropout_model(use)) is None


def test_a_shape_left_unknown_is_not_called_unsupported():
    """A tensor whose shape stays unknown is the compiler's failure to report, not a limit
    support declares: the conformance tool must not file it as unsupported."""
    dynamic = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "M"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "M"])]),
        opset_imports=[helper.make_opsetid("", 13)])
    assert declared_unsupported(dynamic) is None


def test_an_integer_input_returned_as_it_is_is_refused_by_name():
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("i", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("i", TensorProto.INT64, [2])]),
        opset_imports=[helper.make_opsetid("", 13)])
    assert declared_unsupported(model) == "tensor 'i' is int64"
    with pytest.raises(CompileError, match="graph: tensor 'i' is int64; the chip computes"):
        compile_model(model)


# --- 8. progress bars -------------------------------------------------------------------------
def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path):
    r = cli("cimc", CNN, "--basis", "auto", "--calibrate", CALIB_X, "--calibrate-labels",
            CALIB_Y, "-q", "-o", str(tmp_path / "p.cim"))
    assert r.returncode == 0 and r.stdout == ""
    assert "\r" not in r.stderr and "basis auto" not in r.stderr, r.stderr


def _on_a_terminal(code: str) -> bytes:
    """What ``python -c code`` writes to stderr when stderr is an 80-column terminal."""
    import fcntl
    import pty
    import struct
    import termios
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, stderr=follower, check=True)
    os.close(follower)
    text = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal's other end is closed
            break
        if not chunk:
            break
        text += chunk
    os.close(leader)
    return text


@pytest.mark.parametrize("enabled", [True, False])
def test_progress_bar_shows_on_a_terminal_only_when_enabled(enabled):
    """A bar appears once the work has taken 2 s, on a terminal, when enabled."""
    text = _on_a_terminal("import time; from compiler.progress import bar\n"
                          f"for _ in bar(range(3), {enabled}, 'fitting', 'iter'): "
                          "time.sleep(1.1)")
    assert (b"fitting" in text) == enabled, text


# --- 9. broken pipes, the --dump-ir - help, and opsets ----------------------------------------
def test_broken_pipe_is_quiet(tmp_path):
    """A long IR dump into a reader that stops after one line: no message, status 141."""
    nodes = [helper.make_node("Relu", [f"t{i}" if i else "x"], [f"t{i + 1}" if i < 599 else "y"])
             for i in range(600)]
    path = _save(_model(nodes, [1, 4], [1, 4]), tmp_path / "long.onnx")
    proc = subprocess.Popen([sys.executable, "-m", "compiler.cli", str(path), "--dump-ir", "-",
                             "-o", str(tmp_path / "p.cim")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"# import")
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == "", err


def test_operators_into_a_closed_pipe_is_quiet():
    """``cimc --operators | head -1``: the list is printed while the reader has gone (its
    pipe closed before cimc starts writing): no traceback, status 141."""
    proc = subprocess.Popen([sys.executable, "-m", "compiler.cli", "--operators"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == "", err


def test_dump_ir_dir_holds_this_compiles_dumps_alone(tmp_path):
    """A second compile into the same --dump-ir directory, of fewer stages, removes the first
    one's dumps (files named NN-stage.ir/.dot) and keeps any other file; the DOT files
    escape names holding quotes."""
    ir = tmp_path / "ir"
    r = cli("cimc", CNN, "-o", str(tmp_path / "a.cim"), "--weight-sorting", "--xbars", "3",
            "--dump-ir", str(ir), "-q")
    assert r.returncode == 0, r.stderr
    assert (ir / "09-allocate-buffers.ir").exists()
    (ir / "notes.txt").write_text("mine")
    nodes = [helper.make_node("Relu", ['in"x'], ["y"])]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info('in"x', TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]),
        opset_imports=[helper.make_opsetid("", 13)])
    path = _save(model, tmp_path / "q.onnx")
    r = cli("cimc", path, "-o", str(tmp_path / "b.cim"), "--dump-ir", str(ir), "-q")
    assert r.returncode == 0, r.stderr
    stages = ["import"] + PIPELINE
    assert sorted(p.name for p in ir.iterdir()) == sorted(
        [f"{i:02d}-{s}.{e}" for i, s in enumerate(stages) for e in ("ir", "dot")]
        + ["notes.txt"])
    dot = (ir / "00-import.dot").read_text()
    assert '"in:in\\"x" [shape=ellipse, label="in\\"x"];' in dot


def test_dump_ir_stdout_is_the_ir_text_only(tmp_path):
    r = cli("cimc", CNN, "--dump-ir", "-", "-o", str(tmp_path / "p.cim"))
    assert r.returncode == 0 and r.stdout.count("graph(batch=1)") == len(PIPELINE) + 1
    assert "digraph" not in r.stdout and "cimc: wrote" not in r.stdout
    assert r.stderr.startswith(f"cimc: wrote {tmp_path / 'p.cim'}: ")  # the summary, aside
    assert "the IR text only (no DOT)" in " ".join(cli("cimc", "--help").stdout.split())


def _conv_relu_model(opset):
    n = helper.make_node
    nodes = [n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), n("Relu", ["c"], ["r"]),
             n("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             n("Flatten", ["p"], ["f"]), n("Gemm", ["f", "g", "gb"], ["y"], transB=1)]
    return _model(nodes, [2, 3, 6, 6], [2, 5], {"w": _f32(4, 3, 3, 3), "b": _f32(4),
                                                "g": _f32(5, 36), "gb": _f32(5)}, opset=opset)


def test_opset_7_model_compiles_correctly(tmp_path):
    model = _conv_relu_model(7)
    _ideal_matches_onnxruntime(compile_model(model), model, _f32(2, 3, 6, 6))


def test_opset_the_converter_cannot_upgrade(tmp_path):
    pad = helper.make_node("Pad", ["x"], ["y"], paddings=[0, 1, 0, 1])
    path = _save(_model([pad], [2, 3], [2, 5], opset=1), tmp_path / "old.onnx")
    _fails_keeping_output(tmp_path, path, ("onnx's version converter cannot upgrade this opset-1 "
                                           "model to opset 13", "No Adapter From Version 1 for "
                                           "Pad", "export it at opset 13 or newer"))


def test_an_opset_newer_than_onnx_knows_is_refused(tmp_path):
    newest = onnx.defs.onnx_opset_version()
    relu = helper.make_node("Relu", ["x"], ["y"])
    path = _save(_model([relu], [2, 3], [2, 3], opset=newest + 1), tmp_path / "new.onnx")
    _fails_keeping_output(tmp_path, path, (f"the model imports opset {newest + 1}; the "
                                           f"installed onnx ({onnx.__version__}) defines "
                                           f"opsets up to {newest}",))


# --- 10. --chip: presets and [arch] -----------------------------------------------------------
def test_chip_file_arch_is_the_compiled_geometry(tmp_path):
    chip = tmp_path / "chip.toml"
    chip.write_text("[arch]\nrows = 64\n")
    prog = tmp_path / "p.cim"
    r = cli("cimc", CNN, "--chip", str(chip), "-o", str(prog))
    assert r.returncode == 0, r.stderr
    assert isa.load(str(prog)).chip.rows == 64
    r = cli("cimrun", str(prog), "--chip", str(chip), "--input", SAMPLE, "-o",
            str(tmp_path / "o.npy"))
    assert r.returncode == 0, r.stderr
    want = ort_run(CNN, {"image": np.load(SAMPLE)})[0]
    assert rel_err(np.load(tmp_path / "o.npy"), want) < 1e-4


def test_geometry_flags_override_the_chip(tmp_path):
    chip = tmp_path / "chip.toml"
    chip.write_text("[arch]\nrows = 64\ncols = 64\n")
    prog = tmp_path / "p.cim"
    assert cli("cimc", CNN, "--chip", str(chip), "--rows", "32", "-o", str(prog)).returncode == 0
    geometry = isa.load(str(prog)).chip
    assert (geometry.rows, geometry.cols) == (32, 64)


def test_chip_preset_by_name(tmp_path):
    r = cli("cimc", CNN, "--chip", "puma-optimistic", "-o", str(tmp_path / "p.cim"))
    assert r.returncode == 0, r.stderr
    _fails_keeping_output(tmp_path, CNN, "--chip", "no-such-chip",
                          ("chip 'no-such-chip': neither a preset",))


# --- 11. compile_model leaves its caller's model alone ----------------------------------------
def test_compile_model_does_not_mutate_the_model():
    model = onnx.load(CNN)
    before = model.SerializeToString()
    assert (compile_model(model, batch=4).batch, compile_model(model, batch=8).batch) == (4, 8)
    assert model.SerializeToString() == before


def test_options_the_model_leaves_idle_are_warned_about(tmp_path):
    """--batch on a model whose batch is fixed, and --dynamic-xbars on one without products
    written per inference, compile as without them, and say so."""
    fixed = _save(_model([helper.make_node("Relu", ["x"], ["y"])], [3, 4], [3, 4]),
                  tmp_path / "b3.onnx")
    cases = [(fixed, ["--batch", "2"], "--batch 2 does nothing: the model's batch is fixed at 3"),
             (CNN, ["--dynamic", "write", "--dynamic-xbars", "3"],
              "--dynamic-xbars does nothing: no product of two computed operands is written "
              "to crossbars")]
    for model, flags, warning in cases:
        r = cli("cimc", str(model), "-o", str(tmp_path / "p.cim"), *flags)
        assert r.returncode == 0 and f"cimc: warning: {warning}" in r.stderr, r.stderr
        quiet = cli("cimc", str(model), "-o", str(tmp_path / "q.cim"), *flags[:-2])
        assert "warning" not in quiet.stderr
        assert (tmp_path / "p.cim").read_bytes() == (tmp_path / "q.cim").read_bytes()


def test_problems_sharing_an_explanation_give_it_once(tmp_path):
    """Token ids both Gathered and compared: each use is listed, the explanation of what
    integers the chip takes once (it had followed every one of them)."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3])
    table = numpy_helper.from_array(_f32(5, 4), "table")
    pad = numpy_helper.from_array(np.array(0, np.int64), "pad_id")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("Equal", ["ids", "pad_id"], ["pad"], name="is_pad")]
    g = helper.make_graph(nodes, "g", [ids], [
        helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 3, 4]),
        helper.make_tensor_value_info("pad", TensorProto.BOOL, ["N", 3])], [table, pad])
    model = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]),
                  tmp_path / "m.onnx")
    r = cli("cimc", str(model), "-o", str(tmp_path / "m.cim"))
    fails(r, "2 problem(s) in the model: embed: tensor 'ids' is int64; is_pad: tensor 'ids' "
             "is int64; the chip computes float32 (and boolean) tensors only")
    assert r.stderr.count("the chip computes") == 1


def _old_model(nodes, x_shape, outputs, inits, opset):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     x_shape)],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                           for o in outputs],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return onnx.shape_inference.infer_shapes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]))


def test_models_onnxruntime_runs_otherwise_or_refuses_are_refused(tmp_path):
    """Each compiled without a word before: a BatchNormalization-9 with its statistics
    outputs (training mode: onnxruntime normalises with the batch's statistics), an
    Upsample-7 'bilinear' (it had run as cubic), a PRelu-9 slope of C values on NCHW (the
    program failed in cimrun)."""
    c = {k: np.ones(3, np.float32) for k in ("s", "b", "m", "v")}
    bn = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"],
                          ["y", "rm", "rv", "sm", "sv"])
    up = helper.make_node("Upsample", ["x"], ["y"], mode="bilinear", scales=[1.0, 1.0, 2.0, 2.0])
    prelu = helper.make_node("PRelu", ["x", "s"], ["y"])
    cases = [
        (_old_model([bn], [2, 3, 4, 4], ["y"], c, 9),
         "BatchNormalization(y, rm, rv, sm, sv): BatchNormalization with mean and variance "
         "outputs is in training mode at opset 9"),
        (_old_model([up], [1, 3, 4, 4], ["y"], {}, 7),
         "Resize's mode 'bilinear' is not one of ONNX's (nearest, linear, cubic)"),
        (_old_model([prelu], [2, 3, 5, 6], ["y"], {"s": c["s"]}, 9),
         "PRelu(y): PRelu's slope [3] does not broadcast to its input [2, 3, 5, 6]")]
    for i, (model, message) in enumerate(cases):
        _fails_keeping_output(tmp_path, _save(model, tmp_path / f"m{i}.onnx"), (message,))


def test_calibrated_ranges_are_onnxruntimes_whatever_the_batch(tmp_path):
    """The digits CNN's BatchNormalizations (opset 13): ONNX's reference evaluator mixed each
    batch's statistics into them, so ranges fell short of onnxruntime's (%feat 3.59 against
    4.05) and moved with --batch. Now each range is the largest |value| onnxruntime gives."""
    x = np.load(CALIB_X)[:16]
    np.save(tmp_path / "x.npy", x)
    model = onnx.load(CNN)
    model.graph.output.extend([helper.make_empty_tensor_value_info("feat")])
    (_, feat) = ort_run(model, {"image": x})
    ranges = []
    for batch in ("1", "4"):
        out = tmp_path / f"b{batch}.cim"
        assert cli("cimc", CNN, "-o", str(out), "--calibrate", str(tmp_path / "x.npy"),
                   "--batch", batch, "-q").returncode == 0
        ranges.append({b.name: b.range for b in isa.load(str(out)).buffers if b.range})
    assert ranges[0] == ranges[1]
    assert ranges[0]["feat"] == pytest.approx(float(np.abs(feat).max()), rel=1e-6)


def test_calibration_samples_are_checked_as_run_inputs_are(tmp_path):
    """What cimrun refuses as inputs, calibration refuses too, with one message: ids outside
    the table (a traceback from the reference evaluator), floats for integer ids (they were
    truncated), arrays that are not numbers, an input whose first axis is not the samples'
    (a shared mask was cut as if it were)."""
    bert = os.path.join(MODELS, "bert_tiny_torch.onnx")
    ids = np.load(os.path.join(MODELS, "bert_tiny_ids.npy"))
    mask = np.load(os.path.join(MODELS, "bert_tiny_mask.npy"))
    cases = [({"input_ids": ids + 64, "attention_mask": mask},
              "--calibrate: the model cannot run on these samples"),
             ({"input_ids": ids.astype(np.float32), "attention_mask": mask},
              "input 'input_ids' holds integers: its samples must be an integer array, got "
              "float32"),
             ({"input_ids": ids, "attention_mask": mask.astype(str)},
              "samples of 'attention_mask' must be a numeric array, got <U"),
             ({"input_ids": ids, "attention_mask": mask, 3: mask},
              "the model's inputs are ['input_ids', 'attention_mask']; not inputs: ['3']")]
    for samples, message in cases:
        with pytest.raises(CompileError) as info:
            compile_model(bert, calibrate=samples)
        assert message in str(info.value)
    shared = _save(helper.make_model(helper.make_graph(
        [helper.make_node("Mul", ["x", "m"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]),
        opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "shared.onnx")
    np.savez(tmp_path / "s.npz", x=_f32(4, 4), m=_f32(4))
    _fails_keeping_output(tmp_path, shared, "--calibrate", str(tmp_path / "s.npz"),
                          ("the inputs' first axes differ (x [N, 4], m [4])",))


def test_a_npz_for_one_input_and_named_products_from_an_iterator(tmp_path, digits_test):
    """A .npz of the one input calibrates as its .npy does, --basis included (it had been
    refused as holding several); --digital names from an iterator still pick attention's
    products (the iterator had been used up)."""
    x = np.load(CALIB_X)[:64]
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", image=x)
    out = {}
    for ext in ("npy", "npz"):
        out[ext] = tmp_path / f"{ext}.cim"
        r = cli("cimc", CNN, "-o", str(out[ext]), "--calibrate", str(tmp_path / f"x.{ext}"),
                "--basis", "4", "-q")
        assert r.returncode == 0, r.stderr
    assert out["npy"].read_bytes() == out["npz"].read_bytes()
    program = compile_model(model_path("digits_vit"), dynamic="write",
                            digital=iter(["/blocks.0/attn/MatMul"]))
    assert [i.op for i in program.text].count("dbmm") == 1
