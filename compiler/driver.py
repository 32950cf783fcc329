"""The compiler as a plain function: ONNX model -> ``isa.Program``.

``compile_model`` checks the pipeline against the passes' contracts, runs the frontend, then
each pass of the pipeline in order, optionally verifying the IR and dumping it after every
pass, then codegen.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable
from typing import Callable

import numpy as np
import onnx

from isa import ChipGeometry, IsaError, Program
from isa.cells import LowWrite
from isa.chip import Chip, chip_of
from isa.files import write_text_atomic
from isa.limits import check_geometry

from . import backend, frontend
from .basis import BasisSet
from .basis.layers import layer_matrices
from .context import CompileContext
from .errors import CompileError
from .flags import low_write
from .ir import Graph
from .limits import Limits
from .passes import PASSES, PIPELINE, check_pipeline, with_pass
from .passes.basis_decompose import reconstruction_warning
from .passes.lower_to_crossbar import DYNAMIC, digital_layers, matrix_layers
from .printer import format_dot, format_graph
from .progress import bar
from .verify import verify

Dump = Callable[[str, Graph], None]


def dump_to_dir(directory: str) -> Dump:
    """A dump callback writing ``NN-name.ir`` and ``NN-name.dot`` files into ``directory``
    (created now, so that a bad path fails before any work), each file atomically. Dumps of
    an earlier compile there (files of that form, name a stage) are removed first, so that
    the directory holds this compile's alone; other files are left alone."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        reason = "not a directory" if isinstance(exc, FileExistsError) else exc.strerror
        raise CompileError(f"--dump-ir {directory}: cannot create the directory "
                           f"({reason})") from None
    for name in os.listdir(directory):  # an earlier compile's, which this one may not redo
        stage, dot, ext = name[3:].rpartition(".")
        if name[:2].isdigit() and name[2:3] == "-" and ext in ("ir", "dot") and (
                stage == "import" or stage in PASSES):
            os.remove(os.path.join(directory, name))
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


def _check_basis_layers(model: onnx.ModelProto, digital: frozenset) -> None:
    """BasisN fits Conv, Gemm and MatMul weights: refuse a ConvTranspose it would have to
    decompose (one ``--digital`` takes is left alone)."""
    deconv = [name for n in model.graph.node if n.op_type == "ConvTranspose"
              and (name := frontend.node_name(n)) not in digital]
    if deconv:
        raise CompileError("--basis: BasisN decomposes Conv, Gemm and MatMul layers, not "
                           f"ConvTranspose ({', '.join(deconv[:3])}); --digital "
                           f"{','.join(deconv[:3])} puts them on the digital unit")


def _chip_config(chip_config) -> Chip | None:
    """``isa.chip.chip_of`` (a Chip, or a preset name or TOML path loaded as one, as ``cimc
    --chip`` takes it), its errors CompileError."""
    try:
        return chip_of(chip_config)
    except IsaError as exc:
        raise CompileError(str(exc)) from None


def _check_arguments(batch, max_xbars, calibrate) -> None:
    """``compile_model``'s numbers and samples, as cimc's flags check them."""
    if not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or batch < 1:
        raise CompileError(f"batch {batch!r}: must be an integer of at least 1")
    if max_xbars is not None and (not isinstance(max_xbars, (int, np.integer))
                                  or isinstance(max_xbars, bool) or max_xbars < 1):
        raise CompileError(f"max_xbars {max_xbars!r}: must be an integer of at least 1 "
                           "(None: a crossbar per tile)")
    if calibrate is not None and not isinstance(calibrate, (np.ndarray, dict)):
        raise CompileError(f"calibrate must be an array of sample inputs, or {{input name: "
                           f"array}} (np.load a .npy or .npz first), not "
                           f"{type(calibrate).__name__}")  # (its arrays: check_samples)


