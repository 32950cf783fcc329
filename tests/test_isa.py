"""The .cim format: exact round trip, located errors, corruption detection, and a fuzzer that
must only ever see the parser's own error type (issue 3, point 4); header limits, bounded blob
decoding and a verifier that rejects every out-of-range operand or attribute (issue 10)."""

from __future__ import annotations

import base64
import dataclasses
import zlib

import numpy as np
import onnx
import pytest
from conftest import zero_bomb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import isa
from compiler import compile_model
from isa import OPCODES, Blob, Buffer, ChipGeometry, Instr, IsaError, Port, Program, TensorType


def tiny_program() -> Program:
    window = (("xb", 0), ("rows", (0, 4)), ("cols", (0, 3)))
    vecs = (("vecs", (0, 1)),)
    return Program(
        chip=ChipGeometry(xbars=1), batch=1, batch_free=True,
        ports=[Port("input", "in put", "x"), Port("output", "y\"quoted\"", "y")],
        buffers=[Buffer("x", TensorType("f32", (1, 4))),
                 Buffer("y", TensorType("f32", (1, 3)), 64)],
        text=[Instr("write", ("@w",), window, "fc"),
              Instr("fill", ("%y",), (("value", 0.0),)),
              Instr("mvm", ("%y", "%x"), window + vecs, "fc / gemm"),
              Instr("clip", ("%y", "%y"), (("min", -np.inf), ("max", 6.0))),
              Instr("leakyrelu", ("%y", "%y"), (("alpha", 1e-3),)),
              Instr("halt", ())],
        blobs=[Blob("w", np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3))])


TINY = isa.print_program(tiny_program())


def test_round_trip_hand_program():
    p = tiny_program()
    assert isa.parse(TINY) == p
    assert isa.print_program(isa.parse(TINY)) == TINY


def test_a_node_name_of_several_lines_is_one_comment(tmp_path):
    """An ONNX node named across lines (and with a tab, quotes and a '#'): the notes it gives
    are one line, escaped, so the program parses back as it was printed (its second line
    had become an instruction the parser refused)."""
    w = np.ones((3, 2), np.float32)
    name = 'node "A"\n#x\tz\r'
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name=name)], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])],
        [onnx.numpy_helper.from_array(w, "w")]),
        opset_imports=[onnx.helper.make_opsetid("", 13)])
    program = compile_model(model)
    assert {i.note for i in program.text if i.op != "barrier"} - {""} == {'node "A"\\n#x\\tz\\r'}
    text = isa.print_program(program)
    assert isa.parse(text) == program and isa.print_program(isa.parse(text)) == text


def test_every_opcode_has_a_documented_unit():
    assert {op.unit for op in OPCODES.values()} <= {"write", "xbar", "vector", "buffer", "control",
                                                 "combiner", "digital", "dynamic"}
    assert all(op.doc for op in OPCODES.values())


def test_runtime_implements_every_opcode():
    from isa.timing import COSTS
    from runtime.semantics import SEMANTICS
    assert set(SEMANTICS) == set(OPCODES)
    assert set(COSTS) == set(OPCODES) and all(COSTS.values())


@pytest.mark.parametrize("old,new,message", [
    ("  mvm %y", "  mvx %y", "unknown opcode mvx"),
    ("fill %y value=0.0", "fill @w value=0.0", "operand 1 must be a buffer"),
    ("fill %y value=0.0", "fill %y value=[1,2]", "attribute value must be float"),
    ("fill %y value=0.0", "fill %y", "missing attribute(s) value"),
    ("fill %y value=0.0", "fill %y value=0.0 colour=3", "unknown attribute colour"),
    ("fill %y value=0.0", "fill %y value=0.0 value=1.0", "attribute value given twice"),
    ("mvm %y, %x xb=0 rows=[0,4]", "mvm %y, %x xb=0 rows=[4,0]", "must be [start,stop]"),
    ("vecs=[0,1]", "vecs=[0,2]", "vecs [0, 2] outside the 1 input vectors of %x"),
    ("mvm %y, %x", "mvm %y, %x, %x", "expected operands (dst, src), got 3"),
    ("mvm %y, %x", "mvm %y, %nothing", "%nothing is not declared"),
    ("write @w xb=0", "write @w xb=5", "crossbar 5 outside the chip's 1"),
    ("cim 1", "cim 7", "format version 7 is not supported"),
    ("batch 1 free", "batch one free", "expected one of"),
])
def test_errors_name_line_and_problem(old, new, message):
    text = TINY.replace(old, new, 1)
    assert text != TINY
    with pytest.raises(IsaError) as err:
        isa.parse(text, check_sum=False)
    assert message in str(err.value)


def test_an_mvm_reads_a_crossbar_a_write_programmed_with_its_tile():
    """Checked when a program is read, not when a run reaches the mvm (timing mode never
    would): a crossbar no write programs, or a tile of another shape."""
    write = next(line for line in TINY.splitlines() if line.strip().startswith("write @w"))
    with pytest.raises(IsaError, match="mvm reads crossbar 0, which no write before it "
                                       "programs"):
        isa.parse(TINY.replace(write + "\n", ""), check_sum=False)
    with pytest.raises(IsaError, match="mvm reads a 4x3 tile of crossbar 0, whose last write "
                                       "programs 4x2"):
        isa.parse(TINY.replace(write, write.replace("cols=[0,3]", "cols=[0,2]")),
                  check_sum=False)


