"""Data-aware BasisN coefficients: per layer, the coefficients with which the basis-projected
layer inputs of sample data reproduce the float layer's outputs.

``layer_inputs`` runs the model on the samples (``onnx_reference.run_exposed``) and cuts each
Conv's input into the channel-major patches ``im2col`` feeds the crossbars, with the pads the
pipeline resolves (``normalize.resolve_pads``, auto_pad included), so row k of a layer's
matrix multiplies column k of its inputs here.
"""

from __future__ import annotations

import numpy as np
import onnx

from isa import windows as win

from ..frontend import node_attrs
from ..ir import Op
from ..normalize import resolve_pads
from ..onnx_reference import run_exposed
from ..progress import bar
from .fit import quantize
from .layers import crossbar_nodes, layer_matrices
from .set import BasisLayer, BasisSet

MAX_ROWS = 20000  # input vectors kept per layer (a least-squares problem per layer)


def _patches(x: np.ndarray, node: onnx.NodeProto, w_shape, out_shape) -> np.ndarray:
    """[vectors, K] im2col patches of a Conv's input ``x`` whose output has ``out_shape``."""
    attrs = node_attrs(node)
    kernel = list(w_shape[2:])
    n = len(kernel)
    strides, dilations = list(attrs.get("strides", [1] * n)), list(attrs.get("dilations", [1] * n))
    pads = resolve_pads(Op(node.name, node.op_type, [], [], attrs), x.shape[2:], out_shape[2:],
                        kernel, strides, dilations)
    patches = win.im2col(x, kernel, strides, pads, dilations)
    return patches.reshape(-1, patches.shape[-1])


def layer_inputs(model: onnx.ModelProto, samples: np.ndarray, names: list[str],
                 seed: int = 0) -> dict[str, np.ndarray]:
    """{layer name: [vectors, K] inputs as the crossbars see them} over ``samples``, at most
    MAX_ROWS (a random choice) per layer."""
    nodes = {name: (node, w) for name, node, w in crossbar_nodes(model) if name in names}
    wanted = [node.input[0] for node, _ in nodes.values()] + \
        [node.output[0] for node, _ in nodes.values() if node.op_type == "Conv"]
    values = next(run_exposed(model, samples, wanted))
    rng = np.random.default_rng(seed)
    result = {}
    for name, (node, w) in nodes.items():
        x = values[node.input[0]]
        if node.op_type == "Conv":
            x = _patches(x, node, w.shape, values[node.output[0]].shape)
        else:
            x = x.T if node_attrs(node).get("transA", 0) else x.reshape(-1, x.shape[-1])
        if len(x) > MAX_ROWS:
            x = x[rng.choice(len(x), MAX_ROWS, replace=False)]
        result[name] = x.astype(np.float32)
    return result


def refine_on_data(basis: BasisSet, model: onnx.ModelProto, samples: np.ndarray,
                   sparsity: float = 0.0, ridge: float = 0.1,
                   progress: bool = False) -> BasisSet:
    """Data-aware coefficients: per layer, the coefficients that make B-projected sample
    inputs reproduce the float layer's outputs, pulled towards the weight-fitted ones
    (ridge, relative to the projections' mean energy: inputs the samples never excite keep
    their weight fit), then re-quantized. ``progress``: a progress bar over the layers."""
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
