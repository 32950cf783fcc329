"""``cimrun``: execute a .cim program on the simulated chip.

Everything a run needs is read and checked before the simulation starts (program, chip,
inputs, labels, the float reference, every output path), and outputs are written only after
the whole run succeeded, each atomically: a run that fails leaves existing files untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

import isa
from isa.chip import Chip, presets
from isa.cli import INTERRUPTED, SIGPIPE_STATUS, Parser, quiet_broken_pipe
from isa.files import check_distinct, check_writable, load_array, write_atomic, write_text_atomic

from .chips import resolve
from .errors import RunError
from .interpreter import MODES, RunResult, check_inputs, run, running_instruction
from .reference import reference_outputs
from .scoring import check_labels, check_reference, classes, reference_report, top1
from .trace import trace_json


def _seed(text: str) -> int:
    """A non-negative integer (--seed, --first-sample)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    if value >= 2 ** 64:
        raise argparse.ArgumentTypeError(f"{text} is not below 2**64 (seeds are 64-bit)")
    return value


# sample indices key the noise streams as 64-bit integers: a dataset's indices stay below it
MAX_FIRST_SAMPLE = 2 ** 62


def _first_sample(text: str) -> int:
    """--first-sample: a non-negative integer up to ``MAX_FIRST_SAMPLE``."""
    value = _seed(text)
    if value > MAX_FIRST_SAMPLE:
        raise argparse.ArgumentTypeError(f"{text} is above 2**62, the largest first sample index")
    return value


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"{text!r} is not a thread count (1..1024)")
    return value


