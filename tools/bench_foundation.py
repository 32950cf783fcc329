"""Compile and ideal-mode run times against onnxruntime, measured side by side in one run.

    python -m tools.bench_foundation [--models resnet50-imagenet ...] [--images 4] [--zoo DIR]

For each generated model: cimc's compile time (frontend + passes + codegen), writing and
parsing the .cim file, and cimrun's ideal-mode seconds per image; next to onnxruntime's session
creation and seconds per image on the same input batch, and the ratios. Run times are the best
of --repeats runs after one warm-up run, arithmetic only (the timing simulation is off).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import onnxruntime as ort

import isa
from compiler import compile_model
from runtime import run
from tools import make_zoo


def _best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def bench(name: str, zoo: str, images: int, repeats: int) -> dict:
    path = make_zoo.ensure(name, zoo)
    x = make_zoo.random_images(name, images)
    program, t_compile = _timed(lambda: compile_model(path))
    with tempfile.TemporaryDirectory() as tmp:
        cim = os.path.join(tmp, "p.cim")
        _, t_save = _timed(lambda: isa.save(program, cim))
        program, t_load = _timed(lambda: isa.load(cim))
        mbytes = os.path.getsize(cim) / 2**20
    sess, t_session = _timed(lambda: ort.InferenceSession(path,
                                                          providers=["CPUExecutionProvider"]))
    t_ort = _best(lambda: sess.run(None, {"image": x}), repeats) / images
    # cimrun's default: a thread per core, as onnxruntime's session uses
    t_ideal = _best(lambda: run(program, x, timing=False, threads=None), repeats) / images
    out = run(program, x, timing=False, threads=None).outputs["logits"]
    ref = sess.run(None, {"image": x})[0]
    return dict(model=name, xbars=program.chip.xbars, mb=mbytes, compile=t_compile, save=t_save,
                load=t_load, session=t_session, ideal=t_ideal, ort=t_ort,
                err=float(np.abs(out - ref).max() / np.abs(ref).max()))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=make_zoo.NAMES, default=make_zoo.NAMES,
                   help="generated models to time (default: all)")
    p.add_argument("--images", type=int, default=4, help="images per run (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs, best kept (default 3)")
    p.add_argument("--zoo", default=os.path.join("models", "zoo"),
                   help="where generated models are cached (default models/zoo)")
    args = p.parse_args(argv)
    head = ("| model | crossbars | .cim MB | cimc s | save s | load s | ort session s | "
            "cimc / session | ideal s/img | ort s/img | ideal / ort | rel. error |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name in args.models:
        r = bench(name, args.zoo, args.images, args.repeats)
        print(f"| {r['model']} | {r['xbars']} | {r['mb']:.0f} | {r['compile']:.2f} | "
              f"{r['save']:.2f} | {r['load']:.2f} | {r['session']:.2f} | "
              f"{r['compile'] / r['session']:.1f}x | {r['ideal']:.3f} | {r['ort']:.4f} | "
              f"{r['ideal'] / r['ort']:.1f}x | {r['err']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
