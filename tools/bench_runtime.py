"""Seconds per image of cimrun in each mode, divided by onnxruntime's, measured in one run.

    python -m tools.bench_runtime [--zoo models/zoo] [--big resnet50-imagenet] [--images 1]
        [--threads N]

Digits CNN on its test split, on the default (faithful) chip and on the one-pass corner
(``ONE_PASS``: an 8-bit DAC and the ADC after analog shift-add, issue 14), and with the
read kernel's numpy twin instead of numba (``runtime.kernels``, the same numbers), and a
ResNet-50-scale model on a few random images. Per image is the marginal cost,
(t(2N) - t(N)) / N, so programming the crossbars once per run cancels. Timing simulation is
excluded (``timing=False``): this measures the arithmetic. cimrun uses ``--threads`` threads
(default: one per core, as onnxruntime does). Then one analog image of the big model end to
end as a user runs it (``cimrun`` in a fresh process: load, programming, the image), with its
wall time and peak memory, the digits CNN's accuracy on both chips, and the big model's
``.cim`` save and load time against onnxruntime's session creation. It first prints the
setting the ratios depend on: the BLAS kernels in use (an environment that sets
OPENBLAS_CORETYPE picks them instead of OpenBLAS), numba, onnxruntime's version, the cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
from threadpoolctl import threadpool_info

import isa
from compiler import compile_model
from isa.chip import Chip
from runtime import kernels, run
from tools import make_zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("ideal", "quantized", "analog")
# The one-pass corner: every input bit in one DAC step, one ADC conversion per column per MVM
# (CrossSim's ADC_per_ibit = False, aihwkit's one-pass MVM).
ONE_PASS = dataclasses.replace(Chip().arch, dac_bits=8, adc_per_step=0)


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


# A run longer than this is timed once (ResNet-50's quantized and analog runs), shorter ones
# best of --repeats: a single short run swings by 1.5x on this machine
LONG_RUN_S = 5.0
# A run shorter than this (the digits CNN's ideal mode, 5-10 ms) is timed best of
# SHORT_RUN_REPEATS at least: with best of 3, its marginal t(2N) - t(N) swung from 0.5x to
# 27x onnxruntime between runs of unchanged code
SHORT_RUN_S, SHORT_RUN_REPEATS = 0.1, 25


def _marginal(fn, images: int, repeats: int) -> float:
    """Seconds per extra image: (t(2N) - t(N)) / N, so one-time crossbar programming cancels.
    A first, untimed run compiles and warms up; the next decides how many more there are."""
    fn(images)
    once = _best(lambda: fn(images), 1)
    if once > LONG_RUN_S:
        repeats = 1
    elif once < SHORT_RUN_S:
        repeats = max(repeats, SHORT_RUN_REPEATS)
    small = min(once, _best(lambda: fn(images), repeats - 1))  # (best of none: inf)
    return (_best(lambda: fn(2 * images), repeats) - small) / images


THREADS: int | None = None  # cimrun's threads (None: one per core), set by --threads


def bench(name: str, path: str, x: np.ndarray, repeats: int, chip=None) -> list[str]:
    """x holds 2N images; runs use the first N and all 2N; ``chip``: the compiled geometry."""
    n = len(x) // 2
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name_in = sess.get_inputs()[0].name
    # onnxruntime's best of many: on the tiny model (0.2-0.4 ms a run) its best of 20 moved
    # 2x between benches (0.8-1.5 us an image), and every digits ratio with it
    t_ort = _per_image(lambda k: sess.run(None, {name_in: x[:k]}), n, max(repeats, 200))
    program = compile_model(path, chip=chip)
    cells = [name, f"{t_ort * 1e3:.4f}"]
    for mode in MODES:
        t = _marginal(lambda k, m=mode: run(program, x[:k], mode=m, timing=False,
                                            threads=THREADS), n, repeats)
        cells += [_ms(t), f"{t / t_ort:.1f}x"]
    return cells


def _ms(seconds: float) -> str:
    """Milliseconds to three significant digits (the digits CNN's ideal 0.00385), whole
    from 100 on (ResNet-50's analog 2,830)."""
    ms = seconds * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default=os.path.join("models", "zoo"),
                   help="where generated models are cached (default models/zoo)")
    p.add_argument("--big", default="resnet50-imagenet", choices=make_zoo.NAMES,
                   help="the large generated model (default resnet50-imagenet)")
    p.add_argument("--images", type=int, default=1, help="N for the big model (default 1)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs of each measurement, best kept (default 3)")
    p.add_argument("--threads", type=int, help="cimrun's threads (default: one per core)")
    args = p.parse_args(argv)
    global THREADS
    THREADS = args.threads
    print(setting() + "\n")
    print("| model | ort ms/img | " + " | ".join(f"{m} ms/img | {m} / ort" for m in MODES) + " |")
    print("|" + "---|" * (2 + 2 * len(MODES)))
    x = np.load(os.path.join(ROOT, "models", "digits_test_x.npy"))
    rows = [bench("digits_cnn (270 images)", os.path.join(ROOT, "models", "digits_cnn.onnx"),
                  x, args.repeats)]
    print("| " + " | ".join(rows[0]) + " |", flush=True)
    cnn = os.path.join(ROOT, "models", "digits_cnn.onnx")
    row = bench("digits_cnn, one-pass corner", cnn, x, args.repeats, ONE_PASS)
    print("| " + " | ".join(row) + " |", flush=True)
    compiled, kernels._kernel = kernels._kernel, None  # what a run without numba costs
    row = bench("digits_cnn, numpy twin of the read kernel", cnn, x, args.repeats)
    kernels._kernel = compiled
    print("| " + " | ".join(row) + " |", flush=True)
    big = make_zoo.random_images(args.big, 2 * args.images)
    path = make_zoo.ensure(args.big, args.zoo)
    row = bench(f"{args.big} ({args.images} images)", path, big, args.repeats)
    print("| " + " | ".join(row) + " |", flush=True)
    end_to_end(args.big, path, big[:1])
    accuracy_table(cnn, x, np.load(os.path.join(ROOT, "models", "digits_test_y.npy")))
    load_table(args.big, path)


def setting() -> str:
    """What the ratios depend on besides the code: the BLAS library and the kernels it chose
    (OPENBLAS_CORETYPE, when the environment sets it, overrides OpenBLAS's own choice), numba,
    onnxruntime's version and the cores."""
    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture', '?')} kernels)"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return (f"BLAS: {', '.join(blas) or 'unknown'}"
            + (f", OPENBLAS_CORETYPE={forced} set by the environment" if forced else "")
            + f"; numba: {'on' if kernels._kernel is not None else 'off'}; onnxruntime "
            f"{ort.__version__}; {os.cpu_count()} cores")