def test_syntax_error_reports_line_and_column():
    text = TINY.replace("batch 1 free", "batch one free")
    with pytest.raises(IsaError) as err:
        isa.parse(text, check_sum=False)
    assert err.value.line == 3 and err.value.column == 7


def test_checksum_catches_any_edit():
    with pytest.raises(IsaError, match="checksum mismatch"):
        isa.parse(TINY.replace("max=6.0", "max=7.0"))


def test_checksum_covers_multibyte_text_and_names_the_end_line():
    """The checksum is over the body's UTF-8 bytes (read in place, not copied): notes with
    multi-byte characters round-trip, and an edit to one is caught, at the end line."""
    program = tiny_program()
    program.text[2] = dataclasses.replace(program.text[2], note="fc \u2192 g\u00e9mm")
    text = isa.print_program(program)
    assert isa.parse(text).text[2].note == "fc \u2192 g\u00e9mm"
    last = text.count("\n")  # the end crc32= line, the file's last
    with pytest.raises(IsaError, match=f"checksum mismatch at line {last}:"):
        isa.parse(text.replace("g\u00e9mm", "g\u00e8mm"))


def test_a_file_loads_as_its_text_parses(tmp_path):
    """``load`` reads a file's bytes and decodes blobs from them in place: the same program
    as parsing its text, also from a file with CRLF line ends (read as text mode reads
    them); a file that is not UTF-8 is a clear error that names it."""
    program = tiny_program()
    program.text[2] = dataclasses.replace(program.text[2], note="fc \u2192 g\u00e9mm")
    text = isa.print_program(program)
    want = isa.parse(text)
    for name, data in (("lf.cim", text.encode()), ("crlf.cim", text.replace("\n", "\r\n")
                                                   .encode())):
        (tmp_path / name).write_bytes(data)
        got = isa.load(str(tmp_path / name))
        assert got.text == want.text and got.buffers == want.buffers
        assert [b.name for b in got.blobs] == [b.name for b in want.blobs]
        assert all(np.array_equal(a.data, b.data) for a, b in zip(got.blobs, want.blobs))
    assert isa.parse(text.encode()).text == want.text
    for where, bad in (("head", text.encode().replace("g\u00e9mm".encode(), b"g\xe9mm")),
                       ("crlf", text.replace("\n", "\r\n").encode() + b"\xff")):
        (tmp_path / f"{where}.cim").write_bytes(bad)
        with pytest.raises(IsaError, match=f"{where}.cim: not a .cim program \\(not UTF-8"):
            isa.load(str(tmp_path / f"{where}.cim"))
    data = text.encode()
    at = data.index(b" zlib:") + 9  # a payload byte that is not ASCII
    (tmp_path / "payload.cim").write_bytes(data[:at] + b"\xff" + data[at + 1:])
    with pytest.raises(IsaError, match="blob payload is corrupt|checksum mismatch"):
        isa.load(str(tmp_path / "payload.cim"))


def test_truncation_detected():
    with pytest.raises(IsaError, match="truncated"):
        isa.parse(TINY[:-30])


def test_blob_corruption_detected_without_file_checksum():
    line = next(s for s in TINY.splitlines() if s.startswith("blob"))
    payload = line.split("zlib:")[1]
    bad = TINY.replace(payload, payload[:10] + ("A" if payload[10] != "A" else "B") +
                       payload[11:])
    with pytest.raises(IsaError, match="blob"):
        isa.parse(bad, check_sum=False)


def test_save_is_atomic(tmp_path):
    path = tmp_path / "p.cim"
    isa.save(tiny_program(), path)
    assert isa.load(path) == tiny_program()
    assert [p.name for p in tmp_path.iterdir()] == ["p.cim"]


_LINES = TINY.splitlines(keepends=True)
_TOKENS = ["mvm", "%y", "@w", ",", "=", "[", "]", "xb=", "rows=[0,4]", "\n", " ", "halt", "blob",
           "zlib:", "crc32=", "f32[1,4]", "\"s\"", "-inf", "nan", "1e9", "#", "text", "data"]


def _assert_only_isa_errors(text: str) -> None:
    for check in (True, False):
        try:
            isa.parse(text, check_sum=check)
        except IsaError:
            pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_fuzz_random_text(text):
    _assert_only_isa_errors(text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(TINY)), st.integers(0, 20),
                          st.one_of(st.sampled_from(_TOKENS), st.text(max_size=6))),
                min_size=1, max_size=4))
def test_fuzz_mutated_programs(edits):
    text = TINY
    for pos, cut, insert in edits:
        pos = min(pos, len(text))
        text = text[:pos] + insert + text[pos + cut:]
    _assert_only_isa_errors(text)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, len(_LINES) - 1), min_size=1, max_size=len(_LINES)))
def test_fuzz_line_shuffles(order):
    _assert_only_isa_errors("".join(_LINES[i] for i in order))


# --- issue 10: every opcode verified ---------------------------------------------------------

