"""Activation ranges from sample inputs (``cimc --calibrate samples.npy``, or a .npz of one
array per input), and the checks of those samples and of their labels
(``--calibrate-labels``).

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
from .onnx_reference import first_input, model_inputs, run_exposed
from .support import INDEX_DTYPES


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None
            for d in value_info.type.tensor_type.shape.dim]


def _input_dims(model: onnx.ModelProto) -> tuple[str, list[int | None]]:
    """Name and dims (None where symbolic) of the model's first non-initializer input."""
    first = first_input(model)
    return first.name, _dims(first)


def sample_count(samples) -> int:
    """How many samples an array, or {input: array} of one array per input, holds."""
    return len(next(iter(samples.values()))) if isinstance(samples, dict) else len(samples)


def check_samples(model: onnx.ModelProto, samples, where: str) -> None:
    """Raise CompileError (starting with ``where``, e.g. "--calibrate x.npy") unless
    ``samples`` feed the model: an array [N >= 1, ...] of its one input's shape, or, for any
    model, {input name: array} with an array of N >= 1 samples of each input's shape."""
    declared = model_inputs(model)
    inputs = {i.name: _dims(i) for i in declared}
    if not isinstance(samples, dict):
        if len(inputs) > 1:
            raise CompileError(f"{where}: the model has {len(inputs)} inputs "
                               f"({', '.join(inputs)}); give one array per input in a .npz "
                               "keyed by input name (numpy.savez)")
        samples = {next(iter(inputs)): samples}
    missing = [k for k in inputs if k not in samples]
    extra = [str(k) for k in samples if k not in inputs]
    if missing or extra:
        raise CompileError(f"{where}: the model's inputs are {list(inputs)}" +
                           (f"; missing {missing}" if missing else "") +
                           (f"; not inputs: {extra}" if extra else ""))
    if len(inputs) > 1 and len({tuple(d[:1]) for d in inputs.values()}) > 1:
        raise CompileError(f"{where}: the inputs' first axes differ "
                           f"({', '.join(f'{k} {_fmt(d)}' for k, d in inputs.items())}), and "
                           "calibration takes the first axis of each for the samples")
    for vi in declared:
        _check_dtype(samples[vi.name], vi, where)
    for name, dims in inputs.items():
        x = samples[name]
        want = ", ".join("?" if d is None else str(d) for d in dims[1:])
        fits = x.ndim == len(dims) and all(d is None or d == n
                                           for d, n in zip(dims[1:], x.shape[1:]))
        if not fits or len(x) == 0:
            raise CompileError(f"{where}: samples of shape {list(x.shape)}; the model's input "
                               f"{name!r} takes [N, {want}] with N >= 1")
    counts = {k: len(v) for k, v in samples.items()}
    if len(set(counts.values())) > 1:
        raise CompileError(f"{where}: a different number of samples per input {counts}")


def _fmt(dims: list[int | None]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in dims) + "]"


def _check_dtype(x, vi: onnx.ValueInfoProto, where: str) -> None:
    """An array of numbers (or booleans) for the input ``vi``; integers for an integer
    input, booleans or 0 and 1 for a boolean one (as cimrun takes inputs)."""
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "fiub":
        raise CompileError(f"{where}: samples of {vi.name!r} must be a numeric array, got "
                           f"{getattr(x, 'dtype', type(x).__name__)}")
    elem = vi.type.tensor_type.elem_type
    if elem in INDEX_DTYPES and x.dtype.kind not in "iu":
        raise CompileError(f"{where}: input {vi.name!r} holds integers: its samples must be "
                           f"an integer array, got {x.dtype}")
    if elem == onnx.TensorProto.BOOL and x.dtype != np.bool_ and \
            not np.isin(x, (0, 1)).all():
        raise CompileError(f"{where}: input {vi.name!r} holds booleans: its samples must be "
                           "a bool array, or 0 and 1")


def _check_finite(x: np.ndarray, where: str, allow_nonfinite: bool) -> None:
    """No NaN or Inf in ``x`` unless allowed (its dtype: ``check_samples``)."""
    bad = int(x.size - np.count_nonzero(np.isfinite(x))) if x.dtype.kind == "f" else 0
    if bad and not allow_nonfinite:
        raise CompileError(f"{where}: {bad} of {x.size} values are NaN or infinite; remove "
                           "those samples, or pass --allow-nonfinite to leave non-finite "
                           "values out of the ranges")


def load_samples(path: str, allow_nonfinite: bool = False):
    """The samples in ``path``: one array (.npy) or {input name: array} (.npz), never
    unpickled. Raises CompileError (IsaError for an unreadable file) naming ``path``; NaN
    or Inf values are an error unless allowed. Their dtypes and shapes: ``check_samples``."""
    samples = load_array(path, "--calibrate")
    for name, x in (samples.items() if isinstance(samples, dict) else [(None, samples)]):
        _check_finite(x, f"--calibrate {path}" + (f" (array {name!r})" if name else ""),
                      allow_nonfinite)
    return samples


def finite_samples(samples) -> np.ndarray:
    """A boolean mask of the samples whose every value (of every input) is finite."""
    arrays = samples.values() if isinstance(samples, dict) else [samples]
    return np.logical_and.reduce([np.isfinite(x.reshape(len(x), -1)).all(axis=1)
                                  for x in arrays])


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


def tensor_ranges(model: onnx.ModelProto, samples) -> dict[str, float]:
    """Largest finite |value| of every float tensor over ``samples`` (``check_samples``: fed
    to the prepared ``model``, one compiled batch at a time)."""
    name, dims = _input_dims(model)
    check_samples(model, samples, "calibration samples")
    batch = max(dims[0] or 1, 1)
    if sample_count(samples) < batch:
        raise CompileError(f"--calibrate: {sample_count(samples)} samples, fewer than one "
                           f"compiled batch of {batch}")
    floats = [vi.name for vi in model.graph.value_info
              if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    peaks: dict[str, float] = {}
    with np.errstate(all="ignore"):
        try:
            for values in run_exposed(model, samples, floats, batch):
                for out, value in values.items():
                    peaks[out] = max(peaks.get(out, 0.0), _peak(value))
        except (IndexError, ValueError, TypeError) as exc:  # token ids outside the table, ...
            raise CompileError(f"--calibrate: the model cannot run on these samples: "
                               f"{str(exc).splitlines()[0]}") from None
    for k, x in (samples.items() if isinstance(samples, dict) else [(name, samples)]):
        peaks[k] = _peak(x)  # every sample, a last partial batch included
    return peaks
