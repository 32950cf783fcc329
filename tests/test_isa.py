"""The .cim format: exact round trip, located errors, corruption detection, and a fuzzer that
must only ever see the parser's own error type (issue 3, point 4)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import isa
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


def test_every_opcode_has_a_documented_unit():
    assert {op.unit for op in OPCODES.values()} <= {"write", "xbar", "vector", "buffer", "control",
                                                 "combiner"}
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


def test_syntax_error_reports_line_and_column():
    text = TINY.replace("batch 1 free", "batch one free")
    with pytest.raises(IsaError) as err:
        isa.parse(text, check_sum=False)
    assert err.value.line == 3 and err.value.column == 7


def test_checksum_catches_any_edit():
    with pytest.raises(IsaError, match="checksum mismatch"):
        isa.parse(TINY.replace("max=6.0", "max=7.0"))


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
