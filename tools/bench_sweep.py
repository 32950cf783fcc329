"""How much faster a sweep runs with two local workers, and with Ray, than with one worker.

    python -m tools.bench_sweep [--sweep examples/digits_cells_adc.toml] [--samples N]

Runs the same sweep three times, side by side in one process, each into its own empty
directory (so each compiles its programs, as a first run does): ``--executor local --jobs 1``,
``--executor local --jobs 2`` and ``--executor ray --jobs 2`` (Ray started on this machine
with 2 CPUs). Prints each run's wall time, the speed-ups over one worker, Ray's start-up time,
the time Ray adds per point against the local pool with the same 2 workers (over the whole
sweep, and dispatching empty tasks, which isolates the executors' own cost), and whether the
three results tables are identical (they must be: every worker is single-threaded and the
noise is keyed by seed and sample). ``--samples`` runs the first N test images only (default:
the sweep's own dataset).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from cimsweep import executors, spec
from cimsweep.driver import run_sweep
from cimsweep.results import read_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = [("local", 1), ("local", 2), ("ray", 2)]


def one_run(path: str, kind: str, jobs: int, samples: int | None, where: str) -> dict:
    sweep = spec.load(path)
    sweep.results = os.path.join(where, os.path.basename(sweep.results))
    sweep.cache = os.path.join(where, "cache")
    if samples:
        sweep.samples = samples
    start = time.perf_counter()
    executor = executors.make(kind, jobs, None)
    ready = time.perf_counter()
    try:
        outcome = run_sweep(sweep, executor, progress=False, say=lambda text: None)
    finally:
        executor.close()
    end = time.perf_counter()
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in read_table(sweep.results)]
    return {"name": f"{kind} --jobs {jobs}", "total": end - start, "startup": ready - start,
            "work": end - ready, "points": outcome.ran, "failed": outcome.failed,
            "rows": rows}


def _empty(i: int) -> int:
    return i


def dispatch_ms(kind: str, tasks: int = 400) -> float:
    """Milliseconds per empty task through ``kind``'s executor with 2 workers, start-up and
    the first round (worker start) excluded: what the executor itself adds to a point."""
    executor = executors.make(kind, 2, None)
    try:
        for i in range(4):
            executor.submit(_empty, i)
        for _ in range(4):
            executor.next_done()
        start = time.perf_counter()
        for i in range(tasks):
            executor.submit(_empty, i)
        for _ in range(tasks):
            executor.next_done()
        return 1000 * (time.perf_counter() - start) / tasks
    finally:
        executor.close()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default=os.path.join(ROOT, "examples", "digits_cells_adc.toml"),
                   help="the sweep file (default examples/digits_cells_adc.toml)")
    p.add_argument("--samples", type=int, help="first N samples of the sweep's dataset")
    args = p.parse_args(argv)
    results = []
    for kind, jobs in RUNS:
        with tempfile.TemporaryDirectory() as where:
            results.append(one_run(args.sweep, kind, jobs, args.samples, where))
        r = results[-1]
        print(f"{r['name']}: {r['total']:.1f} s ({r['points']} points, {r['failed']} failed; "
              f"start-up {r['startup']:.1f} s)", flush=True)
    base, local2, ray2 = results
    points = base["points"]
    print(f"\nsweep {os.path.relpath(args.sweep, ROOT)}, {points} points"
          + (f", first {args.samples} samples" if args.samples else "") + ", on "
          f"{os.cpu_count()} cores\n")
    print("| run | wall s | s/point | speed-up over --jobs 1 |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['total']:.1f} | {r['total'] / points:.2f} | "
              f"{base['total'] / r['total']:.2f}x |")
    per_point = (ray2["work"] - local2["work"]) / points
    print(f"\nRay start-up (ray.init on this machine): {ray2['startup']:.1f} s. After "
          f"start-up Ray took {ray2['work']:.1f} s against the local pool's "
          f"{local2['work']:.1f} s with the same 2 workers: {1000 * per_point:+.0f} ms a point")
    local_ms, ray_ms = dispatch_ms("local"), dispatch_ms("ray")
    print(f"dispatch alone, empty tasks on 2 workers: local pool {local_ms:.2f} ms a task, "
          f"Ray {ray_ms:.2f} ms a task ({ray_ms - local_ms:+.2f} ms)")
    same = base["rows"] == local2["rows"] == ray2["rows"]
    print(f"results identical across the three runs (all columns but seconds): "
          f"{'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
