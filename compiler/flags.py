"""``cimc``'s flags, checked before any work: numeric ranges (one table), the chip (``--chip``
with the geometry flags that were given), BasisN sizes against that chip's crossbars, the
output paths, and the ``--digital`` layers against the model's. Every check raises
CompileError (or isa.IsaError) naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass

from isa.cells import LowWrite
from isa.chip import Chip, load_chip
from isa.files import check_distinct, check_writable
from isa.limits import BATCH, GEOMETRY, check_geometry

from .backend import REQUIRES
from .errors import CompileError
from .passes import check_pipeline, with_pass
from .passes.basis_decompose import check_fits
from .passes.lower_to_crossbar import digital_layers, matrix_layers

INF = math.inf


@dataclass(frozen=True)
class Range:
    """Accepted values: from ``low`` to ``high``, each end included unless marked open."""
    low: float
    high: float = INF
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below and math.isfinite(value)

    def __str__(self) -> str:
        low = f"{'above' if self.low_open else 'at least'} {_number(self.low)}"
        if self.high == INF:
            return low
        return f"{low} and {'below' if self.high_open else 'at most'} {_number(self.high)}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


GEOMETRY_FLAGS = ("rows", "cols", "cell_bits", "weight_bits", "input_bits", "dac_bits",
                  "adc_bits", "adc_per_step")

# flag (argparse dest) -> accepted values. Geometry bounds are isa.limits' (physical arrays).
RANGES: dict[str, Range] = {
    **{name: Range(*GEOMETRY[name]) for name in GEOMETRY_FLAGS + ("xbars",)},
    "dynamic_xbars": Range(1, GEOMETRY["xbars"][1]),  # the pool is part of the chip's
    "batch": Range(*BATCH),                        # what a .cim header may declare
    "coef_bits": Range(2, 8),                      # a sign and a magnitude bit; stored as int8
    "coef_sparsity": Range(0, 1, high_open=True),  # a fraction; 1 would zero every coefficient
    "accuracy_budget": Range(0, 100),              # percentage points
    "basis_unit": Range(1, GEOMETRY["rows"][1]),   # and at most the chip's rows (check_basis)
    "max_scratchpad_mb": Range(0, low_open=True),
    "max_weights_mb": Range(0, low_open=True),
}


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_ranges(args: argparse.Namespace) -> None:
    """Raise CompileError for the first flag in ``RANGES`` whose value is out of range."""
    for dest, accepted in RANGES.items():
        value = getattr(args, dest)
        if value is not None and value not in accepted:
            raise CompileError(f"{flag(dest)} must be {accepted} (got {value})")


def passes(args: argparse.Namespace) -> list[str]:
    """The --passes pipeline, checked against the passes' contracts and codegen's needs."""
    pipeline = [name for name in args.passes.split(",") if name]
    if args.weight_sorting:
        pipeline = with_pass(pipeline, "sort-weights")
    check_pipeline(pipeline, then=REQUIRES)
    if args.basis is not None and "basis-decompose" not in pipeline:
        raise CompileError("--basis needs the basis-decompose pass in --passes")
    return pipeline


def chip(args: argparse.Namespace) -> Chip:
    """The chip of ``--chip`` (a preset or TOML; default: the default chip) whose [arch] is
    replaced field by field by the geometry flags that were given, checked as a whole."""
    config = load_chip(args.chip)
    given = {name: getattr(args, name) for name in GEOMETRY_FLAGS
             if getattr(args, name) is not None}
    where = f"chip {args.chip or 'default'}" + "".join(
        f" {flag(name)} {value}" for name, value in given.items())
    geometry = check_geometry(dataclasses.replace(config.arch, **given), where)
    return dataclasses.replace(config, arch=geometry)


def check_basis(args: argparse.Namespace, chip: Chip) -> None:
    """--basis N|auto|FILE and its companions, against ``chip``'s crossbars (a FILE's own
    sizes are checked once it is read)."""
    if args.basis is None:
        if args.basis_out:
            raise CompileError("--basis-out needs --basis")
        return
    if args.basis_unit > chip.arch.rows:
        raise CompileError(f"--basis-unit must be at most the crossbar's {chip.arch.rows} rows "
                           f"(got {args.basis_unit})")
    if args.basis.isdigit():
        if int(args.basis) < 1:
            raise CompileError(f"--basis must be at least 1 (got {args.basis})")
        check_fits(args.basis_unit, int(args.basis), chip.arch, f"--basis {args.basis}")
    elif args.basis == "auto":
        if not args.calibrate or not args.calibrate_labels:
            raise CompileError("--basis auto needs --calibrate SAMPLES.npy and "
                               "--calibrate-labels LABELS.npy")
    elif os.path.splitext(args.basis)[1] != ".npz":
        raise CompileError(f"--basis {args.basis}: expected a number of basis vectors, auto, "
                           "or a .npz basis file")


def digital(args: argparse.Namespace, model) -> list[str]:
    """The entries of ``--digital all|first,last|NODE,...`` (``compile_model`` resolves
    them: a word and a name differ for products of two computed operands), checked here
    against the conv/matmul layers of ``model`` (an ONNX ModelProto), before any long work;
    empty without the flag."""
    if args.digital is None:
        return []
    entries = args.digital.split(",")
    digital_layers(entries, matrix_layers(model))
    return entries


# Flags that only a setting of another flag reads: (flag, dest, needs, whether it applies)
def fits_a_basis(basis: str | None) -> bool:
    """Whether a --basis value asks for a fit (N or auto) rather than naming a FILE, whose
    basis is used as it is."""
    return basis is not None and (basis == "auto" or basis.isdigit())


_DEPENDENT = (
    ("--calibrate-labels", "calibrate_labels", "--basis auto", lambda a: a.basis == "auto"),
    ("--dynamic-xbars", "dynamic_xbars", "--dynamic write", lambda a: a.dynamic == "write"),
    ("--accuracy-budget", "accuracy_budget", "--basis auto", lambda a: a.basis == "auto"),
    *((flag(dest), dest, "--basis N or auto (a basis FILE is used as it is)",
       lambda a: fits_a_basis(a.basis)) for dest in ("basis_unit", "coef_bits", "coef_sparsity")),
)

# The basis fit's settings when not given (None until then, so that ``ignored`` can tell a
# flag given from its default)
FIT_DEFAULTS = {"basis_unit": 9, "coef_bits": 4, "coef_sparsity": 0.0, "accuracy_budget": 1.0}


def fill_defaults(args: argparse.Namespace) -> None:
    """Give the basis fit's flags that were not given their defaults (``FIT_DEFAULTS``)."""
    for dest, value in FIT_DEFAULTS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)