def _ins(op: str, *operands: str, **attrs) -> Instr:
    return Instr(op, operands, tuple((k, tuple(v) if isinstance(v, list) else v)
                                     for k, v in attrs.items()))


def every_opcode_program() -> Program:
    """A small, valid, batch-free program that uses every opcode at least once."""
    shapes = {"x": (1, 2, 4, 4), "p": (1, 16, 18), "c": (1, 16, 3), "u": (1, 3, 4, 4),
              "m": (1, 3, 2, 2), "a": (1, 3, 2, 2), "g": (1, 3, 1, 1), "s": (1, 3, 2, 2),
              "f": (1, 12), "t": (1, 2, 2, 3), "cc": (1, 6, 2, 2), "pd": (1, 3, 4, 4),
              "sm": (1, 12), "pj": (1, 2, 6), "cb": (1, 2, 2), "dm": (1, 2, 3), "dn": (1, 2, 3),
              "ln": (1, 3, 2, 2), "rm": (1, 3, 1, 1), "rs": (1, 3), "sl": (1, 3, 1, 2),
              "ga": (1, 2), "pt": (1, 6, 2), "bm": (1, 2, 2), "wm": (1, 2, 2),
              "ip": (1, 3, 3, 2)}
    conv = dict(kernel=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1])
    pool = dict(kernel=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], dilations=[1, 1], ceil=0)
    tile = dict(xb=1, rows=[0, 18], cols=[0, 3])
    text = [_ins("write", "@w", **tile), _ins("barrier", label="inference"),
            _ins("im2col", "%p", "%x", **conv), _ins("fill", "%c", value=0.0),
            _ins("write", "@w", **tile, low_slices=2, low_write=0.5, low_seed=7),
            _ins("mvm", "%c", "%p", **tile, vecs=[0, 16]), _ins("unpatch", "%u", "%c"),
            _ins("maxpool", "%m", "%u", **pool),
            _ins("avgpool", "%a", "%u", **pool, count_pad=0),
            _ins("gavgpool", "%g", "%u"), _ins("gmaxpool", "%g", "%u"),
            _ins("add", "%s", "%m", "%a"), _ins("sub", "%s", "%s", "%g"),
            _ins("mul", "%s", "%s", "@k"), _ins("div", "%s", "%s", "@k"),
            _ins("relu", "%s", "%s"), _ins("leakyrelu", "%s", "%s", alpha=0.1),
            _ins("clip", "%s", "%s", min=-1.0, max=6.0), _ins("sigmoid", "%s", "%s"),
            _ins("tanh", "%s", "%s"), _ins("hardsigmoid", "%s", "%s", alpha=0.2, beta=0.5),
            _ins("lrn", "%s", "%s", size=3, alpha=1e-4, beta=0.75, bias=1.0),
            _ins("reshape", "%f", "%s"), _ins("permute", "%f", "%f", "@pm"),
            _ins("transpose", "%t", "%s", perm=[0, 2, 3, 1]),
            _ins("concat", "%cc", "%m", "%a", axis=1),
            _ins("pad", "%pd", "%m", pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="reflect", value=0.0),
            _ins("copy", "%sm", "@b"), _ins("add", "%sm", "%sm", "%f"),
            _ins("softmax", "%sm", "%sm", axis=1), _ins("reshape", "%pj", "%f"),
            _ins("fill", "%cb", value=0.0),
            _ins("combine", "%cb", "%pj", "@lv", "@sc", bits=4, unit=3),
            _ins("dmatmul", "%dm", "%pj", "@dw", "@db"), _ins("dmatmul", "%dn", "%pj", "@dw"),
            _ins("layernorm", "%ln", "%s", "@k", "@k", axis=1, epsilon=1e-5),
            _ins("pow", "%ln", "%ln", "@two"), _ins("neg", "%ln", "%ln"),
            _ins("exp", "%ln", "%ln"), _ins("add", "%ln", "%ln", "@two"),
            _ins("sqrt", "%ln", "%ln"), _ins("reciprocal", "%ln", "%ln"),
            _ins("erf", "%ln", "%ln"), _ins("abs", "%ln", "%ln"), _ins("add", "%ln", "%ln", "@two"),
            _ins("log", "%ln", "%ln"),
            *(_ins(k, "%ln", "%ln") for k in ("floor", "ceil", "round", "sign", "sin", "cos",
                                              "softplus", "softsign", "hardswish", "mish")),
            _ins("elu", "%ln", "%ln", alpha=1.0), _ins("celu", "%ln", "%ln", alpha=0.5),
            _ins("selu", "%ln", "%ln", alpha=1.67, gamma=1.05),
            _ins("thresholdedrelu", "%ln", "%ln", alpha=0.1),
            _ins("shrink", "%ln", "%ln", bias=0.1, lambd=0.5),
            _ins("max", "%ln", "%ln", "@k"), _ins("min", "%ln", "%ln", "%s"),
            _ins("prelu", "%ln", "%ln", "@k"),
            *(_ins(k, "%ln", "%ln", "%s") for k in ("less", "lessorequal", "greater",
                                                    "greaterorequal", "equal", "and", "or",
                                                    "xor")),
            _ins("not", "%ln", "%ln"), _ins("tobool", "%ln", "%ln"),
            _ins("where", "%ln", "%ln", "%s", "@k"),
            _ins("rmsnorm", "%ln", "%ln", "@k", axis=1, epsilon=1e-5),
            _ins("logsoftmax", "%ln", "%ln", axis=1),
            _ins("gelu", "%ln", "%ln", approximate="tanh"),
            _ins("reducemean", "%rm", "%ln", axes=[2, 3], keepdims=1),
            _ins("reducesum", "%rs", "%ln", axes=[2, 3], keepdims=0),
            _ins("abs", "%ln", "%ln"),  # a positive sum for reducelogsum
            *(_ins(k, "%rs", "%ln", axes=[2, 3], keepdims=0) for k in (
                "reducemax", "reducemin", "reduceprod", "reducel1", "reducel2",
                "reducesumsquare", "reducelogsum", "reducelogsumexp")),
            *(_ins(k, "%sl", "%ln", axes=[2], keepdims=1) for k in ("argmax", "argmin")),
            _ins("slice", "%sl", "%ln", starts=[0, 0, 1, 0], ends=[1, 3, 2, 2],
                 steps=[1, 1, 1, 1]),
            _ins("gather", "%ga", "%f", "@ix", axis=1),
            _ins("interp", "%ip", "%ln", "@ri", "@rw", axis=2),
            _ins("transpose", "%pt", "%pj", perm=[0, 2, 1]),
            _ins("dbmm", "%bm", "%pj", "%pt"), _ins("wbmm", "%wm", "%pj", "%pt", xbs=[0]),
            _ins("halt")]
    rng = np.random.default_rng(0)
    blobs = [Blob("w", rng.standard_normal((18, 3)).astype(np.float32)),
             Blob("k", np.array([1.0, 2.0, 4.0], np.float32).reshape(3, 1, 1)),
             Blob("b", np.linspace(0, 1, 12, dtype=np.float32)),
             Blob("lv", rng.integers(-7, 8, (6, 2)).astype(np.float32)),
             Blob("sc", np.array([0.5, 0.25], np.float32)),
             Blob("dw", rng.standard_normal((6, 3)).astype(np.float32)),
             Blob("db", np.array([0.5, -1.0, 2.0], np.float32)),
             Blob("pm", rng.permutation(12).astype(np.float32)),
             Blob("two", np.array([2.0], np.float32)),
             Blob("ix", np.array([3.0, 5.0], np.float32)),
             Blob("ri", np.array([[0, 1], [1, 0], [1, 1]], np.float32)),
             Blob("rw", np.array([[0.5, 0.5], [1, 0], [0.25, 0.75]], np.float32))]
    return Program(chip=ChipGeometry(xbars=2), batch=1, batch_free=True,
                   ports=[Port("input", "x", "x"), Port("output", "y", "sm"),
                          Port("output", "z", "cb"), Port("output", "t", "t"),
                          Port("output", "cc", "cc"), Port("output", "pd", "pd"),
                          Port("output", "dm", "dm"), Port("output", "dn", "dn")],
                   buffers=[Buffer(k, TensorType("f32", v)) for k, v in shapes.items()],
                   text=text, blobs=blobs)


