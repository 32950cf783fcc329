"""The crossbar ISA: program dataclasses, the opcode table, and the .cim text format."""

from .errors import IsaError
from .opcodes import OPCODES, Opcode
from .parser import load, parse
from .printer import format_instr, print_program
from .program import FORMAT_VERSION, Blob, Buffer, ChipGeometry, Instr, Port, Program, TensorType

__all__ = ["IsaError", "OPCODES", "Opcode", "load", "parse", "format_instr", "print_program",
           "FORMAT_VERSION", "Blob", "Buffer", "ChipGeometry", "Instr", "Port", "Program",
           "TensorType", "save"]


def save(program: Program, path) -> None:
    """Write a program atomically (temporary file, then rename)."""
    import os
    import tempfile

    text = print_program(program)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".cim")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
