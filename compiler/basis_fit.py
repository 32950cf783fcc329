"""Post-training BasisN: fit one global basis to every crossbar layer of an ONNX model.

``layer_matrices`` lowers each Conv/Gemm/MatMul weight to the [K, M] matrix the crossbars hold
(the same lowering as ``lower_to_crossbar``). ``fit`` is dictionary learning over all units of
all layers: each layer's units are normalised to unit RMS (so no layer dominates the basis),
the basis starts as the top-N principal directions (SVD of the units), then alternating least
squares refines it: coefficients by least squares, sparsified (the smallest ``sparsity``
fraction of each layer set to zero) and quantized per kernel; basis by least squares against
those quantized coefficients. ``refine_on_data`` re-solves coefficients so that layer
*outputs* on sample inputs match (data-aware). ``apply`` writes a decomposition back into a
model, which is how ``--basis auto`` measures accuracy.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .basis import BasisLayer, BasisSet, fit_scales, qmax, units
from .errors import CompileError
from .frontend import node_attrs, node_name
from .passes.lower_to_crossbar import conv_matrix
from .progress import bar


def _weight(node, inits):
    """The [K, M] crossbar matrix of a Conv/Gemm/MatMul node with a constant weight, or None."""
    if node.op_type not in ("Conv", "Gemm", "MatMul") or node.input[1] not in inits:
        return None
    return lower(node, numpy_helper.to_array(inits[node.input[1]]))


def lower(node: onnx.NodeProto, w: np.ndarray) -> np.ndarray | None:
    """A Conv/Gemm/MatMul weight as the [K, M] matrix the crossbars hold (None: not 2-D)."""
    attrs = node_attrs(node)
    if node.op_type == "Conv":
        return conv_matrix(w, int(attrs.get("group", 1)))
    if node.op_type == "Gemm" and attrs.get("transB", 0):
        return w.T
    return w if w.ndim == 2 else None


def layer_matrices(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """{node name: [K, M] crossbar matrix} for every Conv/Gemm/MatMul with a constant weight."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        w = _weight(node, inits)
        if w is not None:
            out[node_name(node)] = w
    return out


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


def relative_errors(basis: BasisSet, matrices: dict[str, np.ndarray]) -> dict[str, float]:
    """||W - reconstruction|| / ||W|| per layer."""
    return {k: float(np.linalg.norm(w - basis.matrix(k)) / max(np.linalg.norm(w), 1e-30))
            for k, w in matrices.items()}


def refine_on_data(basis: BasisSet, model: onnx.ModelProto, samples: np.ndarray,
                   sparsity: float = 0.0, ridge: float = 0.1,
                   progress: bool = False) -> BasisSet:
    """Data-aware coefficients: per layer, the coefficients that make B-projected sample
    inputs reproduce the float layer's outputs, pulled towards the weight-fitted ones
    (ridge, relative to the projections' mean energy: inputs the samples never excite keep
    their weight fit), then re-quantized. ``progress``: a progress bar over the layers."""
    from .basis_data import layer_inputs
    inputs = layer_inputs(model, samples, list(basis.layers))
    matrices = layer_matrices(model)
    out = BasisSet(basis.basis, basis.bits, dict(basis.layers))
    for name, x in bar(inputs.items(), progress, "basis refine", "layer"):
        layer, w = basis.layers[name], matrices[name]
        u, n = layer.levels.shape[:2]
        xp = np.zeros((len(x), u * basis.unit), np.float64)
        xp[:, :w.shape[0]] = x
        proj = np.einsum("vul,ln->vun", xp.reshape(len(x), u, basis.unit),
                         basis.basis).reshape(len(x), u * n)
        gram = proj.T @ proj
        lam = ridge * max(np.trace(gram) / len(gram), 1e-30)
        c0 = layer.coefficients().reshape(u * n, -1).astype(np.float64)
        rhs = proj.T @ (x.astype(np.float64) @ w) + lam * c0
        coef = np.linalg.solve(gram + lam * np.eye(len(gram)), rhs)
        levels, scales = quantize(coef.reshape(u, n, -1), basis.bits, sparsity)
        out.layers[name] = BasisLayer(levels, scales, layer.rows)
    return out


def apply(model: onnx.ModelProto, basis: BasisSet) -> onnx.ModelProto:
    """A copy of ``model`` whose crossbar weights are the decomposition's reconstructions."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    for node in out.graph.node:
        name = node_name(node)
        if name not in basis.layers or _weight(node, inits) is None:
            continue
        init = inits[node.input[1]]
        old = numpy_helper.to_array(init)
        new = unlower(node, basis.matrix(name), old)
        init.CopyFrom(numpy_helper.from_array(new.astype(old.dtype), init.name))
    return out


def unlower(node: onnx.NodeProto, mat: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Inverse of ``_weight``: a [K, M] matrix back into the node's weight layout."""
    attrs = node_attrs(node)
    if node.op_type == "Conv":
        group = int(attrs.get("group", 1))
        m, cg = old.shape[:2]
        kk, mg = int(np.prod(old.shape[2:])), m // group
        blocks = [mat[g * cg * kk:(g + 1) * cg * kk, g * mg:(g + 1) * mg].T
                  for g in range(group)]
        return np.concatenate(blocks).reshape(old.shape)
    if node.op_type == "Gemm" and attrs.get("transB", 0):
        return mat.T
    return mat
