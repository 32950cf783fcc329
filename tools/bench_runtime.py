"""Seconds per image of cimrun in each mode, divided by onnxruntime's, measured in one run.

    python -m tools.bench_runtime [--zoo models/zoo] [--big resnet50-cifar100] [--images 2]

Digits CNN on its test split, and a ResNet-50-scale model on a few random images. Per image
is the marginal cost, (t(2N) - t(N)) / N, so programming the crossbars once per run cancels.
Timing simulation is excluded (``timing=False``): this measures the arithmetic.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnxruntime as ort

from compiler import compile_model
from runtime import run
from tools import make_zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("ideal", "quantized", "analog")


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _per_image(fn, images: int, repeats: int) -> float:
    fn(images)
    return _best(lambda: fn(images), repeats) / images


def _marginal(fn, images: int, repeats: int) -> float:
    """Seconds per extra image: (t(2N) - t(N)) / N, so one-time crossbar programming cancels."""
    fn(images)
    return (_best(lambda: fn(2 * images), repeats) - _best(lambda: fn(images), repeats)) / images


def bench(name: str, path: str, x: np.ndarray, repeats: int) -> list[str]:
    """x holds 2N images; runs use the first N and all 2N."""
    n = len(x) // 2
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name_in = sess.get_inputs()[0].name
    t_ort = _per_image(lambda k: sess.run(None, {name_in: x[:k]}), n, repeats)
    program = compile_model(path)
    cells = [name, f"{t_ort * 1e3:.3f}"]
    for mode in MODES:
        t = _marginal(lambda k, m=mode: run(program, x[:k], mode=m, timing=False), n,
                      repeats if mode == "ideal" else 1)
        cells += [f"{t * 1e3:.2f}", f"{t / t_ort:.1f}x"]
    return cells


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default=os.path.join("models", "zoo"))
    p.add_argument("--big", default="resnet50-cifar100", choices=make_zoo.NAMES)
    p.add_argument("--images", type=int, default=1, help="N for the big model (default 1)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print("| model | ort ms/img | " + " | ".join(f"{m} ms/img | {m} / ort" for m in MODES) + " |")
    print("|" + "---|" * (2 + 2 * len(MODES)))
    x = np.load(os.path.join(ROOT, "models", "digits_test_x.npy"))
    rows = [bench("digits_cnn (270 images)", os.path.join(ROOT, "models", "digits_cnn.onnx"),
                  x, args.repeats)]
    print("| " + " | ".join(rows[0]) + " |", flush=True)
    size = make_zoo.VARIANTS[args.big.split("-")[1]][0]
    big = np.random.default_rng(0).standard_normal((2 * args.images, 3, size, size))
    big = big.astype("f4")
    row = bench(f"{args.big} ({args.images} images)", make_zoo.ensure(args.big, args.zoo), big,
                args.repeats)
    print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
