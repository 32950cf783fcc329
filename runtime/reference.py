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


def reference_outputs(path: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    if not os.path.isfile(path):
        raise RunError(f"--reference {path}: no such file")
    try:
        import onnxruntime as ort
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        types = {i.name: _ORT_TYPES.get(i.type) for i in session.get_inputs()}
        return session.run(None, _as_declared(inputs, {k: t for k, t in types.items() if t}))
    except ImportError:
        pass
    except Exception as exc:  # onnxruntime's own errors: wrong inputs, bad model
        raise RunError(f"--reference {path}: {str(exc).splitlines()[0]}") from None
    import onnx
    from onnx.reference import ReferenceEvaluator
    try:
        model = onnx.load(path)
        types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
                 for i in model.graph.input if i.type.tensor_type.elem_type}
        return ReferenceEvaluator(model).run(None, _as_declared(inputs, types))
    except Exception as exc:
        raise RunError(f"--reference {path}: {str(exc).splitlines()[0]}") from None