def _megabytes(text: str) -> int:
    """A positive, finite number of MB, as bytes."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 2 ** 40:  # (NaN and inf fail too)
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of MB")
    return int(value * 2 ** 20)


def build_parser() -> Parser:
    p = Parser(
        prog="cimrun", description="Run a crossbar program (.cim) on the simulated RRAM chip.")
    p.add_argument("program", help="program file written by cimc")
    p.add_argument("--input",
                   help=".npy with the (only) input, or .npz with one array per input name; "
                        "the leading axis may hold any multiple of the compiled batch "
                        "(required except in --mode timing). Float arrays, bool arrays for "
                        "boolean inputs, integer arrays for token ids (ids=V) and other "
                        "integer inputs (ints=1)")
    p.add_argument("--mode", choices=MODES, default="ideal",
                   help="ideal: float32 arithmetic (default); quantized: the chip's integer "
                        "arithmetic (slices, bit-serial DAC, ADC), no noise; analog: quantized "
                        "plus programming and read noise, stuck cells and wear; timing: the "
                        "timing and energy model only, no arithmetic and no outputs")
    p.add_argument("--chip", default="default",
                   help=f"chip preset ({', '.join(presets())}) or TOML file; device, timing "
                        "and energy may differ from compile time, geometry may not: a file's "
                        "[arch] keys and --set arch.KEY must match the program's (a preset's "
                        "geometry is the program's)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one chip parameter, e.g. --set timing.write_drivers=4 "
                        "(repeatable; each value is checked against its physical range)")
    p.add_argument("--trace", help="write a Chrome trace-event JSON (open it in Perfetto)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed (>= 0) of the run's random generators (default 0)")
    p.add_argument("--first-sample", type=_first_sample, default=0, metavar="N",
                   help="index of the first input sample in its dataset (default 0): noise is "
                        "keyed by sample index, so a dataset split into runs with the right "
                        "offsets gives the same outputs as one run")
    p.add_argument("--memory-limit", type=_megabytes, metavar="MB",
                   help="run the samples in passes that fit this many MB (estimated before "
                        "anything is allocated; default: what this machine has free). "
                        "Outputs do not depend on it")
    p.add_argument("--threads", type=_threads, default=None, metavar="N",
                   help="threads (default: one per core, "
                        f"{os.cpu_count()} here). A pass with at least as many compiled "
                        "batches as threads, of a program that writes its crossbars only "
                        "before inference, programs them once and runs its samples in N "
                        "runs, one a thread (ideal mode: from 32 samples a thread); "
                        "otherwise quantized and analog modes share each crossbar read "
                        "out, and ideal mode shares each product's rows out. BLAS runs on "
                        "one thread during runs of samples and shared reads. Outputs do not "
                        "depend on it")
    p.add_argument("-o", "--output",
                   help="where to write outputs: .npy for one output, .npz for several "
                        "(default: PROGRAM.out.npy / .npz; not written in --mode timing)")
    p.add_argument("--labels", help=".npy of integer class labels, one per sample, each a class "
                                    "of the (only) [N, classes] output: reports top-1 accuracy")
    p.add_argument("--reference", metavar="MODEL.onnx",
                   help="the float model: the report adds its accuracy (with --labels) and the "
                        "largest output error relative to it")
    p.add_argument("--report", help="write a JSON report of the run to this file")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="accept NaN and Inf in the inputs (default: an error)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing on success (no summary, no progress bar)")
    return p


@dataclass
class Job:
    """A run with every input read and checked, and every output path validated."""

    program: isa.Program
    chip: Chip
    inputs: dict[str, np.ndarray] | None = None
    labels: np.ndarray | None = None
    reference: dict[str, np.ndarray] | None = None
    output: str | None = None
    warnings: list[str] = field(default_factory=list)


def _output_path(args, program: isa.Program) -> str | None:
    if args.mode == "timing":
        return None
    several = len(program.outputs) > 1
    out = args.output or os.path.splitext(args.program)[0] + (".out.npz" if several
                                                              else ".out.npy")
    if several and not out.endswith(".npz"):
        raise RunError(f"the program has {len(program.outputs)} outputs; -o must name a .npz")
    return out


def _check_paths(args, out: str | None) -> None:
    """The outputs can be written, and none of them is an input or another output."""
    outputs = {"-o": out, "--report": args.report, "--trace": args.trace}
    for flag, path in outputs.items():
        if path:
            check_writable(path, flag)
    chip = args.chip if args.chip and os.path.isfile(args.chip) else None
    check_distinct(outputs, {"program": args.program, "--input": args.input,
                             "--labels": args.labels, "--reference": args.reference,
                             "--chip": chip})
    if out and not out.endswith((".npy", ".npz")):
        raise RunError(f"-o {out}: name a .npy file (or a .npz, which holds each output by "
                       "name)")


def prepare(args) -> Job:
    """Read and check everything the run needs; raise RunError/IsaError before any work."""
    if os.path.isdir(args.program):
        raise RunError(f"{args.program}: is a directory, not a .cim program")
    if not os.path.isfile(args.program):
        raise RunError(f"{args.program}: no such file")
    program = isa.load(args.program)
    job = Job(program, resolve(args.chip, args.set, program))
    if args.mode == "timing":
        for flag in ("labels", "reference"):
            if getattr(args, flag):
                raise RunError(f"--{flag} needs outputs; --mode timing computes none (choose "
                               "ideal, quantized or analog)")
        if args.output:
            job.warnings.append("-o is ignored: --mode timing computes no outputs")
    elif args.input is None:
        raise RunError("--input is required (except with --mode timing)")
    job.output = _output_path(args, program)
    _check_paths(args, job.output)
    if args.input:
        given = load_array(args.input, "--input")
        job.inputs, samples = check_inputs(program, given, args.allow_nonfinite,
                                           source=args.input)
        extra = sorted(set(given) - set(job.inputs)) if isinstance(given, dict) else []
        if extra:
            job.warnings.append(f"--input {args.input}: array(s) {', '.join(extra)} are not "
                                f"inputs of the program ({', '.join(job.inputs)}); ignored")
        if args.labels:
            job.labels = check_labels(load_array(args.labels, "--labels"),
                                      samples * program.batch, classes(program), args.labels)
    if args.reference and job.inputs is not None:
        job.reference = reference_outputs(args.reference, job.inputs)
        check_reference(args.reference, job.reference, program, samples)
    return job


def _report(args, result: RunResult, accuracy: float | None, reference: dict | None) -> str:
    report = dict(result.stats, program=os.path.abspath(args.program),
                  outputs={k: list(v.shape) for k, v in result.outputs.items()})
    if accuracy is not None:
        report["accuracy"] = accuracy
    report.update(reference or {})
    return json.dumps(report, indent=2) + "\n"


def _save_outputs(path: str, outputs: dict[str, np.ndarray]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            if path.endswith(".npz"):
                np.savez(f, **outputs)
            else:
                np.save(f, next(iter(outputs.values())))
    write_atomic(path, write)


def finish(args, job: Job, result: RunResult) -> tuple[float | None, dict | None]:
    """Score the run and write every output (only now: the run has succeeded); returns the
    accuracy (with --labels) and the comparison with the float model (with --reference)."""
    accuracy = top1(result.outputs, job.labels) if job.labels is not None else None
    reference = None if job.reference is None else reference_report(
        args.reference, job.reference, job.program, result.outputs, job.labels)
    texts = {}
    if args.report:
        texts[args.report] = _report(args, result, accuracy, reference)
    if args.trace:
        texts[args.trace] = trace_json(result.timeline, [i.note for i in job.program.text])
    if job.output:
        _save_outputs(job.output, result.outputs)
    for path, text in texts.items():
        write_text_atomic(path, text)
    return accuracy, reference


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The runtime's warnings (``warnings.warn``) as cimrun's own lines; one raised while an
    instruction runs (numpy's invalid value in a subtraction, say) names it."""
    where = running_instruction()
    print(f"cimrun: warning: {where + ': ' if where else ''}{message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _main(args)


def _main(args) -> int:
    try:
        job = prepare(args)
        for warning in job.warnings:
            print(f"cimrun: warning: {warning}", file=sys.stderr)
        result = run(job.program, job.inputs, mode=args.mode, seed=args.seed, chip=job.chip,
                     allow_nonfinite=args.allow_nonfinite, progress=not args.quiet,
                     memory_limit=args.memory_limit, first_sample=args.first_sample,
                     threads=args.threads)
        accuracy, reference = finish(args, job, result)
    except (RunError, isa.IsaError) as exc:
        print(f"cimrun: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("cimrun: error: out of memory; run fewer samples at a time (split --input)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cimrun: interrupted", file=sys.stderr)
        return INTERRUPTED
    try:
        if not args.quiet:
            print(summary(result.stats, result.outputs, job.output, accuracy, args.mode))
            if reference is not None:
                print(reference_line(reference))
        sys.stdout.flush()
    except BrokenPipeError:  # (cimrun ... | head -1: the outputs are written already)
        quiet_broken_pipe()
        return SIGPIPE_STATUS
    return 0


def reference_line(ref: dict) -> str:
    """One console line of ``scoring.reference_report``: each output's largest error
    relative to the float model, and the float model's accuracy when labels were given."""
    errors = ", ".join(f"{k} {v:.2g}" for k, v in ref["reference_relative_error"].items())
    accuracy = ref.get("reference_accuracy")
    return (f"cimrun: against the float model: largest relative error {errors}" +
            (f"; its top-1 accuracy {accuracy:.4f}" if accuracy is not None else ""))


def summary(stats: dict, outputs: dict, out: str | None, accuracy, mode: str) -> str:
    lines = []
    if outputs:
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in outputs.items())
        lines.append(f"cimrun: {stats['samples']} sample(s), {stats['instructions']} "
                     f"instructions ({mode}); wrote {out}: {shapes}" +
                     (f"; top-1 accuracy {accuracy:.4f}" if accuracy is not None else ""))
    if "latency_ns_per_inference" in stats:
        lines.append(f"cimrun: per inference {stats['latency_ns_per_inference'] / 1e3:.1f} us, "
                     f"{stats['energy_pj_per_inference'] / 1e6:.3f} uJ, "
                     f"{stats['writes_per_inference']:g} crossbar writes "
                     f"(load phase: {stats['load']['tile_writes']}), "
                     f"schedule efficiency {stats['schedule_efficiency']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
