"""Hostile ``.cim`` files (issue 10): a file is read within what it declares, its header within
explicit limits, a run within the memory it needs; and a fuzzer over ``cimrun``.

The fuzzer compiles the digits models (and takes test_isa's program that uses every opcode),
mutates their text (numbers in the header, buffers and attributes; deleted, duplicated and
swapped lines; swapped opcodes and operands; blob shapes and payloads), re-seals the checksums
and runs ``cimrun`` on each mutant in ideal, quantized and timing mode. Every outcome must be
exit status 0, or status 2 with exactly one line on stderr: never a traceback. It runs in a
child process (``python tests/test_fuzz.py``) under a 3 GB address-space limit, with
``cimrun``'s ``main`` called in-process so that 200 mutants take seconds, not minutes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import re
import resource
import subprocess
import sys
import time
import traceback
import zlib

import numpy as np
import pytest
from conftest import MODELS, ROOT, zero_bomb  # the tests folder is on sys.path, as a script too
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

LIMIT_AS = 3 << 30
EXAMPLES = 200
MODES = ("ideal", "quantized", "timing")


# --- building and re-sealing programs --------------------------------------------------------

def _blob_crc(payload: str) -> str | None:
    """CRC-32 of what a blob payload inflates to (at most 64 MB of it), or None if it does
    not decode."""
    try:
        stream = zlib.decompressobj()
        raw = stream.decompress(base64.b64decode(payload, validate=True), 64 << 20)
    except (binascii.Error, zlib.error):
        return None
    return f"{zlib.crc32(raw):08x}" if stream.eof else None


_BLOB = re.compile(r"^(blob \S+ crc32=)([0-9a-f]{8})( .* zlib:)(\S*)$", re.M)


def reseal(text: str) -> str:
    """``text`` with each blob's CRC recomputed where its payload decodes, and the final
    ``end crc32=`` line recomputed over everything before it (as ``isa.printer`` does)."""
    def blob(m: re.Match) -> str:
        return m.group(1) + (_blob_crc(m.group(4)) or m.group(2)) + m.group(3) + m.group(4)
    body = _BLOB.sub(blob, text.split("\nend crc32=")[0].rstrip("\n") + "\n")
    return body + f"end crc32={zlib.crc32(body.encode('utf-8')):08x}\n"


def compiled(name: str, **options) -> str:
    """The text of a bundled model compiled at test time."""
    import isa
    from compiler import compile_model
    return isa.print_program(compile_model(os.path.join(MODELS, f"{name}.onnx"), **options))


# --- mutations: each edits a list of lines, picking its target by index modulo the count ---

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?![\w.])")
_REF = re.compile(r"[%@][A-Za-z0-9_.]+")


def _code(line: str) -> str:
    """The part of a line whose numbers a mutation may change (no payload, no comment)."""
    return line.split(" zlib:")[0].split("#")[0]


def _number(lines: list[str], k: int) -> tuple[int, re.Match]:
    found = [(i, m) for i, line in enumerate(lines) for m in _NUMBER.finditer(_code(line))]
    return found[k % len(found)]


def _line(lines: list[str], k: int, prefix: str) -> int:
    """The index of the k-th line starting with ``prefix`` (modulo their count)."""
    found = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    return found[k % len(found)]


def set_number(lines, k, value):
    """Replace a number of the header, a buffer, a type or an attribute."""
    i, m = _number(lines, k)
    lines[i] = lines[i][:m.start()] + str(value) + lines[i][m.end():]


def nudge_number(lines, k, delta):
    """Add ``delta`` to a number: mutants near the original reach the runtime more often."""
    i, m = _number(lines, k)
    lines[i] = lines[i][:m.start()] + str(int(m.group()) + delta) + lines[i][m.end():]


def delete_line(lines, k):
    del lines[k % len(lines)]


def duplicate_line(lines, k):
    k %= len(lines)
    lines.insert(k, lines[k])


def swap_lines(lines, k, j):
    k, j = k % len(lines), j % len(lines)
    lines[k], lines[j] = lines[j], lines[k]


def toggle_batch_mode(lines):
    """``batch N free`` <-> ``batch N fixed``."""
    i = _line(lines, 0, "batch ")
    lines[i] = re.sub(r"free|fixed", lambda m: "fixed" if m.group() == "free" else "free",
                      lines[i])


def set_opcode(lines, k, op):
    i = _line(lines, k, "  ")
    lines[i] = re.sub(r"^  [a-z0-9_]+", "  " + op, lines[i])


def set_operand(lines, k, j):
    """Replace an operand of an instruction with any name the program declares."""
    i = _line(lines, k, "  ")
    refs = list(_REF.finditer(_code(lines[i])))
    names = sorted({m.group() for line in lines for m in _REF.finditer(_code(line))})
    if refs:
        m = refs[j % len(refs)]
        lines[i] = lines[i][:m.start()] + names[j % len(names)] + lines[i][m.end():]


def swap_operands(lines, k):
    """Reverse the operands of an instruction."""
    i = _line(lines, k, "  ")
    code = _code(lines[i])
    order = iter([m.group() for m in _REF.finditer(code)][::-1])
    lines[i] = _REF.sub(lambda m: next(order), code) + lines[i][len(code):]


def set_blob_shape(lines, k, dims):
    i = _line(lines, k, "blob ")
    lines[i] = re.sub(r"f32\[[^\]]*\]", f"f32[{','.join(map(str, dims))}]", lines[i], count=1)


PAYLOADS = {
    "bomb": lambda: zero_bomb(64 << 20),
    "zeros": lambda: zlib.compress(bytes(4096)),
    "short": lambda: zlib.compress(bytes(8)),
    "garbage": lambda: b"\x78\x9c" + bytes(range(256)),
}


def set_blob_payload(lines, k, kind):
    i = _line(lines, k, "blob ")
    payload = base64.b64encode(PAYLOADS[kind]()).decode("ascii")
    lines[i] = lines[i].split(" zlib:")[0] + " zlib:" + payload


def _ints():
    return st.one_of(
        st.sampled_from([0, 1, -1, 2, 3, 8, 16, 64, 127, 128, 255, 4096, 65536, 65537, 1 << 20,
                         (1 << 20) + 1, 1 << 31, 1 << 32, 1 << 63, 999999999, -999999999,
                         10 ** 30]),
        st.integers(-5, 300))


def _edits():
    from isa import OPCODES
    k = st.integers(0, 10 ** 6)
    return st.one_of(
        st.tuples(st.just(set_number), k, _ints()),
        st.tuples(st.just(nudge_number), k, st.integers(-3, 3)),  # twice: twice as likely
        st.tuples(st.just(nudge_number), k, st.integers(-3, 3)),
        st.tuples(st.just(toggle_batch_mode)),
        st.tuples(st.just(delete_line), k),
        st.tuples(st.just(duplicate_line), k),
        st.tuples(st.just(swap_lines), k, k),
        st.tuples(st.just(set_opcode), k, st.sampled_from(sorted(OPCODES))),
        st.tuples(st.just(set_operand), k, k),
        st.tuples(st.just(swap_operands), k),
        st.tuples(st.just(set_blob_shape), k, st.lists(_ints(), max_size=3)),
        st.tuples(st.just(set_blob_payload), k, st.sampled_from(sorted(PAYLOADS))))


def mutate(text: str, edits) -> str:
    """Apply ``edits`` (function, arguments...) to the lines of ``text``, then re-seal."""
    lines = text.split("\nend crc32=")[0].split("\n")
    for edit, *args in edits:
        edit(lines, *args)
    return reseal("\n".join(lines) + "\n")


# --- running cimrun in-process ---------------------------------------------------------------

def run_cimrun(argv: list[str]) -> tuple[object, str]:
    """(exit status, stderr) of ``cimrun argv``; status "traceback" with the traceback as
    stderr when it raised."""
    from runtime.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code
        except BaseException:  # anything else is a crash: report it
            return "traceback", traceback.format_exc()
    return status, err.getvalue()


def check_outcome(status, stderr: str, what: str) -> None:
    """0 (no traceback), or 2 with exactly one ``cimrun: error:`` line."""
    assert status in (0, 2), f"{what}: status {status}\n{stderr}"
    if status == 2:
        assert stderr.startswith("cimrun: error: ") and stderr.count("\n") == 1, \
            f"{what}: not one error line:\n{stderr}"
    assert "Traceback" not in stderr, f"{what}:\n{stderr}"


_PROGRAMS: dict[str, str] = {}
SUBJECTS = ["digits_mlp", "digits_cnn", "every_opcode"]


def _program(name: str) -> str:
    """A subject's text: a compiled digits model, or test_isa's program using every opcode."""
    if name not in _PROGRAMS:
        from test_isa import EVERY
        options = {"digits_cnn": {"max_xbars": 4}}.get(name, {})
        _PROGRAMS[name] = EVERY if name == "every_opcode" else compiled(name, **options)
    return _PROGRAMS[name]


def _input(name: str, workdir: str) -> str:
    """The .npy input of a subject: two samples, so that runs scale the batch (or, with
    ``batch N fixed``, go in chunks)."""
    path = os.path.join(workdir, f"{name}.npy")
    if not os.path.exists(path):
        x = np.random.default_rng(0).standard_normal((2, 2, 4, 4), np.float32) \
            if name == "every_opcode" else np.load(os.path.join(MODELS, "digits_test_x.npy"))[:2]
        np.save(path, x)
    return path


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.sampled_from(SUBJECTS), st.lists(_edits(), min_size=1, max_size=3))
def fuzz_cimrun(workdir: str, name: str, edits) -> None:
    """One mutant through cimrun in every mode (called with a scratch directory)."""
    path = os.path.join(workdir, "mutant.cim")
    with open(path, "w", encoding="utf-8") as f:
        f.write(mutate(_program(name), edits))
    extra = {"ideal": ["--report", os.path.join(workdir, "report.json")],
             "timing": ["--trace", os.path.join(workdir, "trace.json")]}
    for mode in MODES:
        argv = [path, "--mode", mode, "-q"] + extra.get(mode, [])
        if mode != "timing":
            argv += ["--input", _input(name, workdir), "-o", os.path.join(workdir, "out.npz")]
        check_outcome(*run_cimrun(argv), f"{name} {edits} --mode {mode}")


def _child_main(workdir: str) -> None:
    """The fuzz loop, in a process limited to ``LIMIT_AS`` bytes of address space."""
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, resource.RLIM_INFINITY))
    fuzz_cimrun(workdir)


def test_fuzzed_programs_never_crash_cimrun(tmp_path):
    start = time.perf_counter()
    child = subprocess.run([sys.executable, os.path.abspath(__file__), str(tmp_path)],
                           capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-8000:]
    assert time.perf_counter() - start < 300


def test_harness_reseals_and_reports_tracebacks(monkeypatch):
    import isa
    import runtime.cli
    text = _program("digits_mlp")
    assert mutate(text, [(set_number, 0, 1)]) == text  # "cim 1" again: re-sealing is exact
    assert isa.parse(mutate(text, [(nudge_number, 1, 1)])).chip.xbars == 8  # xbars=7 + 1
    monkeypatch.setattr(runtime.cli, "main", lambda argv: 1 // 0)
    status, stderr = run_cimrun(["x.cim"])
    assert status == "traceback" and "ZeroDivisionError" in stderr
    with pytest.raises(AssertionError, match="status traceback"):
        check_outcome(status, stderr, "harness")
    with pytest.raises(AssertionError, match="not one error line"):
        check_outcome(2, "cimrun: error: a\nsecond line\n", "harness")


# --- the reproduced problems of issue 10 -----------------------------------------------------

def _blob_swapped(text: str, name: str, ttype: str, payload: bytes) -> str:
    lines = text.split("\n")
    i = next(i for i, line in enumerate(lines) if line.startswith(f"blob @{name} "))
    head = lines[i].split(" f32[")[0]
    lines[i] = f"{head} {ttype} zlib:{base64.b64encode(payload).decode('ascii')}"
    return reseal("\n".join(lines))


def _cimrun_measured(path: str, limit: int | None = None) -> tuple[int, str, int, float]:
    """(status, stderr, peak RSS in bytes, seconds) of cimrun --mode timing on ``path`` in a
    fresh process (under an address-space ``limit`` if given). The peak is the process's own
    VmHWM: ru_maxrss would start from the parent's RSS, which Linux carries across exec."""
    code = ("import resource, sys\n"
            f"if {limit!r}: resource.setrlimit(resource.RLIMIT_AS, ({limit!r}, "
            "resource.RLIM_INFINITY))\n"
            "from runtime.cli import main\n"
            "status = main(sys.argv[1:])\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
            "print(int(hwm.split()[1]) * 1024)\n"
            "sys.exit(status)\n")
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", code, path, "--mode", "timing", "-q"],
                           capture_output=True, text=True, cwd=ROOT)
    return child.returncode, child.stderr, int(child.stdout), time.perf_counter() - start