EVERY = isa.print_program(every_opcode_program())


def test_every_opcode_program_verifies_and_runs_in_every_mode():
    from isa.verify import CHECKS
    from runtime import run
    program = isa.parse(EVERY)
    assert {ins.op for ins in program.text} == set(OPCODES) == set(CHECKS)
    x = np.random.default_rng(1).standard_normal((3, 2, 4, 4)).astype(np.float32)
    for mode in ("ideal", "quantized", "analog"):
        outputs = run(program, x, mode=mode).outputs
        assert outputs["y"].shape == (3, 12) and outputs["pd"].shape == (3, 3, 4, 4)
    assert run(program, mode="timing").stats["latency_ns_per_inference"] > 0


# (old text, new text, what the error says): each an out-of-range operand or attribute
VERIFIER_CASES = [
    ("write @w xb=1", "write @w xb=2", "write: crossbar 2 outside the chip's 2"),
    ("write @w xb=1 rows=[0,18]", "write @w xb=1 rows=[-1,18]",
     "rows [-1, 18] outside the 18 rows of blob @w"),
    ("write @w xb=1 rows=[0,18] cols=[0,3]", "write @w xb=1 rows=[0,18] cols=[0,4]",
     "cols [0, 4] outside the 3 columns of blob @w"),
    ("write @w xb=1 rows=[0,18] cols=[0,3]", "write @w xb=1 rows=[0,18] cols=[3,3]",
     "must be [start,stop] windows"),
    ("write @w", "write @k", "a tile needs a 2-D blob"),
    ("rows=128", "rows=16", "tile 18x3 exceeds the crossbar (16x16 weights)"),
    ("mvm %c, %p", "mvm %c, @w", "mvm: source @w must be a buffer"),
    ("vecs=[0,16]", "vecs=[0,17]", "vecs [0, 17] outside the 16 input vectors of %p"),
    ("vecs=[0,16]", "vecs=[-1,16]", "vecs [-1, 16] outside"),
    ("mvm %c, %p xb=1 rows=[0,18]", "mvm %c, %p xb=1 rows=[0,19]",
     "rows [0, 19] outside the 18 inputs of %p"),
    ("mvm %c, %p xb=1 rows=[0,18] cols=[0,3]", "mvm %c, %p xb=1 rows=[0,18] cols=[1,4]",
     "cols [1, 4] outside the 3 outputs of %c"),
    ("mvm %c, %p xb=1", "mvm %c, %p xb=-1", "mvm: crossbar -1 outside the chip's 2"),
    ("mvm %c, %p", "mvm %u, %p", "%u [1, 3, 4, 4] does not hold the 1x16 vectors of %p"),
    ("bits=4", "bits=1", "combine: bits 1 is out of range (2..25)"),
    ("bits=4", "bits=2", "levels @lv must be integers within +-1 (2 bits)"),
    ("unit=3", "unit=4", "unit 4 does not divide the 6 rows of @lv"),
    ("unit=3", "unit=0", "unit 0 does not divide"),
    ("@lv, @sc", "@sc, @lv", "levels @sc [2] and scale @lv [6, 2] are not [J, M] and [M]"),
    ("combine %cb, %pj", "combine %cb, %f", "%f [1, 12] @ @lv [6, 2] does not give %cb"),
    ("dmatmul %dm, %pj", "dmatmul %dm, %f", "dmatmul: %f [1, 12] @ @dw [6, 3] does not give "
                                            "%dm [1, 2, 3]"),
    ("dmatmul %dm, %pj", "dmatmul %dm, @dw", "dmatmul: source @dw must be a buffer"),
    ("dmatmul %dm, %pj, @dw, @db", "dmatmul %dm, %pj, @db, @db", "weight @db [3] is not [K, M]"),
    ("dmatmul %dm, %pj, @dw, @db", "dmatmul %dm, %pj, @dw, @sc",
     "bias @sc [2] is not [M] for weight @dw [6, 3]"),
    ("dmatmul %dm, %pj, @dw, @db", "dmatmul %dm, %pj, @dw, %pj",
     "operand 4 must be a blob @name, got %pj"),
    ("dmatmul %dm, %pj, @dw, @db", "dmatmul %dm, %pj, @dw, @db, @db",
     "dmatmul: expected operands (dst, src, blob, blob?), got 5"),
    ("dmatmul %dn, %pj, @dw", "dmatmul %dn, %pj",
     "expected operands (dst, src, blob, blob?), got 2"),
    ("pads=[1,1,1,1]", "pads=[1,1,1]", "need one value per spatial axis and pads two"),
    ("kernel=[3,3] strides=[1,1]", "kernel=[3,3] strides=[0,1]", "strides and dilations must"),
    ("pads=[1,1,1,1]", "pads=[-1,1,1,1]", "pads >= 0"),
    ("pads=[1,1,1,1]", "pads=[0,0,0,0]", "%p has shape [1, 16, 18]; the operation gives "
                                         "[1, 4, 18]"),
    ("kernel=[3,3] strides=[1,1] pads=[1,1,1,1] dilations=[1,1]",
     "kernel=[3,3] strides=[1,1] pads=[1,1,1,1] dilations=[1,9]",
     "the window (19) is larger than the padded axis 3 (6)"),
    ("im2col %p, %x", "im2col %p, %f", "%f has rank 2; the operation needs rank 4"),
    ("unpatch %u, %c", "unpatch %u, %p", "%u [1, 3, 4, 4] is not [B, M, *S] of %p"),
    ("unpatch %u, %c", "unpatch %u, %x", "%x has rank 4; the operation needs rank 3"),
    ("dilations=[1,1] ceil=0", "dilations=[1,1] ceil=2", "ceil must be 0 or 1"),
    ("count_pad=0", "count_pad=7", "ceil and count_pad must be 0 or 1"),
    ("maxpool %m, %u kernel=[2,2] strides=[2,2]", "maxpool %m, %u kernel=[2,2] strides=[1,1]",
     "%m has shape [1, 3, 2, 2]; the pooling gives [1, 3, 3, 3]"),
    ("avgpool %a, %u", "avgpool %a, %x", "%a has shape [1, 3, 2, 2]; the pooling gives "
                                         "[1, 2, 2, 2]"),
    ("gavgpool %g, %u", "gavgpool %m, %u", "%m has shape [1, 3, 2, 2]; the operation gives "
                                           "[1, 3, 1, 1]"),
    ("gmaxpool %g, %u", "gmaxpool %g, %f", "%g has shape [1, 3, 1, 1]; the operation gives "
                                           "[1, 12]"),
    ("add %s, %m, %a", "add %s, %m, %x", "source shapes [1, 3, 2, 2], [1, 2, 4, 4] do not "
                                         "broadcast to %s"),
    ("sub %s, %s, %g", "sub %s, %s, %u", "do not broadcast to %s [1, 3, 2, 2]"),
    ("mul %s, %s, @k", "mul %s, %s, @b", "do not broadcast"),
    ("div %s, %s, @k", "div %s, %s, %f", "do not broadcast"),
    ("relu %s, %s", "relu %s, %u", "%s has shape [1, 3, 2, 2]; the operation gives [1, 3, 4, 4]"),
    ("tanh %s, %s", "tanh %s, @w", "the operation gives [18, 3]"),
    ("size=3", "size=0", "lrn: size 0 must be >= 1"),
    ("lrn %s, %s", "lrn %s, %u", "%s has shape [1, 3, 2, 2]; the operation gives"),
    ("reshape %f, %s", "reshape %f, %u", "%u [1, 3, 4, 4] and %f [1, 12] hold different "
                                         "numbers of elements"),
    ("perm=[0,2,3,1]", "perm=[0,2,3,3]", "perm [0, 2, 3, 3] is not a permutation of the 4 axes"),
    ("perm=[0,2,3,1]", "perm=[0,1,2]", "is not a permutation of the 4 axes"),
    ("perm=[0,2,3,1]", "perm=[0,1,2,3]", "%t has shape [1, 2, 2, 3]; the operation gives "
                                         "[1, 3, 2, 2]"),
    ("concat %cc, %m, %a axis=1", "concat %cc, %m, %a axis=4", "axis 4 is out of range for "
                                                               "rank 4"),
    ("concat %cc, %m, %a axis=1", "concat %cc, %m, %a axis=2", "do not join along axis 2"),
    ("concat %cc, %m, %a", "concat %cc, %m, %a, %a", "do not join along axis 1"),
    ('mode="reflect"', 'mode="mirror"', "pad: mode 'mirror'; expected one of"),
    ("pads=[0,0,1,1,0,0,1,1]", "pads=[0,0,1,1,0,0,1]", "pads has 7 values; %m of rank 4 needs 8"),
    ("pads=[0,0,1,1,0,0,1,1]", "pads=[0,0,-3,1,0,0,1,1]", "pads crop axis 2 of size 2 to -1"),
    ("pads=[0,0,1,1,0,0,1,1]", "pads=[0,0,2,1,0,0,1,1]", "%pd has shape [1, 3, 4, 4]; the "
                                                         "operation gives [1, 3, 5, 4]"),
    ("softmax %sm, %sm axis=1", "softmax %sm, %sm axis=2", "axis 2 is out of range for rank 2"),
    ("softmax %sm, %sm axis=1", "softmax %sm, %sm axis=-3", "axis -3 is out of range"),
    ("copy %sm, @b", "copy %sm, @w", "source shapes [18, 3] do not broadcast to %sm [1, 12]"),
    ("  barrier", "  halt\n  barrier", "halt must be the last instruction"),
    ("  halt\n", "", "the text section must end with halt"),
    # the header
    ("xbars=2", "xbars=999999999", "chip: xbars = 999999999 is out of range (1..1048576)"),
    ("cell_bits=2", "cell_bits=0", "chip: cell_bits = 0 is out of range"),
    ("xbars=2", "xbars=2 xbars=3", "chip: field xbars given twice"),
    ("batch 1 free", "batch 0 free", "batch 0 is out of range (1..65536)"),
    ("batch 1 free", "batch 70000 fixed", "batch 70000 is out of range"),
    ("batch 1 free", "batch 2 free", "the header says 'batch 2 free' but buffer %x [1, 2, 4, 4] "
                                     "does not lead with the batch 2"),
    ("softmax %sm, %sm axis=1", "softmax %sm, %sm axis=0", "mixes samples of the batch"),
    ("buffer %x f32[1,2,4,4]", "buffer %x f32[1,1,1,1,1,1,1,2,4,4]", "has rank 10; at most 8"),
    ("buffer %x f32[1,2,4,4]", "buffer %x f32[1,-2,4,4]", "has a negative dimension"),
    ("buffer %x f32[1,2,4,4]", "buffer %x f32[65536,65536,4,4]", "has more than 2147483648 "
                                                                 "elements"),
    ("buffer %x f32[1,2,4,4] offset=0", "buffer %x f32[1,2,4,4] offset=-1",
     "buffer %x: bad attribute offset=-1"),
    ("buffer %x f32[1,2,4,4] offset=0", "buffer %x f32[1,2,4,4] offset=0 range=-1.0",
     "bad attribute range=-1.0"),
    ("buffer %x f32[1,2,4,4] offset=0", "buffer %x f32[1,2,4,4] offset=0 range=nan",
     "bad attribute range=nan"),
    ("buffer %x f32[1,2,4,4] offset=0", "buffer %x f32[1,2,4,4] offset=0 range=inf",
     "bad attribute range=inf"),
    ("f32[18,3]", "f32[65536,65536]", "blob @w: type f32[65536,65536] has more than"),
    ('output "z" %cb', 'output "y" %cb', "duplicate output name(s): y"),
    ("  copy %sm, @b\n  add %sm, %sm, %f\n  softmax %sm, %sm axis=1\n", "",
     "output 'y': no instruction writes %sm"),
    ("xbars=2", "xbars=" + "9" * 5000, "has too many digits"),
    ("interp %ip, %ln, @ri, @rw", "interp %ip, %ln, @rw, @ri",
     "@rw holds indices that are not integers in [0, 2)"),
    ("interp %ip, %ln, @ri, @rw", "interp %ip, %ln, @ri, @k",
     "@ri [3, 2] and @k [3, 1, 1] must be [out, taps] alike"),
    ("interp %ip, %ln, @ri, @rw axis=2", "interp %ip, %ln, @ri, @rw axis=-2",
     "interp: axis -2 is not an axis of %ln [1, 3, 2, 2] (0 to 3)"),
    ("interp %ip, %ln, @ri, @rw axis=2", "interp %ip, %ln, @ri, @rw axis=1",
     "interp: %ip has shape [1, 3, 3, 2]; the operation gives [1, 3, 2, 2]"),
]


