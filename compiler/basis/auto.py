"""``--basis auto``: the smallest basis whose model stays within an accuracy budget.

Accuracy is measured in float with onnxruntime on the labelled calibration samples, for the
model with every crossbar weight replaced by its decomposition (``basis.layers.apply``), against
the original model on the same samples. N runs from 1 up to the unit length (a complete
basis) or ``max_n`` (the most a crossbar holds), whichever is smaller; the first N within
``budget`` percentage points wins.
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


def choose(model: onnx.ModelProto, samples: np.ndarray, labels: np.ndarray, budget: float,
           unit: int, bits: int, sparsity: float, refine: bool = True,
           log: Callable[[str], None] = lambda s: None, max_n: int | None = None,
           progress: bool = False) -> BasisSet:
    """The decomposition with the smallest N (at most ``max_n``) within ``budget`` points of
    float accuracy; ``log`` receives a line per N tried."""
    if len(labels) != len(samples):
        raise CompileError(f"--calibrate-labels has {len(labels)} labels for "
                           f"{len(samples)} --calibrate samples")
    base = accuracy(model, samples, labels)
    log(f"basis auto: float accuracy {base:.2f} % on {len(samples)} samples, budget "
        f"{budget:g} points")
    top = min(unit, max_n or unit)
    for n in bar(range(1, top + 1), progress, "basis auto", "N"):
        basis = decomposition(model, n, unit, bits, sparsity, samples if refine else None,
                              progress=progress)
        acc = accuracy(apply(model, basis), samples, labels)
        log(f"basis auto: N={n}: {acc:.2f} %")
        if acc >= base - budget:
            return basis
    raise CompileError(f"--basis auto: no basis of up to {top} vectors stays within "
                       f"{budget:g} points of float ({base:.2f} %) with {bits}-bit "
                       "coefficients; try more --coef-bits, less --coef-sparsity, or a basis "
                       "trained by tools/finetune_basis.py")
