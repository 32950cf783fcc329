"""Running a sweep: compile each distinct configuration once, run every point not yet in the
journal, record each row as it finishes, then write the merged results table.

A configuration's program is cached by content hash (``spec.Compile.key``) in the sweep's
cache directory and shared by every point that uses it: workers on this machine read the
file, Ray workers get its bytes from Ray's object store. Points of a configuration start as
soon as its program exists.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from importlib import resources

from isa import IsaError
from isa.files import check_writable, load_array, write_atomic

from . import tasks
from .errors import SweepError
from .results import Journal, journal_path, merge, require_arrow, write_table
from .spec import TIMING_METRICS, Point, Sweep


@dataclass
class Outcome:
    """What a call to ``run_sweep`` did."""
    points: int       # in the sweep
    skipped: int      # already in the journal
    ran: int
    failed: int       # of the points this call ran
    compiled: int
    seconds: float
    results: str
    failed_in_results: int = 0  # the results' failed points, recorded earlier ones included


def code_version() -> str:
    """A hash of the compiler's and ISA's code: a cached program is reused only by the code
    that built it."""
    h = hashlib.sha256()
    for package in ("compiler", "isa"):
        for name, entry in sorted(_files(resources.files(package), package)):
            h.update(name.encode())
            h.update(entry.read_bytes())
    return h.hexdigest()[:16]


def _files(root, prefix: str):
    for entry in root.iterdir():
        name = f"{prefix}/{entry.name}"
        if entry.is_dir() and entry.name != "__pycache__":
            yield from _files(entry, name)
        elif entry.name.endswith((".py", ".lark", ".toml")):
            yield name, entry


def dataset(sweep: Sweep):
    """The sweep's inputs and labels (None without them), the first ``samples`` of each."""
    if sweep.inputs is None:
        return None, None, None
    try:
        x = load_array(sweep.inputs, "[dataset] inputs")
        y = load_array(sweep.labels, "[dataset] labels") if sweep.labels else None
    except IsaError as exc:
        raise SweepError(f"{sweep.path}: {exc}") from None
    n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    if y is not None and (isinstance(y, dict) or len(y) != n):
        raise SweepError(f"{sweep.path}: [dataset] labels: expected one label per input "
                         f"sample ({n})")
    if sweep.samples is not None:
        if sweep.samples > n:
            raise SweepError(f"{sweep.path}: [dataset] samples = {sweep.samples}, but inputs "
                             f"hold {n}")
        n = sweep.samples
    return x, y, n


def pending(points: list[Point], journal: Journal, retry_failed: bool,
            metrics: tuple = ()) -> list[Point]:
    """The points still to run: not in the journal (with ``retry_failed``: or failed), or
    recorded without one of the timing ``metrics`` a first shard records (a metric added to
    the sweep file since)."""
    wanted = [m for m in metrics if m in TIMING_METRICS]

    def finished(p: Point) -> bool:
        row = journal.rows.get(p.key)
        if row is None or (row["status"] != "ok" and retry_failed):
            return False
        return row["status"] != "ok" or p.shard != 0 or all(m in row for m in wanted)
    return [p for p in points if not finished(p)]


def _row(point: Point, program: str, value: dict) -> dict:
    return {"key": point.key, "setting": point.setting, **dict(point.params),
            "seed": point.seed, "mode": point.mode, "shard": point.shard,
            "start": point.start, "stop": point.stop, "program": program, **value}


def run_sweep(sweep: Sweep, executor, retry_failed: bool = False, progress: bool = True,
              say=print) -> Outcome:
    """Run ``sweep`` on ``executor``, resuming from its journal. SweepError before any work
    for a problem with the files."""
    start = time.perf_counter()
    try:
        check_writable(sweep.results, "results")
    except IsaError as exc:
        raise SweepError(f"{sweep.path}: {exc}") from None
    if sweep.results.endswith(".parquet"):
        require_arrow()  # before the work whose rows it would write
    x, y, samples = dataset(sweep)
    os.makedirs(sweep.cache, exist_ok=True)
    points = sweep.points(samples)
    journal = Journal(journal_path(sweep.results))
    todo = pending(points, journal, retry_failed, tuple(sweep.metrics))
    version = code_version()
    groups: dict[str, list[Point]] = {}
    configs = {}
    for p in todo:
        key = p.compile.key(version)
        groups.setdefault(key, []).append(p)
        configs[key] = p.compile
    state = _State(sweep, executor, journal, x, y, groups, progress, len(todo))
    say(f"cimsweep: {len(points)} points, {len(points) - len(todo)} already recorded, "
        f"{len(todo)} to run ({_plural(len(groups), 'program')}, executor {executor.name})")
    try:
        for key, config in configs.items():
            path = os.path.join(sweep.cache, f"{key}.cim")
            if os.path.isfile(path):
                state.program_ready(key, path)
            else:
                state.compiles[executor.submit(tasks.compile_task, config, path,
                                               executor.name == "ray", later=True)] = key
        while state.running:
            state.collect(*executor.next_done())
    finally:
        state.bar.close()
        journal.close()
        rows = [journal.rows[p.key] for p in points if p.key in journal.rows]
        columns = [*sweep.axes, "seed", "mode"]
        shards = Counter(p.setting for p in points)
        if rows:
            write_table(sweep.results, merge(rows, columns, sweep.metrics, shards))
    return Outcome(len(points), len(points) - len(todo), state.ran, state.failed,
                   state.compiled, time.perf_counter() - start, sweep.results,
                   sum(row["status"] != "ok" for row in rows))


