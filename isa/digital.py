"""The digital MAC unit (opcode ``dmatmul``) as hardware: what a program needs of it.

The unit is ``timing.digital_macs`` multiply-accumulators (a ``weight_bits`` x ``input_bits``
multiply and a 32-bit accumulate each) beside a weight SRAM that holds every ``dmatmul``
weight of the program at the chip's ``weight_bits``. It is weight-stationary: it holds
``digital_macs`` weights at a time and streams all of an instruction's vectors through them,
so each ``dmatmul`` fetches its weight from the SRAM once (``isa.timing.dmatmul_cost``).
These pure functions of a program give the sizes that timing and ``isa.resources`` charge.
"""

from __future__ import annotations

from .program import Program


def weight_bytes(elems: int, bits: int) -> int:
    """Bytes of ``elems`` weights stored at ``bits`` bits each."""
    return -(-int(elems) * int(bits) // 8)


def has_dmatmul(program: Program) -> bool:
    """Whether the program uses the digital unit at all."""
    return any(ins.op in ("dmatmul", "dbmm") for ins in program.text)


def weight_sram_bytes(program: Program) -> int:
    """The weight SRAM the program's dmatmuls need: each distinct weight blob once, at the
    program's ``weight_bits``."""
    blobs = program.blob_map()
    names = {ins.operands[2][1:] for ins in program.text if ins.op == "dmatmul"}
    return sum(weight_bytes(blobs[n].data.size, program.chip.weight_bits) for n in names)


def fetch_bytes_per_inference(program: Program) -> float:
    """Weight bytes the body's dmatmuls fetch per inference: each instruction its whole
    weight, once per pass over the compiled batch."""
    blobs = program.blob_map()
    total = sum(weight_bytes(blobs[ins.operands[2][1:]].data.size, program.chip.weight_bits)
                for ins in program.text if ins.op == "dmatmul")
    return total / program.batch
