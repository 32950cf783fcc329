"""``cimsweep``: design-space sweeps and dataset evaluations, on this machine or on Ray.

    cimsweep SWEEP.toml [--executor local|ray] [--jobs N] [--address ADDR] [--retry-failed]
    cimsweep plot RESULTS.parquet [-o DIR]

User errors print one line ``cimsweep: error: ...`` and exit with status 2; a sweep whose
points failed still exits 0 (the failures are rows of the results) unless ``--strict``,
which exits 1 while the results hold a failed point, whichever run recorded it.
"""

from __future__ import annotations

import os
import sys

from isa.cli import INTERRUPTED, Parser, quiet_broken_pipe

from .errors import SweepError


def sweep_parser() -> Parser:
    p = Parser(prog="cimsweep",
               description="Run a sweep file: compile each distinct configuration once, run "
                           "every point (model x grid x cases x seeds x dataset shards), "
                           "append each result row to a journal as it finishes, and write "
                           "the results table (one row per setting, shards merged). A sweep "
                           "run again resumes: recorded points are not run again. "
                           "'cimsweep plot RESULTS' draws the standard figures.",
               epilog="The sweep file's format is documented in the README (section "
                      "cimsweep) and in cimsweep/spec.py; examples/ holds examples.")
    p.add_argument("sweep", help="sweep file (TOML)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: a pool of worker processes on this machine (default); ray: "
                        "Ray tasks, on a cluster started on this machine unless --address "
                        "is given (needs pip install 'cimstack[ray]')")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="worker processes (local) or CPUs of the Ray cluster started here "
                        f"(default: this machine's cores, {os.cpu_count()}); each worker is "
                        "single-threaded")
    p.add_argument("--address", metavar="ADDR",
                   help="with --executor ray: join the Ray cluster at ADDR (e.g. "
                        "ray://head:10001 or auto) instead of starting one; its nodes need "
                        "cimstack installed, and programs and data travel through Ray")
    p.add_argument("--retry-failed", action="store_true",
                   help="also run again the points whose rows recorded an error (default: "
                        "a recorded point, failed or not, is never run again)")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when any point of the results failed, in this "
                        "run or recorded by an earlier one (default: 0; the errors are in "
                        "the results' error column)")
    p.add_argument("--list", action="store_true",
                   help="print the points (settings, seed, shard) and whether each is "
                        "recorded, then stop; compiles and runs nothing")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no summary lines")
    return p


def plot_parser() -> Parser:
    p = Parser(prog="cimsweep plot",
               description="Draw the standard figures of a results table: accuracy against "
                           "each swept numeric setting with error bars over seeds, EDP "
                           "against crossbar count per mapping, and the Pareto fronts of "
                           "accuracy against EDP and against area (those the table's columns "
                           "allow). Needs matplotlib.")
    p.add_argument("results", help="results file written by cimsweep (.parquet or .csv)")
    p.add_argument("-o", "--out", metavar="DIR",
                   help="directory for the PNG files (default: beside RESULTS, named "
                        "RESULTS-STEM.FIGURE.png)")
    return p


def _sweep(argv: list[str]) -> int:
    from . import driver, executors, spec
    args = sweep_parser().parse_args(argv)
    if args.address and args.executor != "ray":
        raise SweepError("--address needs --executor ray")
    if args.jobs is not None and args.jobs < 1:
        raise SweepError(f"--jobs {args.jobs}: must be at least 1")
    sweep = spec.load(args.sweep)
    if args.list:
        return _list(sweep)
    say = (lambda text: None) if args.quiet else print
    executor = executors.make(args.executor, args.jobs, args.address)
    try:
        outcome = driver.run_sweep(sweep, executor, args.retry_failed,
                                   progress=not args.quiet and sys.stderr.isatty(), say=say)
    finally:
        executor.close()
    say(driver.summary_line(outcome))
    return 1 if args.strict and outcome.failed_in_results else 0


def _list(sweep) -> int:
    from .driver import dataset
    from .results import journal_path, read_journal
    _, _, samples = dataset(sweep)
    rows = read_journal(journal_path(sweep.results))
    for p in sweep.points(samples):
        state = rows[p.key]["status"] if p.key in rows else "to run"
        settings = " ".join(f"{k}={v}" for k, v in p.params)
        print(f"{settings} seed={p.seed} shard={p.shard} [{p.start}:{p.stop}] {state}")
    return 0


def _plot(argv: list[str]) -> int:
    from .plot import plot_results
    args = plot_parser().parse_args(argv)
    for path in plot_results(args.results, args.out):
        print(f"cimsweep: wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _plot if argv[:1] == ["plot"] else _sweep
    try:
        return command(argv[1:] if command is _plot else argv)
    except SweepError as exc:
        print(f"cimsweep: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        quiet_broken_pipe()
        return 141
    except KeyboardInterrupt:
        print("cimsweep: interrupted; the finished points are recorded: run the same "
              "command again to resume", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
