"""Whole-program checks that the grammar cannot express.

After ``verify(p)``: every operand names a declared buffer or blob, names are unique, ports
bind declared buffers, crossbar indices are within the chip, write windows lie inside their
blob and fit the crossbar, and the text ends with ``halt``.
"""

from __future__ import annotations

import numpy as np

from .errors import IsaError
from .program import Program


def _dupes(names: list[str]) -> set[str]:
    seen: set[str] = set()
    return {n for n in names if n in seen or seen.add(n)}


def verify(p: Program) -> None:
    buffers, blobs = p.buffer_map(), p.blob_map()
    for kind, names in (("buffer", [b.name for b in p.buffers]),
                        ("blob", [b.name for b in p.blobs])):
        if dup := _dupes(names):
            raise IsaError(f"duplicate {kind} name(s): {', '.join(sorted(dup))}")
    for port in p.ports:
        if port.buffer not in buffers:
            raise IsaError(f"{port.kind} {port.name!r} binds undeclared buffer %{port.buffer}")
    if not p.text or p.text[-1].op != "halt":
        raise IsaError("the text section must end with halt")
    for ins in p.text:
        for ref in ins.operands:
            table, name = (buffers, ref[1:]) if ref[0] == "%" else (blobs, ref[1:])
            if name not in table:
                raise IsaError(f"{ins.op}: {ref} is not declared", ins.line, 1)
        if ins.op in ("write", "mvm"):
            _check_window(p, ins, blobs)


def _check_window(p: Program, ins, blobs) -> None:
    xb, rows, cols = ins.attr("xb"), ins.attr("rows"), ins.attr("cols")
    if not 0 <= xb < p.chip.xbars:
        raise IsaError(f"{ins.op}: crossbar {xb} outside the chip's {p.chip.xbars}", ins.line, 1)
    if len(rows) != 2 or len(cols) != 2 or rows[0] >= rows[1] or cols[0] >= cols[1]:
        raise IsaError(f"{ins.op}: rows and cols must be [start,stop] windows", ins.line, 1)
    if rows[1] - rows[0] > p.chip.rows or cols[1] - cols[0] > p.chip.weights_per_row:
        raise IsaError(f"{ins.op}: tile {rows[1] - rows[0]}x{cols[1] - cols[0]} exceeds the "
                       f"crossbar ({p.chip.rows}x{p.chip.weights_per_row} weights)", ins.line, 1)
    if ins.op == "mvm":
        src = p.buffer_map()[ins.operands[1][1:]].type.shape
        vecs = ins.attr("vecs")
        n_vec = int(np.prod(src[1:-1], dtype=np.int64)) if len(src) >= 2 else 0
        if len(vecs) != 2 or not 0 <= vecs[0] < vecs[1] <= n_vec:
            raise IsaError(f"mvm: vecs {list(vecs)} outside the {n_vec} input vectors of "
                           f"{ins.operands[1]}", ins.line, 1)
    if ins.op == "write":
        shape = blobs[ins.operands[0][1:]].data.shape
        if len(shape) != 2 or rows[1] > shape[0] or cols[1] > shape[1]:
            raise IsaError(f"write: window outside blob {ins.operands[0]} of shape {shape}",
                           ins.line, 1)
