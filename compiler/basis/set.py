"""The BasisSet format: a global basis shared by all layers, with quantized coefficients.

A layer's crossbar matrix W [K, M] (``lower_to_crossbar.weight_matrix``) is cut into
U = ceil(K / L) *units* of L consecutive rows (zero padded at the end); with im2col's
channel-major patches, L = 9 makes each unit one input channel's 3x3 window. Every unit of
every kernel (column m) is a combination of the N columns of one basis B [L, N]:

    W[u*L:(u+1)*L, m] ~= B @ levels[u, :, m] * scales[m]

``levels`` are integers in [-qmax, qmax], qmax = 2**(bits-1) - 1 (sign and bits-1 magnitude
bits, applied one bit-plane per cycle by the combiner). A ``BasisSet`` is what ``cimc --basis``
consumes, whether fitted by ``compiler.basis.fit`` or trained by ``tools/finetune_basis.py``;
it is keyed by ONNX node name and saved as ``.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from isa.files import load_array, write_atomic

from ..errors import CompileError


@dataclass
class BasisLayer:
    levels: np.ndarray  # int [U, N, M]
    scales: np.ndarray  # float [M]
    rows: int           # K, the layer's unpadded row count

    def coefficients(self) -> np.ndarray:
        return self.levels.astype(np.float32) * self.scales.astype(np.float32)


@dataclass
class BasisSet:
    basis: np.ndarray  # [L, N]
    bits: int
    layers: dict[str, BasisLayer] = field(default_factory=dict)

    @property
    def unit(self) -> int:
        return int(self.basis.shape[0])

    @property
    def n(self) -> int:
        return int(self.basis.shape[1])

    @property
    def qmax(self) -> int:
        return qmax(self.bits)

    def matrix(self, name: str) -> np.ndarray:
        """The reconstructed [K, M] weight matrix of layer ``name``."""
        layer = self.layers[name]
        return reconstruct(self.basis, layer.coefficients(), layer.rows)

    def save(self, path: str) -> None:
        """Write atomically as .npz: the basis, bits, and per layer its levels and scales."""
        arrays = {"basis": self.basis.astype(np.float32), "bits": np.int64(self.bits),
                  "names": np.array(list(self.layers), dtype=str)}
        for i, layer in enumerate(self.layers.values()):
            arrays[f"levels_{i}"] = layer.levels.astype(np.int8)
            arrays[f"scales_{i}"] = layer.scales.astype(np.float32)
            arrays[f"rows_{i}"] = np.int64(layer.rows)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
        write_atomic(path, write)

    @classmethod
    def load(cls, path: str) -> "BasisSet":
        """Read a basis file; raise CompileError (or isa.IsaError: missing, a directory, not
        an array file) naming ``path``."""
        f = load_array(path, "--basis")
        if not isinstance(f, dict):
            raise CompileError(f"--basis {path}: one .npy array, not a basis file (a .npz from "
                               "--basis-out or tools/finetune_basis.py)")
        try:
            basis, bits = f["basis"].astype(np.float32), int(f["bits"])
            layers = {str(name): BasisLayer(f[f"levels_{i}"].astype(np.int32),
                                            f[f"scales_{i}"].astype(np.float32),
                                            int(f[f"rows_{i}"]))
                      for i, name in enumerate(f["names"])}
        except (ValueError, KeyError, TypeError) as exc:
            raise CompileError(f"--basis {path}: not a basis file (missing or bad {exc})") \
                from None
        result = cls(basis, bits, layers)
        result.check()
        return result

    def check(self) -> None:
        if self.basis.ndim != 2 or self.bits < 2:
            raise CompileError(f"basis file: basis of shape {list(self.basis.shape)} with "
                               f"{self.bits} coefficient bits (need [L, N] and bits >= 2)")
        for name, layer in self.layers.items():
            u = -(-layer.rows // self.unit)
            if layer.levels.shape[:2] != (u, self.n) or np.abs(layer.levels).max(
                    initial=0) > self.qmax:
                raise CompileError(f"basis file: layer {name!r} has levels of shape "
                                   f"{list(layer.levels.shape)} (expected [{u}, {self.n}, M] "
                                   f"within +-{self.qmax})")


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def units(w: np.ndarray, unit: int) -> np.ndarray:
    """[K, M] -> [U, L, M], zero padding K up to a multiple of L."""
    k, m = w.shape
    u = -(-k // unit)
    padded = np.zeros((u * unit, m), np.float32)
    padded[:k] = w
    return padded.reshape(u, unit, m)


def reconstruct(basis: np.ndarray, coef: np.ndarray, rows: int) -> np.ndarray:
    """basis [L, N], coefficients [U, N, M] -> the [K, M] matrix they stand for."""
    w = np.einsum("ln,unm->ulm", basis, coef)
    return w.reshape(-1, coef.shape[2])[:rows]


def fit_scales(w: np.ndarray, basis: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Per-kernel scales minimising ||W - B levels s||: exact when W is such a product, e.g.
    a trained decomposition after batchnorm folding (which scales each kernel)."""
    r = reconstruct(basis, levels.astype(np.float32), w.shape[0])
    den = (r * r).sum(axis=0)
    return np.where(den > 0, (w * r).sum(axis=0) / np.where(den > 0, den, 1), 0).astype(
        np.float32)