@pytest.mark.parametrize("old,new,message", VERIFIER_CASES)
def test_verifier_rejects_out_of_range(old, new, message):
    text = EVERY.replace(old, new, 1)
    assert text != EVERY
    with pytest.raises(IsaError) as err:
        isa.parse(text, check_sum=False)
    assert message in str(err.value)


def test_verifier_errors_name_the_line():
    text = EVERY.replace("vecs=[0,16]", "vecs=[0,17]")
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "vecs=[0,17]" in s)
    with pytest.raises(IsaError) as err:
        isa.parse(text, check_sum=False)
    assert err.value.line == line and str(err.value).startswith(f"line {line}:1: mvm:")


def test_header_limit_names_line_and_column():
    with pytest.raises(IsaError) as err:
        isa.parse(EVERY.replace("xbars=2", "xbars=999999999"), check_sum=False)
    assert (err.value.line, err.value.column) == (2, 6)


def test_verifier_checks_programs_built_in_memory():
    from isa.verify import verify
    p = every_opcode_program()
    p.blobs[0] = Blob("w", np.full((18, 3), np.nan, np.float32))
    with pytest.raises(IsaError, match="write: @w holds NaN or infinite values"):
        verify(p)
    p = every_opcode_program()
    p.text[4] = Instr("mvm", ("%c",), p.text[4].attrs)
    with pytest.raises(IsaError, match=r"mvm: expected operands \(dst, src\)"):
        verify(p)
    p = every_opcode_program()
    p.text[3] = Instr("fill", ("@w",), (("value", 0.0),))
    with pytest.raises(IsaError, match=r"operand 1 \(@w\) must be a buffer"):
        verify(p)
    p = every_opcode_program()
    p.chip = ChipGeometry(xbars=0)
    with pytest.raises(IsaError, match="xbars = 0 is out of range"):
        verify(p)


