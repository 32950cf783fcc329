"""A sweep file (TOML) and the points it expands to.

A sweep file names the models, the settings every point shares (``[fixed]``), the grid whose
every combination is a point (``[grid]``), named bundles of settings that form one more axis
(``[cases.NAME]``), the seeds, the mode, the dataset and its shards, and the metrics::

    results = "digits.parquet"        # relative to this file; .parquet or .csv
    mode = "analog"                   # ideal | quantized | analog | timing
    seeds = 5                         # 0..4, or a list
    metrics = ["accuracy", "edp"]

    [models]
    digits_cnn = "../models/digits_cnn.onnx"

    [dataset]
    inputs = "../models/digits_test_x.npy"
    labels = "../models/digits_test_y.npy"
    shards = 4                        # points per setting; merged into one accuracy

    [grid]
    cell-bits = [1, 2, 4]             # any cimc flag (compile time)
    "device.read_sigma" = [0, 0.01]   # any section.key of the chip (cimrun --set, run time)
    mapping = ["stationary", "reprogram", "basis:4"]

A setting's key says when it applies (``KINDS``): a ``cimc`` flag compiles, a ``section.key``
overrides the chip at run time, ``chip`` does both and ``mode`` picks the run mode.
``mapping`` names a bundle of cimc flags (``MAPPINGS``). Every key, value and path is checked
here, before any work: ``SweepError`` names the file and what is wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import tomllib
from dataclasses import dataclass, field

from runtime.interpreter import MODES
from runtime.mvm_groups import even_runs

from .errors import SweepError

# cimc flags a sweep may not set: it names the program and the output itself.
NOT_SWEPT = {"model", "output", "dump_ir", "verify_each", "quiet", "basis_out", "help"}
# cimc flags whose value may name a file: resolved against the sweep file, hashed by content.
FILE_FLAGS = {"calibrate", "calibrate_labels", "basis", "chip"}

# A mapping: the cimc flags it sets. ``stationary`` drops ``xbars``: the chip has as many
# crossbars as the weights need, whatever the grid's crossbar count.
MAPPINGS: dict[str, dict] = {
    "stationary": {"xbars": None},
    "reprogram": {"schedule": "optimized"},
    "reprogram-naive": {"schedule": "naive"},
    "digital": {"digital": "all"},
}

TOP_KEYS = {"results", "mode", "seeds", "metrics", "models", "dataset", "fixed", "grid",
            "cases", "cache"}
DATASET_KEYS = {"inputs", "labels", "samples", "shards"}

TIMING_METRICS = ("cycles_per_inference", "latency_ns_per_inference", "energy_pj_per_inference",
                  "edp", "mvm_count", "cells_written", "rows_written", "writes_per_inference",
                  "write_energy_share", "max_writes_per_cell", "projected_lifetime_inferences",
                  "lower_bound_cycles", "schedule_efficiency", "area_mm2")
METRICS = ("accuracy", *TIMING_METRICS)


@functools.cache
def _cimc_flags() -> dict[str, argparse.Action]:
    """cimc's flags by argparse dest, from its own parser (the one list of them)."""
    from compiler.cli import build_parser
    return {a.dest: a for a in build_parser()._actions
            if a.option_strings and a.dest not in NOT_SWEPT}


@dataclass(frozen=True)
class Compile:
    """One distinct compile configuration: a model and cimc flags (dest -> value)."""
    model: str                   # absolute path
    flags: tuple[tuple[str, object], ...]

    def argv(self, output: str) -> list[str]:
        args = [self.model, "-o", output, "-q"]
        actions = _cimc_flags()
        for dest, value in self.flags:
            if value is None or value is False:
                continue
            option = actions[dest].option_strings[-1]
            args += [option] if value is True else [option, str(value)]
        return args

    def key(self, version: str) -> str:
        """Content hash: the model's and every named file's bytes, the flags, cimstack's
        version. Equal keys compile to equal programs."""
        h = hashlib.sha256(version.encode())
        for dest, value in (("model", self.model), *self.flags):
            h.update(f"{dest}={value!r};".encode())
            if (dest == "model" or dest in FILE_FLAGS) and isinstance(value, str) \
                    and os.path.isfile(value):
                h.update(_file_hash(value).encode())
        return h.hexdigest()[:20]