def test_decompression_bomb_costs_its_declared_size_not_its_inflated_size(tmp_path):
    """The issue's 2.8 MB file whose blob inflates to 2 GB (declared: 4 MB)."""
    path = tmp_path / "bomb.cim"
    path.write_text(_blob_swapped(_program("digits_mlp"), "fc0.matrix", "f32[1024,1024]",
                                  zero_bomb(2 << 30)))
    assert 2e6 < path.stat().st_size < 3e6
    status, stderr, peak, _ = _cimrun_measured(str(path))
    assert status == 2 and stderr.count("\n") == 1
    assert re.search(r"line \d+: blob @fc0.matrix: blob payload inflates to more than its "
                     r"declared 4194304 bytes", stderr)
    assert peak < 400e6


def test_a_large_declared_blob_is_refused_before_it_is_inflated(tmp_path):
    """A consistent 4 GB blob (it really inflates to its declared size) on a process limited
    to 2 GB: refused from the declaration, naming the blob."""
    path = tmp_path / "large.cim"
    path.write_text(_blob_swapped(_program("digits_mlp"), "fc0.matrix", "f32[32768,32768]",
                                  zero_bomb(4 << 30)))
    status, stderr, peak, _ = _cimrun_measured(str(path), limit=2 << 30)
    assert status == 2 and stderr.count("\n") == 1
    assert "needs 4.3 GB" in stderr and "blob @fc0.matrix f32[32768,32768]" in stderr
    assert peak < 400e6


