"""Post-training BasisN: fit one global basis to the crossbar matrices of every layer.

``fit`` is dictionary learning over all units of all layers (``compiler.basis.layers``
supplies the matrices): each layer's units are normalised to unit RMS (so no layer dominates
the basis), the basis starts as the top-N principal directions (SVD of the units), then
alternating least squares refines it: coefficients by least squares, sparsified (the smallest
``sparsity`` fraction of each layer set to zero) and quantized per kernel; basis by least
squares against those quantized coefficients. ``quantize`` is also how data-aware refinement
(``compiler.basis.refine``) quantizes its coefficients.
"""

from __future__ import annotations

import numpy as np

from ..errors import CompileError
from ..progress import bar
from .set import BasisLayer, BasisSet, fit_scales, qmax, units


def quantize(coef: np.ndarray, bits: int, sparsity: float) -> tuple[np.ndarray, np.ndarray]:
    """coef [U, N, M] -> (levels, per-kernel scales); the smallest ``sparsity`` fraction of
    coefficients (by magnitude, over the layer) become zero first."""
    coef = coef.copy()
    if sparsity > 0:
        cut = np.quantile(np.abs(coef), sparsity)
        coef[np.abs(coef) <= cut] = 0
    peak = np.abs(coef).max(axis=(0, 1))
    scales = np.where(peak > 0, peak / qmax(bits), 1.0).astype(np.float32)
    levels = np.clip(np.rint(coef / scales), -qmax(bits), qmax(bits)).astype(np.int32)
    return levels, scales


def _coefficients(basis: np.ndarray, unit_w: np.ndarray) -> np.ndarray:
    """Least-squares coefficients [U, N, M] of units [U, L, M] in ``basis`` [L, N]."""
    return np.einsum("nl,ulm->unm", np.linalg.pinv(basis), unit_w)


def _init_basis(data: list[np.ndarray], n: int, seed: int) -> np.ndarray:
    unit = data[0].shape[1]
    gram = sum(u.transpose(0, 2, 1).reshape(-1, unit).T @ u.transpose(0, 2, 1).reshape(
        -1, unit) for u in data)
    vals, vecs = np.linalg.eigh(gram)
    basis = vecs[:, ::-1][:, :min(n, unit)]
    if n > unit:  # an overcomplete basis: the rest start random
        rng = np.random.default_rng(seed)
        extra = rng.standard_normal((unit, n - unit))
        basis = np.concatenate([basis, extra / np.linalg.norm(extra, axis=0)], axis=1)
    return basis.astype(np.float64)


def fit(matrices: dict[str, np.ndarray], n: int, unit: int = 9, bits: int = 4,
        sparsity: float = 0.0, iters: int = 6, seed: int = 0,
        progress: bool = False) -> BasisSet:
    """One basis [unit, n] for all ``matrices``, with quantized coefficients (see module doc).
    ``progress``: a progress bar over the alternating least-squares iterations."""
    if not matrices:
        raise CompileError("--basis: the model has no Conv/Gemm/MatMul layer with a constant "
                           "weight to decompose")
    if n < 1 or unit < 1 or bits < 2 or not 0 <= sparsity < 1:
        raise CompileError(f"--basis {n} --basis-unit {unit} --coef-bits {bits} "
                           f"--coef-sparsity {sparsity}: need N >= 1, unit >= 1, bits >= 2 "
                           "and 0 <= sparsity < 1")
    names = list(matrices)
    rms = [float(np.sqrt(np.mean(matrices[k] ** 2))) or 1.0 for k in names]
    data = [units(matrices[k], unit).astype(np.float64) / r for k, r in zip(names, rms)]
    basis = _init_basis(data, n, seed)
    best, best_err = basis, np.inf
    for _ in bar(range(iters + 1), progress, f"basis fit N={n}", "iter"):
        quant = []
        for u in data:
            levels, scales = quantize(_coefficients(basis, u), bits, sparsity)
            quant.append(levels * scales)
        err = sum(float(((u - np.einsum("ln,unm->ulm", basis, c)) ** 2).sum())
                  for u, c in zip(data, quant))
        if err < best_err:  # quantization can make a step worse: keep the best basis seen
            best, best_err = basis, err
        # basis step: min sum ||u - B c||^2 over every unit column -> B = (U C^T)(C C^T)^-1
        ucT = sum(np.einsum("ulm,unm->ln", u, c) for u, c in zip(data, quant))
        ccT = sum(np.einsum("unm,ukm->nk", c, c) for c in quant)
        basis = ucT @ np.linalg.pinv(ccT)
        norms = np.linalg.norm(basis, axis=0)
        basis /= np.where(norms > 0, norms, 1)
    basis = best.astype(np.float32)
    layers = {}
    for k in names:
        levels, _ = quantize(_coefficients(basis, units(matrices[k], unit)), bits, sparsity)
        layers[k] = BasisLayer(levels, fit_scales(matrices[k], basis, levels),
                               matrices[k].shape[0])
    return BasisSet(basis, bits, layers)
