"""Results do not depend on how a run's samples are split (issue 14, point 5): noise is keyed
by sample index, products are summed in an order the batch size does not change, and
``--memory-limit`` runs the samples in passes that fit it."""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from conftest import MODELS, cli, fails, model_path

from compiler import compile_model
from isa.cells import LowWrite
from isa.chip import Chip
from runtime import interpreter, run
from runtime.errors import RunError
from runtime.memory import estimate_bytes


@pytest.fixture(scope="module")
def cnn():
    return compile_model(model_path("digits_cnn"))


@pytest.mark.parametrize("mode", ["ideal", "quantized", "analog"])
def test_memory_limit_and_dataset_splits_do_not_change_outputs(cnn, mode, digits_test):
    """Passes of 4 samples, runs of 7 and a lone sample give one run's outputs (ideal mode
    too: its products' rows do not depend on the rows beside them)."""
    x = digits_test[0][:30]
    whole = run(cnn, x, mode=mode, seed=3, timing=False)
    limit = (estimate_bytes(cnn, 4, mode) + estimate_bytes(cnn, 5, mode)) // 2  # 4 a pass
    chunked = run(cnn, x, mode=mode, seed=3, timing=False, memory_limit=limit)
    assert whole.stats["passes"] == 1 and chunked.stats["passes"] == 8
    split = [run(cnn, x[i:i + 7], mode=mode, seed=3, timing=False, first_sample=i)
             for i in range(0, 30, 7)]
    want = whole.outputs["logits"]
    assert np.array_equal(chunked.outputs["logits"], want)
    assert np.array_equal(np.concatenate([r.outputs["logits"] for r in split]), want)
    alone = run(cnn, x[29:], mode=mode, seed=3, timing=False, first_sample=29)
    assert np.array_equal(alone.outputs["logits"], want[29:])


def _same_on_threads(program, x, mode: str, seed: int) -> None:
    """Outputs and statistics on 2 and 3 threads are one thread's."""
    one = run(program, x, mode=mode, seed=seed, timing=False, threads=1)
    for threads in (2, 3):
        got = run(program, x, mode=mode, seed=seed, timing=False, threads=threads)
        assert np.array_equal(got.outputs["logits"], one.outputs["logits"]), threads
        for stat in ("cells_changed", "endurance_failed_cells", "opcode_counts"):
            assert got.stats[stat] == one.stats[stat], (stat, threads)



def test_ideal_products_keep_a_samples_floats_on_threads_and_alone():
    """Ideal mode on a network with long columns (3x3 convolutions over 64 channels: K 576)
    and a 10-class head: 6 samples (32 x 32, random) on 2 threads, each product's rows
    shared out, and each sample alone on one give the same floats."""
    program = compile_model(model_path("digits_resnet20"))
    x = np.random.default_rng(0).random((6, 1, 32, 32), np.float32)
    together = run(program, x, timing=False, threads=2).outputs["logits"]
    for i in range(len(x)):
        alone = run(program, x[i:i + 1], timing=False, first_sample=i).outputs["logits"]
        assert np.array_equal(alone[0], together[i]), i

@pytest.mark.parametrize("mode", ["quantized", "analog"])
def test_threads_do_not_change_outputs(cnn, mode, digits_test):
    """Crossbar reads split over threads (by tile batch and by runs of samples) add up to
    the same bits as one thread, including an odd split (3 threads, 7 samples), and with
    fewer samples than threads (a layer's tiles shared out instead); and a chip that
    reprograms its 4 crossbars, with bit stucking: writes to different crossbars are
    programmed concurrently, those of one crossbar in order."""
    x = digits_test[0][:7]
    _same_on_threads(cnn, x[:1], mode, 2)
    rotating = compile_model(model_path("digits_cnn"), max_xbars=4,
                             bit_stucking=LowWrite(slices=1, write=0.5))
    for program in (cnn, rotating):
        _same_on_threads(program, x, mode, 2)


