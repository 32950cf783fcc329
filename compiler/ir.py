"""Graph IR: operations over statically shaped tensors, on a networkx multigraph.

Ops are the graph's nodes (attribute ``op``); an edge producer -> consumer carries the tensor
name and the consumer's operand position as its key. Constants (initializers) are numpy arrays
in ``Graph.constants`` and are not ops. Graph inputs and constants have no producer node. What
an op of each kind takes and gives is the op table's (``compiler.ops``); ``Graph.level`` is
the dialect the graph is in (the frontend makes ``onnx``, canonicalize ``canonical``,
lower-to-crossbar ``crossbar``), which the verifier holds it to.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from .ops import ONNX


@dataclass
class Value:
    name: str
    shape: tuple[int, ...]
    dtype: str = "f32"


@dataclass
class Op:
    id: str
    kind: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    origin: str = ""  # name of the ONNX node this op came from (provenance)
    proto: object = None  # an onnx-level op's NodeProto (for folding and evaluation), else None


class Graph:
    """A dataflow graph; mutate it only through the methods below so the index stays right."""

    def __init__(self, batch: int = 1):
        self.g = nx.MultiDiGraph()
        self.values: dict[str, Value] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []  # value names, parallel to output_names
        self.output_names: list[str] = []  # the ONNX names users see
        self.opset = 13
        self.ranges: dict[str, float] = {}  # calibrated max |value| per tensor
        self.index_inputs: dict[str, int] = {}  # inputs holding token ids -> rows they index
        self.int_inputs: set[str] = set()  # other integer inputs (support.held_integers)
        self.int_outputs: set[str] = set()  # integer outputs (an ArgMax's), held as float32
        self.booleans: set[str] = set()  # values ONNX types bool (held as float32 0 and 1)
        self.batch = batch
        self.notes: list[str] = []  # summary lines a pass leaves for the IR printer
        self.offsets: dict[str, int] = {}  # scratchpad byte offset per value (allocate-buffers)
        self.level = ONNX  # the dialect (``compiler.ops.LEVELS``) the passes have reached
        self.xbars = 0  # physical crossbars the schedule placed tiles on (0: not scheduled)
        self._producer: dict[str, str] = {}
        self._uses: dict[str, set[tuple[str, int]]] = {}
        self._order = itertools.count()
        self._names = itertools.count()

    # -- construction ------------------------------------------------------------------
    def fresh(self, prefix: str) -> str:
        """``prefix`` itself if unused, else ``prefix_N`` for the first free N."""
        if prefix not in self.values and prefix not in self.constants:
            return prefix
        while True:
            name = f"{prefix}_{next(self._names)}"
            if name not in self.values and name not in self.constants:
                return name

    def add_value(self, name: str, shape, dtype: str = "f32") -> str:
        self.values[name] = Value(name, tuple(int(d) for d in shape), dtype)
        return name

    def add_constant(self, name: str, array: np.ndarray) -> str:
        self.constants[name] = np.asarray(array)
        return name

    def remove_value(self, name: str) -> None:
        """Forget the type of ``name``, which no op produces any more (it may become a
        constant next, or be gone)."""
        if name in self._producer:
            raise ValueError(f"%{name} is still produced by {self._producer[name]}")
        self.values.pop(name, None)

    def add_op(self, kind: str, inputs, outputs, attrs=None, origin: str = "",
               proto=None) -> Op:
        order = next(self._order)
        op = Op(f"{kind}#{order}", kind, list(inputs), list(outputs), dict(attrs or {}), origin,
                proto)
        self.g.add_node(op.id, op=op, order=order)
        for out in op.outputs:
            self._producer[out] = op.id
            for user, pos in self._uses.get(out, ()):
                self.g.add_edge(op.id, user, key=(out, pos))
        for pos, name in enumerate(op.inputs):
            self._link(name, op.id, pos)
        return op

    def _link(self, name: str, user: str, pos: int) -> None:
        if not name:  # an omitted optional ONNX input
            return
        self._uses.setdefault(name, set()).add((user, pos))
        if name in self._producer:
            self.g.add_edge(self._producer[name], user, key=(name, pos))

    def remove_op(self, op: Op) -> None:
        for pos, name in enumerate(op.inputs):
            self._uses.get(name, set()).discard((op.id, pos))
        for out in op.outputs:
            if self._producer.get(out) == op.id:
                del self._producer[out]
        self.g.remove_node(op.id)

    def set_input(self, op: Op, pos: int, name: str) -> None:
        old = op.inputs[pos]
        self._uses.get(old, set()).discard((op.id, pos))
        if old in self._producer and self.g.has_edge(self._producer[old], op.id, (old, pos)):
            self.g.remove_edge(self._producer[old], op.id, key=(old, pos))
        op.inputs[pos] = name
        self._link(name, op.id, pos)

    def set_attrs(self, op: Op, attrs: dict) -> None:
        """Give ``op`` a new attribute dict (its id, operands and order stay): passes never
        mutate an op's attributes in place, since a dump or an earlier stage may hold them."""
        op.attrs = dict(attrs)

    def replace_uses(self, old: str, new: str) -> None:
        """Make every consumer of ``old`` (and the graph outputs) read ``new`` instead."""
        for user, pos in sorted(self._uses.get(old, ())):
            self.set_input(self.op(user), pos, new)
        self.outputs = [new if o == old else o for o in self.outputs]

    # -- queries -----------------------------------------------------------------------
    def op(self, op_id: str) -> Op:
        return self.g.nodes[op_id]["op"]

    def ops(self) -> list[Op]:
        """All ops in a deterministic topological order (ties broken by insertion order)."""
        order = nx.get_node_attributes(self.g, "order")
        return [self.op(n) for n in nx.lexicographical_topological_sort(self.g, key=order.get)]

    def producer(self, name: str) -> Op | None:
        pid = self._producer.get(name)
        return self.op(pid) if pid is not None else None

    def users(self, name: str) -> list[tuple[Op, int]]:
        return [(self.op(u), p) for u, p in sorted(self._uses.get(name, ()))]

    def is_const(self, name: str) -> bool:
        return name in self.constants

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.constants:
            return tuple(self.constants[name].shape)
        return self.values[name].shape

    def drop_dead(self) -> None:
        """Remove ops whose outputs nobody reads, and constants nobody reads."""
        live = set(self.outputs)
        for op in reversed(self.ops()):
            if any(o in live for o in op.outputs):
                live.update(op.inputs)
            else:
                self.remove_op(op)
        for name in [c for c in self.constants if c not in live]:
            del self.constants[name]
        for name in [v for v in self.values if v not in live and v not in self.inputs]:
            del self.values[name]
