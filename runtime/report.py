"""Per-inference timing, energy and wear figures from a simulated timeline.

Everything is per inference: one pass over the body (after the load phase) runs the compiled
batch, so body totals are divided by the batch. ``lower_bound_cycles`` is the workload bound
of ``runtime.bound``, the same for every schedule of one model, chip and batch, and
``schedule_efficiency`` the body time against it.
"""

from __future__ import annotations

from collections import defaultdict

from isa import Program
from isa.chip import Chip
from isa.resources import resources
from isa.timing import Timeline, simulate

from .bound import workload_bound_ns


def _busy(tl: Timeline) -> dict[str, float]:
    busy: dict[str, float] = defaultdict(float)
    for ev in tl.events:
        if ev.phase == "inference":
            busy[ev.unit] += ev.end - ev.start
    return busy


def lower_bound_ns(program: Program, chip: Chip, tl: Timeline) -> float:
    """The workload lower bound on one pass of the body (``runtime.bound``)."""
    return max(workload_bound_ns(program, chip, tl).values())


def timing_report(program: Program, chip: Chip) -> tuple[dict, Timeline]:
    tl = simulate(program, chip)
    per = program.batch
    body_ns = tl.body_ns
    energy = sum(e.energy for e in tl.events if e.phase == "inference")
    load_energy = sum(e.energy for e in tl.events if e.phase == "load")
    busy = _busy(tl)
    used = [t for unit, t in busy.items() if unit.startswith("xbar")]  # idle ones count 0
    bound = lower_bound_ns(program, chip, tl)
    max_writes = max(tl.writes_per_xbar.values(), default=0) / per
    latency = body_ns / per
    energy_per = energy / per
    report = {
        "cycles_per_inference": latency * chip.timing.clock_ghz,
        "latency_ns_per_inference": latency,
        "energy_pj_per_inference": energy_per,
        "edp": energy_per * latency, "edp_units": "pJ*ns",
        "mvm_count": sum(1 for e in tl.events if e.op == "mvm" and e.phase == "inference"),
        "cells_written": tl.body_cells_written / per,
        "rows_written": tl.body_rows_written / per,
        "writes_per_inference": sum(tl.writes_per_xbar.values()) / per,
        "write_energy_share": tl.body_write_pj / energy if energy else 0.0,
        "max_writes_per_cell": max_writes,
        "projected_lifetime_inferences": (chip.device.endurance_writes / max_writes
                                          if max_writes else None),
        "lower_bound_cycles": bound / per * chip.timing.clock_ghz,
        "schedule_efficiency": bound / body_ns if body_ns else 1.0,
        "load": {"latency_ns": tl.load_ns, "energy_pj": load_energy,
                 "tile_writes": sum(1 for e in tl.events
                                    if e.op == "write" and e.phase == "load"),
                 "cells_written": tl.cells_written - tl.body_cells_written,
                 "rows_written": tl.rows_written - tl.body_rows_written},
        "utilization": {
            "xbar_mean": sum(used) / (body_ns * program.chip.xbars) if body_ns else 0.0,
            "xbar_max": max(used, default=0.0) / body_ns if body_ns else 0.0,
            "vector": busy.get("vector", 0.0) / body_ns if body_ns else 0.0,
            "buffer": busy.get("buffer", 0.0) / body_ns if body_ns else 0.0,
            "combiner": busy.get("combiner", 0.0) / body_ns if body_ns else 0.0,
            "digital": busy.get("digital", 0.0) / body_ns if body_ns else 0.0},
        "unit_busy_ns": dict(sorted(busy.items())),
        "compiled_batch": per,
        "resources": resources(program, chip),
    }
    return report, tl
