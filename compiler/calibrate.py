"""Activation ranges from sample inputs (``cimc --calibrate samples.npy``), and the checks of
those samples and of their labels (``--calibrate-labels``).

Runs the prepared ONNX model with ONNX's reference evaluator on the samples, every
intermediate float tensor exposed (``onnx_reference.run_exposed``), and records each one's
largest finite magnitude. After ``lower_to_crossbar`` the range of a crossbar's input patches
is that of the tensor they were cut from; codegen writes it on the buffer, where the runtime
takes it as the DAC full scale. Without calibration the runtime scales each sample by its
own maximum.

Samples holding NaN or Inf are an error unless the caller allows them; allowed, they are left
out of every range (non-finite values never count) and of basis fitting (``finite_samples``).
"""

from __future__ import annotations

import numpy as np
import onnx

from isa.files import load_array

from .errors import CompileError
from .onnx_reference import first_input, run_exposed


def _input_dims(model: onnx.ModelProto) -> tuple[str, list[int | None]]:
    """Name and dims (None where symbolic) of the model's first non-initializer input."""
    first = first_input(model)
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in first.type.tensor_type.shape.dim]
    return first.name, dims


def check_samples(model: onnx.ModelProto, samples: np.ndarray, where: str) -> None:
    """Raise CompileError (starting with ``where``, e.g. "--calibrate x.npy") unless the
    model has one input and ``samples`` are [N >= 1, ...] of its shape."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    if len(inputs) > 1:
        raise CompileError(f"{where}: the model has {len(inputs)} inputs "
                           f"({', '.join(inputs)}) and calibration feeds one; compile without "
                           "--calibrate (each sample's inputs are then scaled by their own "
                           "maximum)")
    name, dims = _input_dims(model)
    want = ", ".join("?" if d is None else str(d) for d in dims[1:])
    fits = samples.ndim == len(dims) and all(
        d is None or d == s for d, s in zip(dims[1:], samples.shape[1:]))
    if not fits or len(samples) == 0:
        raise CompileError(f"{where}: samples of shape {list(samples.shape)}; the "
                           f"model's input {name!r} takes [N, {want}] with N >= 1")


def load_samples(path: str, allow_nonfinite: bool = False) -> np.ndarray:
    """The float samples in ``path`` (.npy, never unpickled). Raises CompileError (IsaError for
    an unreadable file) naming ``path``; NaN or Inf values are an error unless allowed."""
    samples = load_array(path, "--calibrate")
    if isinstance(samples, dict):
        raise CompileError(f"--calibrate {path}: a .npz archive; save the samples as one .npy "
                           "array (numpy.save)")
    if not (np.issubdtype(samples.dtype, np.floating) or samples.dtype == np.bool_):
        raise CompileError(f"--calibrate {path}: dtype {samples.dtype}; expected floats "
                           "(or booleans, for a boolean input)")
    bad = int(samples.size - np.count_nonzero(np.isfinite(samples)))
    if bad and not allow_nonfinite:
        raise CompileError(f"--calibrate {path}: {bad} of {samples.size} values are NaN or "
                           "infinite; remove those samples, or pass --allow-nonfinite to leave "
                           "non-finite values out of the ranges")
    return samples


def finite_samples(samples: np.ndarray) -> np.ndarray:
    """A boolean mask of the samples whose every value is finite."""
    return np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)


def output_classes(model: onnx.ModelProto) -> int | None:
    """Classes of the model's first output ([N, classes...]), None if not static."""
    dims = model.graph.output[0].type.tensor_type.shape.dim[1:]
    if not dims or not all(d.HasField("dim_value") for d in dims):
        return None
    return int(np.prod([d.dim_value for d in dims]))


def load_labels(path: str, samples: int, classes: int | None) -> np.ndarray:
    """Integer labels in ``path``, one per sample, each a class 0..classes-1 (if known).
    Raises CompileError (IsaError for an unreadable file) naming ``path``."""
    where = f"--calibrate-labels {path}"
    labels = load_array(path, "--calibrate-labels")
    if isinstance(labels, dict) or labels.ndim != 1 or \
            not np.issubdtype(labels.dtype, np.integer):
        got = "a .npz archive" if isinstance(labels, dict) else \
            f"{labels.dtype} {list(labels.shape)}"
        raise CompileError(f"{where}: expected a 1-D integer .npy array, got {got}")
    if len(labels) != samples:
        raise CompileError(f"{where}: {len(labels)} labels for {samples} --calibrate samples")
    outside = labels[(labels < 0) | (labels >= classes)] if classes else labels[:0]
    if outside.size:
        raise CompileError(f"{where}: {outside.size} label(s) outside the model's {classes} "
                           f"classes 0..{classes - 1} (first: {outside[0]})")
    return labels


def _peak(value: np.ndarray) -> float:
    magnitude = np.abs(np.asarray(value, dtype=np.float64))
    return float(np.max(magnitude, where=np.isfinite(magnitude), initial=0.0))


def tensor_ranges(model: onnx.ModelProto, samples: np.ndarray) -> dict[str, float]:
    """Largest finite |value| of every float tensor over ``samples`` (fed to the first input
    of the prepared ``model``, one compiled batch at a time)."""
    name, dims = _input_dims(model)
    check_samples(model, samples, "calibration samples")
    batch = max(dims[0] or 1, 1)
    if len(samples) < batch:
        raise CompileError(f"--calibrate: {len(samples)} samples, fewer than one compiled batch "
                           f"of {batch}")
    floats = [vi.name for vi in model.graph.value_info
              if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    peaks: dict[str, float] = {}
    with np.errstate(all="ignore"):
        for values in run_exposed(model, samples, floats, batch):
            for out, value in values.items():
                peaks[out] = max(peaks.get(out, 0.0), _peak(value))
    peaks[name] = _peak(samples)  # every sample, a last partial batch included
    return peaks
