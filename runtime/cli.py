"""``cimrun``: execute a .cim program on the simulated chip."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import zipfile

import numpy as np

import isa

from .chips import presets, resolve
from .errors import RunError
from .interpreter import MODES, run
from .reference import reference_outputs
from .trace import write_trace


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cimrun", description="Run a crossbar program (.cim) on the simulated RRAM chip.")
    p.add_argument("program", help="program file written by cimc")
    p.add_argument("--input",
                   help=".npy with the (only) input, or .npz with one array per input name; "
                        "the leading axis may hold any multiple of the compiled batch "
                        "(required except in --mode timing)")
    p.add_argument("--mode", choices=MODES, default="ideal",
                   help="ideal: float32 arithmetic (default); quantized: the chip's integer "
                        "arithmetic (slices, bit-serial DAC, ADC), no noise; analog: quantized "
                        "plus programming and read noise, stuck cells and wear; timing: the "
                        "timing and energy model only, no arithmetic")
    p.add_argument("--chip", default="default",
                   help=f"chip preset ({', '.join(presets())}) or TOML file; device, timing "
                        "and energy may differ from compile time, geometry may not")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one chip parameter, e.g. --set timing.write_drivers=4 "
                        "(repeatable)")
    p.add_argument("--trace", help="write a Chrome trace-event JSON (open it in Perfetto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run's random generator")
    p.add_argument("-o", "--output",
                   help="where to write outputs: .npy for one output, .npz for several "
                        "(default: PROGRAM.out.npy / .npz)")
    p.add_argument("--labels", help=".npy of integer class labels, one per sample: the report "
                                    "then holds top-1 accuracy of the (only) output")
    p.add_argument("--reference", metavar="MODEL.onnx",
                   help="the float model: the report adds its accuracy (with --labels) and the "
                        "largest output error relative to it")
    p.add_argument("--report", help="write a JSON report of the run to this file")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return p


def load_inputs(path: str):
    """Read user inputs without ever unpickling; raise RunError with what is wrong."""
    if not os.path.isfile(path):
        raise RunError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):
        raise RunError(f"{path}: not a .npy/.npz array file (save inputs with numpy.save)")
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise RunError(f"{path}: holds pickled Python objects; save a plain numeric array "
                           "(np.save of a float32 array)") from None
        raise RunError(f"{path}: not a .npy/.npz array file ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise RunError(f"{path}: not a readable .npy/.npz file ({exc})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        try:
            return {k: data[k] for k in data.files}
        except ValueError:
            raise RunError(f"{path}: holds pickled Python objects") from None
    return data


def top1(outputs: dict[str, np.ndarray], labels) -> float:
    """Top-1 accuracy of the only output against integer labels."""
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        raise RunError("--labels must be a .npy of integer class labels")
    (logits,) = outputs.values()
    if logits.ndim != 2 or len(labels) != len(logits):
        raise RunError(f"--labels holds {len(labels)} labels for an output of shape "
                       f"{list(logits.shape)}; need one label per sample of a [N, classes] output")
    return float((logits.argmax(1) == labels.reshape(-1)).mean())


def compare(path: str, program, inputs, outputs: dict, labels) -> dict:
    """Reference accuracy and the largest output error relative to the float model."""
    feeds = inputs if isinstance(inputs, dict) else {program.inputs[0].name: inputs}
    feeds = {k: np.asarray(v, np.float32) for k, v in feeds.items()}
    want = dict(zip([p.name for p in program.outputs], reference_outputs(path, feeds)))
    errors = {k: float(np.abs(v - want[k]).max() / max(np.abs(want[k]).max(), 1e-30))
              for k, v in outputs.items() if k in want}
    out = {"reference": os.path.abspath(path), "reference_relative_error": errors}
    if labels is not None:
        out["reference_accuracy"] = top1(want, labels)
    return out


def write_atomic(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_outputs(path: str, outputs: dict[str, np.ndarray]) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            if path.endswith(".npz"):
                np.savez(f, **outputs)
            else:
                np.save(f, next(iter(outputs.values())))
    write_atomic(path, write)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not os.path.isfile(args.program):
            raise RunError(f"{args.program}: no such file")
        program = isa.load(args.program)
        chip = resolve(args.chip, args.set, program)
        if args.input is None and args.mode != "timing":
            raise RunError("--input is required (except with --mode timing)")
        inputs = load_inputs(args.input) if args.input else None
        result = run(program, inputs, mode=args.mode, seed=args.seed, chip=chip)
        out = None
        if result.outputs:
            ext = ".npy" if len(result.outputs) == 1 else ".npz"
            out = args.output or os.path.splitext(args.program)[0] + ".out" + ext
            if len(result.outputs) > 1 and not out.endswith(".npz"):
                raise RunError(f"the program has {len(result.outputs)} outputs; -o must name "
                               "a .npz")
            save_outputs(out, result.outputs)
        labels = load_inputs(args.labels) if args.labels else None
        accuracy = top1(result.outputs, labels) if labels is not None else None
        reference = compare(args.reference, program, inputs, result.outputs, labels) \
            if args.reference and result.outputs else {}
        if args.trace:
            write_trace(result.timeline, args.trace, write_atomic)
        if args.report:
            report = dict(result.stats, program=os.path.abspath(args.program),
                          outputs={k: list(v.shape) for k, v in result.outputs.items()},
                          chip=chip.to_dict())
            if accuracy is not None:
                report["accuracy"] = accuracy
            report.update(reference)
            text = json.dumps(report, indent=2) + "\n"
            write_atomic(args.report, lambda tmp: open(tmp, "w").write(text))
    except (RunError, isa.IsaError) as exc:
        print(f"cimrun: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cimrun: error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(summary(result.stats, result.outputs, out, accuracy, args.mode))
    return 0


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
                     f"{stats['writes_per_inference']:.0f} tile writes, "
                     f"schedule efficiency {stats['schedule_efficiency']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
