"""Activation ranges from sample inputs (``cimc --calibrate samples.npy``).

Runs the prepared ONNX model with ONNX's reference evaluator on the samples, every
intermediate tensor exposed, and records each float tensor's largest magnitude. After
``lower_to_crossbar`` the range of a crossbar's input patches is that of the tensor they were
cut from; codegen writes it on the buffer, where the runtime takes it as the DAC full scale.
Without calibration the runtime scales each sample by its own maximum.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from .errors import CompileError


def tensor_ranges(model: onnx.ModelProto, samples: np.ndarray) -> dict[str, float]:
    """Max |value| of every float tensor over ``samples`` (fed to the first input)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    known = {o.name for o in exposed.graph.output}
    for vi in exposed.graph.value_info:
        if vi.name not in known and vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            exposed.graph.output.append(vi)
    inits = {i.name for i in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in inits)
    dims = [d.dim_value for d in first.type.tensor_type.shape.dim]
    if samples.ndim != len(dims) or list(samples.shape[1:]) != dims[1:]:
        raise CompileError(f"--calibrate samples have shape {list(samples.shape)}; the model's "
                           f"input {first.name!r} takes [N, {', '.join(map(str, dims[1:]))}]")
    names = [o.name for o in exposed.graph.output]
    session = ReferenceEvaluator(exposed)
    peaks: dict[str, float] = {}
    batch = max(dims[0], 1)
    usable = len(samples) - len(samples) % batch
    for start in range(0, usable, batch):
        feed = {first.name: samples[start:start + batch].astype(np.float32)}
        for name, value in zip(names, session.run(None, feed)):
            peak = float(np.abs(value).max(initial=0.0))
            peaks[name] = max(peaks.get(name, 0.0), peak)
    peaks[first.name] = float(np.abs(samples).max())
    return peaks


def load_samples(path: str) -> np.ndarray:
    try:
        samples = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CompileError(f"--calibrate {path}: cannot read a float .npy ({exc})") from None
    if not np.issubdtype(samples.dtype, np.floating):
        raise CompileError(f"--calibrate {path}: dtype {samples.dtype}; expected floats")
    return samples
