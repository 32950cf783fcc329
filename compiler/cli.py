"""``cimc``: compile an ONNX model to a crossbar program (.cim).

Every flag, input file and output path is checked before any long work (basis fitting,
calibration, compiling), and outputs are written only after the compile succeeded, each
atomically: a run that fails leaves existing files untouched. User errors print one line
``cimc: error: ...`` and exit with status 2; warnings print one line ``cimc: warning: ...`` on
stderr, with or without ``-q``.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time

import numpy as np
import onnx

from isa import IsaError, Program, save
from isa.chip import Chip, presets
from isa.cli import INTERRUPTED, SIGPIPE_STATUS, Parser, quiet_broken_pipe

from . import flags, progress
from .basis import BasisSet
from .calibrate import (
    check_samples,
    finite_samples,
    load_labels,
    load_samples,
    output_classes,
    sample_count,
)
from .driver import compile_model, dump_to_dir, dump_to_stdout
from .errors import CompileError
from .frontend import accept, load_model
from .limits import Limits
from .passes import PIPELINE
from .passes.basis_decompose import check_fits
from .passes.lower_to_crossbar import DYNAMIC
from .passes.schedule import SCHEDULES
from .support import SUPPORTED


def _geometry_flags(p: argparse.ArgumentParser) -> None:
    arch = Chip().arch
    for name, text in [("rows", "crossbar rows"), ("cols", "crossbar columns in cells"),
                       ("cell_bits", "bits per RRAM cell"), ("weight_bits", "bits per weight"),
                       ("input_bits", "DAC input bits"),
                       ("dac_bits", "input bits the DAC applies a step (1: bit-serial; at "
                                    "most the input bits)"),
                       ("adc_bits", "ADC bits"),
                       ("adc_per_step", "1: an ADC conversion after every input step; 0: one "
                                        "per MVM, after analog shift-add of the steps")]:
        low, high = flags.RANGES[name].low, flags.RANGES[name].high
        p.add_argument(flags.flag(name), type=int, metavar="N",
                       help=f"{text}, {low:.0f}..{high:.0f} (default: the chip's; "
                            f"{getattr(arch, name)} on the default chip)")


def _basis_flags(p: argparse.ArgumentParser) -> None:
    b = p.add_argument_group("BasisN (reprogramming-free: one basis shared by all layers)")
    b.add_argument("--basis", metavar="N|auto|FILE",
                   help="decompose every crossbar layer onto a global basis of N vectors "
                        "fitted post-training (N at most the weights a crossbar row holds: 16 "
                        "on the default chip); auto: the smallest N within --accuracy-budget "
                        "(needs --calibrate and --calibrate-labels); FILE: a .npz basis set "
                        "(from --basis-out or tools/finetune_basis.py), used exactly. A fit "
                        "that reconstructs some layer poorly prints a warning")
    b.add_argument("--basis-unit", type=int, metavar="L",
                   help="basis vector length: L consecutive rows of each layer's unrolled "
                        "kernels, 1..rows (default 9: one input channel's 3x3 window; padded "
                        "where a layer's rows are not a multiple)")
    b.add_argument("--coef-bits", type=int, metavar="B",
                   help="coefficient bits, sign included, 2..8 (default 4)")
    b.add_argument("--coef-sparsity", type=float, metavar="S",
                   help="fraction of each layer's coefficients forced to zero, 0 <= S < 1 "
                        "(default 0)")
    b.add_argument("--accuracy-budget", type=float, metavar="P",
                   help="--basis auto: percentage points of float accuracy it may lose, "
                        "0..100 (default 1)")
    b.add_argument("--calibrate-labels", metavar="LABELS.npy",
                   help="integer labels of the --calibrate samples, one each, within the "
                        "model's classes (for --basis auto)")
    b.add_argument("--basis-out", metavar="FILE.npz",
                   help="also write the basis set used, for reuse with --basis FILE")


def _limit_flags(p: argparse.ArgumentParser) -> None:
    limits = Limits()
    p.add_argument("--max-scratchpad-mb", type=float, default=limits.scratchpad_mb, metavar="MB",
                   help="refuse a model whose scratchpad (the program's on-chip buffers, which "
                        "cimrun holds in host memory) would exceed MB, checked from shapes "
                        f"before anything is allocated (default {limits.scratchpad_mb:g}: "
                        "ResNet-50 on 224x224 images needs 11.5 MB a sample, so batch 64 fits; "
                        "a real chip has a few MB)")
    p.add_argument("--max-weights-mb", type=float, default=limits.weights_mb, metavar="MB",
                   help="refuse a model whose float32 weights (initializers, then crossbar "
                        f"matrices) exceed MB (default {limits.weights_mb:g}: 7x VGG-16's 528 MB; "
                        "the compiler holds a few copies of them in memory)")


class _ListOperators(argparse.Action):
    """``--operators``: print the ONNX operators cimc compiles, then exit."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        names = sorted(SUPPORTED, key=str.lower)
        try:
            self._print(names)
            sys.stdout.flush()
        except BrokenPipeError:  # (cimc --operators | head -1)
            quiet_broken_pipe()
            parser.exit(SIGPIPE_STATUS)
        parser.exit()

    @staticmethod
    def _print(names: list[str]) -> None:
        print(textwrap.fill(", ".join(names), 88))
        print("\n" + textwrap.fill(
            "Also: Einsum of one or two operands without a diagonal, CumSum along a "
            "constant axis, LpNormalization (p 1 or 2), written as the operators above "
            "(compiler/rewrite_nodes.py); any operator ONNX defines as a "
            "function of these (Attention, MeanVarianceNormalization, ...), and any whose "
            "inputs are all constants (folded). Some are supported in part; cimc names what "
            "it refuses.", 88))


