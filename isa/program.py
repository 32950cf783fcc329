"""The in-memory form of a ``.cim`` program: plain dataclasses, compared by value.

A program is the whole contract between compiler and runtime: the chip geometry it was
compiled for, named inputs and outputs bound to buffers, buffer declarations, the instruction
stream, and the data blobs (weights and constants) it references.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FORMAT_VERSION = 1

DTYPES = {"f32": np.float32}


@dataclass(frozen=True)
class ChipGeometry:
    """Architectural parameters fixed at compile time and recorded in the program header."""

    xbars: int = 1
    rows: int = 128
    cols: int = 128
    cell_bits: int = 2
    weight_bits: int = 8
    input_bits: int = 8
    dac_bits: int = 1
    adc_bits: int = 8
    adc_per_step: int = 1  # 1: an ADC conversion after every input step; 0: one per MVM,
    #                        after the steps are shift-added in the analog domain

    @property
    def slices(self) -> int:
        """Cells a weight's magnitude is sliced over: its weight_bits - 1 magnitude bits,
        cell_bits a cell (the sign is the pair's: differential pairs double the cells)."""
        return -(-(self.weight_bits - 1) // self.cell_bits)

    @property
    def input_steps(self) -> int:
        """DAC steps an input vector takes: input_bits, dac_bits at a time (1: bit-serial;
        input_bits: one multi-level step, e.g. pulse-width input)."""
        return -(-self.input_bits // self.dac_bits)

    @property
    def weights_per_row(self) -> int:
        """Logical weight columns one crossbar holds: cols / (2 differential cells x slices)."""
        return max(1, self.cols // (2 * self.slices))


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class Port:
    """A named program input or output, bound to a buffer."""

    kind: str  # "input" | "output"
    name: str
    buffer: str
    ids: int = 0  # an input of token ids, integers in [0, ids) held as float32; 0: float data
    ints: bool = False  # an input of other integers, held as float32 (exact to 2**24)
    bools: bool = False  # an input of booleans, held as float32 0 and 1


@dataclass(frozen=True)
class Buffer:
    name: str
    type: TensorType
    offset: int = 0  # byte offset in the on-chip scratchpad (from buffer allocation)
    range: float = 0.0  # calibrated max |value| (DAC full scale when an MVM reads it); 0: none


@dataclass(frozen=True)
class Instr:
    op: str
    operands: tuple[str, ...]  # "%buf" or "@blob"
    attrs: tuple[tuple[str, object], ...] = ()
    note: str = ""  # provenance (ONNX node name), printed as a trailing comment
    line: int = field(default=0, compare=False)

    def attr(self, key: str, default=None):
        for k, v in self.attrs:
            if k == key:
                return v
        return default


@dataclass(eq=False)
class Blob:
    name: str
    data: np.ndarray

    def __eq__(self, other) -> bool:
        return (isinstance(other, Blob) and self.name == other.name
                and self.data.dtype == other.data.dtype and self.data.shape == other.data.shape
                and np.array_equal(self.data, other.data))


@dataclass
class Program:
    chip: ChipGeometry
    batch: int
    batch_free: bool  # True: every buffer's leading axis is the batch; any sample count runs
    ports: list[Port]
    buffers: list[Buffer]
    text: list[Instr]
    blobs: list[Blob]
    version: int = FORMAT_VERSION

    @property
    def inputs(self) -> list[Port]:
        return [p for p in self.ports if p.kind == "input"]

    @property
    def outputs(self) -> list[Port]:
        return [p for p in self.ports if p.kind == "output"]

    def buffer_map(self) -> dict[str, Buffer]:
        return {b.name: b for b in self.buffers}

    def blob_map(self) -> dict[str, Blob]:
        return {b.name: b for b in self.blobs}