class _State:
    """The driver's bookkeeping while tasks run."""

    def __init__(self, sweep, executor, journal, x, y, groups, progress, total):
        from tqdm import tqdm
        self.sweep, self.executor, self.journal = sweep, executor, journal
        self.x, self.y, self.groups = x, y, groups
        self.compiles: dict[int, str] = {}   # task id -> program key
        self.runs: dict[int, tuple[Point, str]] = {}
        self.shards: dict[tuple[int, int], tuple] = {}
        self.ran = self.failed = self.compiled = 0
        self.said: set[str] = set()  # the runs' warnings printed so far
        self.bar = tqdm(total=total, desc="cimsweep", unit="point", disable=not progress,
                        dynamic_ncols=True)

    @property
    def running(self) -> bool:
        return bool(self.compiles or self.runs)

    def _shared(self, start: int, stop: int):
        if (start, stop) not in self.shards:
            share = self.executor.share
            self.shards[start, stop] = (share(tasks.shard(self.x, start, stop)),
                                        share(tasks.shard(self.y, start, stop)))
        return self.shards[start, stop]

    def program_ready(self, key: str, path: str, data: bytes | None = None) -> None:
        """Submit every point of program ``key``."""
        if self.executor.name == "ray":
            if data is None:
                with open(path, "rb") as f:
                    data = f.read()
            source = self.executor.share(data)
        else:
            source = path
        for p in self.groups[key]:
            x, y = self._shared(p.start, p.stop) if p.mode != "timing" else (None, None)
            tid = self.executor.submit(tasks.run_task, p, key, source, x, y,
                                       self.sweep.metrics)
            self.runs[tid] = (p, key)

    def collect(self, tid: int, ok: bool, value) -> None:
        if tid in self.compiles:
            key = self.compiles.pop(tid)
            error = value.get("error") if ok else f"compile: {value}"
            if error:
                for p in self.groups[key]:
                    self._record(p, key, {"status": "error", "error": error})
                return
            self.compiled += 1
            first = self.groups[key][0]  # the program's warnings are all its points'
            where = " ".join(f"{k}={v}" for k, v in first.params)
            for warning in value.get("warnings", []):
                self.bar.write(f"cimsweep: warning: {where}: {warning}", file=sys.stderr)
            path = os.path.join(self.sweep.cache, f"{key}.cim")
            if "data" in value:
                def write(tmp: str) -> None:
                    with open(tmp, "wb") as f:
                        f.write(value["data"])
                write_atomic(path, write)
            self.program_ready(key, path, value.get("data"))
            return
        point, key = self.runs.pop(tid)
        if ok:
            self._warn(point, value.pop("warnings", []))
        self._record(point, key, value if ok else {"status": "error", "error": value})

    def _warn(self, point: Point, said: list[str]) -> None:
        """A run's warnings, each once per sweep (its seeds and shards say the same)."""
        for warning in said:
            if warning not in self.said:
                self.said.add(warning)
                where = " ".join(f"{k}={v}" for k, v in point.params)
                self.bar.write(f"cimsweep: warning: {where}: {warning}", file=sys.stderr)

    def _record(self, point: Point, key: str, value: dict) -> None:
        row = _row(point, key, value)
        self.journal.append(row)
        self.ran += 1
        self.failed += row["status"] != "ok"
        self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(1)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def summary_line(outcome: Outcome) -> str:
    earlier = outcome.failed_in_results - outcome.failed
    return (f"cimsweep: {_plural(outcome.ran, 'point')} run ({outcome.failed} failed), "
            f"{outcome.skipped} already recorded"
            + (f" ({earlier} of them failed; --retry-failed runs them again)" if earlier > 0
               else "")
            + f", {_plural(outcome.compiled, 'program')} compiled, "
            f"{outcome.seconds:.1f} s; results in {outcome.results}")