def compile_model(model: str | onnx.ModelProto, *, chip: ChipGeometry | None = None,
                  batch: int = 1, max_xbars: int | None = None, schedule: str = "optimized",
                  chip_config: Chip | None = None, calibrate=None,
                  passes: list[str] | None = None, verify_each: bool = False,
                  dump: Dump | None = None, ctx: CompileContext | None = None,
                  basis: BasisSet | None = None, limits: Limits | None = None,
                  progress: bool = False, warn: Callable[[str], None] = _warn,
                  digital: str | Iterable[str] = (), weight_sorting: bool = False,
                  bit_stucking: str | LowWrite | None = None, dynamic: str = "digital",
                  dynamic_xbars: int | None = None) -> Program:
    """Compile an ONNX model (path or ModelProto; a ModelProto is never modified).

    ``chip``: the compiled geometry (default: ``chip_config.arch``); ``chip_config``: the chip
    whose timing the scheduler estimates with (a Chip, or a preset name or TOML path).
    ``calibrate``: sample inputs (an array, or {input name: array} for a model of several)
    whose activation ranges set the DAC full scales.
    ``basis``: a BasisN decomposition (``compiler.basis.fit.fit`` or ``BasisSet.load``) every
    crossbar layer is mapped onto.
    ``passes``: the pipeline (default ``PIPELINE``), checked before anything runs.
    ``limits``: scratchpad and weight budgets. ``progress``: progress bars on stderr.
    ``warn``: receives one line per warning (a poorly reconstructing basis).
    ``digital``: the conv/matmul layers mapped onto the digital MAC unit (``dmatmul``), as
    ``cimc --digital`` takes them: ``all``, ``first``, ``last`` or ONNX node names, a
    comma-separated string or an iterable; BasisN leaves them alone.
    ``weight_sorting``: add the sort-weights pass before schedule (``cimc --weight-sorting``).
    ``bit_stucking``: ``cimc --bit-stucking``'s FRACTION[:SLICES] (or an
    ``isa.cells.LowWrite``) on every write of a rotating tile. Both only act when the model
    reprograms (fewer ``max_xbars`` than tiles); otherwise ``warn`` says so.
    ``dynamic``: products of two computed operands on the ``digital`` unit or ``write``
    (written into ``dynamic_xbars`` crossbars at every inference; ``cimc --dynamic``).
    Raises CompileError (or isa.IsaError for a bad geometry) on user errors."""
    chip_config = _chip_config(chip_config)
    _check_arguments(batch, max_xbars, calibrate)
    pipeline = list(PIPELINE if passes is None else passes)
    if weight_sorting:
        pipeline = with_pass(pipeline, "sort-weights")
    check_pipeline(pipeline, then=backend.REQUIRES)
    if basis is not None and "basis-decompose" not in pipeline:
        raise CompileError("--basis needs the basis-decompose pass in --passes")
    if ctx is None:
        ctx = _context(chip, chip_config, max_xbars=max_xbars, schedule=schedule,
                       limits=limits or Limits(), progress=progress)
    if dynamic not in DYNAMIC:
        raise CompileError(f"--dynamic {dynamic!r} is not a policy; choose from "
                           f"{', '.join(DYNAMIC)}")
    if dynamic_xbars is not None and dynamic_xbars < 1:
        raise CompileError(f"--dynamic-xbars must be at least 1, got {dynamic_xbars}")
    ctx.dynamic, ctx.dynamic_xbars = dynamic, dynamic_xbars
    if bit_stucking is not None:
        ctx.bit_stucking = low_write(bit_stucking, ctx.chip.slices)
    model = frontend.load_model(model) if isinstance(model, str) else model
    if digital:
        entries = digital.split(",") if isinstance(digital, str) else list(digital)
        ctx.digital = digital_layers(entries, matrix_layers(model))
        ctx.digital_named = ctx.digital & set(entries)
    if basis is not None:
        _check_basis_layers(model, ctx.digital)
        ctx.basis, ctx.basis_reference = basis, layer_matrices(model)
    batch_read = frontend.symbolic_batch(model)
    graph = frontend.import_model(model, batch=batch, calibrate=calibrate, limits=ctx.limits)
    graph = _run_passes(graph, pipeline, ctx, verify_each, dump)
    if ctx.basis is not None:
        message = reconstruction_warning(ctx.stats.get("basis", []), ctx.basis.n)
        if message:
            warn(message)
    for message in (_idle_reprogramming_options(ctx, graph),
                    _idle_model_options(ctx, batch, None if batch_read else graph.batch)):
        if message:
            warn(message)
    return backend.generate(graph, ctx.chip, graph.xbars, ctx.bit_stucking)


