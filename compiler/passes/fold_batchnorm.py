"""fold_batchnorm: fold inference-mode BatchNormalization into the op that produces its input.

Before: canonical ops (after canonicalize).
After: no ``batchnorm`` op remains. A batchnorm folds into its producer's weight and bias when
the producer's row in ``compiler.ops`` has ``bn_fold`` (conv, matmul), its result's channel
axis is the batchnorm's (axis 1: any conv, a 2-D matmul), it has no fused activation, and the
batchnorm is its result's only use; any other becomes a per-channel ``mul`` then ``add`` with
constants on the vector unit. (Run after fuse-activation, it folds less but stays exact.)
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Op
from ..ops import OPS


def _single_use(graph: Graph, name: str) -> bool:
    return len(graph.users(name)) == 1 and name not in graph.outputs


def _coefficients(graph: Graph, op: Op) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta, mean, var = (graph.constants[i].astype(np.float64) for i in op.inputs[1:5])
    scale = gamma / np.sqrt(var + op.attrs["epsilon"])
    return scale, beta - mean * scale


def _fold_into(graph: Graph, prod: Op, bn: Op, scale, shift) -> None:
    w = graph.constants[prod.inputs[1]].astype(np.float64)
    axis = OPS[prod.kind].bn_fold[0]
    shape = [1] * w.ndim
    shape[axis] = -1
    new_w = (w * scale.reshape(shape)).astype(np.float32)
    bias = graph.constants[prod.inputs[2]].astype(np.float64) if len(prod.inputs) > 2 \
        else np.zeros_like(scale)
    new_b = (bias * scale + shift).astype(np.float32)
    graph.remove_op(bn)
    graph.remove_op(prod)
    stem = prod.origin or prod.id
    ins = [prod.inputs[0], graph.add_constant(graph.fresh(f"{stem}.w"), new_w),
           graph.add_constant(graph.fresh(f"{stem}.b"), new_b)]
    graph.remove_value(prod.outputs[0])
    graph.add_op(prod.kind, ins, bn.outputs, prod.attrs, prod.origin)


def _to_scale_shift(graph: Graph, bn: Op, scale, shift) -> None:
    rank = len(graph.shape(bn.inputs[0]))
    shape = (-1,) + (1,) * (rank - 2)
    stem = bn.origin or bn.id
    s = graph.add_constant(graph.fresh(f"{stem}.scale"), scale.astype(np.float32).reshape(shape))
    t = graph.add_constant(graph.fresh(f"{stem}.shift"), shift.astype(np.float32).reshape(shape))
    mid = graph.add_value(graph.fresh(f"{stem}.scaled"), graph.shape(bn.outputs[0]))
    graph.remove_op(bn)
    graph.add_op("mul", [bn.inputs[0], s], [mid], {}, bn.origin)
    graph.add_op("add", [mid, t], bn.outputs, {}, bn.origin)


def _foldable(graph: Graph, prod: Op | None, bn: Op) -> bool:
    """True when ``bn`` can become part of its producer's weight and bias."""
    fold = OPS[prod.kind].bn_fold if prod is not None and prod.kind in OPS else None
    rank = len(graph.shape(bn.inputs[0]))
    return (fold is not None and fold[1] % rank == 1 and not prod.attrs.get("act")
            and _single_use(graph, bn.inputs[0]))


def run(graph: Graph, ctx) -> Graph:
    for bn in [op for op in graph.ops() if op.kind == "batchnorm"]:
        scale, shift = _coefficients(graph, bn)
        prod = graph.producer(bn.inputs[0])
        if _foldable(graph, prod, bn):
            _fold_into(graph, prod, bn, scale, shift)
        else:
            _to_scale_shift(graph, bn, scale, shift)
    graph.drop_dead()
    return graph
