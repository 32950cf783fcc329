"""``--basis auto``: the smallest basis whose model stays within an accuracy budget.

The labelled calibration samples are split in two by a seeded permutation: the data-aware
refinement fits on one half, and accuracy is judged on the other, which the fit never saw
(judging on the fitted samples had chosen an N 2.2 points below float on the digits test split
for a 1-point budget). Accuracy is measured in float with onnxruntime, for the model with every
crossbar weight replaced by its decomposition (``basis.layers.apply``), against the original
model on the same held-out samples. N runs from 1 up to the unit length (a complete basis) or
``max_n`` (the most a crossbar holds), whichever is smaller; the first N within ``budget``
percentage points wins.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import CompileError
from ..progress import bar
from .fit import fit
from .layers import apply, layer_matrices
from .refine import refine_on_data
from .set import BasisSet


def accuracy(model: onnx.ModelProto, x: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent of ``model``'s first output over ``x``."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = np.concatenate([session.run(None, {name: x[i:i + 256].astype(np.float32)})[0]
                          for i in range(0, len(x), 256)])
    return 100.0 * float(np.mean(out.reshape(len(x), -1).argmax(axis=1) == labels))


def decomposition(model: onnx.ModelProto, n: int, unit: int, bits: int, sparsity: float,
                  samples: np.ndarray | None = None, seed: int = 0,
                  progress: bool = False) -> BasisSet:
    """Post-training fit of ``n`` basis vectors, data-aware when ``samples`` are given.
    ``progress``: progress bars on stderr."""
    basis = fit(layer_matrices(model), n, unit, bits, sparsity, seed=seed, progress=progress)
    if samples is None:
        return basis
    return refine_on_data(basis, model, samples, sparsity, progress=progress)


def split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, judge) of ``n`` samples: a seeded permutation cut in half (the judged half
    gets the odd one); raises CompileError below 2 samples."""
    if n < 2:
        raise CompileError(f"--basis auto needs at least 2 labelled --calibrate samples (one to "
                           f"fit on, one to judge on); got {n}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:n // 2]), np.sort(order[n // 2:])


def choose(model: onnx.ModelProto, samples: np.ndarray, labels: np.ndarray, budget: float,
           unit: int, bits: int, sparsity: float, refine: bool = True,
           log: Callable[[str], None] = lambda s: None, max_n: int | None = None,
           progress: bool = False) -> BasisSet:
    """The decomposition with the smallest N (at most ``max_n``) within ``budget`` points of
    float accuracy on held-out samples (see the module docstring); ``log`` receives a line per
    N tried."""
    if len(labels) != len(samples):
        raise CompileError(f"--calibrate-labels has {len(labels)} labels for "
                           f"{len(samples)} --calibrate samples")
    fit_at, judge_at = split(len(samples))
    samples, held_out, labels = samples[fit_at], samples[judge_at], labels[judge_at]
    base = accuracy(model, held_out, labels)
    log(f"basis auto: float accuracy {base:.2f} % on {len(held_out)} held-out samples (the "
        f"fit uses the other {len(samples)}), budget {budget:g} points")
    top = min(unit, max_n or unit)
    for n in bar(range(1, top + 1), progress, "basis auto", "N"):
        basis = decomposition(model, n, unit, bits, sparsity, samples if refine else None,
                              progress=progress)
        acc = accuracy(apply(model, basis), held_out, labels)
        log(f"basis auto: N={n}: {acc:.2f} %")
        if acc >= base - budget:
            return basis
    raise CompileError(f"--basis auto: no basis of up to {top} vectors stays within "
                       f"{budget:g} points of float ({base:.2f} %) with {bits}-bit "
                       "coefficients; try more --coef-bits, less --coef-sparsity, or a basis "
                       "trained by tools/finetune_basis.py")
