"""Resolving the chip a run uses: a preset or TOML file, overrides, and the program's geometry."""

from __future__ import annotations

import dataclasses
import os
import tomllib

from isa import IsaError, Program
from isa.chip import Chip, load_chip, presets

from .errors import RunError

__all__ = ["presets", "resolve"]


def resolve(spec: str | None = None, overrides: list[str] | None = None,
            program: Program | None = None) -> Chip:
    """A preset name or a TOML path, then ``--set`` overrides. Geometry comes from the program
    (fixed at compile time): a TOML file's ``[arch]`` keys and ``--set arch.KEY`` overrides
    must agree with it (a preset's geometry is the program's)."""
    try:
        chip = load_chip(spec, overrides)
    except IsaError as exc:
        raise RunError(str(exc)) from None
    if program is None:
        return chip
    differ = [k for k in sorted(_named_geometry(spec, overrides or []))
              if getattr(chip.arch, k) != getattr(program.chip, k)]
    if differ:
        where = " ".join(([f"chip {spec}"] if spec and spec not in presets() else [])
                         + [f"--set {o}" for o in overrides or [] if _key(o)[0] == "arch"])
        sets, compiled = (", ".join(f"{k} {getattr(a, k)}" for k in differ)
                          for a in (chip.arch, program.chip))
        raise RunError(f"{where} sets {sets}; the program was compiled for {compiled}; "
                       "recompile with that chip, or leave the geometry out of the run's")
    return dataclasses.replace(chip, arch=program.chip)


def _key(assignment: str) -> tuple[str, str]:
    """The (section, key) of a ``--set section.key=value``."""
    section, _, key = assignment.partition("=")[0].strip().partition(".")
    return section, key


def _named_geometry(spec: str | None, overrides: list[str]) -> set[str]:
    """The geometry keys a run's chip names: a TOML file's [arch] keys and ``--set arch.KEY``
    (the crossbar count is the chip's to give, not the program's)."""
    keys = {key for section, key in map(_key, overrides) if section == "arch"}
    if spec and spec not in presets() and os.path.isfile(spec):
        with open(spec, "rb") as f:  # (load_chip has read and checked it)
            keys |= set(tomllib.load(f).get("arch", {}))
    keys.discard("xbars")
    return keys
