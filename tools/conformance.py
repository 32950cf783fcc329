"""Run ONNX's own backend conformance tests through cimc + cimrun (ideal mode).

Sources: the node test cases that ship inside the onnx package (``onnx.backend.test.case.node``,
with their inputs and expected outputs; or the pre-generated ``data/node`` folder where an onnx
release ships it) and the ``data/pytorch-converted`` models. Inputs that the compiler needs as
constants (a Conv's weight, a Reshape's shape; see ``compiler.support.SUPPORTED``) are bound as
initializers from the test's own data. A test is *unsupported* only when one of its operators,
operator restrictions or tensor types is outside what ``compiler.support`` declares
(``declared_unsupported``, decided from the model before compiling); any other CompileError,
a crash (a VerifyError included: the IR is verified against the op table after every pass) or
a wrong number is *failed*. A few cases whose expected outputs ONNX computed otherwise than
onnxruntime does are checked against onnxruntime's (``ORT_ORACLE``, with the reason).

    python -m tools.conformance [--filter SUBSTRING] [--show unsupported|failed|all]
"""

from __future__ import annotations

import argparse
import glob
import os
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from compiler import CompileError, compile_model
from compiler.frontend import prepare, support_problems, upgrade
from compiler.rewrite_nodes import CONSTANT_INPUTS
from compiler.support import SUPPORTED
from runtime import run

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]
    rtol: float = 1e-3
    atol: float = 1e-5


@dataclass
class Outcome:
    name: str
    status: str  # passed | failed | unsupported
    detail: str = ""


def _read_pb(path: str) -> np.ndarray:
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def _dir_cases(kind: str) -> list[Case]:
    cases = []
    for d in sorted(glob.glob(os.path.join(DATA, kind, "test_*"))):
        sets = sorted(glob.glob(os.path.join(d, "test_data_set_*")))
        if not sets:
            continue
        ins = [_read_pb(p) for p in sorted(glob.glob(os.path.join(sets[0], "input_*.pb")))]
        outs = [_read_pb(p) for p in sorted(glob.glob(os.path.join(sets[0], "output_*.pb")))]
        cases.append(Case(f"{kind}/{os.path.basename(d)}",
                          onnx.load(os.path.join(d, "model.onnx")), ins, outs))
    return cases


def _node_cases() -> list[Case]:
    if os.path.isdir(os.path.join(DATA, "node")):
        return _dir_cases("node")
    from onnx.backend.test.case import node
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        collected = node.collect_testcases(None)
    cases = []
    for c in collected:
        if not c.data_sets:
            continue
        ins, outs = c.data_sets[0]
        cases.append(Case(f"node/{c.name}", c.model, list(ins), list(outs),
                          max(c.rtol, 1e-3), max(c.atol, 1e-5)))
    return cases


# Cases whose expected output ONNX computed otherwise than onnxruntime does, and why: these
# are checked against onnxruntime's output instead (the compiler follows onnxruntime).
ORT_ORACLE = {f"node/test_resize_downsample_scales_{m}_align_corners": (
    "ONNX's expected output takes align_corners' output length as scale x input length, "
    "fractional here; onnxruntime and the operator's text the integer length")
    for m in ("linear", "cubic")}


def _onnxruntime_outputs(case: Case) -> list[np.ndarray]:
    import onnxruntime as ort
    session = ort.InferenceSession(case.model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, case.inputs)))


def all_cases() -> list[Case]:
    cases = _node_cases() + _dir_cases("pytorch-converted")
    for c in cases:
        if c.name in ORT_ORACLE:
            c.outputs = _onnxruntime_outputs(c)
    return cases