@pytest.mark.parametrize("mode", ["ideal", "quantized", "analog"])
def test_runs_of_samples_on_threads_change_nothing(cnn, digits_test, monkeypatch, mode):
    """A program that writes its crossbars only in its load phase loads them once, then runs
    even runs of the samples, one a thread, each through the rest of the program: the same
    outputs and statistics as one thread, for two and three runs. A program that reprograms
    its crossbars runs as one pass (its reads shared out), and so does ideal mode on fewer
    than SPLIT_SAMPLES samples a run."""
    runs = []
    fork = interpreter.Machine.fork
    monkeypatch.setattr(interpreter.Machine, "fork", lambda self, scale, *a:
                        runs.append(scale) or fork(self, scale, *a))
    x = digits_test[0][:100]
    rotating = compile_model(model_path("digits_cnn"), max_xbars=4)
    for program, split in ((cnn, [50, 50, 33, 34, 33]), (rotating, [])):
        runs.clear()
        _same_on_threads(program, x, mode, 4)
        assert runs == split
    runs.clear()
    few = 2 * interpreter.SPLIT_SAMPLES - 1
    run(cnn, x[:few], mode=mode, timing=False, threads=2)
    assert runs == ([] if mode == "ideal" else [32, 31])


def test_cimrun_threads_flag(tmp_path):
    program = str(tmp_path / "mlp.cim")
    assert cli("cimc", model_path("digits_mlp"), "-o", program).returncode == 0
    outs = []
    for threads in ("1", "2"):
        out = str(tmp_path / f"t{threads}.npy")
        done = cli("cimrun", program, "--input", os.path.join(MODELS, "digits_test_x.npy"),
                   "--mode", "analog", "--threads", threads, "-o", out, "-q")
        assert done.returncode == 0, done.stderr
        outs.append(np.load(out))
    assert np.array_equal(*outs)
    fails(cli("cimrun", program, "--threads", "0", "--mode", "timing"), "--threads",
          "thread count")


def test_a_sample_keeps_its_noise_whoever_it_runs_with(cnn, digits_test):
    """Sample 5 alone (at its index) equals sample 5 in a batch; another index differs."""
    x = digits_test[0][:8]
    batch = run(cnn, x, mode="analog", timing=False).outputs["logits"]
    alone = run(cnn, x[5:6], mode="analog", timing=False, first_sample=5).outputs["logits"]
    moved = run(cnn, x[5:6], mode="analog", timing=False, first_sample=6).outputs["logits"]
    assert np.array_equal(alone[0], batch[5]) and not np.array_equal(moved[0], batch[5])


def test_a_program_runs_alike_from_memory_and_from_its_file(cnn, digits_test, tmp_path):
    """Noise is keyed by each instruction's line in the program's text, which a program
    compiled in memory (never printed: every ``Instr.line`` is 0) has too; keyed by
    ``Instr.line``, every instruction of such a program shared one read-noise stream."""
    import isa
    isa.save(cnn, str(tmp_path / "cnn.cim"))
    loaded = isa.load(str(tmp_path / "cnn.cim"))
    x = digits_test[0][:6]
    ours = run(cnn, x, mode="analog", seed=5, timing=False).outputs["logits"]
    theirs = run(loaded, x, mode="analog", seed=5, timing=False).outputs["logits"]
    assert {i.line for i in cnn.text} == {0}  # the case this guards
    assert np.array_equal(ours, theirs)


