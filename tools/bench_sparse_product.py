"""The crossbar read's product by input density: BLAS, the compiled sparse sum of rows, and
onnxruntime's integer GEMM with its own sparse twin.

    python -m tools.bench_sparse_product [--repeats 20] [--model digits_cnn] [--images N]

A read's product is exact (``runtime.analog``): its cells sum exactly in float32 (analog
mode, cells on the 2**-12 grid) or float64, so any product gives the same bits and the
fastest may run. ``runtime.kernels.exact_product`` picks the compiled sum of selected rows
over BLAS for each input plane where fewer than ``SPARSE_BELOW`` of its entries are
non-zero; ``integer_product`` (binary planes and integer cells: analog mode with a 1-bit
DAC) picks its integer sum of rows over onnxruntime's uint8 x int8 GEMM below
``INTEGER_SPARSE_BELOW``. This prints each product's best-of-``repeats`` time on one
thread (as each of cimrun's threads runs them) for random planes of one block of a read
(``analog.BLOCK_BYTES``: 8 input steps x 256 vectors x 128 rows) against one tile's and
five tiles' cells, at densities around the thresholds; then the time a real model's analog
reads spend in the product (one thread and BLAS on one thread, the first ``--images`` test
images, or random ones), by threshold, for the integer products (the default) and the
float ones, side by side in one run. Real planes are not random: their non-zero entries
cluster by channel and position, which the second table captures. BLAS's speed depends on
the kernels OpenBLAS runs (``OPENBLAS_CORETYPE``), the integer GEMM's on whether the CPU has
AVX-512 VNNI.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from threadpoolctl import threadpool_limits

from compiler import compile_model
from runtime import analog, kernels, run
from runtime.device import GRID_BITS
from tools import make_zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THRESHOLDS = (0.05, 0.1, 0.15, 0.25, 0.35)  # SPARSE_BELOW (float products)
INTEGER_THRESHOLDS = (0.0, 0.04, 0.08, 0.15, 0.25)  # INTEGER_SPARSE_BELOW


def _best(fn, args: tuple, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20, help="best of this many (default 20)")
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
    print(f"thresholds: SPARSE_BELOW = {kernels.SPARSE_BELOW}, "
          f"INTEGER_SPARSE_BELOW = {kernels.INTEGER_SPARSE_BELOW}\n")
    print("| columns | density | BLAS ms | sparse ms | integer GEMM ms | integer sparse ms |")
    print("|---|---|---|---|---|---|")
    with threadpool_limits(1, "blas"):
        for cols in (128, 640):
            units = rng.integers(0, 2 ** kernels.WIDE_BITS, (128, cols))
            cells = (units * 2.0 ** -GRID_BITS).astype(np.float32)
            split = kernels.wide_cells(cells, 2.0 ** GRID_BITS)
            for density in (0.02, 0.05, 0.1, 0.18, 0.25, 0.5):
                planes = (rng.random((8 * 256, 128)) < density).astype(np.float32)
                counts = np.array([np.count_nonzero(planes)])  # as reads pass them
                cells_ms = [_best(np.matmul, (planes, cells), args.repeats)]
                out = np.empty((planes.shape[0], cols), np.float32)
                kernels._sparse_product(planes, cells, out)  # compiled before timing
                assert np.array_equal(out, planes @ cells)
                cells_ms.append(_best(kernels._sparse_product, (planes, cells, out),
                                      args.repeats))
                for share in (0.0, 1.0):  # every plane through the GEMM, then the rows
                    kernels.INTEGER_SPARSE_BELOW, chosen = share, kernels.INTEGER_SPARSE_BELOW
                    try:
                        got = kernels.integer_product(planes[None], *split, counts)
                        assert np.array_equal(got * np.float32(2.0 ** -GRID_BITS), out)
                        cells_ms.append(_best(kernels.integer_product,
                                              (planes[None], *split, counts), args.repeats))
                    finally:
                        kernels.INTEGER_SPARSE_BELOW = chosen
                print(f"| {cols} | {density:.2f} | " + " | ".join(
                    f"{t * 1e3:.2f}" for t in cells_ms) + " |", flush=True)
    model_table(args.model, args.images)


def _model(name: str, images: int | None) -> tuple[str, np.ndarray]:
    if name == "digits_cnn":
        x = np.load(os.path.join(ROOT, "models", "digits_test_x.npy"))[:images]
        return os.path.join(ROOT, "models", "digits_cnn.onnx"), x
    return make_zoo.ensure(name, os.path.join("models", "zoo")), make_zoo.random_images(
        name, images or 1)


def model_table(name: str, images: int | None) -> None:
    """Seconds in the analog reads' products over one run of the model, by threshold: the
    integer products (the default) at INTEGER_THRESHOLDS, then the float ones at
    THRESHOLDS."""
    path, x = _model(name, images)
    program = compile_model(path)
    spent = [0.0]

    def timed(product):
        def run_timed(*args):
            start = time.perf_counter()
            result = product(*args)
            spent[0] += time.perf_counter() - start
            return result
        return run_timed

    saved = (analog.exact_product, analog.integer_product, analog.INTEGER_PRODUCTS,
             kernels.SPARSE_BELOW, kernels.INTEGER_SPARSE_BELOW)
    analog.exact_product, analog.integer_product = (timed(p) for p in saved[:2])
    limit = threadpool_limits(1, "blas")  # as in each of cimrun's threads
    print(f"\n{name}, {len(x)} image(s), analog, one thread: time in the read product\n")
    print("| products | threshold | product ms |\n|---|---|---|")
    try:
        for integer, label, shares, chosen in (
                (True, "integer", INTEGER_THRESHOLDS, saved[4]),
                (False, "float (BLAS)", THRESHOLDS, saved[3])):
            analog.INTEGER_PRODUCTS = integer
            for share in shares:
                kernels.SPARSE_BELOW, kernels.INTEGER_SPARSE_BELOW = \
                    (saved[3], share) if integer else (share, saved[4])
                run(program, x[:1], mode="analog", timing=False, threads=1)  # compiled, warm
                spent[0] = 0.0
                run(program, x, mode="analog", timing=False, threads=1)
                mark = " (the default)" if share == chosen else ""
                print(f"| {label} | {share:.2f}{mark} | {spent[0] * 1e3:.0f} |", flush=True)
    finally:
        (analog.exact_product, analog.integer_product, analog.INTEGER_PRODUCTS,
         kernels.SPARSE_BELOW, kernels.INTEGER_SPARSE_BELOW) = saved
        limit.restore_original_limits()


if __name__ == "__main__":
    main()