def build_parser() -> Parser:
    p = Parser(prog="cimc",
               description="Compile an ONNX model into a crossbar ISA program (.cim).")
    p.add_argument("--operators", action=_ListOperators,
                   help="list the ONNX operators cimc compiles, then exit")
    p.add_argument("model", help="ONNX model file; models older than opset 13 are upgraded by "
                                 "onnx's version converter, which handles opset 7 and newer and "
                                 "older models whose every op it has an adapter for")
    p.add_argument("-o", "--output", help="program file to write (default: MODEL with .cim)")
    p.add_argument("--batch", type=int, default=1,
                   help="value for a symbolic batch dimension, 1..65536 (default 1)")
    p.add_argument("--xbars", type=int, default=None,
                   help="crossbars on the chip (default: as many as the model needs); with "
                        "fewer crossbars than weight tiles the program reprograms them")
    p.add_argument("--schedule", choices=SCHEDULES, default="optimized",
                   help="reprogramming schedule when tiles exceed crossbars: optimized "
                        "(default: overlap writes with compute, list-scheduled) or naive "
                        "(write each layer's tiles, then compute them)")
    p.add_argument("--weight-sorting", action="store_true",
                   help="when reprogramming: permute each layer's weight rows and columns "
                        "(exact: inputs and outputs are permuted to match) so tiles share cell "
                        "states, and place each rotating tile on the crossbar whose cells "
                        "differ least (Farias and Kung's weight sorting; adds the "
                        "sort-weights pass)")
    p.add_argument("--bit-stucking", metavar="FRACTION[:SLICES]",
                   help="when reprogramming: in the SLICES (default 1) lowest-order slices, "
                        "rewrite only FRACTION (0..1) of the cells whose digit changes, chosen "
                        "at random; the others keep their old digit (Farias and Kung's bit "
                        "stucking; quantized and analog modes; load-phase writes are full)")
    p.add_argument("--chip", metavar="NAME|FILE",
                   help=f"chip preset ({', '.join(presets())}) or TOML file, as for cimrun: "
                        "its [arch] is the compiled geometry (the flags below override single "
                        "values) and its timing drives the scheduler (default: default)")
    _geometry_flags(p)
    p.add_argument("--digital", metavar="all|first,last|NODE[,NODE...]",
                   help="map these conv/matmul (ConvTranspose too) layers onto the chip's "
                        "digital MAC unit (dmatmul) instead of crossbars: all of them, the first "
                        "and/or last in graph order, or ONNX node names, comma-separated (BasisN "
                        "leaves them alone; default: none)")
    p.add_argument("--dynamic", choices=tuple(DYNAMIC), default="digital",
                   help="how products of two computed operands (attention's Q K^T and "
                        "weights x V) are mapped: on the digital MAC unit (dbmm), or by writing "
                        "their second operand into crossbars at every inference (wbmm: the "
                        "report counts those writes and the lifetime they leave; default: "
                        "digital)")
    p.add_argument("--dynamic-xbars", type=int, metavar="N",
                   help="with --dynamic write: crossbars reserved for those writes, after the "
                        "static weights' (default: as many as one matrix of the largest "
                        "product needs)")
    p.add_argument("--calibrate", metavar="SAMPLES.npy",
                   help="sample inputs whose activation ranges set each crossbar input's DAC "
                        "full scale: a .npy for a model of one input, a .npz of one array "
                        "per input keyed by input name otherwise (default: each sample "
                        "scaled by its own maximum)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="accept NaN and Inf in the --calibrate samples: such values are left out "
                        "of the ranges, such samples out of basis fitting (default: an error)")
    _basis_flags(p)
    _limit_flags(p)
    p.add_argument("--dump-ir", metavar="DIR|-",
                   help="write the IR after import and after every pass into DIR "
                        "(NN-pass.ir and NN-pass.dot), or print the IR text only (no DOT) to "
                        "stdout with -")
    p.add_argument("--verify-each", action="store_true", help="verify the IR after every pass")
    p.add_argument("--passes", default=",".join(PIPELINE),
                   help="comma-separated pass pipeline, checked before anything runs: each "
                        "pass's prerequisites must run before it, and codegen needs "
                        "canonicalize, fold-batchnorm, lower-to-crossbar, schedule and "
                        f"allocate-buffers (default: {','.join(PIPELINE)})")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing on success: no summary, no progress bars, no --basis "
                        "auto log (warnings are still printed, on stderr)")
    return p


