"""Resolving the chip a run uses: a preset or TOML file, overrides, and the program's geometry."""

from __future__ import annotations

import dataclasses

from isa import IsaError, Program
from isa.chip import Chip, load_chip, presets

from .errors import RunError

__all__ = ["presets", "resolve"]


def resolve(spec: str | None = None, overrides: list[str] | None = None,
            program: Program | None = None) -> Chip:
    """A preset name or a TOML path, then ``--set`` overrides. Geometry comes from the program
    (fixed at compile time); a config that names a different geometry is an error."""
    try:
        chip = load_chip(spec, overrides)
    except IsaError as exc:
        raise RunError(str(exc)) from None
    if program is None:
        return chip
    fixed = dataclasses.replace(program.chip, xbars=chip.arch.xbars)
    default = dataclasses.replace(Chip().arch, xbars=chip.arch.xbars)
    if chip.arch != default and chip.arch != fixed:
        raise RunError(f"chip {spec!r} describes geometry {chip.arch} but the program was "
                       f"compiled for {program.chip}; recompile with that chip")
    return dataclasses.replace(chip, arch=program.chip)
