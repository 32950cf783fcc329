"""BasisN on the digits CNN, on a chip too small to hold it: accuracy against cycles.

    python -m tools.bench_basis_digits [--n 2 3 4 6 9] [--xbars 2] [--epochs 80]
                                       [--plot docs/basis_digits.png]

For each N: post-training BasisN (weight fit refined on the calibration split) and, when torch
is installed, fine-tuned BasisN (``tools.finetune_basis``), both compiled for ``--xbars``
crossbars and run in quantized mode on the 540 test images; beside them naive and optimized
reprogramming on the same chip. The stored ``models/digits_cnn_basis4`` is also run in analog
mode over 5 seeds. Prints a Markdown table and plots accuracy against cycles per inference.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

import numpy as np
import onnx

from compiler import compile_model
from compiler.basis import BasisSet
from compiler.basis.auto import decomposition
from runtime import run

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")


def _load(name):
    return np.load(os.path.join(MODELS, name))


def evaluate(program, x, y, mode="quantized", seed=0) -> float:
    out = run(program, {"image": x}, mode=mode, seed=seed, timing=False).outputs["logits"]
    return 100.0 * float(np.mean(out.argmax(1) == y))


def cycles(program) -> float:
    return run(program, mode="timing").stats["cycles_per_inference"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", nargs="+", type=int, default=[2, 3, 4, 6, 9],
                   help="basis sizes N (default 2 3 4 6 9)")
    p.add_argument("--xbars", type=int, default=2, help="the chip's crossbars (default 2)")
    p.add_argument("--epochs", type=int, default=80,
                   help="fine-tuning epochs for each N (default 80)")
    p.add_argument("--plot", default=os.path.join("docs", "basis_digits.png"),
                   help="where the plot goes (default docs/basis_digits.png)")
    args = p.parse_args(argv)
    model = onnx.load(os.path.join(MODELS, "digits_cnn.onnx"))
    x, y, calib = _load("digits_test_x.npy"), _load("digits_test_y.npy"), _load(
        "digits_calib_x.npy")
    batch = len(x)
    rows = []
    for schedule in ("naive", "optimized"):
        prog = compile_model(model, max_xbars=args.xbars, schedule=schedule, batch=batch)
        rows.append((f"{schedule} reprogramming", "-", evaluate(prog, x, y), cycles(prog)))
    finetune = None
    if importlib.util.find_spec("torch") is not None:
        from tools.finetune_basis import finetune
        from tools.make_digits_models import digits_split
        xtr, _, ytr, _ = digits_split()
    points = {"post-training": [], "fine-tuned": []}
    for n in args.n:
        prog = compile_model(model, max_xbars=args.xbars, batch=batch,
                             basis=decomposition(model, n, 9, 4, 0.0, calib))
        rows.append(("BasisN post-training", n, evaluate(prog, x, y), cycles(prog)))
        points["post-training"].append(rows[-1][2:])
        if finetune is not None:
            tuned, basis = finetune(model, xtr, ytr, n, epochs=args.epochs, lr=1e-2,
                                    log=lambda s: None)
            prog = compile_model(tuned, max_xbars=args.xbars, batch=batch, basis=basis)
            rows.append(("BasisN fine-tuned", n, evaluate(prog, x, y), cycles(prog)))
            points["fine-tuned"].append(rows[-1][2:])
    stored = os.path.join(MODELS, "digits_cnn_basis4")
    prog = compile_model(stored + ".onnx", max_xbars=args.xbars, batch=batch,
                         basis=BasisSet.load(stored + ".basis.npz"))
    analog = [evaluate(prog, x, y, "analog", s) for s in range(5)]
    rows.append(("BasisN fine-tuned (models/digits_cnn_basis4)", 4, evaluate(prog, x, y),
                 cycles(prog)))
    print(f"digits CNN, {args.xbars} crossbars (fewer than its tiles), quantized mode, "
          f"540 test images; float accuracy 99.26 %\n")
    print("| mapping | N | accuracy % | cycles per inference |\n|---|---|---|---|")
    for name, n, acc, cyc in rows:
        print(f"| {name} | {n} | {acc:.2f} | {cyc:.4g} |")
    print(f"\nmodels/digits_cnn_basis4 in analog mode, seeds 0-4: "
          f"{', '.join(f'{a:.2f}' for a in analog)}; mean {np.mean(analog):.2f} %")
    _plot(points, rows[:2], args.plot)


def _plot(points, baselines, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, pts in points.items():
        if pts:
            acc, cyc = zip(*pts)
            ax.plot(cyc, acc, marker="o", label=f"BasisN {label}")
    for name, _, acc, cyc in baselines:
        ax.scatter([cyc], [acc], marker="s", label=name)
    ax.axhline(99.26, color="grey", ls="--", lw=0.8, label="float")
    ax.set_xscale("log")
    ax.set_xlabel("cycles per inference")
    ax.set_ylabel("test accuracy % (quantized)")
    ax.set_title("digits CNN on 2 crossbars")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