# --- issue 10: blobs decode within their declared size ---------------------------------------

def _with_blob_line(text: str, name: str, ttype: str, payload: bytes, crc: str = "") -> str:
    lines = text.splitlines(keepends=True)
    i = next(i for i, s in enumerate(lines) if s.startswith(f"blob @{name} "))
    crc = crc or lines[i].split("crc32=")[1][:8]
    lines[i] = f"blob @{name} crc32={crc} {ttype} zlib:{base64.b64encode(payload).decode()}\n"
    return "".join(lines)


def test_zero_bomb_is_a_valid_stream():
    stream = zlib.decompressobj()
    total, data = 0, zero_bomb(64 << 20)
    while not stream.eof:
        total += len(stream.decompress(data, 1 << 24))
        data = stream.unconsumed_tail
    assert total == 64 << 20 and not stream.unused_data


def test_blob_that_inflates_past_its_declared_size_is_refused():
    text = _with_blob_line(TINY, "w", "f32[4,3]", zero_bomb(64 << 20))
    with pytest.raises(IsaError, match=r"blob @w: blob payload of \d+ characters is longer"):
        isa.parse(text, check_sum=False)
    # a payload short enough to pass the length bound still stops one byte past the declared size
    text = _with_blob_line(TINY, "w", "f32[4096,3]", zero_bomb(1 << 20))
    with pytest.raises(IsaError, match="blob @w: blob payload inflates to more than its "
                                       "declared 49152 bytes"):
        isa.parse(text, check_sum=False)


