"""A workload lower bound on the body time of one pass, shared by every schedule (issue 12).

The workload is what every schedule of one model, chip and batch has in common, read from the
program alone: the distinct weight tiles the body multiplies with (the blob window each
multiplying crossbar holds), their total mvm time (linear in vectors, so the same however the
vectors are split over replicas), the digital units' work, and the chip (crossbars, write
drivers, ``isa.timing`` costs). The bound is the largest of:

(a) crossbar time: all mvm time plus the unavoidable writes, over the crossbars. At most
    ``xbars`` tiles can be resident when a pass starts, so at least ``tiles - xbars`` distinct
    tiles are written in it, each at least once and each write whole on one crossbar (it is
    never split); we take the cheapest ``tiles - xbars`` lower bounds on a tile's write;
(b) with shared write drivers, those unavoidable writes over the drivers;
(c) one write is never split: of the tiles written, at least one has a write floor no less
    than the largest of the cheapest ``tiles - xbars`` floors, and it is then multiplied at
    least once (one vector at least) on the crossbar it went to;
(d) the work of each single digital unit (vector, buffer, combiner, the digital MAC unit);
(e) the critical path of the data dependencies, writes free, each mvm no shorter than the
    share of its tile's vectors one crossbar must run (``critical_path_ns``). A tighter term
    needs a joint argument: a schedule may load one tile onto every crossbar and write the
    others during the pass, so no single tile's copies are limited by the others.

A tile's write lower bound: program-and-verify skips rows that already hold the right values,
so only rows whose (index, values) no other tile of the same width shares must be written.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from isa import Program
from isa.chip import Chip
from isa.opcodes import OPCODES
from isa.timing import ACCUMULATE, Machine, Timeline, mvm_cost, unit_of, write_cost


def mvm_tiles(program: Program) -> dict[int, tuple]:
    """Per body mvm (instruction index), the blob window (blob, r0, r1, c0, c1) it
    multiplies with."""
    content: dict[int, tuple] = {}
    tiles: dict[int, tuple] = {}
    body = False
    for i, ins in enumerate(program.text):
        if ins.op == "barrier" and ins.attr("label") == "inference":
            body = True
        elif ins.op == "write":
            (r0, r1), (c0, c1) = ins.attr("rows"), ins.attr("cols")
            content[ins.attr("xb")] = (ins.operands[0][1:], r0, r1, c0, c1)
        elif ins.op == "mvm" and body:
            tiles[i] = content.get(ins.attr("xb"), ("", ins.attr("xb"), 0, 0, 0))
    return tiles


def body_tiles(program: Program) -> set[tuple]:
    """The distinct blob windows the body's mvms multiply with."""
    return set(mvm_tiles(program).values())


def critical_path_ns(program: Program, chip: Chip, tl: Timeline) -> float:
    """The body's data dependencies alone (no unit, driver or barrier waits; writes free),
    each mvm shortened to the vectors one crossbar must run of its tile: of a tile's V
    vectors over the pass, some crossbar runs at least ceil(V / xbars), and no mvm is made
    longer than it is. Digital instructions keep their durations."""
    xbars = program.chip.xbars
    per_vector = mvm_cost(chip, 1, 1, 1)[0]
    tiles = mvm_tiles(program)
    dur = {e.index: e.end - e.start for e in tl.events if e.phase == "inference"}
    vectors: dict[tuple, int] = defaultdict(int)
    for i, t in tiles.items():
        vectors[t] += round(dur[i] / per_vector) if per_vector else 0
    machine = Machine(contention=False)
    for i, ins in enumerate(program.text):
        if i not in dur or ins.op in ("write", "barrier", "halt"):
            continue
        d = dur[i]
        if ins.op == "mvm":
            d = min(d, -(-vectors[tiles[i]] // xbars) * per_vector)
        has_dst = OPCODES[ins.op].operands[:1] == ("dst",)
        refs = ins.operands[1:] if has_dst else ins.operands
        machine.issue(unit_of(ins), d, [r[1:] for r in refs if r[0] == "%"],
                      ins.operands[0][1:] if has_dst else None, ins.op in ACCUMULATE)
    return machine.latest


def write_floor_ns(program: Program, chip: Chip, tiles: set[tuple]) -> dict[tuple, float]:
    """Per tile, the least time any write of it can take: rows whose index and values no
    other window the program writes shares (any of them may be in place)."""
    blobs = program.blob_map()
    seen: dict[tuple, set] = defaultdict(set)  # (width, row index, row bytes) -> windows
    windows = set(tiles) | {(ins.operands[0][1:],) + ins.attr("rows") + ins.attr("cols")
                            for ins in program.text if ins.op == "write"}
    data = {t: blobs[t[0]].data[t[1]:t[2], t[3]:t[4]] for t in windows if t[0] in blobs}
    for t, w in data.items():
        for i, row in enumerate(w):
            seen[(w.shape[1], i, row.tobytes())].add(t)
    data = {t: data.get(t, np.zeros((0, 0))) for t in tiles}
    return {t: write_cost(chip, sum(1 for i, row in enumerate(w)
                                    if seen[(w.shape[1], i, row.tobytes())] == {t}), 0)[0]
            for t, w in data.items()}


def workload_bound_ns(program: Program, chip: Chip, tl: Timeline) -> dict[str, float]:
    """The terms of the bound on one pass of the body (ns), by name."""
    xbars = program.chip.xbars
    work: dict[str, float] = defaultdict(float)
    for e in tl.events:
        if e.phase == "inference" and e.op != "write":
            work["mvm" if e.op == "mvm" else e.unit] += e.end - e.start
    tiles = body_tiles(program)
    # the writes some tile must wait for: none when every body tile has a crossbar of its
    # own (the floor's row hashing then costs seconds on a big program for nothing)
    spare = len(tiles) - xbars
    must = sorted(write_floor_ns(program, chip, tiles).values())[:spare] if spare > 0 else []
    writes = sum(must)
    terms = {"critical_path": critical_path_ns(program, chip, tl),
             "crossbars": (work["mvm"] + writes) / xbars,
             "one_write": must[-1] + mvm_cost(chip, 1, 1, 1)[0] if must else 0.0}
    if chip.timing.write_drivers:
        terms["write_drivers"] = writes / chip.timing.write_drivers
    for unit in ("vector", "buffer", "combiner", "digital", "dynamic"):
        terms[unit] = work[unit]
    return terms