def _warn(message: str) -> None:
    progress.write(f"cimc: warning: {message}")


def _samples(args, model: onnx.ModelProto) -> np.ndarray | None:
    """The --calibrate samples, checked against the model and the batch."""
    if not args.calibrate:
        return None
    samples = load_samples(args.calibrate, args.allow_nonfinite)
    check_samples(model, samples, f"--calibrate {args.calibrate}")
    if isinstance(samples, dict) and len(samples) == 1:  # a .npz for a model of one input
        samples = next(iter(samples.values()))
    if isinstance(samples, dict) and flags.fits_a_basis(args.basis):
        raise CompileError(f"--basis {args.basis}: a basis is fitted on the samples of a "
                           f"model of one input (.npy); --calibrate {args.calibrate} holds "
                           "several")
    if sample_count(samples) < args.batch:
        raise CompileError(f"--calibrate {args.calibrate}: {sample_count(samples)} samples, "
                           f"fewer than one --batch of {args.batch}")
    finite = finite_samples(samples)
    if not finite.all():
        if args.basis is not None and not finite.any():
            raise CompileError(f"--calibrate {args.calibrate}: no sample is free of NaN and Inf "
                               "to fit the basis on")
        _warn(f"--calibrate {args.calibrate}: {int((~finite).sum())} sample(s) hold NaN or "
              "Inf; their non-finite values are left out of the ranges"
              + (" and the samples out of basis fitting" if args.basis else ""))
    return samples