@dataclass(frozen=True)
class Point:
    """One unit of work: a compile configuration run once (one seed, one shard)."""
    params: tuple[tuple[str, object], ...]  # the row's setting columns, in sweep order
    compile: Compile
    mode: str
    chip: str | None
    overrides: tuple[str, ...]    # "section.key=value"
    seed: int
    shard: int
    start: int                    # the shard's samples: [start, stop) of the dataset
    stop: int

    dataset: tuple = ()            # the dataset's files (and sample count), for the keys

    @property
    def setting(self) -> str:
        """What identifies the point apart from its shard (rows of one setting merge): its
        row's columns and everything else its result depends on (the compile
        configuration, mode, chip and overrides, dataset), so that a changed sweep file
        never reuses a row computed under other settings."""
        return _digest([self.params, self.seed, self.compile.model, self.compile.flags,
                        self.mode, self.chip, self.overrides, self.dataset])

    @property
    def key(self) -> str:
        """What identifies the point in the results journal (resume skips finished keys)."""
        return _digest([self.setting, self.shard, self.start, self.stop])


@dataclass
class Sweep:
    path: str
    results: str
    cache: str
    mode: str
    seeds: list[int]
    metrics: list[str]
    models: dict[str, str]
    fixed: dict
    grid: dict[str, list]
    cases: dict[str, dict]
    inputs: str | None = None
    labels: str | None = None
    samples: int | None = None
    shards: int = 1
    axes: list[str] = field(default_factory=list)

    def points(self, samples: int | None = None) -> list[Point]:
        """Every point, in a stable order: models, grid combinations, cases, seeds, shards.
        ``samples``: the dataset's length (None without a dataset)."""
        bounds = shard_bounds(samples, self.shards) if samples else [(0, 0)]
        out = []
        names = list(self.grid)
        cases = list(self.cases.items()) or [(None, {})]
        for model, combo, (case, bundle) in itertools.product(
                self.models, itertools.product(*self.grid.values()), cases):
            settings = {**self.fixed, **dict(zip(names, combo)), **bundle}
            params = [("model", model), *zip(names, combo)]
            if case is not None:
                params.append(("case", case))
            for seed in self.seeds:
                point = self._point(model, settings, tuple(params), seed, 0, 0, 0)
                runs = [(0, 0)] if point.mode == "timing" else bounds  # no samples to split
                out += [dataclasses.replace(point, shard=i, start=a, stop=b)
                        for i, (a, b) in enumerate(runs)]
        return out

    def _point(self, model, settings, params, seed, shard, start, stop) -> Point:
        flags = dict(settings)
        mode = flags.pop("mode", self.mode)
        overrides = tuple(f"{k}={flags.pop(k)}" for k in [k for k in flags if "." in k])
        mapping = flags.pop("mapping", None)
        if mapping is not None:
            flags.update(mapping_flags(mapping))
        comp = Compile(self.models[model], tuple(sorted(
            (k, v) for k, v in flags.items() if v is not None)))
        return Point(params, comp, mode, flags.get("chip"), overrides, seed, shard, start, stop,
                     (self.inputs, self.labels, self.samples))

    def modes(self) -> set[str]:
        """Every run mode some point uses."""
        bundles = [self.fixed, *self.cases.values()]
        return {self.mode, *self.grid.get("mode", []),
                *(b["mode"] for b in bundles if "mode" in b)}


def mapping_flags(mapping: str) -> dict:
    """The cimc flags a ``mapping`` value stands for (``MAPPINGS``, or ``basis:N``)."""
    if mapping.startswith("basis:"):
        return {"basis": mapping[6:]}
    return MAPPINGS[mapping]


def shard_bounds(samples: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous runs of near-equal size covering ``range(samples)``."""
    return even_runs(samples, shards)


def load(path: str) -> Sweep:
    """Read and check a sweep file; SweepError names the file and the first problem."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise SweepError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path}: not valid TOML ({exc})") from None
    return _check(path, data)