def test_blob_payload_too_short_for_its_type_is_refused_before_allocating():
    text = _with_blob_line(TINY, "w", "f32[16384,16384]", zlib.compress(bytes(48)))
    with pytest.raises(IsaError, match=r"blob @w: blob payload of \d+ bytes is too short for "
                                       r"any zlib stream of its declared f32\[16384,16384\]"):
        isa.parse(text, check_sum=False)


@pytest.mark.parametrize("payload,message", [
    (zlib.compress(bytes(40)), "blob holds 40 bytes, its type needs 48"),
    (zlib.compress(bytes(48))[:-3], "the zlib stream is truncated"),
    (zlib.compress(bytes(48)) + b"tail", "followed by extra data"),
    (b"not zlib at all", "blob payload is corrupt"),
])
def test_blob_stream_must_match_its_type_exactly(payload, message):
    with pytest.raises(IsaError, match=message):
        isa.parse(_with_blob_line(TINY, "w", "f32[4,3]", payload), check_sum=False)


def test_blobs_must_fit_in_available_memory(monkeypatch):
    from isa import limits
    monkeypatch.setattr(limits, "available_bytes", lambda: 40)
    with pytest.raises(IsaError) as err:
        isa.parse(TINY)
    line = TINY.splitlines().index(next(s for s in TINY.splitlines() if s.startswith("blob")))
    assert str(err.value) == ("decoding the program's 1 blob(s) needs 48 bytes, this machine has "
                              f"40 bytes available; the largest is line {line + 1}: blob @w "
                              "f32[4,3]")


