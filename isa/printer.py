"""Print a program in the canonical text form that ``isa.parser.parse`` reads back exactly."""

from __future__ import annotations

import json
import zlib

from . import blobs
from .opcodes import OPCODES
from .program import ChipGeometry, Instr, Program


def _value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        return repr(v) if v == v else "nan"
    if isinstance(v, (tuple, list)):
        return "[" + ",".join(str(int(x)) for x in v) + "]"
    return str(int(v))


def one_line(text: str) -> str:
    """``text`` as one line of printable characters, the others escaped as Python's repr
    escapes them, ends stripped: a note as its trailing comment prints and parses back."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text).strip()


def format_instr(ins: Instr) -> str:
    spec = OPCODES[ins.op]
    parts = [ins.op]
    if ins.operands:
        parts.append(", ".join(ins.operands))
    order = list(spec.attrs)
    for key, value in sorted(ins.attrs, key=lambda kv: order.index(kv[0])):
        parts.append(f"{key}={_value(float(value) if spec.attrs[key] == 'float' else value)}")
    line = " ".join(parts)
    note = one_line(ins.note)
    return f"{line:<60} # {note}" if note else line


def _chip(chip: ChipGeometry) -> str:
    return "chip " + " ".join(f"{k}={getattr(chip, k)}" for k in chip.__dataclass_fields__)


def text_line(p: Program, index: int) -> int:
    """The 1-based line of ``p.text[index]`` in ``print_program(p)``: the ``line`` the parser
    records, so that a program compiled in memory (every ``line`` 0) and the same program
    read from its file key their noise, and name their instructions, alike."""
    return 5 + len(p.ports) + len(p.buffers) + index


def print_program(p: Program) -> str:
    """Canonical text; the last line is the file checksum over everything before it."""
    out = [f"cim {p.version}", _chip(p.chip),
           f"batch {p.batch} {'free' if p.batch_free else 'fixed'}"]
    out += [f"{port.kind} {json.dumps(port.name)} %{port.buffer}" +
            (f" ids={port.ids}" if port.ids else "") + (" ints=1" if port.ints else "") +
            (" bools=1" if port.bools else "")
            for port in p.ports]
    out += [f"buffer %{b.name} {b.type} offset={b.offset}" +
            (f" range={_value(float(b.range))}" if b.range else "") for b in p.buffers]
    out.append("text")
    out += ["  " + format_instr(ins) for ins in p.text]
    out.append("data")
    for blob in p.blobs:
        crc, payload = blobs.encode(blob.data)
        shape = ",".join(map(str, blob.data.shape))
        out.append(f"blob @{blob.name} crc32={crc} f32[{shape}] zlib:{payload}")
    body = "\n".join(out) + "\n"
    return body + f"end crc32={zlib.crc32(body.encode('utf-8')):08x}\n"
