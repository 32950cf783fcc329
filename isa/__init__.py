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
    """Write a program atomically (temporary file, then rename), readable as the umask says."""
    from .files import write_text_atomic

    write_text_atomic(str(path), print_program(program))