def test_file_size_is_checked_before_reading(tmp_path, monkeypatch):
    from isa import limits
    path = tmp_path / "p.cim"
    path.write_text(TINY)
    monkeypatch.setattr(limits, "MAX_FILE_BYTES", 100)
    with pytest.raises(IsaError, match=r"p.cim: \d+ bytes is larger than any program "
                                       r"\(100 bytes at most\)"):
        isa.load(path)


def test_declared_total_is_bounded(monkeypatch):
    from isa import limits
    monkeypatch.setattr(limits, "MAX_DECLARED_BYTES", 64)
    with pytest.raises(IsaError, match=r"declares 76 bytes of buffers and blobs "
                                       r"\(at most 64 bytes\)"):
        isa.parse(TINY)


def test_available_bytes_respects_the_address_space_limit():
    import resource
    import subprocess
    import sys
    code = ("import resource; from isa.limits import available_bytes; "
            "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.RLIM_INFINITY)); "
            "print(available_bytes())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert 0 < int(out) < 3 << 30
    assert resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY


def test_buffers_live_at_once_may_not_share_scratchpad_bytes():
    import dataclasses

    from conftest import model_path

    from compiler import compile_model
    program = compile_model(model_path("digits_cnn"))
    isa.verify.verify(program)  # the allocator's layout passes
    assert any(b.offset for b in program.buffers)
    im2col = next(i for i in program.text if i.op == "im2col")  # reads x while writing dst
    both = {ref[1:] for ref in im2col.operands}
    program.buffers = [dataclasses.replace(b, offset=0) if b.name in both else b
                       for b in program.buffers]
    assert any(b.offset for b in program.buffers)  # still a declared layout
    with pytest.raises(IsaError, match="are live at the same time but overlap"):
        isa.verify.verify(program)


def test_the_line_reader_and_the_grammar_read_programs_alike(monkeypatch):
    """Instruction and blob lines are read without the grammar (issue 14: fast loads); with
    that reader switched off, the grammar reads every program to the same value."""
    from conftest import model_path

    import isa.parser as parser
    from compiler import compile_model
    texts = [EVERY, isa.print_program(compile_model(model_path("digits_cnn"), max_xbars=3,
                                                    bit_stucking="0.5:2"))]
    fast = [isa.parse(t) for t in texts]
    monkeypatch.setattr(parser, "_fast_text", lambda head, transformer: None)
    assert [isa.parse(t) for t in texts] == fast


def test_text_line_is_the_line_the_parser_records():
    from conftest import model_path

    from compiler import compile_model
    from isa.printer import text_line
    program = isa.parse(isa.print_program(compile_model(model_path("digits_cnn"))))
    assert [i.line for i in program.text] == [text_line(program, k)
                                              for k in range(len(program.text))]


@pytest.mark.parametrize("line,canonical", [
    ("  mvm %a, %b xb=1 rows=[0,2] cols=[0,3] vecs=[0,4]", True),
    ("mvm %a.x, %b_1 xb=12 rows=[0,128] cols=[16,32] vecs=[0,12544]   #  conv 1 ", True),
    ("\twrite @w.m xb=-1 rows=[0,2] cols=[0,3] # note", True),
    ("  write @w xb=1 rows=[0,2] cols=[0,3] low_slices=1 low_write=0.25 low_seed=3", False),
    ("  write @w xb=1 rows=[0, 2] cols=[0,3]", False),
    ("  mvm %a, @b xb=1 rows=[0,2] cols=[0,3] vecs=[0,4]", False),
    ("  mvm %a, %b rows=[0,2] xb=1 cols=[0,3] vecs=[0,4]", False),
    ("  mvm %a, %b xb=1 rows=[0,2] cols=[0,3]", False),
])
def test_canonical_lines_read_as_the_general_reader_reads_them(line, canonical):
    """The one-regex reader of mvm and write lines in the printer's form (issue 14: fast
    loads) gives what the general line reader gives; other lines it declines (None) and
    leaves to that reader, and to the grammar for errors."""
    import isa.parser as parser
    got = parser._canonical_instr(line, 9)
    assert (got is not None) == canonical
    if canonical:
        want = parser._ToProgram([]).instr(parser._instr_items(line, 9))[1]
        assert (got, got.line, got.note) == (want, want.line, want.note)


def test_the_shape_classes_of_vector_opcodes_match_the_kernels():
    """Every elementwise kernel but gelu (its own check) is an ELEMENTWISE opcode, every
    broadcasting binary kernel and Where a BROADCASTING one, and nothing else is."""
    from isa import kernels
    from isa.opcodes import BROADCASTING, ELEMENTWISE
    assert ELEMENTWISE == set(kernels.ACTIVATIONS) - {"gelu"}
    assert BROADCASTING == set(kernels.BINARY) | {"where"}
    assert all(OPCODES[k].unit == "vector" for k in ELEMENTWISE | BROADCASTING)
