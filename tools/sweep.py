"""Sweep one chip parameter over a range and several seeds; write a CSV and a plot.

    python -m tools.sweep device.program_sigma 0 0.01 0.025 0.05 0.1 --model digits_cnn
        [--seeds 5] [--mode analog] [--set mapping.stuck_aware=0 ...] [--out docs/sweep]

Each point compiles nothing new: the program is compiled once and run in ``--mode`` on the
labelled test split with the parameter overridden (``--set`` applies fixed overrides first).
Writes OUT.csv (value, seed, accuracy) and OUT.png (mean accuracy with a standard-deviation
error bar per value), next to the float accuracy from onnxruntime.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os

import numpy as np
import onnxruntime as ort

from compiler import compile_model
from isa.chip import Chip, with_overrides
from runtime import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sweep(param: str, values: list[float], model: str, seeds: int, mode: str,
          fixed: list[str]) -> list[tuple[float, int, float]]:
    x = np.load(os.path.join(ROOT, "models", "digits_test_x.npy"))
    y = np.load(os.path.join(ROOT, "models", "digits_test_y.npy"))
    program = compile_model(os.path.join(ROOT, "models", f"{model}.onnx"))
    base = with_overrides(dataclasses.replace(Chip(), arch=program.chip), fixed)
    rows = []
    for value in values:
        chip = with_overrides(base, [f"{param}={value}"])
        for seed in range(seeds):
            out = run(program, x, mode=mode, seed=seed, chip=chip, timing=False).outputs
            acc = float((next(iter(out.values())).argmax(1) == y).mean())
            rows.append((value, seed, acc))
            print(f"{param}={value} seed={seed}: {100 * acc:.2f} %", flush=True)
    return rows


def plot(rows, param: str, reference: float, title: str, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    values = sorted({r[0] for r in rows})
    accs = [[100 * r[2] for r in rows if r[0] == v] for v in values]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(values, [np.mean(a) for a in accs], yerr=[np.std(a) for a in accs],
                marker="o", capsize=4, label="simulated chip (mean, std over seeds)")
    ax.axhline(100 * reference, color="grey", ls="--", label="float (onnxruntime)")
    ax.set(xlabel=param, ylabel="top-1 accuracy (%)", title=title)
    ax.grid(True, lw=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("param", help="chip parameter, section.key (e.g. device.program_sigma)")
    p.add_argument("values", nargs="+", type=float)
    p.add_argument("--model", default="digits_cnn", choices=["digits_cnn", "digits_mlp"])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--mode", default="analog", choices=["quantized", "analog"])
    p.add_argument("--set", action="append", default=[], help="fixed override (repeatable)")
    p.add_argument("--out", default=os.path.join("docs", "sweep"),
                   help="output stem: writes STEM.csv and STEM.png (default docs/sweep)")
    args = p.parse_args(argv)
    rows = sweep(args.param, args.values, args.model, args.seeds, args.mode, args.set)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([args.param, "seed", "accuracy"])
        w.writerows(rows)
    x = np.load(os.path.join(ROOT, "models", "digits_test_x.npy"))
    y = np.load(os.path.join(ROOT, "models", "digits_test_y.npy"))
    ref = ort.InferenceSession(os.path.join(ROOT, "models", f"{args.model}.onnx")).run(
        None, {"image": x})[0]
    title = f"{args.model}, {args.mode} mode" + (f" ({', '.join(args.set)})" if args.set else "")
    plot(rows, args.param, float((ref.argmax(1) == y).mean()), title, args.out + ".png")
    print(f"wrote {args.out}.csv and {args.out}.png")


if __name__ == "__main__":
    main()
