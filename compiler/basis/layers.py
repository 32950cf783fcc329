"""An ONNX model's crossbar layers as BasisN sees them, and a decomposition written back.

A crossbar layer is a Conv, Gemm or MatMul node whose weight is an initializer (2-D for Gemm
and MatMul), named as its ops are (``frontend.node_name``). Its [K, M] matrix is the one the
crossbars hold, by the pipeline's own lowering (``lower_to_crossbar.weight_matrix``, which
takes the ONNX op type and attributes as well as the IR's); ``node_weight`` is the inverse.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from ..frontend import node_attrs, node_name
from ..passes.lower_to_crossbar import matrix_weight, weight_matrix
from .set import BasisSet

CROSSBAR_OPS = ("Conv", "Gemm", "MatMul")


def crossbar_nodes(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.NodeProto, np.ndarray]]:
    """(name, node, weight) of every crossbar layer of ``model``, in graph order."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in CROSSBAR_OPS or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if node.op_type == "Conv" or w.ndim == 2:
            yield node_name(node), node, w


def node_matrix(node: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """The [K, M] crossbar matrix of a Conv/Gemm/MatMul node's weight ``w``."""
    return weight_matrix(node.op_type, w, node_attrs(node))


def node_weight(node: onnx.NodeProto, mat: np.ndarray, shape) -> np.ndarray:
    """Inverse of ``node_matrix``: ``mat`` as the node's weight of ``shape``."""
    return matrix_weight(node.op_type, mat, shape, node_attrs(node))


def layer_matrices(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """{layer name: [K, M] crossbar matrix} of every crossbar layer of ``model``."""
    return {name: node_matrix(node, w) for name, node, w in crossbar_nodes(model)}


def apply(model: onnx.ModelProto, basis: BasisSet) -> onnx.ModelProto:
    """A copy of ``model`` whose crossbar weights are the decomposition's reconstructions
    (layers the basis set does not name keep theirs)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    for name, node, w in list(crossbar_nodes(out)):
        if name in basis.layers:
            new = node_weight(node, basis.matrix(name), w.shape)
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(new.astype(w.dtype),
                                                                  node.input[1]))
    return out
