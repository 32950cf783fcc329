"""BasisN against reprogramming and weight-stationary mappings, on the same simulated chips.

    python -m tools.bench_basis [--models ...] [--xbars 16 64 256] [--chips default ...]
                                [--basis 4] [--coef-bits 4] [--plot docs/basis_crossover.png]

For each generated model: one post-training basis (``compiler.basis.auto.decomposition``;
its cost depends on the coefficients' bit patterns, not on accuracy), then per crossbar count
a BasisN program and the naive and optimized reprogramming programs, plus the replicated
weight-stationary mapping with as many crossbars as the model has tiles. Every program is
simulated under every chip preset. Prints a Markdown table: cycles, energy and EDP per
inference, cell-row writes per inference, and BasisN's ratios to naive and optimized
reprogramming on the same chip and crossbar count.

The plot is the crossover: for ResNet-50 (ImageNet) on 64 crossbars, BasisN's cycles over
naive and over optimized reprogramming as the write of one row gets slower (program-and-verify
iterations) and as fewer crossbars can be written at once (shared write drivers). Below 1
BasisN wins. The optimized schedule is planned for each chip of the table (``--chip``: it
knows about shared write drivers); the crossover plot re-simulates the default-chip plans.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import onnx

from compiler import compile_model
from compiler.basis.auto import decomposition
from runtime import run
from runtime.chips import resolve
from tools import make_zoo

SCHEMES = ("basisN", "naive", "optimized")
COLUMNS = ("cycles", "energy mJ", "EDP mJ*ms", "row writes", "cycles / naive",
           "EDP / naive", "cycles / optimized")


def _stats(program, chip: str) -> dict:
    s = run(program, mode="timing", chip=resolve(chip, program=program)).stats
    lat_ms = s["latency_ns_per_inference"] / 1e6
    energy = s["energy_pj_per_inference"] / 1e9
    return {"cycles": s["cycles_per_inference"], "energy": energy, "edp": energy * lat_ms,
            "rows": s["rows_written"], "writes": s["writes_per_inference"]}


def programs(path: str, xbars: int, basis, chips) -> dict:
    """BasisN and naive programs, and per chip the optimized schedule planned for it."""
    out = {"basisN": compile_model(path, max_xbars=xbars, basis=basis),
           "naive": compile_model(path, max_xbars=xbars, schedule="naive")}
    for chip in chips:
        out["optimized", chip] = compile_model(path, max_xbars=xbars, schedule="optimized",
                                               chip_config=resolve(chip))
    return out


def _line(model, chip, n, scheme, s, ref=None) -> str:
    cells = [f"{s['cycles']:.3g}", f"{s['energy']:.3g}", f"{s['edp']:.3g}", f"{s['rows']:.0f}"]
    if ref is not None:
        cells += [f"{s['cycles'] / ref['naive']['cycles']:.2%}",
                  f"{s['edp'] / ref['naive']['edp']:.2%}",
                  f"{s['cycles'] / ref['optimized']['cycles']:.2%}"]
    else:
        cells += [""] * 3
    return f"| {model} | {chip} | {n} | {scheme} | " + " | ".join(cells) + " |"


def table(models, xbars, chips, n_basis: int, bits: int, zoo: str) -> dict:
    print("| model | chip | crossbars | mapping | " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * (4 + len(COLUMNS)))
    compiled = {}
    for name in models:
        path = make_zoo.ensure(name, zoo)
        basis = decomposition(onnx.load(path), n_basis, 9, bits, 0.0)
        ws = compile_model(path)
        for n in xbars:
            compiled[name, n] = programs(path, n, basis, chips)
        for chip in chips:
            s = _stats(ws, chip)
            print(_line(name, chip, ws.chip.xbars, "weight-stationary", s), flush=True)
            for n in xbars:
                progs = compiled[name, n]
                res = {k: _stats(progs[k] if k != "optimized" else progs[k, chip], chip)
                       for k in SCHEMES}
                for k in SCHEMES:
                    print(_line(name, chip, n, k, res[k], res if k == "basisN" else None),
                          flush=True)
    return compiled


def crossover(progs: dict, plot: str, iterations=(1, 2, 4, 8, 16, 32, 64),
              drivers=(0, 16, 4, 1)) -> None:
    """Ratio of BasisN cycles to naive/optimized against row write time and drivers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    base = resolve("default")
    basis_cycles = _stats(progs["basisN"], "default")["cycles"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, scheme in zip(axes, ("naive", "optimized")):
        for d in drivers:
            xs, ys = [], []
            for it in iterations:
                chip = dataclasses.replace(base, timing=dataclasses.replace(
                    base.timing, write_iterations=it, write_drivers=d))
                program = progs[scheme] if scheme == "naive" else progs[scheme, "default"]
                s = run(program, mode="timing", chip=dataclasses.replace(
                    chip, arch=program.chip)).stats
                row_us = 2 * it * (base.timing.t_pulse_ns + base.timing.t_verify_ns) / 1e3
                xs.append(row_us)
                ys.append(basis_cycles / s["cycles_per_inference"])
            ax.plot(xs, ys, marker="o", label="one driver per crossbar" if d == 0
                    else f"{d} shared write driver{'s' if d > 1 else ''}")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(0.01, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("write time of one row (us, program-and-verify)")
        ax.set_title(f"BasisN cycles / {scheme} reprogramming")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ratio (below 1: BasisN wins; dashed: 1 %)")
    axes[0].legend(fontsize=8)
    fig.suptitle("ResNet-50 (ImageNet), 64 crossbars: where BasisN wins")
    fig.tight_layout()
    os.makedirs(os.path.dirname(plot) or ".", exist_ok=True)
    tmp = plot + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, plot)
    print(f"\nwrote {plot}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=make_zoo.NAMES,
                   default=["resnet50-imagenet", "resnet50-cifar100", "densenet121-imagenet",
                            "densenet121-cifar100"])
    p.add_argument("--xbars", nargs="+", type=int, default=[16, 64, 256])
    p.add_argument("--chips", nargs="+", default=["default", "slow-shared-write"])
    p.add_argument("--basis", type=int, default=4, help="basis vectors N (default 4)")
    p.add_argument("--coef-bits", type=int, default=4)
    p.add_argument("--plot", default=os.path.join("docs", "basis_crossover.png"),
                   help="crossover plot (needs resnet50-imagenet and 64 in --xbars; '' skips)")
    p.add_argument("--zoo", default=os.path.join("models", "zoo"))
    args = p.parse_args(argv)
    start = time.perf_counter()
    compiled = table(args.models, args.xbars, args.chips, args.basis, args.coef_bits, args.zoo)
    if args.plot and ("resnet50-imagenet", 64) in compiled:
        crossover(compiled["resnet50-imagenet", 64], args.plot)
    print(f"\n({time.perf_counter() - start:.0f} s; N={args.basis}, {args.coef_bits}-bit "
          "coefficients, post-training basis)")


if __name__ == "__main__":
    main()
