"""cimsweep (issue 15): the local and Ray executors give the same results table; a sweep
killed with SIGKILL resumes without running a finished point twice and ends with the table of
an uninterrupted run; failing points are recorded while the others complete; a worker that
dies has its task retried once; dataset shards merge into the accuracy of one run over all
samples; each distinct compile configuration is compiled once; sweep-file mistakes are one
line on stderr with status 2; ``cimsweep plot`` draws the standard figures.

Every expected number is computed by hand or by an independent path (``compile_model`` and
``runtime.run``), and tables are compared for equality (every column except ``seconds``, the
wall time). Points use the small MLP on 60 samples in analog mode with a large read noise,
so that seeds and samples change the answers; the kill test uses the CNN on 35 samples a
point, so that a point lasts about a third of a second.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from cimsweep import cli, driver, executors, plot, results, spec
from cimsweep.executors import LocalExecutor

ROOT = Path(__file__).parents[1]
MODELS = ROOT / "models"
MLP = str(MODELS / "digits_mlp.onnx")
CNN = str(MODELS / "digits_cnn.onnx")
X = str(MODELS / "digits_test_x.npy")
Y = str(MODELS / "digits_test_y.npy")


# ---------------------------------------------------------------------------------------------
# helpers


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)


def write_sweep(directory: Path, name: str = "sweep.toml", *, model: str = MLP,
                results_file: str = "results.parquet", seeds=1, samples: int | None = 60,
                shards: int = 1, grid: dict | None = None, fixed: dict | None = None,
                top: dict | None = None, mode: str = "analog") -> Path:
    """A sweep file in ``directory``: one model (absolute path), the digits test set, the
    given grid and fixed settings; ``top``: more top-level keys (written as given)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"results = {_toml(results_file)}", f"mode = {_toml(mode)}",
             f"seeds = {_toml(seeds)}"]
    lines += [f"{k} = {_toml(v)}" for k, v in (top or {}).items()]
    lines += ["[models]", f"net = {_toml(model)}",
              "[dataset]", f"inputs = {_toml(X)}", f"labels = {_toml(Y)}",
              f"shards = {shards}"]
    if samples is not None:
        lines.append(f"samples = {samples}")
    for table, values in (("fixed", fixed), ("grid", grid)):
        if values:
            lines.append(f"[{table}]")
            lines += [f"{json.dumps(k)} = {_toml(v)}" for k, v in values.items()]
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    return path


def run(path: Path, executor: str = "local", jobs: int = 2, **options) -> driver.Outcome:
    """Run a sweep file in this process through the Python API; the executor is closed."""
    sweep = spec.load(str(path))
    ex = executors.make(executor, jobs, None)
    try:
        return driver.run_sweep(sweep, ex, progress=False, say=lambda text: None, **options)
    finally:
        ex.close()


def table(outcome_or_path) -> list[dict]:
    """The results table's rows without ``seconds`` (wall time, the one column that may
    differ between equal runs)."""
    path = getattr(outcome_or_path, "results", outcome_or_path)
    rows = results.read_table(str(path))
    for row in rows:
        del row["seconds"]
    return rows


