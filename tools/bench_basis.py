"""BasisN against the strongest baselines we can build, at equal crossbars and at equal area.

    python -m tools.bench_basis [--models resnet20 resnet50 densenet121] [--batches 1 16]
                                [--chip default] [--maps docs] [--skip-maps]

One question (issue 12): on a chip with fewer crossbars than the network has weight tiles,
which mapping wins, by how much, and where does BasisN lose? Per model and batch, every
mapping below is compiled for the same chip and simulated in timing mode (``runtime.run``);
the tables print cycles, energy and EDP per inference, crossbar cells written per inference,
the chip's compute area (crossbars, converters, drivers, vector unit, combiner adders and
accumulators, digital MACs: ``resources.area_mm2_by_component`` without memories), the store
that holds the mapping's parameters on chip (BasisN's coefficient SRAM, reprogramming's
weight store, the digital unit's weight SRAM; the scratchpad, about the same for all, is in
neither), and each mapping's ratios to the best baseline in that column: cycles over the
fastest non-BasisN row's, EDP over the lowest non-BasisN EDP (often another row: the digital
unit is slow but frugal).

Mappings: ``basisN`` (digital combiner) and ``basisN-analog`` (the same program under the
analog reading, ``timing.combiner_analog = 1``); ``naive`` and ``optimized`` reprogramming;
``optimized+sort+stuck`` (weight sorting and bit stucking, Farias and Kung); ``digital``
(every layer on the digital MAC unit, ``--digital all``); ``weight-stationary`` (replicated)
whenever the crossbars hold every tile.

Equal crossbars: every mapping on ``XBARS[model]`` crossbars. Equal area: the baselines get
BasisN's compute area: reprogramming as many crossbars as fit in it (weight-stationary,
replicated, once they hold every tile); the digital unit as many MACs as fit.
Then the same equal-area comparison with the digital unit against a MAC's area, from the
default (a multiplier and an adder alone) to a systolic cell as the TPU v1 built it and
beyond (``MAC_MM2``), and BasisN's EDP over the baselines' against ``energy.cmos_scale``
(``CMOS``: the node of the CMOS logic and SRAM energies), for every model and batch.

Heat maps (ResNet-50, batch 1 and ``XBARS``): BasisN's cycles over the best baseline's,
against the write time of a row (from PUMA's 0.086 us to 9 us, spanning every preset) x write
drivers, and against combiner lanes x batch, with the
contour where the ratio is 1 and the point each preset sits at. Reprogramming plans are made
per driver count (the scheduler knows about shared drivers) and re-simulated per write time.
Then ``basis_equal_area.png``: BasisN's cycles and EDP over optimized reprogramming's at
equal compute area, against the write driver's area (which sets how many crossbars the
combiner's area buys) x batch.

Models: ``resnet20`` is the trained digits ResNet-20 with its fine-tuned basis
(``models/digits_resnet20_basis4.*``: cycles at exactly that N and those coefficients);
``resnet50`` and ``densenet121`` are the generated ImageNet networks (``tools.make_zoo``)
with a post-training N = 4 fit, whose cost depends on the coefficients' bit patterns but
whose accuracy is not meaningful.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time

import numpy as np
import onnx

from compiler import compile_model
from compiler.basis import BasisSet
from compiler.basis.auto import decomposition
from isa.chip import Chip, load_chip
from runtime import run
from tools import make_zoo

XBARS = {"resnet20": 16, "resnet50": 64, "densenet121": 64}
ZOO = {"resnet50": "resnet50-imagenet", "densenet121": "densenet121-imagenet"}
STUCK = "0.25:2"  # bit stucking: in the 2 lowest slices, 25 % of the changed cells written
# where each mapping keeps its parameters (the scratchpad, similar for all, is in neither column)
STORES = ("coefficient_sram", "weight_store", "digital_weight_sram")
BASIS_ROWS = ("basisN", "basisN-analog")
# mapping -> (compile keyword arguments, chip overrides)
MAPPINGS = {
    "basisN": ({"basis": True}, {}),
    "basisN-analog": ({"basis": True}, {"combiner_analog": 1}),
    "naive": ({"schedule": "naive"}, {}),
    "optimized": ({"schedule": "optimized"}, {}),
    "optimized+sort+stuck": ({"schedule": "optimized", "weight_sorting": True,
                              "bit_stucking": STUCK}, {}),
    "digital": ({"digital": "all"}, {}),
}


def replaced(chip: Chip, section: str, **fields) -> Chip:
    """``chip`` with ``fields`` of its ``section`` (timing, energy, area, ...) replaced."""
    return dataclasses.replace(chip, **{section: dataclasses.replace(getattr(chip, section),
                                                                     **fields)})


def timing_chip(chip: Chip, **timing) -> Chip:
    return replaced(chip, "timing", **timing)


def model_and_basis(name: str, zoo: str) -> tuple[str, BasisSet]:
    """The ONNX path and basis set of a model of the study."""
    if name == "resnet20":
        stem = os.path.join("models", "digits_resnet20_basis4")
        return f"{stem}.onnx", BasisSet.load(f"{stem}.basis.npz")
    path = make_zoo.ensure(ZOO[name], zoo)
    return path, decomposition(onnx.load(path), 4, 9, 4, 0.0)


def stats(program, chip: Chip) -> dict:
    """Per-inference figures of ``program`` simulated on ``chip``."""
    s = run(program, mode="timing", chip=dataclasses.replace(chip, arch=program.chip)).stats
    area = s["resources"]["area_mm2_by_component"]
    store = sum(v for k, v in area.items() if k in STORES)
    energy_mj = s["energy_pj_per_inference"] / 1e9
    return {"cycles": s["cycles_per_inference"], "energy": energy_mj,
            "edp": energy_mj * s["latency_ns_per_inference"] / 1e6,
            "cells": s["cells_written"],
            "area": s["resources"]["area_mm2"] - store - area["scratchpad"],
            "store": store, "xbars": program.chip.xbars}


class Study:
    """Compiles (cached) and simulates the mappings of one model at one batch."""

    def __init__(self, name: str, batch: int, chip: Chip, zoo: str):
        self.name, self.batch, self.chip = name, batch, chip
        self.path, self.basis = model_and_basis(name, zoo)
        self.tiles = compile_model(self.path, chip_config=chip).chip.xbars
        self.cache: dict = {}

    def program(self, mapping: str, xbars: int, chip: Chip | None = None):
        kwargs, _ = MAPPINGS.get(mapping, ({}, {}))
        kwargs = dict(kwargs)
        if kwargs.pop("basis", False):
            kwargs["basis"] = self.basis
        planned = chip or self.chip
        key = (mapping, xbars, planned.timing.write_drivers)
        if key not in self.cache:
            limit = None if mapping == "weight-stationary" else xbars
            self.cache[key] = compile_model(self.path, batch=self.batch, max_xbars=limit,
                                            chip_config=planned, warn=lambda m: None,
                                            **kwargs)
        return self.cache[key]

    def measure(self, mapping: str, xbars: int, chip: Chip | None = None) -> dict:
        chip = chip or self.chip
        over = MAPPINGS.get(mapping, ({}, {}))[1]
        return stats(self.program(mapping, xbars, chip), timing_chip(chip, **over))

    def weight_stationary(self, xbars: int) -> dict:
        """Weight-stationary on ``xbars`` >= tiles crossbars, spares holding replicas."""
        program = compile_model(self.path, batch=self.batch, max_xbars=xbars,
                                chip_config=self.chip)
        return stats(program, self.chip)


def best_baseline(rows: dict, metric: str = "cycles") -> str:
    """The non-BasisN row with the lowest ``metric``."""
    return min((k for k in rows if k not in BASIS_ROWS), key=lambda k: rows[k][metric])


def equal_crossbars(study: Study) -> dict:
    x = XBARS[study.name]
    rows = {m: study.measure(m, x) for m in MAPPINGS}
    if x >= study.tiles:
        rows["weight-stationary"] = study.weight_stationary(x)
    return rows


def per_xbar_area(chip: Chip) -> float:
    """Compute area one more crossbar adds: the array, its ADCs, DACs, sample-and-holds and,
    with one driver per crossbar, its write driver."""
    a, g = chip.area, chip.arch
    return (a.xbar_mm2 + a.adcs_per_xbar * a.adc_mm2 + g.rows * a.dac_mm2_per_row
            + g.cols * a.sh_mm2_per_col + (a.write_driver_mm2 if not chip.timing.write_drivers
                                          else 0.0))


def crossbars_within(chip: Chip, area: float, base_area: float, xbars: int) -> int:
    """Crossbars a chip of ``xbars`` crossbars and compute area ``base_area`` can have within
    ``area`` (never fewer than ``xbars``)."""
    return max(xbars, xbars + math.floor((area - base_area) / per_xbar_area(chip)))


def macs_within(chip: Chip, area: float, base_area: float) -> int:
    """Digital MACs a chip of compute area ``base_area`` (with ``timing.digital_macs``) can
    have within ``area``: fewer than it has where its MACs alone overshoot ``area`` (larger
    MACs than the default's), at least one."""
    macs = chip.timing.digital_macs
    return max(1, macs + math.floor((area - base_area) / chip.area.digital_mac_mm2))


def equal_area(study: Study, same: dict) -> dict:
    """The baselines at BasisN's compute area (``same``: the equal-crossbar rows):
    crossbars for reprogramming, MACs for the digital unit."""
    x = XBARS[study.name]
    target = same["basisN"]["area"]
    more = crossbars_within(study.chip, target, same["optimized"]["area"], x)
    rows = {m: same[m] for m in BASIS_ROWS}
    if more >= study.tiles:
        rows["weight-stationary"] = study.weight_stationary(more)
    else:
        for m in ("optimized", "optimized+sort+stuck"):
            rows[m] = study.measure(m, more)
    rows["digital"] = digital_at_equal_area(study, study.chip, target)[1]
    return rows


# energy.cmos_scale: Horowitz's 45 nm CMOS logic and SRAM energies as published (1, the
# default), classical scaling to the arrays' 32 nm (about 0.58: C ~ feature, 1.0 -> 0.9 V),
# and below, toward a newer node for the digital parts
CMOS = (1.0, 0.8, 0.58, 0.4, 0.3)


def cmos_sweep(studies: list[Study]) -> None:
    """BasisN's EDP over optimized reprogramming's (equal crossbars, equal compute area) and
    the digital unit's (equal compute area) as the CMOS energies scale: BasisN's combiner and
    coefficient SRAM are CMOS, reprogramming's energy mostly writes and array reads."""
    print("\n### BasisN's EDP over the baselines' against energy.cmos_scale (optimized at equal "
          "crossbars / optimized at equal area / digital at equal area)\n")
    print("| cmos_scale | " + " | ".join(f"{s.name} batch {s.batch}" for s in studies) + " |")
    print("|" + "---|" * (1 + len(studies)))
    for scale in CMOS:
        cells = []
        for study in studies:
            chip, x = replaced(study.chip, "energy", cmos_scale=scale), XBARS[study.name]
            basis = stats(study.program("basisN", x), chip)
            opt = stats(study.program("optimized", x), chip)
            more = crossbars_within(chip, basis["area"], opt["area"], x)
            wide = stats(study.program("optimized", more), chip)
            dig = digital_at_equal_area(study, chip, basis["area"])[1]
            cells.append(" / ".join(f"{basis['edp'] / b['edp']:.2f}" for b in (opt, wide, dig)))
        print(f"| {scale:g} | " + " | ".join(cells) + " |", flush=True)


# The write driver's area: NeuroSim's 0.0094 mm2 (three banks of level shifters; 0.0066
# with two), and the range a sourced model leaves open, from switches alone (0.001, writes
# at or below 1.5 V) to unscaled high-voltage devices and a share of pumps (0.02)
DRIVER_MM2 = (0.0, 0.001, 0.0025, 0.005, 0.0066, 0.0094, 0.015, 0.02)


# A digital MAC's area, mm2 at 32 nm: from the default's multiplier and adder alone
# (Horowitz 45 nm, 212 um2 scaled; no weight or pipeline registers, no wiring) to a systolic
# array's whole cell as built: the TPU v1's matrix unit, 24 % of a die of at most 331 mm2 at
# 28 nm for 65,536 MACs (Jouppi et al., ISCA 2017, table 2 and the floor plan of figure 2),
# is at most 1,212 um2 a MAC, 1,583 at 32 nm (area ~ feature^2); and beyond it
MAC_MM2 = (0.000212, 0.0005, 0.001, 0.00158, 0.0025, 0.004, 0.006)


def digital_at_equal_area(study: Study, chip: Chip, area: float) -> tuple[int, dict]:
    """The MACs the digital unit gets within compute area ``area`` on ``chip``, and its
    figures with them."""
    x = XBARS[study.name]
    macs = macs_within(chip, area, stats(study.program("digital", x), chip)["area"])
    return macs, stats(study.program("digital", x), timing_chip(chip, digital_macs=macs))


def mac_area_sweep(studies: list[Study]) -> None:
    """BasisN's cycles and EDP over the digital unit's at equal compute area as a digital
    MAC's area changes (it sets how many MACs BasisN's area buys)."""
    print("\n### Equal compute area against a digital MAC's area (BasisN / digital unit: "
          "MACs in BasisN's area, cycles, EDP)\n")
    print("| MAC mm2 | " + " | ".join(f"{s.name} batch {s.batch}" for s in studies) + " |")
    print("|" + "---|" * (1 + len(studies)))
    basis = [stats(s.program("basisN", XBARS[s.name]), s.chip) for s in studies]
    for mm2 in MAC_MM2:
        cells = []
        for study, b in zip(studies, basis):
            macs, dig = digital_at_equal_area(study, replaced(study.chip, "area",
                                                              digital_mac_mm2=mm2), b["area"])
            cells.append(f"{macs}: {b['cycles'] / dig['cycles']:.2f}x, "
                         f"{b['edp'] / dig['edp']:.2f}x")
        print(f"| {mm2:g} | " + " | ".join(cells) + " |", flush=True)


def with_driver(chip: Chip, mm2: float) -> Chip:
    """``chip`` with a write driver of ``mm2`` an array."""
    return replaced(chip, "area", write_driver_mm2=mm2)


def equal_area_point(study: Study, mm2: float) -> tuple[dict, int, dict]:
    """With a write driver of ``mm2``: BasisN's figures, the crossbars optimized
    reprogramming gets in BasisN's compute area, and its figures on them."""
    x = XBARS[study.name]
    chip = with_driver(study.chip, mm2)
    basis = stats(study.program("basisN", x), chip)
    more = crossbars_within(chip, basis["area"],
                            stats(study.program("optimized", x), chip)["area"], x)
    return basis, more, stats(study.program("optimized", more), chip)


def driver_area_sweep(study: Study) -> None:
    """BasisN's cycles over optimized reprogramming's and the digital unit's at equal compute
    area as the write-driver area changes (it sets how many crossbars, or MACs, the
    combiner's area buys)."""
    print(f"\n### Equal compute area against the write driver's area ({study.name}, batch "
          f"{study.batch})\n")
    print("| write driver mm2 | BasisN compute mm2 | optimized crossbars | BasisN / optimized "
          "| digital MACs | BasisN / digital |")
    print("|---|---|---|---|---|---|")
    for mm2 in DRIVER_MM2:
        basis, more, opt = equal_area_point(study, mm2)
        macs, dig = digital_at_equal_area(study, with_driver(study.chip, mm2), basis["area"])
        print(f"| {mm2:g} | {basis['area']:.3g} | {more} | {basis['cycles'] / opt['cycles']:.2f} "
              f"| {macs} | {basis['cycles'] / dig['cycles']:.2f} |", flush=True)


def equal_area_maps(name: str, chip: Chip, zoo: str) -> tuple[np.ndarray, np.ndarray]:
    """Ratios[write driver mm2, batch] of BasisN's cycles, and of its EDP, over optimized
    reprogramming's at equal compute area (reprogramming gets the crossbars BasisN's
    combiner area buys)."""
    cycles = np.zeros((len(DRIVER_MM2), len(BATCHES)))
    edp = np.zeros_like(cycles)
    for j, b in enumerate(BATCHES):
        study = Study(name, b, chip, zoo)
        for i, mm2 in enumerate(DRIVER_MM2):
            basis, _, opt = equal_area_point(study, mm2)
            cycles[i, j], edp[i, j] = (basis[k] / opt[k] for k in ("cycles", "edp"))
        print(f"  equal-area map: batch {b} done", flush=True)
    return cycles, edp


def plot_equal_area(cycles: np.ndarray, edp: np.ndarray, chip: Chip, path: str) -> None:
    """The two equal-area maps side by side, the chip's own driver area marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    rows = [f"{m:g}" for m in DRIVER_MM2]
    for ax, ratios, what in ((axes[0], cycles, "cycles"), (axes[1], edp, "EDP")):
        _heat(ax, np.log10(ratios), [str(b) for b in BATCHES], rows, "batch",
              "write driver mm2 (an array)")
        if chip.area.write_driver_mm2 in DRIVER_MM2:
            ax.plot(0, DRIVER_MM2.index(chip.area.write_driver_mm2), "w^", ms=8, mec="k")
        ax.set_title(f"{what}: BasisN / optimized reprogramming")
    fig.suptitle("ResNet-50 at equal compute area (reprogramming gets the crossbars BasisN's "
                 "combiner area buys)", fontsize=10)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    print(f"wrote {path}")


COLUMNS = ("crossbars", "cycles", "energy mJ", "EDP mJ*ms", "cells written",
           "compute mm2", "store mm2", "cycles / best", "EDP / best")


def print_table(title: str, results: list[tuple[str, int, dict]]) -> None:
    print(f"\n### {title}\n")
    print("| model | batch | mapping | " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * (3 + len(COLUMNS)))
    for name, batch, rows in results:
        best, frugal = rows[best_baseline(rows)], rows[best_baseline(rows, "edp")]
        for mapping, s in rows.items():
            cells = [f"{s['xbars']}", f"{s['cycles']:.3g}", f"{s['energy']:.3g}",
                     f"{s['edp']:.3g}", f"{s['cells']:.3g}", f"{s['area']:.3g}",
                     f"{s['store']:.3g}", f"{s['cycles'] / best['cycles']:.3g}",
                     f"{s['edp'] / frugal['edp']:.3g}"]
            print(f"| {name} | {batch} | {mapping} | " + " | ".join(cells) + " |", flush=True)


# -- heat maps ---------------------------------------------------------------------------

# Program-and-verify time of a row, us: PUMA's 0.086 (one 43 ns iteration a phase), the
# default chip's 1.12 (8 of 70 ns), and up past neurosim-open-loop's 6 and slow-shared-write's 8
ROW_US = (0.086, 0.3, 1.12, 3.0, 9.0)
DRIVERS = (0, 16, 4, 1)
LANES = (4, 8, 16, 32, 64, 128)
BATCHES = (1, 2, 4, 8, 16)
BASELINES = ("optimized", "optimized+sort+stuck", "digital")


def row_us(chip: Chip) -> float:
    """Program-and-verify time of one row (all phases and iterations)."""
    t = chip.timing
    return t.write_phases * t.write_iterations * (t.t_pulse_ns + t.t_verify_ns) / 1e3


def with_row_us(chip: Chip, us: float) -> Chip:
    """``chip`` whose rows program and verify in ``us``: one iteration a phase, its pulse and
    verify in the default chip's 50:20 proportion (cycles depend on the product only)."""
    per_phase_ns = us * 1e3 / chip.timing.write_phases
    return timing_chip(chip, write_iterations=1, t_pulse_ns=per_phase_ns * 50 / 70,
                       t_verify_ns=per_phase_ns * 20 / 70)


def write_map(study: Study) -> np.ndarray:
    """Ratio[drivers, row write time] of BasisN cycles over the best baseline's. Reprogramming
    plans are made per driver count and simulated per write time; the digital unit does not
    write."""
    x = XBARS[study.name]
    digital = study.measure("digital", x)["cycles"]
    out = np.zeros((len(DRIVERS), len(ROW_US)))
    for i, d in enumerate(DRIVERS):
        planned = timing_chip(study.chip, write_drivers=d)
        for j, us in enumerate(ROW_US):
            chip = with_row_us(planned, us)
            base = min([digital] + [stats(study.program(m, x, planned), chip)["cycles"]
                                    for m in BASELINES if m != "digital"])
            out[i, j] = study.measure("basisN", x, chip)["cycles"] / base
        print(f"  write map: drivers {d} done", flush=True)
    return out


def lanes_map(name: str, chip: Chip, zoo: str) -> np.ndarray:
    """Ratio[lanes, batch] of BasisN cycles over the best baseline's."""
    out = np.zeros((len(LANES), len(BATCHES)))
    for j, b in enumerate(BATCHES):
        study = Study(name, b, chip, zoo)
        x = XBARS[name]
        base = min(study.measure(m, x)["cycles"] for m in BASELINES)
        for i, lanes in enumerate(LANES):
            out[i, j] = study.measure("basisN", x, timing_chip(chip, combiner_lanes=lanes))[
                "cycles"] / base
        print(f"  lanes map: batch {b} done", flush=True)
    return out


def driver_labels() -> list[str]:
    """The write map's rows: its driver counts, 0 shown as one driver per crossbar."""
    return ["1/xbar" if d == 0 else str(d) for d in DRIVERS]


def print_map(title: str, ratios: np.ndarray, rows: list[str], cols: list[str]) -> None:
    """A heat map's ratios as a Markdown table (the figure's numbers, for the README)."""
    print(f"\n### {title}\n\n| | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
    for label, line in zip(rows, ratios):
        print(f"| {label} | " + " | ".join(f"{v:.3g}" for v in line) + " |", flush=True)


def preset_points() -> list[tuple[str, float, int]]:
    """(name, row write time us, write drivers) of every preset."""
    from isa.chip import presets
    return [(p, row_us(c), c.timing.write_drivers) for p in presets()
            for c in [load_chip(p)]]


def plot_maps(wmap: np.ndarray, lmap: np.ndarray, chip: Chip, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    rows_us = list(ROW_US)
    labels = driver_labels()
    _heat(axes[0], np.log10(wmap), [f"{u:.2g}" for u in rows_us], labels,
          "write time of a row (us)", "write drivers")
    for name, us, d in preset_points():
        if d in DRIVERS:
            xi = np.interp(np.log(us), np.log(rows_us), np.arange(len(rows_us)))
            axes[0].plot(xi, DRIVERS.index(d), "w^", ms=8, mec="k")
            axes[0].annotate(name, (xi, DRIVERS.index(d)), fontsize=7, color="w",
                             xytext=(4, 4), textcoords="offset points")
    axes[0].set_title("BasisN / best baseline cycles, ResNet-50, batch 1")
    _heat(axes[1], np.log10(lmap), [str(b) for b in BATCHES], [str(n) for n in LANES],
          "batch", "combiner lanes")
    axes[1].plot(0, LANES.index(chip.timing.combiner_lanes), "w^", ms=8, mec="k")
    axes[1].set_title("BasisN / best baseline cycles, ResNet-50 (default chip)")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    print(f"wrote {path}")


def _heat(ax, logratio, xlabels, ylabels, xlabel, ylabel) -> None:
    lim = max(1.0, float(np.abs(logratio).max()))
    im = ax.imshow(logratio, cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower",
                   aspect="auto")
    ax.contour(logratio, levels=[0.0], colors="k", linewidths=1.5)
    for (i, j), v in np.ndenumerate(logratio):
        ax.text(j, i, f"{10 ** v:.2g}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(xlabels)), xlabels)
    ax.set_yticks(range(len(ylabels)), ylabels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.figure.colorbar(im, ax=ax, label="log10 ratio (blue: BasisN wins; line: 1)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=list(XBARS), default=list(XBARS),
                   help="networks to compare (default: all)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16],
                   help="batch sizes (default 1 16)")
    p.add_argument("--chip", default="default", help="chip preset or TOML (default: default)")
    p.add_argument("--maps", default="docs",
                   help="directory for basis_maps.png and basis_equal_area.png")
    p.add_argument("--skip-maps", action="store_true", help="tables only")
    p.add_argument("--zoo", default=os.path.join("models", "zoo"),
                   help="where generated models are cached (default models/zoo)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    chip = load_chip(args.chip)
    crossbars, area, studies = [], [], []
    for name in args.models:
        for b in args.batches:
            study = Study(name, b, chip, args.zoo)
            studies.append(study)
            rows = equal_crossbars(study)
            crossbars.append((name, b, rows))
            area.append((name, b, equal_area(study, rows)))
            print(f"({name} batch {b}: {study.tiles} tiles, "
                  f"{time.perf_counter() - start:.0f} s)", flush=True)
    print_table(f"Equal crossbars ({args.chip} chip)", crossbars)
    print_table(f"Equal compute area ({args.chip} chip: BasisN's)", area)
    mac_area_sweep(studies)
    cmos_sweep(studies)
    if not args.skip_maps:
        study = Study("resnet50", 1, chip, args.zoo)
        driver_area_sweep(study)
        wmap, lmap = write_map(study), lanes_map("resnet50", chip, args.zoo)
        print_map("BasisN / best baseline cycles by write drivers (rows) and a row's write "
                  "time in us (columns), resnet50 batch 1", wmap,
                  driver_labels(), [f"{u:g}" for u in ROW_US])
        print_map("BasisN / best baseline cycles by combiner lanes (rows) and batch (columns), "
                  "resnet50", lmap, [str(n) for n in LANES], [str(b) for b in BATCHES])
        plot_maps(wmap, lmap, chip, os.path.join(args.maps, "basis_maps.png"))
        cycles, edp = equal_area_maps("resnet50", chip, args.zoo)
        rows, cols = [f"{m:g}" for m in DRIVER_MM2], [str(b) for b in BATCHES]
        print_map("BasisN / optimized reprogramming cycles at equal compute area by write "
                  "driver mm2 (rows) and batch (columns), resnet50", cycles, rows, cols)
        print_map("BasisN / optimized reprogramming EDP at equal compute area, the same "
                  "grid", edp, rows, cols)
        plot_equal_area(cycles, edp, chip, os.path.join(args.maps, "basis_equal_area.png"))
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
