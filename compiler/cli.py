"""``cimc``: compile an ONNX model to a crossbar program (.cim)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from isa import ChipGeometry, IsaError, save
from isa.chip import load_toml

from .driver import compile_model, dump_to_dir, dump_to_stdout
from .errors import CompileError
from .passes import PIPELINE
from .passes.schedule import SCHEDULES


def load_chip(path: str):
    return load_toml(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cimc", description="Compile an ONNX model into a crossbar ISA program (.cim).")
    p.add_argument("model", help="ONNX model file (opset 9 or newer)")
    p.add_argument("-o", "--output", help="program file to write (default: MODEL with .cim)")
    p.add_argument("--batch", type=int, default=1,
                   help="value for a symbolic batch dimension (default 1)")
    p.add_argument("--xbars", type=int, default=None,
                   help="crossbars on the chip (default: as many as the model needs); with "
                        "fewer crossbars than weight tiles the program reprograms them")
    p.add_argument("--schedule", choices=SCHEDULES, default="optimized",
                   help="reprogramming schedule when tiles exceed crossbars: optimized "
                        "(default: overlap writes with compute, list-scheduled) or naive "
                        "(write each layer's tiles, then compute them)")
    p.add_argument("--chip", metavar="TOML",
                   help="chip config whose timing the scheduler estimates with (default: the "
                        "built-in default chip; runtime/chips/ has presets)")
    p.add_argument("--rows", type=int, default=128, help="crossbar rows (default 128)")
    p.add_argument("--cols", type=int, default=128, help="crossbar columns in cells (default 128)")
    p.add_argument("--cell-bits", type=int, default=2, help="bits per RRAM cell (default 2)")
    p.add_argument("--weight-bits", type=int, default=8, help="bits per weight (default 8)")
    p.add_argument("--calibrate", metavar="SAMPLES.npy",
                   help="sample inputs whose activation ranges set each crossbar input's DAC "
                        "full scale (default: each sample scaled by its own maximum)")
    b = p.add_argument_group("BasisN (reprogramming-free: one basis shared by all layers)")
    b.add_argument("--basis", metavar="N|auto|FILE",
                   help="decompose every crossbar layer onto a global basis of N vectors "
                        "fitted post-training; auto: the smallest N within --accuracy-budget "
                        "(needs --calibrate and --calibrate-labels); FILE: a .npz basis set "
                        "(from --basis-out or tools/finetune_basis.py), used exactly")
    b.add_argument("--basis-unit", type=int, default=9, metavar="L",
                   help="basis vector length: L consecutive rows of each layer's unrolled "
                        "kernels (default 9: one input channel's 3x3 window; padded where a "
                        "layer's rows are not a multiple)")
    b.add_argument("--coef-bits", type=int, default=4,
                   help="coefficient bits, sign included (default 4)")
    b.add_argument("--coef-sparsity", type=float, default=0.0, metavar="S",
                   help="fraction of each layer's coefficients forced to zero (default 0)")
    b.add_argument("--accuracy-budget", type=float, default=1.0, metavar="P",
                   help="--basis auto: percentage points of float accuracy it may lose "
                        "(default 1)")
    b.add_argument("--calibrate-labels", metavar="LABELS.npy",
                   help="integer labels of the --calibrate samples (for --basis auto)")
    b.add_argument("--basis-out", metavar="FILE.npz",
                   help="also write the basis set used, for reuse with --basis FILE")
    p.add_argument("--input-bits", type=int, default=8, help="DAC input bits (default 8)")
    p.add_argument("--adc-bits", type=int, default=8, help="ADC bits (default 8)")
    p.add_argument("--dump-ir", metavar="DIR|-",
                   help="write the IR after every pass (NN-pass.ir and .dot) to DIR, or - for "
                        "stdout")
    p.add_argument("--verify-each", action="store_true", help="verify the IR after every pass")
    p.add_argument("--passes", default=",".join(PIPELINE),
                   help=f"comma-separated pass pipeline (default: {','.join(PIPELINE)})")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return p


def _chip(args) -> ChipGeometry:
    for name in ("rows", "cols", "cell_bits", "weight_bits", "input_bits", "adc_bits"):
        if getattr(args, name) < 1:
            raise CompileError(f"--{name.replace('_', '-')} must be at least 1")
    chip = ChipGeometry(rows=args.rows, cols=args.cols, cell_bits=args.cell_bits,
                        weight_bits=args.weight_bits, input_bits=args.input_bits,
                        adc_bits=args.adc_bits)
    if args.cols < 2 * chip.slices:
        raise CompileError(f"--cols {args.cols} cannot hold one weight ({chip.slices} slices "
                           "x 2 differential cells)")
    if args.xbars is not None and args.xbars < 1:
        raise CompileError("--xbars must be at least 1")
    return chip


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _basis(args, samples):
    """The BasisSet ``--basis`` asks for, or None."""
    if args.basis is None:
        return None
    from .basis import BasisSet
    from .basis_auto import choose, decomposition
    from .frontend import load_model
    if os.path.splitext(args.basis)[1] == ".npz":
        basis = BasisSet.load(args.basis)
    else:
        model = load_model(args.model)
        if args.basis == "auto":
            if samples is None or not args.calibrate_labels:
                raise CompileError("--basis auto needs --calibrate SAMPLES.npy and "
                                   "--calibrate-labels LABELS.npy")
            labels = _labels(args.calibrate_labels)
            basis = choose(model, samples, labels, args.accuracy_budget, args.basis_unit,
                           args.coef_bits, args.coef_sparsity, log=_log)
        elif args.basis.isdigit():
            basis = decomposition(model, int(args.basis), args.basis_unit, args.coef_bits,
                                  args.coef_sparsity, samples)
        else:
            raise CompileError(f"--basis {args.basis}: expected a number of basis vectors, "
                               "auto, or a .npz basis file")
    if args.basis_out:
        basis.save(args.basis_out)
    return basis


def _labels(path: str):
    import numpy as np
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CompileError(f"--calibrate-labels {path}: cannot read a .npy ({exc})") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise CompileError(f"--calibrate-labels {path}: expected a 1-D integer array, got "
                           f"{labels.dtype} {list(labels.shape)}")
    return labels


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = args.output or os.path.splitext(args.model)[0] + ".cim"
    start = time.perf_counter()
    try:
        dump = None
        if args.dump_ir == "-":
            dump = dump_to_stdout
        elif args.dump_ir:
            dump = dump_to_dir(args.dump_ir)
        config = load_chip(args.chip) if args.chip else None
        samples = None
        if args.calibrate:
            from .calibrate import load_samples
            samples = load_samples(args.calibrate)
        basis = _basis(args, samples)
        program = compile_model(args.model, chip=_chip(args), batch=args.batch,
                                max_xbars=args.xbars, schedule=args.schedule,
                                chip_config=config, calibrate=samples, basis=basis,
                                verify_each=args.verify_each,
                                passes=[p for p in args.passes.split(",") if p], dump=dump)
        save(program, output)
    except (CompileError, IsaError) as exc:
        print(f"cimc: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cimc: error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 2
    if not args.quiet and args.dump_ir != "-":
        mvms = sum(1 for i in program.text if i.op == "mvm")
        print(f"cimc: wrote {output}: {len(program.text)} instructions, {mvms} mvm, "
              f"{program.chip.xbars} crossbars, {len(program.blobs)} blobs "
              f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