def _check(path: str, data: dict) -> Sweep:
    def fail(message: str):
        raise SweepError(f"{path}: {message}")
    here = os.path.dirname(os.path.abspath(path))
    unknown = set(data) - TOP_KEYS
    if unknown:
        fail(f"unknown key(s) {', '.join(sorted(unknown))}; expected "
             f"{', '.join(sorted(TOP_KEYS))}")
    mode = data.get("mode", "analog")
    if mode not in MODES:
        fail(f"mode {mode!r}: choose from {', '.join(MODES)}")
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        fail("[models] must name at least one model: name = \"path.onnx\"")
    models = {name: _existing(here, p, f"[models] {name}", fail) for name, p in models.items()}
    for name in ("results", "cache", "mode"):
        if name in data and not isinstance(data[name], str):
            fail(f"{name} = {data[name]!r}: expected a string")
    for name in ("fixed", "grid", "cases", "dataset"):
        if name in data and not isinstance(data[name], dict):
            fail(f"[{name}] must be a table")
    seeds = _seeds(data.get("seeds", 1), fail)
    stem = os.path.join(here, data.get("results", os.path.splitext(os.path.basename(path))[0]
                                       + ".csv"))
    if not stem.endswith((".parquet", ".csv")):
        fail(f"results {data['results']!r}: must end in .parquet or .csv")
    sweep = Sweep(path, stem, os.path.join(here, data.get("cache", ".cimsweep-cache")), mode,
                  seeds, [], models, {}, {}, {})
    _dataset(sweep, data.get("dataset"), here, fail)
    actions = _cimc_flags()
    fixed = data.get("fixed", {})
    grid = data.get("grid", {})
    if not isinstance(fixed, dict) or not isinstance(grid, dict):
        fail("[fixed] and [grid] must be tables")
    sweep.fixed = {_key(k, actions, fail): _value(k, v, actions, here, fail)
                   for k, v in fixed.items()}
    for k, values in grid.items():
        if not isinstance(values, list) or not values:
            fail(f"[grid] {k}: expected a non-empty list of values")
        if len({repr(v) for v in values}) < len(values):
            fail(f"[grid] {k}: a value is listed twice ({values!r})")
        sweep.grid[_key(k, actions, fail)] = [_value(k, v, actions, here, fail) for v in values]
    for name, bundle in data.get("cases", {}).items():
        if not isinstance(bundle, dict):
            fail(f"[cases.{name}] must be a table of settings")
        sweep.cases[name] = {_key(k, actions, fail): _value(k, v, actions, here, fail)
                             for k, v in bundle.items()}
    _one_place(sweep, fail)
    sweep.axes = ["model", *sweep.grid] + (["case"] if sweep.cases else [])
    sweep.metrics = _metrics(data.get("metrics"), sweep, fail)
    return sweep


def _one_place(sweep: Sweep, fail) -> None:
    """Every setting in one of [fixed], [grid] or the cases, a ``mapping``'s flags included:
    a point takes a case's value over the grid's, the grid's over [fixed] and a mapping's
    flags over all, so a key set twice would be labelled with one value and run with
    another. (``stationary`` drops ``xbars``, as documented: not a clash.)"""
    places = [("[fixed]", sweep.fixed), ("[grid]", sweep.grid),
              *((f"[cases.{name}]", bundle) for name, bundle in sweep.cases.items())]
    seen: dict[str, str] = {}
    for where, settings in places:
        for key, how in _implied(settings, where, fail).items():
            other = seen.get(key)
            if other is not None and not (other.startswith("[cases.")
                                          and where.startswith("[cases.")):
                fail(f"{_spelled(key)} is set in {other} and {where}{how}: set each setting "
                     "in one place")
            seen.setdefault(key, where + how)


def _implied(settings: dict, where: str, fail) -> dict[str, str]:
    """The keys ``settings`` (a table, or the grid's lists) set, with how: directly, or
    through a ``mapping`` value's flags (one that the same table also sets fails)."""
    keys = {k: "" for k in settings}
    values = settings.get("mapping")
    for value in values if isinstance(values, list) else [] if values is None else [values]:
        for key, flag in mapping_flags(value).items():
            if flag is None:
                continue
            if key in settings:
                fail(f"{_spelled(key)} is set in {where} and by its mapping {value!r}: set "
                     "each setting in one place")
            keys.setdefault(key, f" (mapping {value!r})")
    return keys


def _spelled(key: str) -> str:
    """A setting's key as a sweep file writes it (cimc flags with dashes)."""
    return key if "." in key else key.replace("_", "-")


def _seeds(value, fail) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and s >= 0 for s in value):
        if len(set(value)) < len(value):
            fail(f"seeds {value!r}: a seed is listed twice")
        return list(value)
    fail(f"seeds {value!r}: a count (at least 1) or a list of non-negative integers")


def _dataset(sweep: Sweep, data, here: str, fail) -> None:
    if data is None:
        return
    unknown = set(data) - DATASET_KEYS
    if unknown:
        fail(f"[dataset]: unknown key(s) {', '.join(sorted(unknown))}; expected "
             f"{', '.join(sorted(DATASET_KEYS))}")
    if "inputs" not in data:
        fail("[dataset] needs inputs = \"samples.npy\"")
    sweep.inputs = _existing(here, data["inputs"], "[dataset] inputs", fail)
    if "labels" in data:
        sweep.labels = _existing(here, data["labels"], "[dataset] labels", fail)
    for name in ("samples", "shards"):
        value = data.get(name)
        if value is not None and (not isinstance(value, int) or value < 1):
            fail(f"[dataset] {name} = {value!r}: expected a positive integer")
    sweep.samples, sweep.shards = data.get("samples"), data.get("shards", 1)


