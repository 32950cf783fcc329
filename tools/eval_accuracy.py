"""Accuracy of the digits models in every mode, and what each mitigation is worth.

    python -m tools.eval_accuracy [--seeds 5] [--models digits_mlp digits_cnn] [--limit N]

For each model on the labelled test split: onnxruntime float accuracy, ideal and quantized
mode, then analog mode on the default chip (mean and standard deviation over seeds) with all
mitigations on, with each one switched off in turn, and with all of them off. Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np
import onnxruntime as ort

from compiler import compile_model
from isa.chip import Chip, with_overrides
from runtime import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MITIGATIONS = ["per_column_scaling", "stuck_aware", "slice_compensation", "raw_calibration"]


def configs() -> list[tuple[str, list[str]]]:
    out = [("analog, all mitigations", [])]
    out += [(f"analog, without {m}", [f"mapping.{m}=0"]) for m in MITIGATIONS]
    out.append(("analog, no mitigation", [f"mapping.{m}=0" for m in MITIGATIONS]))
    return out


def accuracy(program, x, y, mode, chip, seed=0) -> float:
    logits = run(program, x, mode=mode, seed=seed, chip=chip, timing=False).outputs
    return float((next(iter(logits.values())).argmax(1) == y).mean())


def evaluate(name: str, seeds: int, limit: int | None) -> list[tuple[str, float, float]]:
    x = np.load(os.path.join(ROOT, "models", "digits_test_x.npy"))[:limit]
    y = np.load(os.path.join(ROOT, "models", "digits_test_y.npy"))[:limit]
    path = os.path.join(ROOT, "models", f"{name}.onnx")
    ref = ort.InferenceSession(path).run(None, {"image": x})[0]
    program = compile_model(path)
    base = dataclasses.replace(Chip(), arch=program.chip)
    rows = [("onnxruntime float", float((ref.argmax(1) == y).mean()), 0.0)]
    for mode in ("ideal", "quantized"):
        rows.append((mode, accuracy(program, x, y, mode, base), 0.0))
    for label, sets in configs():
        chip = with_overrides(base, sets)
        accs = [accuracy(program, x, y, "analog", chip, s) for s in range(seeds)]
        rows.append((label, float(np.mean(accs)), float(np.std(accs))))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["digits_mlp", "digits_cnn"],
                   help="bundled models by name (default digits_mlp digits_cnn)")
    p.add_argument("--seeds", type=int, default=5,
                   help="analog-mode seeds each row averages (default 5)")
    p.add_argument("--limit", type=int, default=None, help="first N test images only")
    args = p.parse_args(argv)
    print("| model | mode | accuracy % | std over seeds | vs float (points) |")
    print("|---|---|---|---|---|")
    for name in args.models:
        rows = evaluate(name, args.seeds, args.limit)
        for label, acc, std in rows:
            print(f"| {name} | {label} | {100 * acc:.2f} | {100 * std:.2f} | "
                  f"{100 * (acc - rows[0][1]):+.2f} |", flush=True)


if __name__ == "__main__":
    main()
