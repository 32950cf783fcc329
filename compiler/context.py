"""Compile options as one value passed to every pass."""

from __future__ import annotations

from dataclasses import dataclass, field

from isa import ChipGeometry
from isa.chip import Chip

from .limits import Limits


@dataclass
class CompileContext:
    chip: ChipGeometry = field(default_factory=ChipGeometry)
    max_xbars: int | None = None  # None: as many crossbars as the model needs
    schedule: str = "optimized"  # when tiles exceed crossbars: "optimized" or "naive"
    chip_config: Chip = field(default_factory=Chip)  # timing the scheduler estimates with
    stats: dict = field(default_factory=dict)  # what passes measured, for dumps and reports
    basis: object = None  # a compiler.basis.BasisSet: decompose every crossbar layer (BasisN)
    basis_reference: dict = field(default_factory=dict)  # the ONNX [K, M] matrices it was made from
    limits: Limits = field(default_factory=Limits)  # scratchpad and weight budgets
    progress: bool = False  # progress bars (on stderr) in passes that loop over many layers
    bit_stucking: object = None  # an isa.cells.LowWrite on rotating tiles' writes, or None
    digital: frozenset = frozenset()  # ONNX node names of the conv/matmul layers lowered onto
                                      # the digital MAC unit (cimc --digital)
    digital_named: frozenset = frozenset()  # those named by node (not all/first/last): a
                                            # product of two computed operands named so is
                                            # a dbmm whatever ``dynamic`` says
    dynamic: str = "digital"  # products of two computed operands: "digital" or "write"
    dynamic_xbars: int | None = None  # crossbars for "write" (None: one matrix's tiles)
