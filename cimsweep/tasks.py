"""What a worker does with a point: compile a configuration into the program cache, run a
point and return its result row. Both return a value rather than raise: a point that fails
records its error and the sweep goes on."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
import traceback
import warnings

import numpy as np

import isa
from compiler.errors import CompileError
from runtime.errors import RunError

from .spec import TIMING_METRICS, Compile, Point

_PROGRAMS: dict[str, isa.Program] = {}  # this worker's programs by cache key (the last two)


def _message(exc: Exception) -> str:
    """A user error's own message; an internal error's type and where it was raised."""
    if isinstance(exc, (CompileError, RunError, isa.IsaError)):
        return str(exc)
    where = traceback.extract_tb(exc.__traceback__)[-1]
    return (f"{type(exc).__name__}: {exc} ({os.path.basename(where.filename)}:"
            f"{where.lineno})")


def compile_task(config: Compile, path: str, ship: bool) -> dict:
    """Compile ``config`` to ``path`` (``ship``: into a temporary file whose bytes are
    returned, for a driver on another machine to cache). ``{"error": ...}`` on failure;
    cimc's warnings are returned (``warnings``), not printed by the worker."""
    from compiler.cli import compile_argv
    start = time.perf_counter()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            if not ship:
                compile_argv(config.argv(path))
                return {"seconds": time.perf_counter() - start, **_warnings(stderr)}
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "program.cim")
                compile_argv(config.argv(out))
                with open(out, "rb") as f:
                    return {"seconds": time.perf_counter() - start, "data": f.read(),
                            **_warnings(stderr)}
    except Exception as exc:  # recorded in the point's row
        return {"error": f"compile: {_message(exc)}"}


def _warnings(stderr: io.StringIO) -> dict:
    prefix = "cimc: warning: "
    lines = [line.removeprefix(prefix) for line in stderr.getvalue().splitlines()
             if line.startswith(prefix)]
    return {"warnings": lines} if lines else {}


def _program(key: str, source) -> isa.Program:
    """The program cached under ``key``, from a path or the file's bytes; parsed once per
    worker."""
    if key not in _PROGRAMS:
        program = isa.parse(source) if isinstance(source, bytes) else isa.load(source)
        while len(_PROGRAMS) >= 2:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        _PROGRAMS[key] = program
    return _PROGRAMS[key]


def run_task(point: Point, program_key: str, source, x, y, metrics: list[str]) -> dict:
    """Run ``point`` on its shard ``x`` (labels ``y`` or None) and return its result row:
    the sample count and correct answers, the requested timing metrics (shard 0 only: they
    do not depend on the samples) and the crossbars the program uses; the run's warnings
    are returned (``warnings``), not printed by the worker."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = _run_point(point, program_key, source, x, y, metrics)
    said = list(dict.fromkeys(str(w.message) for w in caught))
    return {**row, "warnings": said} if said else row


def _run_point(point: Point, program_key: str, source, x, y, metrics: list[str]) -> dict:
    """``run_task``'s row."""
    from compiler.flags import GEOMETRY_FLAGS
    from runtime import run
    from runtime.chips import resolve
    from runtime.scoring import check_labels, classes
    start = time.perf_counter()
    row: dict = {"status": "ok", "error": None}
    try:
        program = _program(program_key, source)
        # the geometry flags the point compiled with override its chip file's [arch], as
        # they did for cimc
        geometry = [f"arch.{dest}={value}" for dest, value in point.compile.flags
                    if dest in GEOMETRY_FLAGS and value is not None]
        chip = resolve(point.chip, geometry + list(point.overrides), program)
        timing = point.shard == 0 and any(m in TIMING_METRICS for m in metrics)
        inputs = None if point.mode == "timing" else x
        result = run(program, inputs, mode=point.mode, seed=point.seed, chip=chip,
                     timing=timing, first_sample=point.start)
        row["crossbars"] = program.chip.xbars
        if y is not None and point.mode != "timing":
            labels = check_labels(y, len(y), classes(program), "[dataset] labels")
            (logits,) = result.outputs.values()
            row["samples"] = len(labels)
            row["correct"] = int((logits.argmax(1) == labels).sum())
        for m in metrics if timing else ():
            if m in TIMING_METRICS:
                stats = result.stats
                row[m] = stats["resources"]["area_mm2"] if m == "area_mm2" else stats[m]
    except Exception as exc:  # recorded in the point's row
        row = {"status": "error", "error": _message(exc)}
    row["seconds"] = time.perf_counter() - start
    return row


def shard(data, start: int, stop: int):
    """Samples [start, stop) of an array or of every array in a dict (several inputs)."""
    if data is None:
        return None
    if isinstance(data, dict):
        return {k: np.ascontiguousarray(v[start:stop]) for k, v in data.items()}
    return np.ascontiguousarray(data[start:stop])