def journal_lines(path: Path) -> tuple[list[str], bytes]:
    """The journal's complete lines and what follows the last newline (a torn row)."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    return data[:cut].decode().splitlines(), data[cut:]


def main(argv: list[str], capsys) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------------------------------------
# 1. the local executor and Ray give the same table

GRID = {"adc-bits": [4, 8], "device.read_sigma": [0, 0.3]}


def test_local_and_ray_give_identical_tables(tmp_path):
    import ray  # a hard requirement: ray is in the dev extra

    local = run(write_sweep(tmp_path / "local", seeds=2, shards=2, grid=GRID), "local", 2)
    outcome = run(write_sweep(tmp_path / "ray", seeds=2, shards=2, grid=GRID), "ray", 2)
    assert not ray.is_initialized()  # the executor's close() shut it down
    for o in (local, outcome):
        # 2 adc-bits x 2 sigmas x 2 seeds x 2 shards; one program per adc-bits value
        assert (o.points, o.ran, o.failed, o.skipped, o.compiled) == (16, 16, 0, 0, 2)
    rows = table(local)
    assert rows == table(outcome)
    assert [(r["adc_bits"], r["device.read_sigma"], r["seed"]) for r in rows] == [
        (a, s, seed) for a in (4, 8) for s in (0, 0.3) for seed in (0, 1)]
    assert all(r["status"] == "ok" and r["samples"] == 60 and r["shards"] == 2 for r in rows)
    # the noise matters: the table is not trivially equal (the seeds' answers differ)
    noisy = [r["correct"] for r in rows if r["device.read_sigma"] == 0.3]
    assert len(set(noisy)) > 1


# ---------------------------------------------------------------------------------------------
# 2. kill -9 and resume


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_kill_and_resume(tmp_path):
    points = 8
    options = dict(model=CNN, results_file="results.csv", samples=35 * points, shards=points,
                   fixed={"device.read_sigma": 0.3})  # 8 points of 35 samples, ~0.3 s each
    path = write_sweep(tmp_path / "killed", **options)
    journal = tmp_path / "killed" / "results.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "cimsweep.cli", str(path), "--jobs", "1",
                             "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (journal.exists() and len(journal_lines(journal)[0]) >= 2):
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "no two rows in 120 s"
            time.sleep(0.02)
        children = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    before_bytes = journal.read_bytes()
    # the workers (and multiprocessing's resource tracker) notice and exit, writing nothing
    deadline = time.monotonic() + 20
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert children and not any(_alive(c) for c in children)
    time.sleep(0.8)  # longer than a point: an orphan would have written by now
    assert journal.read_bytes() == before_bytes
    before, torn = journal_lines(journal)
    rows_before = [json.loads(line) for line in before]  # every complete row parses
    assert 2 <= len(rows_before) < points, "the kill came after the sweep finished"
    assert all(r["status"] == "ok" for r in rows_before)
    # a row cut short by a kill: whatever the kill left, add a torn tail; reopening drops it
    if not torn:
        with open(journal, "ab") as f:
            f.write(b'{"key": "0123456789abcdef", "status": "o')

    resumed = run(path, "local", 1)
    assert (resumed.points, resumed.skipped, resumed.failed, resumed.compiled) == (
        points, len(rows_before), 0, 0)  # the program was cached before the first row
    assert resumed.ran == points - len(rows_before)
    after, tail = journal_lines(journal)
    assert tail == b""
    assert after[:len(before)] == before  # the rows written before the kill are untouched
    keys_before = {r["key"] for r in rows_before}
    keys_added = [json.loads(line)["key"] for line in after[len(before):]]
    assert keys_before.isdisjoint(keys_added)  # no finished point ran twice
    sweep = spec.load(str(path))
    all_keys = [p.key for p in sweep.points(35 * points)]
    every = [json.loads(line)["key"] for line in after]
    assert sorted(every) == sorted(all_keys) and len(set(all_keys)) == points

    reference = run(write_sweep(tmp_path / "uninterrupted", **options), "local", 2)
    assert table(resumed) == table(reference)
    (row,) = table(reference)
    assert (row["samples"], row["shards"], row["status"]) == (35 * points, points, "ok")


# ---------------------------------------------------------------------------------------------
# 3. failing points are recorded, the others complete


def test_failing_points_are_recorded(tmp_path, capsys):
    path = write_sweep(tmp_path, shards=2, grid={"adc-bits": [8, 99],
                                                "device.read_sigma": [0.1, -0.1]})
    outcome = run(path)
    # adc-bits 99 fails to compile (both sigmas, both shards: 4 points); sigma -0.1 is refused
    # by the chip at run time (2 points); one program compiles
    assert (outcome.points, outcome.ran, outcome.failed, outcome.compiled) == (8, 8, 6, 1)
    rows = {(r["adc_bits"], r["device.read_sigma"]): r for r in table(outcome)}
    ok = rows[8, 0.1]
    assert (ok["status"], ok["error"], ok["samples"], ok["shards"]) == ("ok", None, 60, 2)
    assert 0 <= ok["correct"] <= 60
    refused = rows[8, -0.1]
    assert refused["status"] == "error" and refused["accuracy"] is None
    assert "device.read_sigma = -0.1 is out of range" in refused["error"]
    for sigma in (0.1, -0.1):
        bad = rows[99, sigma]
        assert bad["status"] == "error" and bad["accuracy"] is None
        assert bad["error"].startswith("compile: --adc-bits ") and "(got 99)" in bad["error"]
        assert "Traceback" not in bad["error"]

    # --list shows each point's state; a failed point is not run again unless asked
    status, out, _ = main([path, "--list"], capsys)
    states = [line.rsplit(" ", 1)[1] for line in out.splitlines()]
    assert status == 0 and states == ["ok", "ok", "error", "error"] + ["error"] * 4
    assert run(path).ran == 0
    # --strict fails while the results hold failed points, also on a run that ran none
    status, out, _ = main([path, "--strict", "--jobs", 1], capsys)
    assert status == 1
    assert "0 points run (0 failed), 8 already recorded (6 of them failed" in out
    again = run(path, retry_failed=True)
    assert (again.skipped, again.ran, again.failed) == (2, 6, 6)


# ---------------------------------------------------------------------------------------------
# 4. a worker that dies has its task retried once (module-level: workers import them)


def die_first_time(marker: str, value: int) -> int:
    """Kill the worker on the first call (no marker file yet), answer on the second."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return 2 * value