def test_a_billion_crossbars_fail_fast(tmp_path):
    path = tmp_path / "xbars.cim"
    path.write_text(reseal(re.sub(r"xbars=\d+", "xbars=999999999", _program("digits_mlp"))))
    status, stderr, peak, seconds = _cimrun_measured(str(path))
    assert status == 2 and stderr.count("\n") == 1
    assert "xbars = 999999999 is out of range" in stderr and "line 2:" in stderr
    assert seconds < 5 and peak < 400e6


# --- runtime.memory --------------------------------------------------------------------------

def _program_with(shape: tuple[int, ...], batch_free: bool = True):
    import isa
    p = isa.parse(_program("digits_mlp"))
    p.buffers.append(isa.Buffer("huge", isa.TensorType("f32", shape)))
    p.batch_free = batch_free
    return p


def test_estimate_counts_buffers_at_the_run_batch_and_crossbar_state():
    from runtime.memory import estimate_bytes
    p = _program_with((1, 1 << 20))
    ideal = estimate_bytes(p, 1, "ideal")
    assert ideal > 3 * 4 * (1 << 20)  # the buffer and its temporaries
    assert estimate_bytes(p, 100, "ideal") > 100 * 4 * (1 << 20)
    assert estimate_bytes(_program_with((1, 1 << 20), False), 100, "ideal") < 2 * ideal
    assert estimate_bytes(p, 1, "quantized") > ideal + 7 * 2 * 4 * 64 * 16
    assert estimate_bytes(p, 1, "analog") > estimate_bytes(p, 1, "quantized")
    assert estimate_bytes(p, 100, "timing") < 1e6


