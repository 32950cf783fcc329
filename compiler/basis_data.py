"""Sample inputs of every crossbar layer, for data-aware BasisN coefficients.

Runs the model with ONNX's reference evaluator (every tensor exposed, as in ``calibrate``) and
cuts each Conv input into the same channel-major patches ``im2col`` feeds the crossbars, so
row k of a layer's matrix multiplies column k of its inputs here.
"""

from __future__ import annotations

import numpy as np
import onnx

from isa import windows as win

from .frontend import node_attrs, node_name
from .onnx_reference import reference_evaluator

MAX_ROWS = 20000  # input vectors kept per layer (a least-squares problem per layer)


def _patches(x: np.ndarray, node: onnx.NodeProto, w_shape) -> np.ndarray:
    attrs = node_attrs(node)
    k = list(w_shape[2:])
    n = len(k)
    patches = win.im2col(x, k, list(attrs.get("strides", [1] * n)),
                         list(attrs.get("pads", [0] * 2 * n)),
                         list(attrs.get("dilations", [1] * n)))
    return patches.reshape(-1, patches.shape[-1])


def layer_inputs(model: onnx.ModelProto, samples: np.ndarray, names: list[str],
                 seed: int = 0) -> dict[str, np.ndarray]:
    """{layer name: [vectors, K] inputs as the crossbars see them} over ``samples``."""
    nodes = {node_name(n): n for n in model.graph.node if node_name(n) in names}
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    known = {o.name for o in exposed.graph.output}
    wanted = {n.input[0] for n in nodes.values()} - known
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(w) for w in wanted)
    inits = {i.name: i for i in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in inits)
    outs = [o.name for o in exposed.graph.output]
    values = dict(zip(outs, reference_evaluator(exposed).run(
        None, {first.name: samples.astype(np.float32)})))
    values[first.name] = samples.astype(np.float32)
    rng = np.random.default_rng(seed)
    result = {}
    for name, node in nodes.items():
        x = values[node.input[0]]
        if node.op_type == "Conv":
            x = _patches(x, node, inits[node.input[1]].dims)
        else:
            x = x.T if node_attrs(node).get("transA", 0) else x.reshape(-1, x.shape[-1])
        if len(x) > MAX_ROWS:
            x = x[rng.choice(len(x), MAX_ROWS, replace=False)]
        result[name] = x.astype(np.float32)
    return result