def always_die() -> None:
    os._exit(3)


def double(value: int) -> int:
    return 2 * value


def raises() -> None:
    raise ValueError("no such luck")


def _drain(ex, names: dict) -> dict:
    """Every submitted task's (finished, value), by name."""
    out = {}
    while len(out) < len(names):
        tid, ok, value = ex.next_done()
        out[names[tid]] = (ok, value)
    return out


def test_local_worker_death_is_retried_once(tmp_path):
    marker = str(tmp_path / "died-once")
    ex = LocalExecutor(2)
    try:
        names = {ex.submit(die_first_time, marker, 21): "once", ex.submit(always_die): "always",
                 ex.submit(raises): "raises"}
        names.update({ex.submit(double, i): i for i in range(4)})
        done = _drain(ex, names)
        assert os.path.exists(marker)  # the first attempt ran and died
        assert done["once"] == (True, 42)
        assert done["always"] == (False, "worker process died twice (exit code 3)")
        assert done["raises"] == (False, "ValueError: no such luck")  # not retried
        assert {i: done[i] for i in range(4)} == {i: (True, 2 * i) for i in range(4)}
        # the executor goes on: new tasks run on fresh workers
        names = {ex.submit(double, 10): "after"}
        assert _drain(ex, names) == {"after": (True, 20)}
    finally:
        ex.close()


def test_local_idle_worker_death_is_replaced(tmp_path):
    ex = LocalExecutor(1)
    try:
        assert _drain(ex, {ex.submit(double, 1): "a"}) == {"a": (True, 2)}
        ((proc, _),) = ex.workers
        proc.kill()
        proc.join(timeout=10)
        assert _drain(ex, {ex.submit(double, 2): "b"}) == {"b": (True, 4)}
    finally:
        ex.close()


def test_ray_worker_death_is_retried_once(tmp_path):
    import ray
    from ray import cloudpickle

    # Ray's workers import a task's module from the driver's working directory, where this
    # file is not: send these functions by value
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    marker = str(tmp_path / "died-once")
    try:
        ex = executors.make("ray", 2, None)
        try:
            names = {ex.submit(die_first_time, marker, 21): "once",
                     ex.submit(always_die): "always", ex.submit(raises): "raises"}
            names.update({ex.submit(double, i): i for i in range(4)})
            done = _drain(ex, names)
            assert os.path.exists(marker)
            assert done["once"] == (True, 42)
            ok, why = done["always"]
            # Ray's own report of a task whose retry died too (max_retries=1)
            assert not ok and why.startswith("WorkerCrashedError: "), why
            assert done["raises"] == (False, "ValueError: no such luck")
            assert {i: done[i] for i in range(4)} == {i: (True, 2 * i) for i in range(4)}
            assert _drain(ex, {ex.submit(double, 10): "after"}) == {"after": (True, 20)}
        finally:
            ex.close()
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    assert not ray.is_initialized()


# ---------------------------------------------------------------------------------------------
# 5. shards merge into the accuracy of one run