def _metrics(value, sweep: Sweep, fail) -> list[str]:
    # (accuracy by default only where there are labels and every point computes outputs)
    default = (["accuracy"] if sweep.labels and "timing" not in sweep.modes() else []) + [
        "edp", "area_mm2"]
    metrics = default if value is None else value
    if not isinstance(metrics, list) or not all(m in METRICS for m in metrics):
        fail(f"metrics {value!r}: a list drawn from {', '.join(METRICS)}")
    if "accuracy" in metrics and not sweep.labels:
        fail("metric accuracy needs [dataset] labels")
    modes = sweep.modes()
    if "accuracy" in metrics and "timing" in modes:
        fail("metric accuracy needs outputs; mode timing computes none")
    if modes - {"timing"} and sweep.inputs is None:
        fail(f"mode {', '.join(sorted(modes - {'timing'}))} runs the model: [dataset] inputs "
             "is required")
    return metrics


def _key(key: str, actions: dict, fail) -> str:
    """The canonical name of a setting: a cimc flag's dest, ``mode``, ``mapping`` or a
    ``section.key`` chip override."""
    if "." in key:
        section, _, name = key.partition(".")
        from isa.chip import Chip
        known = {f.name: f.type for f in dataclasses.fields(Chip)}
        if section == "arch":
            fail(f"{key}: geometry is fixed at compile time; sweep the cimc flag "
                 f"{name.replace('_', '-')} instead")
        sub = getattr(Chip(), section, None) if section in known else None
        if sub is None or name not in {f.name for f in dataclasses.fields(sub)}:
            fail(f"{key}: not a chip setting (section.key, as for cimrun --set)")
        return key
    dest = key.replace("-", "_")
    if dest in ("mode", "mapping") or dest in actions:
        return dest
    fail(f"{key}: not a setting; use a cimc flag (e.g. cell-bits, xbars, basis), a chip "
         "section.key (e.g. device.read_sigma), chip, mode or mapping")


def _value(key: str, value, actions: dict, here: str, fail):
    dest = key.replace("-", "_")
    if isinstance(value, (dict, list)):
        fail(f"{key} = {value!r}: expected a single value")
    if dest == "mode" and value not in MODES:
        fail(f"mode {value!r}: choose from {', '.join(MODES)}")
    if dest == "mapping" and value not in MAPPINGS and not (
            isinstance(value, str) and value.startswith("basis:")
            and value[6:].isdigit()):
        fail(f"mapping {value!r}: choose from {', '.join(MAPPINGS)} or basis:N")
    if dest == "chip":
        from isa.chip import presets
        if not (isinstance(value, str) and (value in presets()
                                            or os.path.isfile(os.path.join(here, value)))):
            fail(f"chip {value!r}: neither a preset ({', '.join(presets())}) nor a TOML file")
    if dest in FILE_FLAGS and isinstance(value, str) and not _named(dest, value):
        return _existing(here, value, f"{key} {value!r} (relative to the sweep file)", fail)
    action = actions.get(dest)
    if action is not None and action.nargs == 0 and not isinstance(value, bool):
        fail(f"{key} = {value!r}: a switch; use true or false")
    if action is not None and action.nargs != 0:
        try:  # what cimc's parser would make of the value
            parsed = (action.type or str)(str(value))
        except (TypeError, ValueError):
            fail(f"{key} = {value!r}: not a valid value for cimc {action.option_strings[-1]}")
        if action.choices and parsed not in action.choices:
            fail(f"{key} = {value!r}: choose from {', '.join(map(str, action.choices))}")
    if "." in key and (isinstance(value, bool) or not isinstance(value, (int, float))):
        fail(f"{key} = {value!r}: expected a number (switches are 0 or 1)")
    return value


def _named(dest: str, value: str) -> bool:
    """A file flag's value that names no file: a chip preset, or --basis N or auto."""
    from compiler.flags import fits_a_basis
    from isa.chip import presets
    return (dest == "chip" and value in presets()) or (dest == "basis" and fits_a_basis(value))


def _existing(here: str, path, what: str, fail) -> str:
    if not isinstance(path, str):
        fail(f"{what}: expected a path string")
    full = os.path.normpath(os.path.join(here, path))
    if not os.path.isfile(full):
        fail(f"{what}: {full}: no such file")
    return full


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]
