"""New ONNX nodes and constants that replace one node (``rewrite_nodes``), named after its
output so that they cannot clash with the model's own; and what a rewrite reads of the node
it replaces."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def node_attr(node: onnx.NodeProto, name: str, default=None):
    """The value of ``node``'s attribute ``name`` (onnx's own decoding), or ``default``."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name),
                default)


class NodeWriter:
    """Nodes and initializers, in order, computing one node's output from its inputs."""

    def __init__(self, base: str, tag: str):
        self.base, self.tag = base, tag
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self) -> str:
        self.count += 1
        return f"{self.base}/{self.tag}{self.count}"

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        """Append an ``op`` node; its output's name."""
        out = self.name()
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def constant(self, value: np.ndarray) -> str:
        name = self.name()
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(self, values) -> str:
        return self.constant(np.array(values, np.int64))

    def transpose(self, x: str, perm: list[int]) -> str:
        """``x`` transposed by ``perm`` (``x`` itself for the identity)."""
        return x if list(perm) == sorted(perm) else self.node("Transpose", [x], perm=list(perm))

    def reshape(self, x: str, shape: list[int]) -> str:
        return self.node("Reshape", [x, self.ints(shape)])

    def finish(self, output: str) -> NodeWriter:
        """Make the last node write ``output`` (an Identity of ``output``'s source if there
        is none); the writer, done."""
        if not self.nodes:
            raise ValueError("a rewrite made no node")
        self.nodes[-1].output[0] = output
        return self