def _idle_model_options(ctx: CompileContext, batch: int, model_batch: int | None
                        ) -> str | None:
    """A warning for options this model gives nothing to act on: a batch other than 1 where
    the model fixes its own (``model_batch``; None: some input's batch is symbolic),
    ``dynamic_xbars`` where no product is written per inference."""
    idle = []
    if batch != 1 and model_batch is not None and model_batch != batch:
        idle.append(f"--batch {batch} does nothing: the model's batch is fixed at "
                    f"{model_batch}")
    if ctx.dynamic == "write" and ctx.dynamic_xbars is not None and \
            "dynamic_xbars" not in ctx.stats:  # (without write, cimc says it is unread)
        idle.append("--dynamic-xbars does nothing: no product of two computed operands is "
                    "written to crossbars")
    return "; ".join(idle) or None


def _idle_reprogramming_options(ctx: CompileContext, graph: Graph) -> str | None:
    """A warning when weight sorting or bit stucking was asked for and has nothing to act
    on: no tile is rewritten during inference."""
    asked = [flag for flag, on in (("--weight-sorting", "sort-weights" in ctx.stats),
                                   ("--bit-stucking", ctx.bit_stucking is not None)) if on]
    rotating = any(not all(op.attrs.get("resident", [True])) for op in graph.ops()
                   if op.kind == "xbar_matmul")
    if not asked or rotating:
        return None
    return (f"{' and '.join(asked)} do{'es' if len(asked) == 1 else ''} nothing: no crossbar "
            f"is rewritten during inference (the model's {ctx.stats.get('tiles', 0)} tiles "
            "fit the crossbars; give --xbars below that to reprogram)")


MAX_ROUNDS = 8  # a fixed-point pass that still changes the graph after this many runs is a bug


def _run_pass(graph: Graph, name: str, ctx: CompileContext) -> tuple[Graph, bool]:
    """Run pass ``name``, repeated until the graph stops changing if that is its contract;
    return the graph and whether the pass changed it (its printed IR differs)."""
    spec = PASSES[name]
    before = format_graph(graph)
    changed = False
    for _ in range(MAX_ROUNDS if spec.fixed_point else 1):
        graph = spec.run(graph, ctx)
        after = format_graph(graph)
        if after == before:
            return graph, changed
        changed, before = True, after
    if spec.fixed_point:
        raise RuntimeError(f"pass {name} did not reach a fixed point in {MAX_ROUNDS} rounds")
    return graph, changed


def _run_passes(graph: Graph, pipeline: list[str], ctx: CompileContext, verify_each: bool,
                dump: Dump | None) -> Graph:
    """Run ``pipeline`` on the imported ``graph``, verifying and dumping after the import and
    after every pass as asked; ``ctx.stats["changed"]`` lists the passes that changed it."""
    stages = bar(["import"] + pipeline, ctx.progress, "cimc", "pass")
    ctx.stats["changed"] = []
    for stage in stages:
        stages.set_postfix_str(stage)
        changed = True
        if stage != "import":
            graph, changed = _run_pass(graph, stage, ctx)
            if changed:
                ctx.stats["changed"].append(stage)
        if verify_each:
            verify(graph, after=stage)
        if dump is not None:
            dump(stage, graph)
    return graph
