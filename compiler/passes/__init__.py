"""The pass registry, each pass's contract, and the default pipeline (an ordered list of names).

A contract is data: the passes that must have run before a pass (``requires``), the
earlier passes whose results it makes stale because it rewrites the graph (``invalidates``:
a schedule or a buffer allocation describes the ops and values that existed when it ran),
and whether the pass manager repeats it until the graph stops changing (``fixed_point``).
The pass manager (``compiler.driver``) records which passes changed the graph.
``check_pipeline`` walks a pipeline with these contracts, and codegen's own requirements,
before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import CompileError
from . import (
               allocate_buffers,
               basis_decompose,
               canonicalize,
               fold_batchnorm,
               fuse_activation,
               lower_to_crossbar,
               match_patterns,
               schedule,
               sort_weights,
)


@dataclass(frozen=True)
class Pass:
    """A pass: ``run(graph, ctx) -> graph``, and its contract (see the module docstring)."""
    name: str
    run: Callable
    requires: tuple[str, ...] = ()
    invalidates: tuple[str, ...] = ()
    fixed_point: bool = False  # repeated until it no longer changes the graph


ANALYSES = ("schedule", "allocate-buffers")  # results a graph rewrite makes stale
CODEGEN = "codegen"  # what consumes the pipeline's result, in messages

PASSES: dict[str, Pass] = {p.name: p for p in [
    Pass("canonicalize", canonicalize.run, (), ANALYSES, fixed_point=True),
    Pass("match-patterns", match_patterns.run, ("canonicalize",), ANALYSES),
    Pass("fold-batchnorm", fold_batchnorm.run, ("canonicalize",), ANALYSES),
    Pass("fuse-activation", fuse_activation.run, ("canonicalize",), ANALYSES),
    Pass("lower-to-crossbar", lower_to_crossbar.run, ("canonicalize",), ANALYSES),
    Pass("basis-decompose", basis_decompose.run, ("lower-to-crossbar",), ANALYSES),
    Pass("sort-weights", sort_weights.run, ("lower-to-crossbar",), ANALYSES),
    Pass("schedule", schedule.run, ("lower-to-crossbar",)),
    Pass("allocate-buffers", allocate_buffers.run),
]}

PIPELINE = ["canonicalize", "match-patterns", "fold-batchnorm", "fuse-activation",
            "lower-to-crossbar", "basis-decompose", "schedule", "allocate-buffers"]
OPTIONAL = {"sort-weights": "schedule"}  # passes a flag adds (cimc --weight-sorting), each
#                                         right before the pass named here


def with_pass(pipeline: list[str], name: str) -> list[str]:
    """``pipeline`` with the optional pass ``name`` added right before ``OPTIONAL[name]``
    (unchanged if it is there already, or if that pass is not in it: check_pipeline then
    names what is missing)."""
    before = OPTIONAL[name]
    if name in pipeline or before not in pipeline:
        return list(pipeline)
    i = pipeline.index(before)
    return pipeline[:i] + [name] + pipeline[i:]


def _require(who: str, needs: tuple[str, ...], valid: set[str], stale: dict[str, str],
             later: list[str]) -> None:
    for need in needs:
        if need in valid:
            continue
        if need in stale:
            raise CompileError(f"--passes: {who} needs {need} after {stale[need]}, which "
                               f"rewrites the graph; run {need} again after {stale[need]}")
        if need in later:
            raise CompileError(f"--passes: {who} needs {need} to run before it; move {need} "
                               f"ahead of {who}")
        missing = [n for n in needs if n not in valid and n not in stale and n not in later]
        where = "" if who == CODEGEN else f", before {who}"
        raise CompileError(f"--passes: {who} needs {', '.join(missing)}; add "
                           f"{'it' if len(missing) == 1 else 'them'} to --passes{where}")


def check_pipeline(names: list[str], then: tuple[str, ...] = ()) -> None:
    """Raise one CompileError naming the first unknown pass or unmet requirement of ``names``,
    followed by a consumer (codegen) that requires the passes ``then``."""
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise CompileError(f"--passes: unknown pass(es) {', '.join(unknown)}; known: "
                           f"{', '.join(PIPELINE + list(OPTIONAL))}")
    valid: set[str] = set()
    stale: dict[str, str] = {}
    for i, name in enumerate(names):
        _require(name, PASSES[name].requires, valid, stale, names[i + 1:])
        for old in set(PASSES[name].invalidates) & valid:
            valid.discard(old)
            stale[old] = name
        valid.add(name)
        stale.pop(name, None)
    _require(CODEGEN, then, valid, stale, [])
