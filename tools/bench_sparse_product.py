"""The crossbar read's product, BLAS against the compiled sparse one, by input density.

    python -m tools.bench_sparse_product [--repeats 5]

``runtime.kernels.exact_product`` picks the compiled sum of selected rows over BLAS where
fewer than ``SPARSE_BELOW`` of the input side's entries are non-zero. This prints both
products' best-of-``repeats`` time on one thread (as each of cimrun's threads runs them) for
bit planes of one ResNet-50-sized read (8 input steps x 3,136 vectors x 128 rows) against
one tile's and five tiles' cells, at densities around the threshold, side by side in one run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from runtime import kernels


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


if __name__ == "__main__":
    main()