def test_check_memory_refuses_what_does_not_fit(monkeypatch):
    from isa import limits
    from runtime.errors import RunError
    from runtime.memory import check_memory, estimate_bytes
    huge = estimate_bytes(_program_with((65536, 1 << 20)), 1, "ideal")
    with pytest.raises(RunError) as err:
        check_memory(huge, "this run")
    assert re.match(r"this run needs \d+\.\d GB, this machine has \d+\.\d GB available; "
                    r"run fewer samples", str(err.value))
    check_memory(estimate_bytes(_program_with((1, 16)), 1, "ideal"), "a small run")
    monkeypatch.setattr(limits, "available_bytes", lambda: None)
    check_memory(huge, "unknown availability")


if __name__ == "__main__":
    _child_main(sys.argv[1])


# --- hand-built programs the fuzzer's mutations do not reach ------------------------------
_HEADER = ("cim 1\nchip xbars=1 rows=128 cols=128 cell_bits=2 weight_bits=8 input_bits=8 "
           "dac_bits=1 adc_bits=8\nbatch 1 fixed\n")


def _run_text(body: str, x: np.ndarray):
    import isa
    from runtime import RunError, run
    program = isa.parse(reseal(_HEADER + body))
    try:
        return run(program, x).outputs
    except RunError as exc:
        return str(exc)


def test_scalar_output_over_several_batches_is_a_run_error():
    body = ('input "x" %x\noutput "y" %y\nbuffer %x f32[1] offset=0\nbuffer %y f32[] offset=0\n'
            "text\n  reshape %y, %x\n  halt\ndata\n")
    assert _run_text(body, np.ones(1, np.float32))["y"] == 1.0
    assert "is a scalar, so its samples cannot be joined" in _run_text(body, np.ones(2,
                                                                                    np.float32))


def test_accumulating_into_a_reshaped_buffer_leaves_its_source_alone():
    """mvm adds into dst; dst made by reshape must not alias its source (a = [1, 1] stays)."""
    from isa.blobs import encode
    crc, payload = encode(np.eye(2, dtype=np.float32))
    body = ('input "x" %x\noutput "a" %a\noutput "b" %b\nbuffer %x f32[1,2] offset=0\n'
            "buffer %a f32[1,2] offset=0\nbuffer %b f32[1,2] offset=0\ntext\n"
            "  write @w xb=0 rows=[0,2] cols=[0,2]\n  fill %a value=1.0\n  reshape %b, %a\n"
            "  mvm %b, %x xb=0 rows=[0,2] cols=[0,2] vecs=[0,1]\n  halt\ndata\n"
            f"blob @w crc32={crc} f32[2,2] zlib:{payload}\n")
    out = _run_text(body, np.ones((1, 2), np.float32))
    assert np.array_equal(out["a"], [[1, 1]]) and np.array_equal(out["b"], [[2, 2]])