def bind_constants(case: Case) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Turn graph inputs that feed constant-only operand positions into initializers (of the
    operators the compiler sees: an older opset's upgraded ones)."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    g = model.graph
    inits = {i.name for i in g.initializer}
    real = [i for i in g.input if i.name not in inits]
    data = {i.name: np.asarray(v) for i, v in zip(real, case.inputs)}
    try:
        nodes = upgrade(case.model).graph.node
    except CompileError:
        nodes = g.node
    bind = set()
    for node in nodes:
        for pos in SUPPORTED.get(node.op_type, CONSTANT_INPUTS.get(node.op_type, ())):
            if pos < len(node.input) and node.input[pos] in data:
                bind.add(node.input[pos])
    for name in bind:
        g.initializer.append(numpy_helper.from_array(data[name], name))
    keep = [i for i in g.input if i.name not in bind]
    del g.input[:]
    g.input.extend(keep)
    return model, {k: v for k, v in data.items() if k not in bind}


def declared_unsupported(model: onnx.ModelProto) -> str | None:
    """Why ``model`` is outside what ``compiler.support`` declares (an operator that does not
    fold away, a restriction of a supported one, the type of a tensor the chip would
    compute), or None: the first of ``frontend.support_problems``, the compiler's own check.
    The model is judged as the compiler judges it: prepared (an older opset upgraded,
    Upsample becoming Resize; constant subgraphs folded), where that succeeds."""
    try:
        model = prepare(model, 1)
    except CompileError:  # the compiler reports it; operators are still checked
        try:
            model = upgrade(model)
        except CompileError:
            pass
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # the compiler reports it; operators are still checked
        pass
    declared = [p for p in support_problems(model) if p.declared]
    return declared[0].reason if declared else None


def run_case(case: Case) -> Outcome:
    if not all(isinstance(v, (np.ndarray, np.generic)) for v in case.inputs + case.outputs):
        return Outcome(case.name, "unsupported", "sequence or optional tensors")
    model, feeds = bind_constants(case)
    reason = declared_unsupported(model)
    if reason:
        return Outcome(case.name, "unsupported", reason)
    try:
        program = compile_model(model, verify_each=True)
    except CompileError as exc:
        return Outcome(case.name, "failed", f"compiler refused a supported model: {exc}")
    except Exception as exc:  # a compiler crash is a failure, never "unsupported"
        return Outcome(case.name, "failed", f"compiler crashed: {type(exc).__name__}: {exc}")
    try:
        with np.errstate(all="ignore"):
            result = run(program, feeds, allow_nonfinite=True)  # -inf masks are inputs too
    except Exception as exc:
        return Outcome(case.name, "failed", f"runtime: {type(exc).__name__}: {exc}")
    for port, want in zip(program.outputs, case.outputs):
        got = result.outputs[port.name]
        if got.shape != np.shape(want):
            return Outcome(case.name, "failed", f"{port.name}: shape {got.shape} != "
                                                f"{np.shape(want)}")
        if not np.allclose(got, want, rtol=case.rtol, atol=case.atol, equal_nan=True):
            err = np.nanmax(np.abs(got - want))
            return Outcome(case.name, "failed", f"{port.name}: max abs error {err:.3g}")
    return Outcome(case.name, "passed")


def run_all(name_filter: str = "", progress: bool = False) -> list[Outcome]:
    cases = [c for c in all_cases() if name_filter in c.name]
    if progress:
        from tqdm import tqdm
        cases = tqdm(cases, desc="conformance", unit="test")
    return [run_case(c) for c in cases]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--filter", default="", help="only tests whose name contains this")
    p.add_argument("--show", choices=["failed", "unsupported", "all"], default="failed",
                   help="which outcomes to list one per line (default failed)")
    args = p.parse_args(argv)
    import sys
    outcomes = run_all(args.filter, progress=sys.stderr.isatty())
    for o in outcomes:
        if args.show == "all" or o.status == args.show or o.status == "failed":
            print(f"{o.status:<12} {o.name:<60} {o.detail[:160]}")
    counts = Counter((o.name.split("/")[0], o.status) for o in outcomes)
    print(f"\n{'suite':<20}{'passed':>8}{'failed':>8}{'unsupported':>13}")
    for suite in sorted({s for s, _ in counts}):
        print(f"{suite:<20}{counts[suite, 'passed']:>8}{counts[suite, 'failed']:>8}"
              f"{counts[suite, 'unsupported']:>13}")
    total = Counter(o.status for o in outcomes)
    print(f"{'total':<20}{total['passed']:>8}{total['failed']:>8}{total['unsupported']:>13}")
    oracle = [o.name for o in outcomes if o.name in ORT_ORACLE]
    if oracle:
        print(f"checked against onnxruntime's outputs, not ONNX's ({len(oracle)}: "
              "tools/conformance.py ORT_ORACLE says why): " + ", ".join(oracle))
    return 1 if total["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