def test_written_products_keep_their_noise_across_splits():
    program = compile_model(os.path.join(MODELS, "bert_tiny_torch.onnx"), dynamic="write")
    ids = np.load(os.path.join(MODELS, "bert_tiny_ids.npy"))
    mask = np.load(os.path.join(MODELS, "bert_tiny_mask.npy"))
    whole = run(program, {"input_ids": ids, "attention_mask": mask}, mode="analog",
                timing=False).outputs["logits"]
    parts = [run(program, {"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]},
                 mode="analog", timing=False, first_sample=i).outputs["logits"]
             for i in range(len(ids))]
    assert np.array_equal(np.concatenate(parts), whole)
    threads = run(program, {"input_ids": ids, "attention_mask": mask}, mode="analog",
                  timing=False, threads=2)  # a run of samples a thread, written noise too
    assert np.array_equal(threads.outputs["logits"], whole)


def test_a_compiled_batch_of_four_forks_by_batches(digits_test, monkeypatch):
    """A program compiled for 4 samples a batch forks by whole batches, each run's noise
    starting at its first sample's index: 3 batches on 2 threads (8 and 4 samples) give one
    thread's outputs, and so does the same dataset split into runs at batch boundaries."""
    program = compile_model(model_path("digits_cnn"), batch=4)
    firsts = []
    fork = interpreter.Machine.fork
    monkeypatch.setattr(interpreter.Machine, "fork", lambda self, scale, first, runs:
                        firsts.append((scale, first)) or fork(self, scale, first, runs))
    x = digits_test[0][:12]
    one = run(program, x, mode="analog", seed=1, timing=False, threads=1)
    got = run(program, x, mode="analog", seed=1, timing=False, threads=2, first_sample=0)
    assert firsts == [(2, 0), (1, 8)]
    assert np.array_equal(got.outputs["logits"], one.outputs["logits"])
    tail = run(program, x[8:], mode="analog", seed=1, timing=False, first_sample=8)
    assert np.array_equal(tail.outputs["logits"], one.outputs["logits"][8:])


def test_an_error_in_a_run_of_samples_stops_the_others(cnn, digits_test, monkeypatch):
    """An instruction failing in one forked run raises its RunError, with its line; the
    other run stops before its next step (held 0.3 s inside the pooling, if it gets there):
    neither reaches the last layer's ReLU, after the pooling."""
    import itertools
    import time
    order, relus = itertools.count(), []
    maxpool, relu = interpreter.SEMANTICS["maxpool"], interpreter.SEMANTICS["relu"]

    def failing(m, ins):
        if next(order) == 0:
            raise RunError("the pool broke")
        time.sleep(0.3)
        return maxpool(m, ins)
    monkeypatch.setitem(interpreter.SEMANTICS, "maxpool", failing)
    monkeypatch.setitem(interpreter.SEMANTICS, "relu",
                        lambda m, ins: relus.append(ins.operands[0]) or relu(m, ins))
    with pytest.raises(RunError, match=r"line \d+ \(maxpool\): the pool broke"):
        run(cnn, digits_test[0][:8], mode="quantized", timing=False, threads=2)
    assert "%r3" in relus and "%conv4.cols" not in relus


def test_the_load_phase_is_the_leading_writes_when_no_other_write_follows():
    """``_load_phase``: the leading write groups and barriers; None when a write follows
    later (crossbars reprogrammed during inference)."""
    from isa import Instr
    write, mvm = [Instr("write", ("@w",), ())], [Instr("mvm", ("%y", "%x"), ())]
    barrier, relu = Instr("barrier", (), ()), Instr("relu", ("%y", "%y"), ())
    assert interpreter._load_phase([write, write, barrier, mvm, relu]) == 3
    assert interpreter._load_phase([mvm, relu]) == 0
    assert interpreter._load_phase([write, barrier]) == 2
    assert interpreter._load_phase([write, barrier, mvm, write, mvm]) is None
    assert interpreter._load_phase([barrier, write, mvm]) == 2


def test_a_memory_limit_below_one_batch_is_a_clear_error(tmp_path):
    program = str(tmp_path / "cnn.cim")
    assert cli("cimc", model_path("digits_cnn"), "-o", program).returncode == 0
    fails(cli("cimrun", program, "--input", os.path.join(MODELS, "digits_sample.npy"),
              "--mode", "analog", "--memory-limit", "1"),
          "for one compiled batch, over --memory-limit 1 MB")
    fails(cli("cimrun", program, "--memory-limit", "0"), "--memory-limit")


def test_tiles_of_different_widths_read_alone_or_together_alike(monkeypatch):
    """A layer of 20 outputs is a 16-column tile and a 4-column one; read together, the
    narrow one is padded to 16 columns. Its read noise is numbered by its own width, so it
    is the same whether a read holds both tiles or one (as a smaller memory budget or pass
    makes it)."""
    from onnx import TensorProto, helper, numpy_helper

    from runtime import mvm_groups
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((64, 20)), rng.standard_normal((20, 10))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w.astype(np.float32), n) for w, n in ((w1, "w1"), (w2, "w2"))])
    program = compile_model(helper.make_model(graph))
    assert {i.attr("cols") for i in program.text if i.op == "mvm"} >= {(0, 16), (16, 20)}
    x = rng.standard_normal((5, 64)).astype(np.float32)
    together = run(program, x, mode="analog", timing=False).outputs["y"]
    monkeypatch.setattr(mvm_groups, "BYTES_PER_CHUNK", 1)  # one tile a read
    alone = run(program, x, mode="analog", timing=False).outputs["y"]
    assert np.array_equal(together, alone)


