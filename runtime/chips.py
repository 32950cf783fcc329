"""Chip presets (``runtime/chips/*.toml``) and resolving the chip a run uses."""

from __future__ import annotations

import dataclasses
import os

from isa import Program
from isa.chip import Chip, load_toml, with_overrides

from .errors import RunError

PRESETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chips")


def presets() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(PRESETS) if f.endswith(".toml"))


def resolve(spec: str | None = None, overrides: list[str] | None = None,
            program: Program | None = None) -> Chip:
    """A preset name or a TOML path, then ``--set`` overrides. Geometry comes from the program
    (fixed at compile time); a config that names a different geometry is an error."""
    from isa import IsaError
    spec = spec or "default"
    path = os.path.join(PRESETS, f"{spec}.toml") if spec in presets() else spec
    if not os.path.exists(path):
        raise RunError(f"chip {spec!r}: neither a preset ({', '.join(presets())}) nor a file")
    try:
        chip = load_toml(path)
        chip = with_overrides(chip, overrides or [])
    except IsaError as exc:
        raise RunError(str(exc)) from None
    if program is None:
        return chip
    fixed = dataclasses.replace(program.chip, xbars=chip.arch.xbars)
    wanted = dataclasses.replace(chip.arch, xbars=chip.arch.xbars)
    default = dataclasses.replace(Chip().arch, xbars=chip.arch.xbars)
    if wanted != default and wanted != fixed:
        raise RunError(f"chip {spec!r} describes geometry {wanted} but the program was "
                       f"compiled for {program.chip}; recompile with that chip")
    return dataclasses.replace(chip, arch=program.chip)
