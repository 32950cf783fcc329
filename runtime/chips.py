"""Resolving the chip a run uses: a preset or TOML file, overrides, and the program's geometry."""

from __future__ import annotations

import dataclasses
import os
import tomllib

from isa import IsaError, Program
from isa.chip import Chip, load_chip, presets, with_overrides

from .errors import RunError

__all__ = ["presets", "resolve"]


def resolve(spec: str | None = None, overrides: list[str] | None = None,
            program: Program | None = None) -> Chip:
    """A preset name or a TOML path, then ``--set`` overrides. Geometry comes from the program
    (fixed at compile time): a TOML file's ``[arch]`` keys and ``--set arch.KEY`` overrides
    must agree with it (a preset's geometry is the program's); the overrides apply to the
    program's geometry, so that one matching it is checked against the program's own."""
    overrides = overrides or []
    try:
        if program is None:
            return load_chip(spec, overrides)
        base = load_chip(spec)
        keys = [k for section, k in map(_key, overrides) if section == "arch"]
        named = [k for k in _file_geometry(spec) if k not in keys]  # (--set has the last word)
        differ = [k for k in named if getattr(base.arch, k) != getattr(program.chip, k)]
        if "xbars" in keys:
            raise RunError("--set arch.xbars: a program's crossbars are fixed when it is "
                           "compiled (cimc --xbars N)")
        chip = with_overrides(dataclasses.replace(base, arch=program.chip), overrides)
    except IsaError as exc:
        raise RunError(str(exc)) from None
    differ += [k for k in keys if getattr(chip.arch, k) != getattr(program.chip, k)
               and k not in differ]
    if differ:
        where = " ".join(([f"chip {spec}"] if set(named) & set(differ) else [])
                         + [f"--set {o}" for o in overrides
                            if _key(o)[0] == "arch" and _key(o)[1] in differ])
        sets = ", ".join(f"{k} {getattr((chip if k in keys else base).arch, k)}"
                         for k in differ)
        compiled = ", ".join(f"{k} {getattr(program.chip, k)}" for k in differ)
        raise RunError(f"{where} sets {sets}; the program was compiled for {compiled}; "
                       "recompile with that chip, or leave the geometry out of the run's")
    return dataclasses.replace(chip, arch=program.chip)


def _key(assignment: str) -> tuple[str, str]:
    """The (section, key) of a ``--set section.key=value``."""
    section, _, key = assignment.partition("=")[0].strip().partition(".")
    return section, key


def _file_geometry(spec: str | None) -> list[str]:
    """The geometry keys a TOML chip file's [arch] names (none for a preset; the crossbar
    count is not the run's to give: a file shared with cimc may name it)."""
    if not spec or spec in presets() or not os.path.isfile(spec):
        return []
    with open(spec, "rb") as f:  # (load_chip has read and checked it)
        return sorted(k for k in tomllib.load(f).get("arch", {}) if k != "xbars")
