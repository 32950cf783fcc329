"""Transformers on the crossbar chip (issue 13): what each static mapping and each policy for
products of two computed operands costs, and what writing attention's operands does to accuracy.

    python -m tools.bench_transformers [--models vit-tiny vit-small bert-tiny bert-base]
                                       [--xbars 64] [--basis 4] [--depth L] [--chip default]
    python -m tools.bench_transformers --accuracy [--seeds 5] [--limit N]

Cost (the first command; timing mode, batch 1). Every model is generated in memory with seeded
random weights (``tools.make_transformers.build``, batch fixed to 1; nothing is written to
disk); ``--depth L`` keeps L blocks of each (the table's model column then says so). Each model
is compiled for every static mapping of its weight matrices x every dynamic policy and
simulated with ``runtime.run(..., mode="timing")``:

- static mappings: ``weight-stationary`` (as many crossbars as the tiles need, written once),
  ``reprogrammed`` (``--xbars`` crossbars, schedule "optimized": tiles rotate through them at
  every inference), ``BasisN`` (N = ``--basis``, on ``--xbars`` crossbars: every layer on one
  global basis written once, a post-training fit as ``cimc --basis N`` makes it: unit 9, 4-bit
  coefficients, no sparsity; its accuracy on these random weights is not meaningful, only its
  cost);
- dynamic policies (Q K^T and softmax(.) V): ``digital`` (the digital MAC unit, ``dbmm``) or
  ``write`` (the second operand written into a pool of extra crossbars at every inference,
  ``wbmm``; the pool is as large as one matrix needs and comes on top of the static mapping's
  crossbars, so the crossbars column counts it).

Table 1, one row per (model, mapping, policy), per inference: crossbars on the chip, cycles,
energy (uJ), EDP (uJ x ms), crossbar tile writes, cells written, the share of the energy spent
in writes, the projected lifetime in inferences at the chip's endurance ("inf" when nothing is
written during inference) and the chip's area (mm2, ``resources.area_mm2``: memories included).
Table 2, per model: each figure under ``write`` over the same figure under ``digital``, per
static mapping ("-": undefined, the digital row's figure is 0 or unlimited). The chip
assumptions these numbers rest on are printed first; the wall time per model goes to stderr.

Accuracy (``--accuracy``): the trained digits ViT (``models/digits_vit.onnx``) on the 540-image
test split (``--limit``: the first N): float accuracy from onnxruntime, ideal and quantized mode
(one run each), and analog mode on the chip over seeds 0..S-1 (mean, and min-max as the
spread), under both policies; in ``write`` mode every inference programs its K and V afresh,
with fresh programming noise. Then the quantized accuracy of the opset-13 export
(``models/digits_vit_op13.onnx``, decomposed LayerNorm), which should equal opset 17's.

Run time on this machine (2 cores, nothing else running): the cost tables for all four models
4 minutes (vit-tiny 14 s, vit-small 46 s, bert-tiny 1 s, bert-base 3 minutes; 4.2 GB peak
memory, from bert-base's weights), so ``--depth`` is only for quick looks; the accuracy table
8 minutes (each analog seed 32 s under ``digital``, 50 s under ``write``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
import traceback

import numpy as np

from compiler import compile_model
from compiler.basis.auto import decomposition
from isa.chip import Chip, load_chip
from isa.timing import cells_per_weight, mvm_cost, tile_write_cost, write_cost
from runtime import run
from tools import make_transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("vit-tiny", "vit-small", "bert-tiny", "bert-base")
POLICIES = ("digital", "write")
BASIS_FIT = {"unit": 9, "bits": 4, "sparsity": 0.0}  # cimc --basis N's defaults
# static mapping -> compile keyword arguments, given --xbars and the model's basis set
MAPPINGS = {
    "weight-stationary": lambda xbars, basis: {"max_xbars": None},
    "reprogrammed": lambda xbars, basis: {"max_xbars": xbars, "schedule": "optimized"},
    "basis": lambda xbars, basis: {"max_xbars": xbars, "basis": basis},
}
COLUMNS = ("crossbars", "cycles", "energy uJ", "EDP uJ*ms", "tile writes", "cells written",
           "write energy %", "lifetime (inferences)", "area mm2")
# Table 2's figures: key -> header
RATIOS = {"xbars": "crossbars", "cycles": "cycles", "energy": "energy", "edp": "EDP",
          "writes": "tile writes", "cells": "cells written", "share": "write energy share",
          "lifetime": "lifetime", "area": "area"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def label(mapping: str, n: int) -> str:
    return f"Basis{n}" if mapping == "basis" else mapping


# -- chip assumptions ---------------------------------------------------------------------

def assumptions(chip: Chip) -> list[str]:
    """The chip figures the cost table depends on, as Markdown bullets."""
    t, e, a, d = chip.timing, chip.energy, chip.arch, chip.device
    row_ns, row_pj = write_cost(chip, 1, a.cols)
    array_ns, array_pj = tile_write_cost(chip, a.rows, a.weights_per_row)
    mvm_ns = mvm_cost(chip, a.rows, a.weights_per_row, 1)[0]
    drivers = "one per crossbar" if not t.write_drivers else f"{t.write_drivers} shared"
    return [
        f"geometry: {a.rows}x{a.cols} cells, {a.cell_bits}-bit cells, {a.weight_bits}-bit "
        f"weights ({cells_per_weight(chip)} cells each: {a.weights_per_row} weights a row), "
        f"clock {t.clock_ghz:g} GHz",
        f"write time per row: {row_ns / 1e3:.3g} us ({t.write_phases} phases x "
        f"{t.write_iterations} iterations x ({t.t_pulse_ns:g} ns pulse + {t.t_verify_ns:g} ns "
        f"verify)); a full array {array_ns / 1e3:.3g} us; write drivers: {drivers}",
        f"write energy per cell: {t.write_iterations * e.write_pulse_pj:.3g} pJ "
        f"({t.write_iterations} pulses x {e.write_pulse_pj:g} pJ) plus "
        f"{(row_pj - a.cols * t.write_iterations * e.write_pulse_pj) / 1e3:.3g} nJ of verify "
        f"reads per row; a full array {array_pj / 1e6:.3g} uJ",
        f"endurance: {d.endurance_writes:.3g} writes per cell",
        f"digital MAC unit: {t.digital_macs} MACs a cycle, {e.digital_mac_pj:g} pJ a MAC",
        f"crossbar read: {mvm_ns:g} ns per input vector ({a.input_bits}-bit inputs through "
        f"{a.dac_bits}-bit DACs, {t.mvm_extra_steps} extra steps, {t.mvm_step_ns:g} ns a step)",
    ]


# -- cost ---------------------------------------------------------------------------------

def stats(program, chip: Chip) -> dict:
    """Per-inference figures of ``program`` simulated on ``chip``."""
    s = run(program, mode="timing", chip=dataclasses.replace(chip, arch=program.chip)).stats
    life = s["projected_lifetime_inferences"]
    return {"xbars": program.chip.xbars, "cycles": s["cycles_per_inference"],
            "energy": s["energy_pj_per_inference"] / 1e6,
            "edp": s["edp"] / 1e12,  # pJ*ns -> uJ*ms
            "writes": s["writes_per_inference"], "cells": s["cells_written"],
            "share": s["write_energy_share"],
            "lifetime": math.inf if life is None else life,
            "area": s["resources"]["area_mm2"]}


def model_label(name: str, depth: int | None) -> str:
    full = (make_transformers.VIT | make_transformers.BERT)[name]["depth"]
    return name if depth is None or depth >= full else f"{name} ({depth} of {full} blocks)"


def measure_model(name: str, args, chip: Chip) -> dict:
    """{(mapping, policy): stats or an error string} of one model; rows are printed as they
    come."""
    start = time.perf_counter()
    overrides = {} if args.depth is None else {"depth": args.depth}
    model = make_transformers.build(name, batch=1, **overrides)
    log(f"{name}: generated in {time.perf_counter() - start:.0f} s")
    basis = decomposition(model, args.basis, BASIS_FIT["unit"], BASIS_FIT["bits"],
                          BASIS_FIT["sparsity"])
    log(f"{name}: Basis{args.basis} fitted ({time.perf_counter() - start:.0f} s)")
    warnings: set[str] = set()
    rows = {}
    for mapping, kwargs in MAPPINGS.items():
        for policy in POLICIES:
            t0 = time.perf_counter()
            try:
                program = compile_model(model, chip_config=chip, dynamic=policy,
                                        warn=warnings.add, **kwargs(args.xbars, basis))
                t1 = time.perf_counter()
                rows[mapping, policy] = stats(program, chip)
                del program
                log(f"{name}: {label(mapping, args.basis)} / {policy}: compiled in "
                    f"{t1 - t0:.0f} s, simulated in {time.perf_counter() - t1:.0f} s")
            except Exception as exc:  # a failed configuration is reported, the rest still run
                traceback.print_exc()
                rows[mapping, policy] = f"failed: {type(exc).__name__}: {exc}"
            print_row(model_label(name, args.depth), label(mapping, args.basis), policy,
                      rows[mapping, policy])
    for w in sorted(warnings):
        log(f"{name}: compiler warning: {w}")
    log(f"{name}: {time.perf_counter() - start:.0f} s wall time")
    return rows


def fmt(value: float) -> str:
    return "inf" if value == math.inf else f"{value:.3g}"


def print_row(model: str, mapping: str, policy: str, s) -> None:
    if isinstance(s, str):
        cells = [s] + [""] * (len(COLUMNS) - 1)
    else:
        cells = [str(s["xbars"]), fmt(s["cycles"]), fmt(s["energy"]), fmt(s["edp"]),
                 fmt(s["writes"]), fmt(s["cells"]), f"{100 * s['share']:.1f}",
                 fmt(s["lifetime"]), f"{s['area']:.3g}"]
    print(f"| {model} | {mapping} | {policy} | " + " | ".join(cells) + " |", flush=True)


def ratio(a: float, b: float) -> str:
    if b == 0 or math.isinf(b) or math.isinf(a):
        return "-"
    return f"{a / b:.3g}"


def print_ratios(model: str, rows: dict, n: int) -> None:
    print(f"\n### {model}: write / digital\n")
    print("| static mapping | " + " | ".join(RATIOS.values()) + " |")
    print("|" + "---|" * (1 + len(RATIOS)))
    for mapping in MAPPINGS:
        w, d = rows[mapping, "write"], rows[mapping, "digital"]
        if isinstance(w, str) or isinstance(d, str):
            cells = ["failed"] + [""] * (len(RATIOS) - 1)
        else:
            cells = [ratio(w[k], d[k]) for k in RATIOS]
        print(f"| {label(mapping, n)} | " + " | ".join(cells) + " |")


def cost(args, chip: Chip) -> None:
    print(f"### Chip assumptions ({chip.name} chip)\n")
    for line in assumptions(chip):
        print(f"- {line}")
    print(f"\n### Cost per inference (batch 1, {chip.name} chip; reprogrammed and Basis"
          f"{args.basis} on {args.xbars} crossbars, plus the write policy's pool)\n")
    print("| model | static mapping | dynamic policy | " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * (3 + len(COLUMNS)), flush=True)
    results = []
    for name in args.models:
        results.append((model_label(name, args.depth), measure_model(name, args, chip)))
    for model, rows in results:
        print_ratios(model, rows, args.basis)


# -- accuracy -----------------------------------------------------------------------------

def accuracy(program, x: np.ndarray, y: np.ndarray, mode: str, chip: Chip,
             seed: int = 0) -> float:
    logits = run(program, x, mode=mode, seed=seed, chip=chip, timing=False).outputs
    return 100.0 * float((next(iter(logits.values())).argmax(1) == y).mean())


def accuracy_table(args, chip: Chip) -> None:
    import onnxruntime as ort
    x = np.load(os.path.join(ROOT, "models", "digits_test_x.npy"))[:args.limit]
    y = np.load(os.path.join(ROOT, "models", "digits_test_y.npy"))[:args.limit]
    path = os.path.join(ROOT, "models", "digits_vit.onnx")
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"image": x})[0]
    base = 100.0 * float((ref.argmax(1) == y).mean())
    seeds = "seed 0" if args.seeds == 1 else f"seeds 0-{args.seeds - 1}"
    print(f"### digits ViT ({len(y)} test images; analog: {chip.name} chip, {seeds})\n")
    print("| mode | policy | accuracy % | spread (min-max) | points below float |")
    print("|---|---|---|---|---|")
    print(f"| float (onnxruntime) | - | {base:.2f} | - | 0.00 |", flush=True)
    quantized = {}
    for policy in POLICIES:
        program = compile_model(path, dynamic=policy)
        on = dataclasses.replace(chip, arch=program.chip)
        for mode in ("ideal", "quantized"):
            acc = accuracy(program, x, y, mode, on)
            if mode == "quantized":
                quantized[policy] = acc
            print(f"| {mode} | {policy} | {acc:.2f} | - | {base - acc:.2f} |", flush=True)
        accs = []
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            accs.append(accuracy(program, x, y, "analog", on, seed))
            log(f"analog / {policy} / seed {seed}: {accs[-1]:.2f} % "
                f"({time.perf_counter() - t0:.0f} s)")
        mean = float(np.mean(accs))
        print(f"| analog | {policy} | {mean:.2f} | {min(accs):.2f}-{max(accs):.2f} | "
              f"{base - mean:.2f} |", flush=True)
    path13 = os.path.join(ROOT, "models", "digits_vit_op13.onnx")
    print(f"\n### Quantized accuracy of the opset-13 export ({os.path.basename(path13)})\n")
    print("| policy | opset 13 % | opset 17 % | equal |")
    print("|---|---|---|---|")
    for policy in POLICIES:
        program = compile_model(path13, dynamic=policy)
        acc = accuracy(program, x, y, "quantized", dataclasses.replace(chip, arch=program.chip))
        print(f"| {policy} | {acc:.2f} | {quantized[policy]:.2f} | "
              f"{'yes' if acc == quantized[policy] else 'no'} |", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--xbars", type=int, default=64,
                   help="crossbars of the reprogrammed and BasisN mappings (default 64)")
    p.add_argument("--basis", type=int, default=4, help="BasisN's N (default 4)")
    p.add_argument("--depth", type=int, help="blocks per model (default: each config's)")
    p.add_argument("--chip", default="default", help="chip preset or TOML (default: default)")
    p.add_argument("--accuracy", action="store_true",
                   help="the digits ViT's accuracy table instead of the cost tables")
    p.add_argument("--seeds", type=int, default=5, help="--accuracy: analog seeds (default 5)")
    p.add_argument("--limit", type=int, help="--accuracy: the first N test images only")
    args = p.parse_args(argv)
    if args.depth is not None and args.depth < 1:
        p.error("--depth must be at least 1")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    start = time.perf_counter()
    chip = load_chip(args.chip)
    if args.accuracy:
        accuracy_table(args, chip)
    else:
        cost(args, chip)
    log(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
