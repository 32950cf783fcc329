"""Codegen: a scheduled, allocated graph -> ``isa.Program``.

Weight matrices become blobs; resident crossbar tiles are written in the load phase, then ops
are emitted in topological order. A kind whose row in ``compiler.ops`` names an ISA opcode is
that one instruction (the op's result, then its operands; its attributes); the others have a
rule here (``RULES``): ``xbar_matmul`` is initialise (bias or zero), the writes of rotating
tiles and one ``mvm`` per tile replica, then the fused activation in place; BasisN's
``basis_project`` is a zeroed buffer and one ``mvm`` per placement item on the shared basis
tile; ``combine`` is initialise, ``combine``, activation; ``digital_matmul`` is one ``dmatmul``
(result, input, weight, bias if any), then the activation. Every buffer sits at the scratchpad
offset allocate-buffers gave its value (``Graph.offsets``); each output port binds the buffer
of the op that computes it (canonicalize gives every graph output an op of its own).
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from isa import Blob, Buffer, ChipGeometry, Instr, Port, Program, TensorType
from isa.cells import LowWrite
from isa.printer import one_line
from isa.verify import batch_mixing

from .ir import Graph, Op
from .ops import OPS

# The passes codegen needs, in the sense of ``compiler.passes.check_pipeline``: canonical op
# kinds (canonicalize), no batchnorm kind (fold-batchnorm), crossbar ops instead of conv and
# matmul (lower-to-crossbar), a placement for every crossbar op (schedule), and scratchpad
# offsets of the final values (allocate-buffers).
REQUIRES = ("canonicalize", "fold-batchnorm", "lower-to-crossbar", "schedule",
            "allocate-buffers")

# IR kinds that map one-to-one onto an ISA opcode with the same attributes: the op table's
# rows that name one.
DIRECT = frozenset(kind for kind, row in OPS.items() if row.opcode)


def _barrier(label: str, note: str) -> Instr:
    return Instr("barrier", (), (("label", label),), note)


def _write(blob: str, xb: int, r0: int, r1: int, c0: int, c1: int, note: str,
           low: LowWrite | None = None) -> Instr:
    """A write of the blob window; ``low``: its bit stucking (rotating tiles only)."""
    return Instr("write", (blob,), (("xb", xb), ("rows", (r0, r1)), ("cols", (c0, c1)))
                 + (low.attrs() if low else ()), note)


class _Names:
    """IR names -> ISA-safe unique names (``[A-Za-z0-9_.]+``)."""

    def __init__(self):
        self.map: dict[str, str] = {}
        self.used: set[str] = set()

    def __call__(self, name: str) -> str:
        if name not in self.map:
            base = re.sub(r"[^A-Za-z0-9_.]", "_", name).strip("_.") or "t"
            cand, i = base, 1
            while cand in self.used:
                cand, i = f"{base}_{i}", i + 1
            self.used.add(cand)
            self.map[name] = cand
        return self.map[name]


class Codegen:
    def __init__(self, graph: Graph, chip: ChipGeometry, low: LowWrite | None = None):
        self.g, self.chip, self.low = graph, chip, low
        self.names = _Names()
        self.blob_names = _Names()
        self.blobs: dict[str, Blob] = {}
        self.loads: list[Instr] = []
        self.text: list[Instr] = []
        self.basis_loaded: set[int] = set()

    def ref(self, name: str) -> str:
        if self.g.is_const(name):
            bname = self.blob_names(name)
            if bname not in self.blobs:
                self.blobs[bname] = Blob(bname, np.asarray(self.g.constants[name], np.float32))
            return "@" + bname
        return "%" + self.names(name)

    def emit(self, op: str, operands, attrs=(), note=""):
        self.text.append(Instr(op, tuple(operands), tuple(attrs), note))

    def xbar_matmul(self, op: Op) -> None:
        """Initialise (bias or zero), load resident tiles, then per chunk of tiles: writes
        of rotating tiles and their mvms (fenced by barriers for the naive schedule), then
        the fused activation in place."""
        dst = self.ref(op.outputs[0])
        if len(op.inputs) > 2:
            self.emit("copy", [dst, self.ref(op.inputs[2])], note=op.origin)
        else:
            self.emit("fill", [dst], [("value", 0.0)], op.origin)
        wref, src = self.ref(op.inputs[1]), self.ref(op.inputs[0])
        for i in [i for i, res in enumerate(op.attrs["resident"]) if res]:
            self.loads += self._writes(op, i, wref)
        fenced = "chunks" in op.attrs
        for chunk in op.attrs.get("chunks") or [[i] for i in range(len(op.attrs["tiles"]))]:
            writes = [w for i in chunk if not op.attrs["resident"][i]
                      for w in self._writes(op, i, wref, self.low)]
            mvms = [m for i in chunk for m in self._mvms(op, i, dst, src)]
            if fenced:
                self.text += [_barrier("write", op.origin)] + writes + \
                    [_barrier("compute", op.origin)] + mvms
            else:  # each rotating write right before its mvm (the timing model prefetches)
                self.text += [x for pair in zip(writes, mvms) for x in pair] if writes else mvms
        self._activation(op, dst)

    @staticmethod
    def _writes(op: Op, i: int, wref: str, low: LowWrite | None = None) -> list[Instr]:
        r0, r1, c0, c1 = op.attrs["tiles"][i]
        return [_write(wref, xb, r0, r1, c0, c1, op.origin, low)
                for xb, _, _ in op.attrs["placement"][i]]

    @staticmethod
    def _mvms(op: Op, i: int, dst: str, src: str) -> list[Instr]:
        r0, r1, c0, c1 = op.attrs["tiles"][i]
        return [Instr("mvm", (dst, src), (("xb", xb), ("rows", (r0, r1)), ("cols", (c0, c1)),
                                          ("vecs", (v0, v1))), op.origin)
                for xb, v0, v1 in op.attrs["placement"][i]]

    def basis_project(self, op: Op) -> None:
        """Zero the projections, write the basis tile to every crossbar the first time (load
        phase), then one mvm per (crossbar, group of units, vector range)."""
        dst, src, tref = self.ref(op.outputs[0]), self.ref(op.inputs[0]), self.ref(op.inputs[1])
        rows, cols = self.g.constants[op.inputs[1]].shape
        for xb in sorted({p[0] for p in op.attrs["placement"]} - self.basis_loaded):
            self.loads.append(_write(tref, xb, 0, rows, 0, cols, "basis"))
            self.basis_loaded.add(xb)
        self.emit("fill", [dst], [("value", 0.0)], op.origin)
        for xb, g, v0, v1 in op.attrs["placement"]:
            self.emit("mvm", [dst, src], [("xb", xb), ("rows", (g * rows, (g + 1) * rows)),
                                          ("cols", (g * cols, (g + 1) * cols)),
                                          ("vecs", (v0, v1))], op.origin)

    def combine(self, op: Op) -> None:
        """Initialise (bias or zero), combine the projections, then the fused activation."""
        dst = self.ref(op.outputs[0])
        if len(op.inputs) > 3:
            self.emit("copy", [dst, self.ref(op.inputs[3])], note=op.origin)
        else:
            self.emit("fill", [dst], [("value", 0.0)], op.origin)
        self.emit("combine", [dst] + [self.ref(i) for i in op.inputs[:3]],
                  [("bits", op.attrs["bits"]), ("unit", op.attrs["unit"])], op.origin)
        self._activation(op, dst)

    def digital_matmul(self, op: Op) -> None:
        """One dmatmul on the digital unit (it writes dst whole), then the fused activation."""
        dst = self.ref(op.outputs[0])
        self.emit("dmatmul", [dst] + [self.ref(i) for i in op.inputs], note=op.origin)
        self._activation(op, dst)

    def _activation(self, op: Op, dst: str) -> None:
        if op.attrs.get("act"):
            kind, attrs = op.attrs["act"]
            self.emit(OPS[kind].opcode, [dst, dst], sorted(attrs.items()), op.origin)

    def direct(self, op: Op) -> None:
        """One instruction: the op's opcode, its result then operands, its attributes."""
        attrs = [(k, tuple(v) if isinstance(v, list) else v) for k, v in op.attrs.items()
                 if not k.startswith("_")]
        self.emit(OPS[op.kind].opcode, [self.ref(o) for o in op.outputs] +
                  [self.ref(i) for i in op.inputs], attrs, op.origin)

    def op(self, op: Op) -> None:
        if op.kind in RULES:
            RULES[op.kind](self, op)
        elif op.kind in DIRECT:
            self.direct(op)
        else:
            raise NotImplementedError(f"codegen has no rule for IR op {op.kind}")

    def ports(self) -> list[Port]:
        return [Port("input", n, self.names(n), self.g.index_inputs.get(n, 0),
                     n in self.g.int_inputs, n in self.g.booleans) for n in self.g.inputs] + \
            [Port("output", name, self.names(value), ints=name in self.g.int_outputs)
             for value, name in zip(self.g.outputs, self.g.output_names)]

    def buffers(self) -> list[Buffer]:
        mvm_srcs = {op.inputs[0] for op in self.g.ops()
                    if op.kind in ("xbar_matmul", "basis_project", "digital_matmul")}
        return [Buffer(bname, TensorType("f32", self.g.shape(name)), self.g.offsets[name],
                       self.g.ranges.get(name, 0.0) if name in mvm_srcs else 0.0)
                for name, bname in self.names.map.items()]


# IR kinds codegen lowers itself (their rows name no opcode).
RULES = {"xbar_matmul": Codegen.xbar_matmul, "basis_project": Codegen.basis_project,
         "combine": Codegen.combine, "digital_matmul": Codegen.digital_matmul}


def generate(graph: Graph, chip: ChipGeometry, xbars: int,
             low: LowWrite | None = None) -> Program:
    """The program of ``graph``; ``low``: bit stucking on every write of a rotating tile
    (``cimc --bit-stucking``; load-phase writes stay full)."""
    cg = Codegen(graph, chip, low)
    for name in graph.inputs:
        cg.names(name)
    for op in graph.ops():
        cg.op(op)
    ports = cg.ports()
    cg.emit("halt", [])
    start = Instr("barrier", (), (("label", "inference"),), "end of the load phase")
    program = Program(chip=replace(chip, xbars=xbars), batch=graph.batch, batch_free=False,
                      ports=ports, buffers=cg.buffers(),
                      text=[i if (note := one_line(i.note)) == i.note else replace(i, note=note)
                            for i in cg.loads + [start] + cg.text],  # notes print as comments
                      blobs=list(cg.blobs.values()))
    program.batch_free = batch_mixing(program) is None
    return program