# Runs cimrun as its child and prints its wall time and peak memory: a small launcher, because
# a child forked by this (big) process counts this process's pages in its own peak
_LAUNCH = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
           "subprocess.run(sys.argv[1:], check=True); print(time.perf_counter() - t, "
           "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20)")


def end_to_end(name: str, path: str, image: np.ndarray) -> None:
    """One analog image through cimrun in a fresh process: wall time and peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        program, x = os.path.join(tmp, "p.cim"), os.path.join(tmp, "x.npy")
        isa.save(compile_model(path), program)
        np.save(x, image)
        args = [sys.executable, "-m", "runtime.cli", program, "--input", x, "--mode",
                "analog", "-q", "-o", os.path.join(tmp, "y.npy")]
        if THREADS:
            args += ["--threads", str(THREADS)]
        done = subprocess.run([sys.executable, "-c", _LAUNCH] + args, check=True, cwd=ROOT,
                              capture_output=True, text=True)
        seconds, peak = (float(v) for v in done.stdout.split()[-2:])  # s, GiB
    print(f"\n| {name}, 1 image, analog, end to end (cimrun: load, program, run) | wall s | "
          f"peak GiB |\n|---|---|---|\n| default chip | {seconds:.1f} | {peak:.2f} |",
          flush=True)


def accuracy_table(path: str, x: np.ndarray, y: np.ndarray) -> None:
    """The digits CNN's accuracy on the default chip and the one-pass corner (analog: seed 0)."""
    print("\n| chip | quantized % | analog % |\n|---|---|---|")
    for name, chip in (("default (faithful)", None), ("one-pass corner", ONE_PASS)):
        program = compile_model(path, chip=chip)
        acc = [100 * float((run(program, x, mode=m, timing=False, threads=THREADS
                                ).outputs["logits"].argmax(1)
                            == y).mean()) for m in ("quantized", "analog")]
        print(f"| {name} | {acc[0]:.2f} | {acc[1]:.2f} |", flush=True)


def load_table(name: str, path: str) -> None:
    """Saving and loading the model's program against creating an onnxruntime session."""
    program = compile_model(path)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "p.cim")
        save = _best(lambda: isa.save(program, out), 3)  # best of 3, as the session
        load = _best(lambda: isa.load(out), 3)
        mb = os.path.getsize(out) / 1e6
    session = _best(lambda: ort.InferenceSession(path, providers=["CPUExecutionProvider"]), 3)
    print(f"\n| model | .cim MB | save s | load s | ort session s | load / session |\n"
          f"|---|---|---|---|---|---|\n| {name} | {mb:.0f} | {save:.2f} | {load:.2f} | "
          f"{session:.2f} | {load / session:.0f}x |")


if __name__ == "__main__":
    main()
