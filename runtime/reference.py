"""Float reference outputs of the original ONNX model (``cimrun --reference model.onnx``).

Uses onnxruntime when it is installed, else ONNX's own reference evaluator (slow on large
models, but always there since onnx is a dependency). The runtime never imports the compiler:
this reads the ONNX file directly.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import RunError

# onnxruntime's input type names -> numpy types (what a run holds as float32 goes back)
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(bool)": np.bool_,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _as_declared(inputs: dict[str, np.ndarray], types: dict[str, type]) -> dict:
    """``inputs`` in the types the model declares (booleans and integers, which a run holds
    as float32, back in their own)."""
    return {k: v.astype(types.get(k, v.dtype), copy=False) for k, v in inputs.items()}


def _message(exc: Exception) -> str:
    """An exception's text on one line (onnxruntime's says what it got on later lines)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _in_batches(run, feeds: dict[str, np.ndarray], fixed: dict[str, int]) -> list[np.ndarray]:
    """``run(feeds)``'s outputs; where the model fixes its inputs' leading (batch) dimension
    (``fixed``: input -> size) at one size that divides the samples given, run in chunks of
    it and joined along the leading axis, as cimrun runs any multiple of a compiled batch."""
    sizes = {len(v) for k, v in feeds.items() if k in fixed and np.ndim(v)}
    batch = set(fixed.values())
    if len(batch) != 1 or len(sizes) != 1:
        return run(feeds)
    b, n = batch.pop(), sizes.pop()
    if b < 1 or n == b or n % b:
        return run(feeds)
    parts = [run({k: v[i:i + b] if k in fixed else v for k, v in feeds.items()})
             for i in range(0, n, b)]
    return [np.concatenate(outs) for outs in zip(*parts)]


def reference_outputs(path: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float model's outputs on ``inputs``, by output name."""
    if not os.path.isfile(path):
        raise RunError(f"--reference {path}: no such file")
    try:
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its optimizer's notes are not the user's
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        types = {i.name: _ORT_TYPES.get(i.type) for i in session.get_inputs()}
        fixed = {i.name: i.shape[0] for i in session.get_inputs()
                 if i.shape and isinstance(i.shape[0], int)}
        feeds = _as_declared(inputs, {k: t for k, t in types.items() if t})
        outs = _in_batches(lambda f: session.run(None, f), feeds, fixed)
        return dict(zip([o.name for o in session.get_outputs()], outs))
    except ImportError:
        pass
    except Exception as exc:  # onnxruntime's own errors: wrong inputs, bad model
        raise RunError(f"--reference {path}: {_message(exc)}") from None
    import onnx
    from onnx.reference import ReferenceEvaluator
    try:
        model = onnx.load(path)
        graph_inputs = [i for i in model.graph.input if i.type.tensor_type.elem_type]
        types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
                 for i in graph_inputs}
        fixed = {i.name: i.type.tensor_type.shape.dim[0].dim_value for i in graph_inputs
                 if i.type.tensor_type.shape.dim
                 and i.type.tensor_type.shape.dim[0].HasField("dim_value")}
        evaluator = ReferenceEvaluator(model)
        outs = _in_batches(lambda f: evaluator.run(None, f), _as_declared(inputs, types), fixed)
        return dict(zip([o.name for o in model.graph.output], outs))
    except Exception as exc:
        raise RunError(f"--reference {path}: {_message(exc)}") from None