@pytest.mark.parametrize("setting, keeps", [("", platform.libc_ver()[0] == "glibc"),
                                            ("0", False)])
def test_runs_keep_freed_memory_for_reuse_unless_told_not_to(setting, keeps):
    """``run`` has glibc keep freed memory (``memory.keep_freed_memory``);
    ``CIMSTACK_KEEP_FREED=0`` leaves malloc as it is."""
    code = "from runtime.memory import keep_freed_memory; print(keep_freed_memory())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "CIMSTACK_KEEP_FREED": setting})
    assert done.stdout.strip() == str(keeps)


def test_programming_a_window_of_crossbars_at_a_time_changes_nothing(cnn, digits_test,
                                                                      monkeypatch):
    """Load-phase writes are prepared and programmed a window of STACK x threads crossbars at
    a time; windows of two (the digits CNN's 9 crossbars in five) give the same outputs."""
    from runtime import interpreter
    x = digits_test[0][:4]
    want = run(cnn, x, mode="analog", timing=False).outputs["logits"]
    monkeypatch.setattr(interpreter, "STACK", 1)
    got = run(cnn, x, mode="analog", timing=False, threads=2).outputs["logits"]
    assert np.array_equal(got, want)


def test_a_run_keeps_its_pass_worth_of_freed_memory(cnn, digits_test, monkeypatch):
    """``run`` asks malloc to keep what one of its passes is estimated to need."""
    from runtime import interpreter
    asked = []
    monkeypatch.setattr(interpreter, "keep_freed_memory", asked.append)
    x = digits_test[0][:6]
    run(cnn, x, mode="analog", timing=False)
    assert asked == [estimate_bytes(cnn, len(x), "analog")]


def test_the_kept_freed_memory_never_shrinks_within_a_process(monkeypatch):
    """glibc trims the whole free top of the heap once it passes the threshold: a smaller
    pass after a larger one must not lower it, or every pass faults its pages in again."""
    from runtime import memory
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1
    monkeypatch.setattr(memory, "_glibc", lambda: FakeLibc())
    monkeypatch.setattr(memory, "_kept", [0])
    monkeypatch.setattr(memory, "available_bytes", lambda: 16 * 2 ** 30)
    monkeypatch.delenv("CIMSTACK_KEEP_FREED", raising=False)
    for pass_bytes in (0, 1536 * 2 ** 20, 600 * 2 ** 20, 64 * 2 ** 30):
        assert memory.keep_freed_memory(pass_bytes)
    trims = [v for p, v in calls if p == memory._M_TRIM_THRESHOLD]
    assert trims == [memory.KEEP_FREED_BYTES, 1536 * 2 ** 20, 1536 * 2 ** 20, 2 ** 31 - 1]
    # and every call keeps a thread's whole heaps (a top pad of glibc's largest heap)
    assert [v for p, v in calls if p == -2] == [64 * 2 ** 20] * 4