def ignored(args: argparse.Namespace) -> list[str]:
    """Warnings for flags given where nothing reads them (not errors: a sweep may fix such a
    flag for all its points while another flag varies)."""
    return [f"{flag} is read only with {needs}; ignored"
            for flag, dest, needs, applies in _DEPENDENT
            if getattr(args, dest) is not None and not applies(args)]


def check_outputs(args: argparse.Namespace, output: str) -> None:
    """-o and --basis-out can be written; they and --dump-ir's directory are different
    paths, none of them an input (the model, --calibrate, --calibrate-labels, a --basis or
    --chip file)."""
    check_writable(output, "-o")
    if args.basis_out:
        check_writable(args.basis_out, "--basis-out")
    dump = args.dump_ir if args.dump_ir and args.dump_ir != "-" else None
    files = {flag: path for flag, path in (("--basis", args.basis), ("--chip", args.chip))
             if path and os.path.isfile(path)}
    check_distinct({"-o": output, "--basis-out": args.basis_out, "--dump-ir": dump},
                   {"model": args.model, "--calibrate": args.calibrate,
                    "--calibrate-labels": args.calibrate_labels, **files})


def low_write(spec, slices: int) -> LowWrite:
    """Bit stucking as ``cimc --bit-stucking FRACTION[:SLICES]`` gives it (or an
    ``isa.cells.LowWrite``): in the SLICES (default 1) lowest-order of the chip's ``slices``
    slices, rewrite only FRACTION (0..1) of the cells whose digit changes."""
    low = spec if isinstance(spec, LowWrite) else None
    parts = str(spec).split(":")
    if low is None and len(parts) <= 2:
        try:
            low = LowWrite(int(parts[1]) if len(parts) == 2 else 1, float(parts[0]))
        except ValueError:
            low = None
    if low is None or not 0.0 <= low.write <= 1.0 or not 1 <= low.slices <= slices:
        raise CompileError(f"--bit-stucking must be FRACTION[:SLICES]: FRACTION within 0..1 "
                           f"(the share of changing cells rewritten), SLICES within "
                           f"1..{slices} (the lowest-order slices it applies to, default 1); "
                           f"got {spec}")
    return low
