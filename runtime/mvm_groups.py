"""Ideal-mode fast path: a run of consecutive ``mvm`` instructions with the same destination,
source and vector window is one matrix product.

Each ``mvm`` adds ``src[..., rows] @ tile`` into ``dst[..., cols]``; in float arithmetic the
sum over a layer's tiles equals one product with the matrix those tiles form. ``plan`` groups
the instructions once; ``execute_group`` assembles the matrix from whatever the crossbars hold
*now* (so it stays right under reprogramming) and does one matmul. Quantized and analog modes,
where every tile has its own ADC, do not use it.
"""

from __future__ import annotations

import numpy as np

from isa import Instr

from .semantics import as_vectors


def plan(text: list[Instr]) -> list[Instr | list[Instr]]:
    """The text with each maximal run of same-operand mvms replaced by a list of them."""
    steps: list[Instr | list[Instr]] = []
    for ins in text:
        last = steps[-1] if steps else None
        if (ins.op == "mvm" and isinstance(last, list) and last[0].operands == ins.operands
                and last[0].attr("vecs") == ins.attr("vecs")):
            last.append(ins)
        elif ins.op == "mvm":
            steps.append([ins])
        else:
            steps.append(ins)
    return steps


def execute_group(m, group: list[Instr]) -> None:
    r_lo = min(i.attr("rows")[0] for i in group)
    r_hi = max(i.attr("rows")[1] for i in group)
    c_lo = min(i.attr("cols")[0] for i in group)
    c_hi = max(i.attr("cols")[1] for i in group)
    matrix = np.zeros((r_hi - r_lo, c_hi - c_lo), np.float32)
    for ins in group:
        (r0, r1), (c0, c1) = ins.attr("rows"), ins.attr("cols")
        matrix[r0 - r_lo:r1 - r_lo, c0 - c_lo:c1 - c_lo] += m.xbar(ins.attr("xb"),
                                                                   (r1 - r0, c1 - c0), ins)
    v0, v1 = group[0].attr("vecs")
    dst, src = as_vectors(m.read(group[0].operands[0])), as_vectors(m.read(group[0].operands[1]))
    dst[:, v0:v1, c_lo:c_hi] += src[:, v0:v1, r_lo:r_hi] @ matrix