@pytest.mark.parametrize("node, shape", [
    ("Transpose", [3, "N"]),   # the samples on the second axis
    ("ReduceSum", [3]),        # summed over the samples
])
def test_outputs_that_do_not_keep_the_samples_first_refuse_passes(node, shape):
    """A program that is not batch-free runs more samples than compiled as passes of its
    batch, joined along each output's first axis: where that axis is not the samples', the
    run is refused before any pass (it had silently joined [3, 1] parts into [9, 1])."""
    from onnx import helper
    n = helper.make_node(node, ["x"], ["y"], perm=[1, 0]) if node == "Transpose" else \
        helper.make_node(node, ["x", "axes"], ["y"], keepdims=0)
    program = _one_node_program(n, shape)
    x = np.arange(9, dtype=np.float32).reshape(3, 3)
    with pytest.warns(RuntimeWarning, match="mixes samples of the batch"), \
            pytest.raises(RunError, match="does not keep the samples on its first axis"):
        run(program, x, timing=False)
    one = run(program, x[:1], timing=False).outputs["y"]  # the compiled batch itself runs
    assert np.array_equal(one.ravel(), x[0])


def test_a_program_that_mixes_samples_warns_before_it_runs_passes():
    """A running sum over the samples, compiled for one: four samples run as four batches
    of one (what a model of a fixed batch of one computes), with a warning that one batch
    of four needs --batch 4."""
    from onnx import helper
    program = _one_node_program(helper.make_node("CumSum", ["x", "axes"], ["y"]), ["N", 3])
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    with pytest.warns(RuntimeWarning, match=r"mixes samples of the batch: 4 samples run as 4 "
                                            r"passes .*--batch"):
        got = run(program, x, timing=False).outputs["y"]
    assert np.array_equal(got, x)  # each sample its own batch: its running sum is itself
    whole = compile_model(_one_node_model(helper.make_node("CumSum", ["x", "axes"], ["y"]),
                                          ["N", 3]), batch=4)
    assert np.array_equal(run(whole, x, timing=False).outputs["y"], np.cumsum(x, axis=0))


def _one_node_model(node, shape):
    from onnx import TensorProto, helper
    inits = [helper.make_tensor("axes", TensorProto.INT64, [1], [0])]
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _one_node_program(node, shape):
    program = compile_model(_one_node_model(node, shape))
    assert not program.batch_free
    return program


def test_write_counters_do_not_depend_on_the_passes(digits_test):
    """A reprogramming MLP (7 tiles on 2 crossbars) in one pass and in several: the same
    outputs, and cells_changed and endurance_failed_cells count one execution of its writes
    whatever the split (they had summed over passes)."""
    mlp = compile_model(os.path.join(MODELS, "digits_mlp.onnx"), max_xbars=2)
    chip = dataclasses.replace(Chip(), arch=mlp.chip, device=dataclasses.replace(
        Chip().device, endurance_writes=3))
    x = digits_test[0][:24]
    whole = run(mlp, x, mode="analog", chip=chip, timing=False)
    limit = estimate_bytes(mlp, 8, "analog", 1)  # passes of 8 samples
    split = run(mlp, x, mode="analog", chip=chip, timing=False, memory_limit=limit)
    assert whole.stats["passes"] == 1 and split.stats["passes"] > 1
    assert np.array_equal(*(next(iter(r.outputs.values())) for r in (whole, split)))
    for stat in ("cells_changed", "endurance_failed_cells"):
        assert split.stats[stat] == whole.stats[stat] > 0, stat
