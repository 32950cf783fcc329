"""Ideal mode: a layer's bias, its matrix product and its activation as one step.

A compiled layer is ``copy %y, @bias``, then the mvm group that adds ``x @ W`` into all of
``%y`` (``mvm_groups.plan``), then often ``relu %y, %y``. Run one by one, that writes the
broadcast bias, the product into a temporary, adds it into ``%y``, and writes the activation
into another new array: four passes over the layer's output. ``fuse`` makes such a run one
``Fused`` step: the product is computed into a new array, the bias is added into it and the
activation applied in place (three passes, no copy of the bias). The floats are the same:
``bias + t`` and ``t + bias`` are one IEEE sum, and the activations used in place
(``IN_PLACE``) compute what ``isa.kernels.ACTIVATIONS`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from isa import Instr, Program

from .mvm_groups import ideal_product, span

# Activations that can overwrite their input, fn(x, attrs) -> None; the same floats as
# isa.kernels.ACTIVATIONS.
IN_PLACE: dict[str, Callable[[np.ndarray, Mapping], None]] = {
    "relu": lambda x, a: np.maximum(x, 0, out=x),
    "clip": lambda x, a: np.clip(x, a["min"], a["max"], out=x),
}


@dataclass
class Fused:
    """``copy`` (the bias), ``group`` (mvms covering all of its destination), and ``act`` (an
    in-place activation of that destination, or None), run as one step."""

    copy: Instr
    group: list[Instr]
    act: Instr | None

    @property
    def instrs(self) -> list[Instr]:
        """The step's instructions in program order."""
        return [self.copy, *self.group] + ([self.act] if self.act is not None else [])


def instructions(step) -> list[Instr]:
    """A planned step's instructions in program order: a fused step's (``instrs``), a
    group's, or the one instruction it is."""
    return step.instrs if hasattr(step, "instrs") else step if isinstance(step, list) else \
        [step]


def fuse(steps: list, program: Program) -> list:
    """``steps`` (``mvm_groups.plan``'s) with every bias copy, mvm group over the whole of
    its destination and in-place activation of it that follow one another made one
    ``Fused`` step (the activation only if it is in ``IN_PLACE``)."""
    shapes = {b.name: b.type.shape for b in program.buffers}
    out: list = []
    i = 0
    while i < len(steps):
        if i + 1 < len(steps) and _covers(steps[i], steps[i + 1], shapes):
            nxt = steps[i + 2] if i + 2 < len(steps) else None
            act = nxt if _activates(nxt, steps[i].operands[0]) else None
            out.append(Fused(steps[i], steps[i + 1], act))
            i += 3 if act is not None else 2
        else:
            out.append(steps[i])
            i += 1
    return out


def _covers(copy, group, shapes: dict) -> bool:
    """``copy`` writes a blob into a buffer that the mvm group ``group`` then adds a product
    into, from another buffer, over all of its vectors and from its first column to its last
    (a column no tile covers keeps the bias, as it does unfused)."""
    if not (isinstance(copy, Instr) and copy.op == "copy" and copy.operands[1][0] == "@"
            and isinstance(group, list) and group[0].op == "mvm"
            and group[0].operands[0] == copy.operands[0]
            and group[0].operands[1] != copy.operands[0]):  # not the bias times a matrix
        return False
    shape = shapes[copy.operands[0][1:]]
    if len(shape) < 2:
        return False
    vectors = int(np.prod(shape[1:-1], dtype=np.int64))
    return (tuple(group[0].attr("vecs")) == (0, vectors)
            and span(group, "cols") == (0, shape[-1]))


def _activates(step, ref: str) -> bool:
    """``step`` is an activation of ``ref`` into itself that ``IN_PLACE`` can run."""
    return (isinstance(step, Instr) and step.op in IN_PLACE
            and list(step.operands) == [ref, ref])


def run_fused(m, step: Fused) -> None:
    """Run a ``Fused`` step on machine ``m`` (ideal mode)."""
    dst = step.copy.operands[0]
    y = ideal_product(m, step.group).reshape(m.shape(dst))  # a new array
    y += m.read(step.copy.operands[1]).astype(np.float32, copy=False)
    if step.act is not None:
        IN_PLACE[step.act.op](y, dict(step.act.attrs))
    m.store(dst, y)

