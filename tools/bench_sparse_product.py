"""The crossbar read's product, BLAS against the compiled sparse one, by input density.

    python -m tools.bench_sparse_product [--repeats 5] [--model digits_cnn] [--images N]

``runtime.kernels.exact_product`` picks the compiled sum of selected rows over BLAS for
each input plane where fewer than ``SPARSE_BELOW`` of its entries are non-zero. This prints
both products' best-of-``repeats`` time on one thread (as each of cimrun's threads runs them)
for random planes of one ResNet-50-sized read (8 input steps x 3,136 vectors x 128 rows)
against one tile's and five tiles' cells, at densities around the threshold; then the time
a real model's analog reads spend in the product (both kinds together, one thread and BLAS
on one thread, the first ``--images`` test images, or random ones), at several thresholds,
side by side in one run. Real planes are not random: their non-zero entries cluster by
channel and position, which the second table captures.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from threadpoolctl import threadpool_limits

from compiler import compile_model
from runtime import analog, kernels, run
from tools import make_zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THRESHOLDS = (0.05, 0.1, 0.15, 0.25, 0.35)


def _best(fn, args: tuple, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="best of this many (default 5)")
    ap.add_argument("--model", default="digits_cnn",
                    help="digits_cnn (its test images) or a zoo name, e.g. resnet50-imagenet "
                    "(random images); default digits_cnn")
    ap.add_argument("--images", type=int,
                    help="images of --model (default: the digits test split, 540; "
                    "1 of a zoo model)")
    args = ap.parse_args(argv)
    if kernels._kernel is None:
        raise SystemExit("numba is off (CIMSTACK_NUMBA=0) or not installed: nothing to compare")
    rng = np.random.default_rng(0)
    print(f"threshold SPARSE_BELOW = {kernels.SPARSE_BELOW}\n")
    print("| columns | density | BLAS ms | sparse ms | BLAS / sparse |\n|---|---|---|---|---|")
    with threadpool_limits(1, "blas"):
        for cols in (128, 640):
            cells = (rng.integers(0, 16 * 4096, (128, cols)) / 4096).astype(np.float32)
            for density in (0.05, 0.1, 0.18, 0.25, 0.3, 0.5):
                planes = (rng.random((8 * 3136, 128)) < density).astype(np.float32)
                out = np.empty((planes.shape[0], cols), np.float32)
                kernels._sparse_product(planes, cells, out)  # compiled before timing
                assert np.array_equal(out, planes @ cells)
                blas = _best(np.matmul, (planes, cells), args.repeats)
                sparse = _best(kernels._sparse_product, (planes, cells, out), args.repeats)
                print(f"| {cols} | {density:.2f} | {blas * 1e3:.1f} | {sparse * 1e3:.1f} | "
                      f"{blas / sparse:.2f} |", flush=True)
    model_table(args.model, args.images)


def _model(name: str, images: int | None) -> tuple[str, np.ndarray]:
    if name == "digits_cnn":
        x = np.load(os.path.join(ROOT, "models", "digits_test_x.npy"))[:images]
        return os.path.join(ROOT, "models", "digits_cnn.onnx"), x
    return make_zoo.ensure(name, os.path.join("models", "zoo")), make_zoo.random_images(
        name, images or 1)


def model_table(name: str, images: int | None) -> None:
    """Seconds in ``analog.exact_product`` over one analog run of the model, by threshold."""
    path, x = _model(name, images)
    program = compile_model(path)
    spent = [0.0]

    def timed(*args):
        start = time.perf_counter()
        result = product(*args)
        spent[0] += time.perf_counter() - start
        return result

    product, analog.exact_product = analog.exact_product, timed
    limit = threadpool_limits(1, "blas")  # as in each of cimrun's threads
    print(f"\n{name}, {len(x)} image(s), analog, one thread: time in the read product\n")
    print("| SPARSE_BELOW | product ms |\n|---|---|")
    chosen = kernels.SPARSE_BELOW
    try:
        for share in THRESHOLDS:
            kernels.SPARSE_BELOW = share
            run(program, x[:1], mode="analog", timing=False, threads=1)  # compiled, warm
            spent[0] = 0.0
            run(program, x, mode="analog", timing=False, threads=1)
            mark = " (the default)" if share == chosen else ""
            print(f"| {share:.2f}{mark} | {spent[0] * 1e3:.0f} |", flush=True)
    finally:
        kernels.SPARSE_BELOW, analog.exact_product = chosen, product
        limit.restore_original_limits()


if __name__ == "__main__":
    main()
