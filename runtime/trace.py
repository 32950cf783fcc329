"""Chrome trace-event JSON of a timeline (opens in Perfetto / chrome://tracing).

One track (thread) per unit that did any work, each instruction a complete slice ("X") with
its energy and the ONNX node it came from, and a counter track of cumulative energy. Times
are in microseconds.
"""

from __future__ import annotations

import json

from isa.timing import Timeline


def _unit_order(unit: str) -> tuple:
    return (0, int(unit[4:])) if unit.startswith("xbar") else (1, unit)


def trace_events(tl: Timeline, notes: list[str] | None = None) -> dict:
    """The events of ``tl``; ``notes``: each instruction's provenance (``Instr.note``, the
    ONNX node), shown as a slice's ``node`` where it has one."""
    units = sorted({e.unit for e in tl.events}, key=_unit_order)
    tid = {u: i + 1 for i, u in enumerate(units)}
    out = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "cim chip"}}]
    out += [{"ph": "M", "name": "thread_name", "pid": 1, "tid": tid[u], "args": {"name": u}}
            for u in units]
    energy = 0.0
    for e in sorted(tl.events, key=lambda e: e.start):
        out.append({"ph": "X", "name": e.op, "pid": 1, "tid": tid[e.unit], "ts": e.start / 1e3,
                    "dur": (e.end - e.start) / 1e3, "cat": e.phase,
                    "args": {"instruction": e.index, "energy_pj": e.energy,
                             **({"node": notes[e.index]} if notes and notes[e.index] else {})}})
        energy += e.energy
        out.append({"ph": "C", "name": "energy_pj", "pid": 1, "ts": e.start / 1e3,
                    "args": {"cumulative": energy}})
    return {"traceEvents": out, "displayTimeUnit": "ns"}


def trace_json(tl: Timeline, notes: list[str] | None = None) -> str:
    """The trace of ``tl`` as the JSON text Perfetto opens (``notes``: as ``trace_events``)."""
    return json.dumps(trace_events(tl, notes))