def test_shards_equal_one_run(tmp_path):
    from compiler import compile_model
    from isa.chip import Chip
    from runtime import run as run_program

    sigma = {"device.read_sigma": 0.3}
    three = run(write_sweep(tmp_path / "three", seeds=[0, 5], samples=61, shards=3,
                            fixed=sigma))
    one = run(write_sweep(tmp_path / "one", seeds=[0, 5], samples=61, shards=1, fixed=sigma))
    journal = results.read_table(str(tmp_path / "three" / "results.jsonl"))
    # 61 samples in 3 shards: edges round(61 * i / 3) = 0, 20, 41, 61
    assert sorted({(r["start"], r["stop"]) for r in journal}) == [(0, 20), (20, 41), (41, 61)]
    rows3, rows1 = table(three), table(one)
    assert [r["shards"] for r in rows3] == [3, 3] and [r["shards"] for r in rows1] == [1, 1]
    strip = ("shards",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows3] == \
        [{k: v for k, v in r.items() if k not in strip} for r in rows1]

    # the same numbers by hand: compile in memory, run once on all 61 samples, count
    x, y = np.load(X)[:61], np.load(Y)[:61]
    program = compile_model(MLP)
    chip = Chip()
    chip = dataclasses.replace(chip, arch=program.chip,
                               device=dataclasses.replace(chip.device, read_sigma=0.3))
    for row in rows3:
        result = run_program(program, x, mode="analog", seed=row["seed"], chip=chip)
        (logits,) = result.outputs.values()
        assert row["samples"] == 61
        assert row["correct"] == int((logits.argmax(1) == y).sum())

    # the 95 % Wilson score interval, from its definition
    row = rows3[0]
    n, p = 61, row["correct"] / 61
    z = NormalDist().inv_cdf(0.975)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert row["accuracy"] == pytest.approx(p, abs=1e-15)
    assert row["accuracy_low"] == pytest.approx(centre - half, abs=1e-12)
    assert row["accuracy_high"] == pytest.approx(centre + half, abs=1e-12)
    # and a textbook value: 8 of 10 gives [0.4902, 0.9433]
    low, high = results.wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)


# ---------------------------------------------------------------------------------------------
# 6. the program cache, and --list


def _cache(directory: Path) -> set[str]:
    return {p.name for p in (directory / ".cimsweep-cache").glob("*.cim")}


def test_program_cache_and_list(tmp_path, capsys):
    # a grid over a run-time key only: one program for its 12 points
    first = write_sweep(tmp_path, "first.toml", results_file="first.csv", seeds=2, shards=2,
                        grid={"device.read_sigma": [0, 0.1, 0.2]})
    status, out, _ = main([first, "--list"], capsys)
    assert status == 0
    assert out.splitlines()[:3] == [
        "model=net device.read_sigma=0 seed=0 shard=0 [0:30] to run",
        "model=net device.read_sigma=0 seed=0 shard=1 [30:60] to run",
        "model=net device.read_sigma=0 seed=1 shard=0 [0:30] to run"]
    assert len(out.splitlines()) == 12 and out.count(" to run\n") == 12
    assert not (tmp_path / ".cimsweep-cache").exists()  # --list compiles nothing
    assert not (tmp_path / "first.jsonl").exists() and not (tmp_path / "first.csv").exists()

    outcome = run(first)
    assert (outcome.points, outcome.ran, outcome.compiled) == (12, 12, 1)
    assert len(_cache(tmp_path)) == 1
    status, out, _ = main([first, "--list"], capsys)
    assert status == 0 and out.count(" ok\n") == 12 and "to run" not in out

    # two configurations, each compiled once for its 4 points
    second = write_sweep(tmp_path, "second.toml", results_file="second.csv", shards=2,
                         grid={"adc-bits": [6, 8], "device.read_sigma": [0.1]})
    outcome = run(second)
    assert (outcome.points, outcome.compiled) == (4, 2)
    programs = _cache(tmp_path)
    assert len(programs) == 3
    # a third sweep sharing those configurations (adc-bits fixed or swept alike, other
    # run-time settings) compiles nothing
    third = write_sweep(tmp_path, "third.toml", results_file="third.csv", fixed={"adc-bits": 8},
                        grid={"mode": ["analog", "quantized"], "device.read_sigma": [0, 0.2]})
    outcome = run(third)
    assert (outcome.points, outcome.ran, outcome.failed, outcome.compiled) == (4, 4, 0, 0)
    assert _cache(tmp_path) == programs


