"""Float reference outputs of the original ONNX model (``cimrun --reference model.onnx``).

Uses onnxruntime when it is installed, else ONNX's own reference evaluator (slow on large
models, but always there since onnx is a dependency). The runtime never imports the compiler:
this reads the ONNX file directly.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import RunError


def reference_outputs(path: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    if not os.path.isfile(path):
        raise RunError(f"--reference {path}: no such file")
    try:
        import onnxruntime as ort
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(None, inputs)
    except ImportError:
        pass
    except Exception as exc:  # onnxruntime's own errors: wrong inputs, bad model
        raise RunError(f"--reference {path}: {str(exc).splitlines()[0]}") from None
    import onnx
    from onnx.reference import ReferenceEvaluator
    try:
        return ReferenceEvaluator(onnx.load(path)).run(None, inputs)
    except Exception as exc:
        raise RunError(f"--reference {path}: {str(exc).splitlines()[0]}") from None
