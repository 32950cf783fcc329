"""Reprogramming schedules compared: naive against optimized, on chips smaller than the model.

    python -m tools.bench_schedule [--models ...] [--xbars 64 256 1024] [--chips default ...]
                                   [--plot docs/schedule.png] [--zoo models/zoo]

For each generated model, crossbar count and schedule: compile once (the scheduler estimates
with the default chip), then simulate the timing under each chip preset. Prints a Markdown
table (cycles, latency, energy, EDP, tile writes per inference, schedule efficiency) with the
weight-stationary mapping (unlimited crossbars) as reference, and plots cycles per inference
against crossbars.
"""

from __future__ import annotations

import argparse
import os
import time

from compiler import compile_model
from runtime import run
from runtime.chips import resolve
from tools import make_zoo

COLUMNS = ("cycles", "latency ms", "energy mJ", "EDP mJ*ms", "writes", "efficiency")


def _row(stats: dict) -> tuple:
    lat = stats["latency_ns_per_inference"] / 1e6
    energy = stats["energy_pj_per_inference"] / 1e9
    return (f"{stats['cycles_per_inference']:.3g}", f"{lat:.2f}", f"{energy:.2f}",
            f"{energy * lat:.3g}", f"{stats['writes_per_inference']:.0f}",
            f"{stats['schedule_efficiency']:.2f}")


def measure(path: str, xbars, schedule: str, chips: list[str]) -> dict:
    program = compile_model(path, max_xbars=xbars, schedule=schedule)
    return {c: dict(run(program, mode="timing", chip=resolve(c, program=program)).stats,
                    xbars=program.chip.xbars) for c in chips}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet18-imagenet", "resnet50-imagenet",
                                                   "densenet121-imagenet"],
                   choices=make_zoo.NAMES, help="generated models (default: the three ImageNet "
                   "ones)")
    p.add_argument("--xbars", nargs="+", type=int, default=[64, 256, 1024],
                   help="crossbar counts (default 64 256 1024)")
    p.add_argument("--chips", nargs="+", default=["default", "puma-optimistic"],
                   help="chip presets or TOML files to time under (default: default "
                        "puma-optimistic)")
    p.add_argument("--plot", default=os.path.join("docs", "schedule.png"),
                   help="where the plot goes (default docs/schedule.png)")
    p.add_argument("--zoo", default=os.path.join("models", "zoo"),
                   help="where generated models are cached (default models/zoo)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    results = {}
    print("| model | chip | crossbars | schedule | " + " | ".join(COLUMNS) + " | vs naive |")
    print("|" + "---|" * (5 + len(COLUMNS)))
    for name in args.models:
        path = make_zoo.ensure(name, args.zoo)
        ws = measure(path, None, "optimized", args.chips)
        for n in args.xbars:
            runs = {s: measure(path, n, s, args.chips) for s in ("naive", "optimized")}
            results[name, n] = runs
            for chip in args.chips:
                naive = runs["naive"][chip]["cycles_per_inference"]
                for s in ("naive", "optimized"):
                    st = runs[s][chip]
                    print(f"| {name} | {chip} | {n} | {s} | " + " | ".join(_row(st)) +
                          f" | {naive / st['cycles_per_inference']:.2f}x |", flush=True)
        for chip in args.chips:
            print(f"| {name} | {chip} | {ws[chip]['xbars']} | weight-stationary | " +
                  " | ".join(_row(ws[chip])) + " | |")
        results[name, "ws"] = ws
    if args.plot:
        plot(results, args, args.plot)
    print(f"\n({time.perf_counter() - start:.0f} s)")


def plot(results, args, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(args.chips), figsize=(6 * len(args.chips), 4.5),
                             squeeze=False)
    for ax, chip in zip(axes[0], args.chips):
        for name in args.models:
            for s, style in (("naive", "--"), ("optimized", "-")):
                ys = [results[name, n][s][chip]["latency_ns_per_inference"] / 1e6
                      for n in args.xbars]
                ax.plot(args.xbars, ys, style, marker="o", label=f"{name} {s}")
            ws = results[name, "ws"][chip]["latency_ns_per_inference"] / 1e6
            ax.axhline(ws, color="grey", lw=0.6)
        ax.set(xscale="log", yscale="log", xlabel="crossbars on the chip",
               ylabel="latency per inference (ms)", title=f"chip: {chip}")
        ax.grid(True, which="both", lw=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Reprogramming schedules (grey: weight-stationary, unlimited crossbars)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
