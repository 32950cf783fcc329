"""The compiler as a plain function: ONNX model -> ``isa.Program``.

``compile_model`` runs the frontend, then each pass of the pipeline in order, optionally
verifying the IR and dumping it after every pass, then codegen.
"""

from __future__ import annotations

import os
from typing import Callable

import onnx

from isa import ChipGeometry, Program
from isa.chip import Chip

from . import backend, frontend
from .basis import BasisSet
from .basis_fit import layer_matrices
from .context import CompileContext
from .errors import CompileError
from .ir import Graph
from .passes import PASSES, PIPELINE
from .printer import format_dot, format_graph
from .verify import verify

Dump = Callable[[str, Graph], None]


def dump_to_dir(directory: str) -> Dump:
    """A dump callback writing ``NN-name.ir`` (and ``NN-name.dot``) files into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    counter = iter(range(100))

    def dump(stage: str, graph: Graph) -> None:
        stem = os.path.join(directory, f"{next(counter):02d}-{stage}")
        with open(stem + ".ir", "w") as f:
            f.write(format_graph(graph, stage))
        with open(stem + ".dot", "w") as f:
            f.write(format_dot(graph))
    return dump


def dump_to_stdout(stage: str, graph: Graph) -> None:
    print(format_graph(graph, stage))


def compile_model(model: str | onnx.ModelProto, *, chip: ChipGeometry | None = None,
                  batch: int = 1, max_xbars: int | None = None, schedule: str = "optimized",
                  chip_config: Chip | None = None, calibrate=None,
                  passes: list[str] | None = None, verify_each: bool = False,
                  dump: Dump | None = None, ctx: CompileContext | None = None,
                  basis: BasisSet | None = None) -> Program:
    """Compile an ONNX model (path or ModelProto). ``calibrate``: sample inputs (array) whose
    activation ranges set the DAC full scales. ``basis``: a BasisN decomposition
    (``compiler.basis_fit.fit`` or ``BasisSet.load``) every crossbar layer is mapped onto.
    Raises CompileError on user errors."""
    if ctx is None:
        ctx = CompileContext(chip=chip or ChipGeometry(), max_xbars=max_xbars, schedule=schedule)
        if chip_config is not None:
            ctx.chip_config = chip_config
    if basis is not None:
        model = frontend.load_model(model) if isinstance(model, str) else model
        ctx.basis, ctx.basis_reference = basis, layer_matrices(model)
    pipeline = PIPELINE if passes is None else passes
    unknown = [p for p in pipeline if p not in PASSES]
    if unknown:
        raise CompileError(f"unknown pass(es) {', '.join(unknown)}; known: {', '.join(PASSES)}")
    graph = frontend.import_model(model, batch=batch, calibrate=calibrate)
    stages = [("import", None)] + [(name, PASSES[name]) for name in pipeline]
    for stage, run in stages:
        if run is not None:
            graph = run(graph, ctx)
        if verify_each:
            verify(graph, after=stage)
        if dump is not None:
            dump(stage, graph)
    return backend.generate(graph, ctx.chip, ctx.stats.get("xbars", 1))