# ---------------------------------------------------------------------------------------------
# 7. sweep-file mistakes: one line, status 2, naming the problem


@pytest.mark.parametrize("options, needles", [
    (dict(top={"colour": "blue"}), ["unknown key(s) colour"]),
    (dict(grid={"cell-bitz": [1, 2]}), ["cell-bitz: not a setting"]),
    (dict(grid={"device.read_sigmaa": [0.1]}), ["device.read_sigmaa: not a chip setting"]),
    (dict(grid={"arch.rows": [64, 128]}),
     ["arch.rows: geometry is fixed at compile time", "sweep the cimc flag rows instead"]),
    (dict(grid={"mapping": ["stationary", "diagonal"]}), ["mapping 'diagonal': choose from"]),
    (dict(fixed={"weight-sorting": 1}), ["weight-sorting = 1: a switch; use true or false"]),
    (dict(model="no-such-model.onnx"), ["[models] net:", "no-such-model.onnx: no such file"]),
    (dict(top={"metrics": ["accuracy", "speed"]}), ["metrics ['accuracy', 'speed']"]),
    (dict(samples=100000), ["[dataset] samples = 100000, but inputs hold 540"]),
    (dict(seeds=[0, 0]), ["seeds [0, 0]: a seed is listed twice"]),
    (dict(grid={"adc-bits": [8, 8]}), ["[grid] adc-bits: a value is listed twice"]),
    (dict(grid={"schedule": ["fast"]}), ["schedule = 'fast': choose from optimized, naive"]),
    (dict(grid={"cell-bits": [2.5]}), ["cell-bits = 2.5: not a valid value for cimc"]),
    (dict(fixed={"mapping.stuck_aware": True}),
     ["mapping.stuck_aware = True: expected a number (switches are 0 or 1)"]),
    (dict(top={"cache": 5}), ["cache = 5: expected a string"]),
    (dict(top={"name": "mine"}), ["unknown key(s) name"]),
    (dict(grid={"chip": ["default", "nochip"]}),
     ["chip 'nochip': neither a preset (default, ", "nor a TOML file"]),
    (dict(fixed={"adc-bits": 6}, grid={"adc-bits": [4, 8]}),
     ["adc-bits is set in [fixed] and [grid]: set each setting in one place"]),
    (dict(fixed={"mapping": "reprogram", "xbars": 4},
          grid={"schedule": ["naive", "optimized"]}),
     ["schedule is set in [fixed] (mapping 'reprogram') and [grid]"]),
    (dict(fixed={"mapping": "digital", "digital": "first"}),
     ["digital is set in [fixed] and by its mapping 'digital'"]),
    (dict(fixed={"device.read_sigma": 0.1}, grid={"device.read_sigma": [0, 0.2]}),
     ["device.read_sigma is set in [fixed] and [grid]"]),
    (dict(fixed={"calibrate": "cal.npy"}),
     ["calibrate 'cal.npy' (relative to the sweep file): ", "cal.npy: no such file"]),
])
def test_sweep_file_errors(tmp_path, capsys, options, needles, monkeypatch):
    path = write_sweep(tmp_path, **options)
    other = tmp_path.parent / f"{tmp_path.name}-cwd"  # a cal.npy where the sweep is run from,
    other.mkdir()  # not beside the sweep file: paths are the sweep file's
    np.save(other / "cal.npy", np.zeros((1, 1, 8, 8), np.float32))
    monkeypatch.chdir(other)
    status, out, err = main([path], capsys)
    assert status == 2 and out == ""
    assert err.startswith(f"cimsweep: error: {path}: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    assert os.listdir(tmp_path) == ["sweep.toml"]  # nothing compiled, run or written


def test_example_sweeps_load():
    """The committed example sweeps stay valid sweep files (every key and value checked as
    a run would), and their committed results hold a row for every point: those on the
    bundled models (the ResNet-50 one needs a model that tools.make_zoo generates)."""
    names = sorted(p for p in os.listdir(ROOT / "examples") if p.endswith(".toml"))
    checked = 0
    for name in names:
        text = (ROOT / "examples" / name).read_text()
        if "models/zoo/" in text:
            continue
        sweep = spec.load(str(ROOT / "examples" / name))
        _, _, samples = driver.dataset(sweep)
        settings = {p.setting for p in sweep.points(samples)}
        rows = results.read_table(sweep.results)
        assert len(rows) == len(settings), name  # a row per setting and seed, shards merged
        assert all(r["status"] == "ok" for r in rows), name
        checked += 1
    assert checked >= 3, names


def test_missing_sweep_file_and_bad_flags(tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    status, _, err = main([missing], capsys)
    assert status == 2 and err == f"cimsweep: error: {missing}: cannot read (No such file or " \
                                   "directory)\n"
    path = write_sweep(tmp_path)
    status, _, err = main([path, "--jobs", "0"], capsys)
    assert status == 2 and err == "cimsweep: error: --jobs 0: must be at least 1\n"


# ---------------------------------------------------------------------------------------------
# 8. plots


def test_pareto_front_by_hand():
    points = [(1.0, 50.0, "a"), (2.0, 40.0, "b"), (2.0, 70.0, "c"), (3.0, 70.0, "d"),
              (4.0, 90.0, "e"), (0.5, 10.0, "f"), (5.0, 80.0, "g")]
    # by cost: f (10) < a (50) < c (70); b is beaten by c (same cost), d by c (same accuracy,
    # dearer), g by e; e (90) is the best
    assert plot.pareto(points) == [(0.5, 10.0, "f"), (1.0, 50.0, "a"), (2.0, 70.0, "c"),
                                   (4.0, 90.0, "e")]
    assert plot.pareto([]) == []


def test_plot_writes_the_standard_figures(tmp_path, capsys):
    rows = []
    for xbars in (4, 8):
        for sigma in (0, 0.3):
            for seed in (0, 1):
                correct = 50 - 20 * (sigma > 0) + seed + xbars
                low, high = results.wilson(correct, 60)
                rows.append({"model": "net", "xbars": xbars, "device.read_sigma": sigma,
                             "seed": seed, "mode": "analog", "status": "ok", "error": None,
                             "shards": 1, "samples": 60, "correct": correct,
                             "accuracy": correct / 60, "accuracy_low": low,
                             "accuracy_high": high, "edp": 1e6 / xbars, "area_mm2": 0.01 * xbars,
                             "crossbars": xbars, "seconds": 0.1})
    rows.append({**rows[0], "xbars": 16, "crossbars": None, "status": "error", "error": "boom",
                 "accuracy": None, "edp": None, "area_mm2": None})  # failed: left out
    path = tmp_path / "digits.parquet"
    results.write_table(str(path), rows)
    out_dir = tmp_path / "figures"
    out_dir.mkdir()
    status, out, _ = main(["plot", path, "-o", out_dir], capsys)
    assert status == 0
    names = ["accuracy-vs-xbars", "accuracy-vs-device_read_sigma", "edp-vs-crossbars",
             "edp-vs-area", "pareto-edp", "pareto-area"]
    expected = [out_dir / f"digits.{name}.png" for name in names]
    assert out.splitlines() == [f"cimsweep: wrote {p}" for p in expected]
    assert sorted(os.listdir(out_dir)) == sorted(p.name for p in expected)
    for p in expected:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a table with one value per axis and no cost varying draws nothing: an error
    single = tmp_path / "single.csv"
    results.write_table(str(single), [{**rows[0], "edp": None, "area_mm2": None}])
    status, _, err = main(["plot", single], capsys)
    assert status == 2 and err.startswith(f"cimsweep: error: {single}: no figure applies")


def test_an_interrupted_setting_is_incomplete_and_mixed_columns_write(tmp_path):
    """A setting with a shard missing (a sweep stopped before it) has no accuracy and says
    ``incomplete``; a column mixing numbers and names is written to Parquet as text."""
    row = {"key": "k0", "setting": "s", "model": "net", "basis": 4, "seed": 0,
           "mode": "analog", "shard": 0, "status": "ok", "error": None, "samples": 30,
           "correct": 29, "edp": 1.0, "crossbars": 3, "seconds": 0.1}
    merged = results.merge([row], ["model", "basis", "seed", "mode"], ["accuracy", "edp"],
                           {"s": 2})
    assert merged[0]["status"] == "incomplete" and merged[0]["accuracy"] is None
    whole = results.merge([row, {**row, "key": "k1", "shard": 1}],
                          ["model", "basis", "seed", "mode"], ["accuracy"], {"s": 2})
    assert whole[0]["status"] == "ok" and whole[0]["accuracy"] == 58 / 60
    mixed = [{"basis": 4, "x": 1}, {"basis": "auto", "x": 2}]
    path = str(tmp_path / "mixed.parquet")
    results.write_table(path, mixed)
    assert results.read_table(path) == [{"basis": "4", "x": 1}, {"basis": "auto", "x": 2}]


def test_a_setting_in_the_grid_and_a_case_is_refused(tmp_path, capsys):
    """A point takes a case's value over the grid's: rows labelled adc_bits=4 and 8 both ran
    the case's 5. Cases may share a key among themselves."""
    path = write_sweep(tmp_path, grid={"adc-bits": [4, 8]})
    with open(path, "a") as f:
        f.write('[cases.a]\n"adc-bits" = 5\n[cases.b]\nxbars = 9\n')
    status, out, err = main([path], capsys)
    assert status == 2 and "adc-bits is set in [grid] and [cases.a]" in err, err
    path = write_sweep(tmp_path, name="ok.toml")
    with open(path, "a") as f:
        f.write('[cases.a]\n"adc-bits" = 5\n[cases.b]\n"adc-bits" = 6\n')
    assert {c: b["adc_bits"] for c, b in spec.load(str(path)).cases.items()} == {"a": 5, "b": 6}


def test_a_timing_sweep_with_labels_defaults_to_metrics_it_can_compute(tmp_path):
    """accuracy is a default metric only where every point computes outputs."""
    path = write_sweep(tmp_path, mode="timing")
    assert spec.load(str(path)).metrics == ["edp", "area_mm2"]
    assert spec.load(str(write_sweep(tmp_path, name="a.toml"))).metrics == [
        "accuracy", "edp", "area_mm2"]


def test_a_metric_added_on_resume_is_computed(tmp_path):
    """Points recorded before mvm_count joined the metrics run again for it (their first
    shards record timing metrics), instead of leaving its column empty."""
    path = write_sweep(tmp_path, mode="quantized", samples=20, shards=2,
                       grid={"adc-bits": [6, 8]}, top={"metrics": ["accuracy", "edp"]})
    first = run(path)
    assert first.ran == 4
    text = path.read_text().replace('metrics = ["accuracy", "edp"]',
                                    'metrics = ["accuracy", "edp", "mvm_count"]')
    path.write_text(text)
    again = run(path)
    assert again.ran == 2  # the two first shards
    rows = table(again)
    assert all(r["mvm_count"] is not None and r["mvm_count"] > 0 for r in rows), rows


def test_a_grid_over_geometry_overrides_a_chip_files_arch(tmp_path):
    """chip = a file with [arch] cell_bits = 4 and a grid over cell-bits: each point compiles
    with the grid's value over the file's, and runs so (the 2-bit point had failed)."""
    (tmp_path / "arch.toml").write_text("[arch]\ncell_bits = 4\n")
    path = write_sweep(tmp_path, mode="quantized", samples=10, grid={"cell-bits": [2, 4]},
                       fixed={"chip": "arch.toml"})
    outcome = run(path)
    assert outcome.failed == 0 and outcome.ran == 2


def test_a_runs_warnings_reach_the_terminal_once_as_cimsweeps(tmp_path, capsys):
    """A chip without verify reads warns in analog mode: once for the whole sweep (two seeds,
    two shards), as a cimsweep line, and not into the results."""
    path = write_sweep(tmp_path, samples=20, shards=2, seeds=[0, 1], results_file="r.csv",
                       grid={"timing.t_verify_ns": [0, 1]})
    status, out, err = main([path, "-q", "--jobs", "1"], capsys)
    assert status == 0, err
    said = [line for line in err.splitlines() if "no verify reads" in line]
    assert len(said) == 1 and said[0].startswith("cimsweep: warning: model=net "), err
    assert "RuntimeWarning" not in err
    assert all("warnings" not in row for row in table(tmp_path / "r.csv"))
