"""The compiler as a plain function: ONNX model -> ``isa.Program``.

``compile_model`` checks the pipeline against the passes' contracts, runs the frontend, then
each pass of the pipeline in order, optionally verifying the IR and dumping it after every
pass, then codegen.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Callable

import onnx

from isa import ChipGeometry, Program
from isa.chip import Chip
from isa.files import write_text_atomic
from isa.limits import check_geometry

from . import backend, frontend
from .basis import BasisSet
from .basis.layers import layer_matrices
from .context import CompileContext
from .errors import CompileError
from .ir import Graph
from .limits import Limits
from .passes import PASSES, PIPELINE, check_pipeline
from .passes.basis_decompose import reconstruction_warning
from .printer import format_dot, format_graph
from .progress import bar
from .verify import verify

Dump = Callable[[str, Graph], None]


def dump_to_dir(directory: str) -> Dump:
    """A dump callback writing ``NN-name.ir`` and ``NN-name.dot`` files into ``directory``
    (created now, so that a bad path fails before any work), each file atomically."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        reason = "not a directory" if isinstance(exc, FileExistsError) else exc.strerror
        raise CompileError(f"--dump-ir {directory}: cannot create the directory "
                           f"({reason})") from None
    counter = iter(range(100))

    def dump(stage: str, graph: Graph) -> None:
        stem = os.path.join(directory, f"{next(counter):02d}-{stage}")
        write_text_atomic(stem + ".ir", format_graph(graph, stage))
        write_text_atomic(stem + ".dot", format_dot(graph))
    return dump


def dump_to_stdout(stage: str, graph: Graph) -> None:
    """A dump callback printing the IR text (not the DOT) of every stage to stdout."""
    print(format_graph(graph, stage))


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def _context(chip: ChipGeometry | None, chip_config: Chip | None, **options) -> CompileContext:
    """The context of a compile: the geometry is ``chip``, else ``chip_config``'s [arch]; the
    scheduler's timing is ``chip_config``'s (default chip) with that geometry."""
    config = chip_config or Chip()
    geometry = check_geometry(chip or config.arch, "chip geometry")
    return CompileContext(chip=geometry, chip_config=dataclasses.replace(config, arch=geometry),
                          **options)


def compile_model(model: str | onnx.ModelProto, *, chip: ChipGeometry | None = None,
                  batch: int = 1, max_xbars: int | None = None, schedule: str = "optimized",
                  chip_config: Chip | None = None, calibrate=None,
                  passes: list[str] | None = None, verify_each: bool = False,
                  dump: Dump | None = None, ctx: CompileContext | None = None,
                  basis: BasisSet | None = None, limits: Limits | None = None,
                  progress: bool = False, warn: Callable[[str], None] = _warn) -> Program:
    """Compile an ONNX model (path or ModelProto; a ModelProto is never modified).

    ``chip``: the compiled geometry (default: ``chip_config.arch``); ``chip_config``: the chip
    whose timing the scheduler estimates with. ``calibrate``: sample inputs (array) whose
    activation ranges set the DAC full scales. ``basis``: a BasisN decomposition
    (``compiler.basis.fit.fit`` or ``BasisSet.load``) every crossbar layer is mapped onto.
    ``passes``: the pipeline (default ``PIPELINE``), checked before anything runs.
    ``limits``: scratchpad and weight budgets. ``progress``: progress bars on stderr.
    ``warn``: receives one line per warning (a poorly reconstructing basis).
    Raises CompileError (or isa.IsaError for a bad geometry) on user errors."""
    pipeline = list(PIPELINE if passes is None else passes)
    check_pipeline(pipeline, then=backend.REQUIRES)
    if basis is not None and "basis-decompose" not in pipeline:
        raise CompileError("--basis needs the basis-decompose pass in --passes")
    if ctx is None:
        ctx = _context(chip, chip_config, max_xbars=max_xbars, schedule=schedule,
                       limits=limits or Limits(), progress=progress)
    if basis is not None:
        model = frontend.load_model(model) if isinstance(model, str) else model
        ctx.basis, ctx.basis_reference = basis, layer_matrices(model)
    graph = frontend.import_model(model, batch=batch, calibrate=calibrate, limits=ctx.limits)
    graph = _run_passes(graph, pipeline, ctx, verify_each, dump)
    if ctx.basis is not None:
        message = reconstruction_warning(ctx.stats.get("basis", []), ctx.basis.n)
        if message:
            warn(message)
    return backend.generate(graph, ctx.chip, ctx.stats.get("xbars", 1))


def _run_passes(graph: Graph, pipeline: list[str], ctx: CompileContext, verify_each: bool,
                dump: Dump | None) -> Graph:
    """Run ``pipeline`` on the imported ``graph``, verifying and dumping after the import and
    after every pass as asked."""
    stages = bar([("import", None)] + [(name, PASSES[name].run) for name in pipeline],
                 ctx.progress, "cimc", "pass")
    for stage, run in stages:
        stages.set_postfix_str(stage)
        if run is not None:
            graph = run(graph, ctx)
        if verify_each:
            verify(graph, after=stage)
        if dump is not None:
            dump(stage, graph)
    return graph