def _basis(args, model: onnx.ModelProto, samples, chip: Chip, bars: bool) -> BasisSet | None:
    """The BasisSet ``--basis`` asks for, or None; labels are checked before any fitting, and
    samples holding NaN or Inf are left out of it."""
    from .basis.auto import choose, decomposition  # onnxruntime: only when fitting
    if args.basis is None:
        return None
    if not flags.fits_a_basis(args.basis):
        basis = BasisSet.load(args.basis)
        check_fits(basis.unit, basis.n, chip.arch, f"--basis {args.basis}")
        return basis
    labels = None
    if args.basis == "auto":
        labels = load_labels(args.calibrate_labels, len(samples), output_classes(model))
    if samples is not None:
        keep = finite_samples(samples)
        samples, labels = samples[keep], None if labels is None else labels[keep]
    if labels is None:
        return decomposition(model, int(args.basis), args.basis_unit, args.coef_bits,
                             args.coef_sparsity, samples, progress=bars)
    return choose(model, samples, labels, args.accuracy_budget, args.basis_unit, args.coef_bits,
                  args.coef_sparsity, log=(lambda line: None) if args.quiet else progress.write,
                  max_n=chip.arch.weights_per_row, progress=bars)


def _compile(args, output: str) -> Program:
    """Check everything, then fit, compile and write; the program written."""
    flags.check_ranges(args)
    unread = flags.ignored(args)
    flags.fill_defaults(args)
    pipeline = flags.passes(args)
    chip = flags.chip(args)
    flags.check_basis(args, chip)
    low = None if args.bit_stucking is None else flags.low_write(args.bit_stucking,
                                                                 chip.arch.slices)
    flags.check_outputs(args, output)
    for message in unread:
        _warn(message)
    dump = dump_to_stdout if args.dump_ir == "-" else \
        dump_to_dir(args.dump_ir) if args.dump_ir else None
    bars = sys.stderr.isatty() and not args.quiet
    limits = Limits(args.max_scratchpad_mb, args.max_weights_mb)
    model = load_model(args.model, limits)
    digital = flags.digital(args, model)
    if args.calibrate or args.basis:  # long work comes before compile_model's own checks
        accept(model, args.batch, limits)
    samples = _samples(args, model)
    basis = _basis(args, model, samples, chip, bars)
    program = compile_model(model, chip=chip.arch, chip_config=chip, batch=args.batch,
                            max_xbars=args.xbars, schedule=args.schedule, calibrate=samples,
                            basis=basis, limits=limits, verify_each=args.verify_each,
                            passes=pipeline, dump=dump, progress=bars, warn=_warn,
                            digital=digital, weight_sorting=args.weight_sorting,
                            bit_stucking=low, dynamic=args.dynamic,
                            dynamic_xbars=args.dynamic_xbars)
    save(program, output)
    if args.basis_out:
        basis.save(args.basis_out)
    sys.stdout.flush()
    return program


def compile_argv(argv: list[str]) -> Program:
    """What ``cimc ARGV`` does, for a program that calls it (cimsweep's workers): the program
    written to ``-o``. Usage errors raise CompileError instead of exiting."""
    p = build_parser()

    def error(message: str):
        raise CompileError(message)
    p.error = error
    args = p.parse_args(argv)
    return _compile(args, args.output or os.path.splitext(args.model)[0] + ".cim")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = args.output or os.path.splitext(args.model)[0] + ".cim"
    start = time.perf_counter()
    try:
        program = _compile(args, output)
        if not args.quiet:  # (to stderr when stdout carries the IR dumps)
            mvms = sum(1 for i in program.text if i.op == "mvm")
            dmms = sum(1 for i in program.text if i.op == "dmatmul")
            counts = f"{mvms} mvm" + (f", {dmms} dmatmul" if dmms else "")
            print(f"cimc: wrote {output}: {len(program.text)} instructions, {counts}, "
                  f"{program.chip.xbars} crossbars, {len(program.blobs)} blobs "
                  f"({time.perf_counter() - start:.1f} s)", flush=True,
                  file=sys.stderr if args.dump_ir == "-" else sys.stdout)
    except BrokenPipeError:
        quiet_broken_pipe()
        return SIGPIPE_STATUS
    except (CompileError, IsaError) as exc:
        print(f"cimc: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"cimc: error: out of memory compiling {args.model}; lower --batch, "
              "--max-scratchpad-mb or --max-weights-mb", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cimc: error: {exc.filename or args.model}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cimc: interrupted; {output} was not written", file=sys.stderr)
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
