"""Ideal mode: runs of convolutions and the vector steps between them as one onnxruntime graph.

After ``implicit_conv`` a convolution is one onnxruntime session, but each session still
converts its input to onnxruntime's blocked (NCHWc) layout and its output back, and the
relu, add and pooling steps between layers are numpy passes over memory of their own: on
the digits CNN the four Conv sessions took 1.9 ms of a 3.9 ms run of 540 images where
onnxruntime runs the whole model in 0.45 ms. ``fuse_graphs`` makes every run of two or more
consecutive steps that ONNX states exactly, at least one of them a ``ConvStep``, one
``GraphStep``: one session computes, from the buffers the run reads before it writes them,
the buffers it writes that a later step or an output port reads. What ONNX states exactly
(``_EMITTERS``): ``ConvStep`` (a Conv with its activation fused, as ``implicit_conv``
builds it, weights as constants for layers of at most ``implicit_conv.CONSTANT_BYTES`` of
non-zero weights, else inputs), relu and clip, the broadcasting add, sub, mul, div, max and
min whose result has the destination's shape, maxpool (not in ceil mode), global average
and max pooling, and a reshape that keeps the leading (sample) axis.

The floats are those of the steps run one by one up to summation order (a global average's
sum, a convolution's, as in ``implicit_conv``): ideal mode promises the program's float
arithmetic, not one order of sums. Every buffer the graph reads or writes has the samples
on its leading axis, and each of its operators computes sample by sample, so a sample's
outputs do not depend on the other samples of its run; the machine's threads take runs of
samples, each on a one-thread session.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from isa import Instr, Program
from isa.verify import rows_differ

from . import implicit_conv as ic
from .epilogues import instructions
from .errors import RunError
from .intgemm import one_thread_session, run_bound
from .mvm_groups import even_runs
from .semantics import window

_LOCK = threading.Lock()
OPSET = 13


@dataclass
class GraphStep:
    """Consecutive ``steps`` run as one onnxruntime graph: it reads ``inputs`` (buffers,
    with the samples leading) and writes ``outputs``."""

    steps: list
    inputs: list[str]
    outputs: list[str]

    @property
    def instrs(self) -> list[Instr]:
        """The step's instructions in program order."""
        return [i for s in self.steps for i in instructions(s)]


@dataclass
class _Graph:
    """An ONNX graph being built: each buffer's current value, the graph's inputs (buffers
    read before any write), its nodes and constants."""

    blob: Callable  # (ref, rank) -> a blob as ops of that rank read it (Machine.read_per_sample)
    current: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)
    nodes: list = field(default_factory=list)
    constants: list = field(default_factory=list)
    count: int = 0

    def read(self, ref: str, rank: int | None = None) -> str:
        """The value holding ``ref`` now: a blob's constant (read by an op whose destination
        has ``rank`` axes: as ``Machine.read_per_sample`` reads it), or an input on first
        read."""
        if ref not in self.current:
            name = self.fresh(ref[1:])
            if ref[0] == "@":
                self.constant(name, np.asarray(self.blob(ref, rank), np.float32))
            else:
                self.inputs.append((ref, name))
            self.current[ref] = name
        return self.current[ref]

    def write(self, ref: str) -> str:
        """A new value for ``ref``, which later reads get."""
        self.current[ref] = self.fresh(ref[1:])
        return self.current[ref]

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}.{self.count}"

    def constant(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.constants.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output_ref: str, **attrs) -> None:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [self.write(output_ref)], **attrs))


def _dst(ins: Instr) -> str:
    return ins.operands[0]


def _unary(op: str) -> Callable:
    def emit(g: _Graph, ins: Instr, shapes: dict) -> None:
        g.node(op, [g.read(ins.operands[1])], _dst(ins))
    return emit


def _clip(g: _Graph, ins: Instr, shapes: dict) -> None:
    bounds = [g.constant(g.fresh(f"clip.{k}"), np.array(ins.attr(k), np.float32))
              for k in ("min", "max")]
    g.node("Clip", [g.read(ins.operands[1]), *bounds], _dst(ins))


def _binary(op: str) -> Callable:
    def emit(g: _Graph, ins: Instr, shapes: dict) -> None:
        rank = len(shapes[_dst(ins)])
        g.node(op, [g.read(r, rank) for r in ins.operands[1:]], _dst(ins))
    return emit


def _maxpool(g: _Graph, ins: Instr, shapes: dict) -> None:
    kernel, strides, pads, dilations = window(ins)
    g.node("MaxPool", [g.read(ins.operands[1])], _dst(ins), kernel_shape=kernel,
           strides=strides, pads=pads, dilations=dilations, ceil_mode=int(ins.attr("ceil")))


def _reshape(g: _Graph, ins: Instr, shapes: dict) -> None:
    shape = g.constant(g.fresh("shape"), np.array((0, *shapes[_dst(ins)][1:]), np.int64))
    g.node("Reshape", [g.read(ins.operands[1]), shape], _dst(ins))


def _conv(g: _Graph, step: ic.ConvStep, weight, bias, groups: int) -> None:
    """A Conv of the layer's input by ``weight`` and ``bias`` (constants, or None: graph
    inputs), then its activation (``implicit_conv.conv_nodes``)."""
    w, b = g.fresh("w"), g.fresh("b")
    if weight is None:
        g.inputs += [(w, w), (b, b)]
    else:
        g.constant(w, weight), g.constant(b, bias)
    x = g.read(step.im2col.operands[1])
    nodes, bounds = ic.conv_nodes(step, x, w, b, g.write(step.unpatch.operands[0]), groups,
                                  g.fresh)
    g.nodes += nodes
    g.constants += bounds


_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min"}
_UNARY = {"relu": "Relu", "gavgpool": "GlobalAveragePool", "gmaxpool": "GlobalMaxPool"}
# opcode -> fn(graph, instruction, the program's buffer shapes) adding its nodes
_EMITTERS: dict[str, Callable] = {
    **{k: _binary(v) for k, v in _BINARY.items()}, **{k: _unary(v) for k, v in _UNARY.items()},
    "clip": _clip, "maxpool": _maxpool, "reshape": _reshape}


def _graphable(step, shapes: dict, per_sample: frozenset = frozenset()) -> bool:
    """Whether ``step`` is a ConvStep or an instruction ``_emitters`` states exactly, on
    buffers whose leading axis is the samples', reading no blob of ``per_sample`` along the
    samples (blobs with a row per sample of the compiled batch, rows that differ: a run of
    samples cannot take them as one constant)."""
    if isinstance(step, ic.ConvStep):
        return True
    if not isinstance(step, Instr) or step.op not in _EMITTERS:
        return False
    refs = [r for r in step.operands if r[0] == "%"]
    if any(len(shapes.get(r, ())) < 1 for r in refs):
        return False
    dst, srcs = shapes[_dst(step)], [shapes.get(r, ()) for r in step.operands[1:]]
    if any(r in per_sample and len(shapes[r]) == len(dst) for r in step.operands[1:]):
        return False  # (a blob of lower rank broadcasts along other axes than the samples)
    if step.op == "maxpool" and step.attr("ceil"):
        return False  # (ONNX's opset-13 shape rule and onnxruntime's kernel disagree on it)
    if step.op in _BINARY:  # broadcast to exactly the destination, samples kept apart
        try:
            joined = np.broadcast_shapes(*srcs)
        except ValueError:
            return False
        return joined == dst and all(s[0] == dst[0] for s, r in
                                     zip(srcs, step.operands[1:]) if r[0] == "%")
    return srcs[0][:1] == dst[:1]  # unary, pooling, reshape: the sample axis kept


def fuse_graphs(steps: list, program: Program) -> list:
    """``steps`` (``implicit_conv.fuse_convs``'s) with every run of two or more graphable
    steps holding a ``ConvStep`` made one ``GraphStep``."""
    shapes = {"%" + b.name: b.type.shape for b in program.buffers}
    shapes.update({"@" + b.name: b.data.shape for b in program.blobs})
    per_sample = frozenset("@" + b.name for b in program.blobs if rows_differ(b.data))
    last = ic._last_uses(steps, program)
    out: list = []
    i = 0
    while i < len(steps):
        j = i
        while j < len(steps) and _graphable(steps[j], shapes, per_sample):
            j += 1
        run = steps[i:j]
        if len(run) >= 2 and any(isinstance(s, ic.ConvStep) for s in run):
            out.append(_graph_step(run, j - 1, last))
            i = j
        else:
            out.append(steps[i])
            i += 1
    return out


def _graph_step(run: list, end: int, last: dict) -> GraphStep:
    """The GraphStep of ``run`` (its last step at index ``end``): its inputs are the buffers
    read before written; its outputs those written and used after ``end``."""
    read, written = {}, {}  # (dicts as ordered sets)
    for step in run:
        for ins in instructions(step):
            for ref in ins.operands[1:]:
                if ref[0] == "%" and ref not in written:
                    read[ref] = None
            written[_dst(ins)] = None
    return GraphStep(run, list(read), [r for r in written if last.get(r, -1) > end])


def _weights(m, step: ic.ConvStep) -> tuple:
    """A ConvStep's (matrix, bias) as its crossbars hold them now (``layer_matrix``), and
    whether they go into the graph as constants (``implicit_conv``'s rule)."""
    channels = m.shape(step.im2col.operands[1])[1]
    matrix, bias = ic.layer_matrix(m, step, channels)
    constant = np.count_nonzero(matrix) * matrix.itemsize <= ic.CONSTANT_BYTES
    return matrix, bias, constant


@dataclass
class _Held:
    """A built session: which step (its instructions) and weights it was built for
    (per ConvStep: copies of the constant matrix and bias, or None where they are inputs),
    what it reads (buffer, value) and writes (buffer, value), and each ConvStep's weight
    input names (None: constants)."""

    instrs: list  # weak references to the step's instructions
    blobs: list  # (name, data) of the blobs the graph holds as constants
    layers: list
    session: object
    inputs: list
    outputs: list
    feeds: list

    def alive(self) -> bool:
        return self.instrs[0]() is not None

    def serves(self, step: GraphStep, layers: list, blobs: dict) -> bool:
        # every instruction, not only the first: a copy of a program may share some of them
        # (and not its blobs: those baked in as constants are compared too)
        instrs = step.instrs
        return len(self.instrs) == len(instrs) and all(
            w() is i for w, i in zip(self.instrs, instrs)) and all(
            blobs.get(name) is data or np.array_equal(blobs.get(name), data, equal_nan=True)
            for name, data in self.blobs) and len(self.layers) == len(layers) and all(
            (h is None) == (not c) and (h is None or (np.array_equal(h[0], mat)
                                                      and np.array_equal(h[1], b)))
            for h, (mat, b, c) in zip(self.layers, layers))


_SESSIONS: OrderedDict[int, _Held] = OrderedDict()


def _held(m, step: GraphStep, layers: list) -> _Held:
    """``step``'s session for these layers' weights, held or built (``implicit_conv``'s
    cache policy: checked against the crossbars on every run, the least recently used
    given up past ``implicit_conv.CACHE_BYTES``)."""
    key = id(step.instrs[0])
    with _LOCK:
        held = _SESSIONS.get(key)
        if held is not None and held.serves(step, layers, m.blobs):
            _SESSIONS.move_to_end(key)
            return held
        ic.keep(_SESSIONS, key, _build(m, step, layers), _Held.alive,
                lambda held: sum(h[0].nbytes for h in held.layers if h))
        return _SESSIONS[key]


def _build(m, step: GraphStep, layers: list) -> _Held:
    """The session of ``step``'s graph: constant layers' weights inside it, the others'
    weight and bias inputs named in ``feeds``."""
    from onnx import TensorProto, helper

    program_shapes = {"%" + b.name: b.type.shape for b in m.program.buffers}
    g = _Graph(m.read_per_sample)
    convs = iter(layers)
    kept, feeds = [], []
    for s in step.steps:
        if isinstance(s, ic.ConvStep):
            matrix, bias, constant = next(convs)
            weight, b, n = ic.conv_weight(s, matrix, bias)
            start = len(g.inputs)
            _conv(g, s, *((weight, b) if constant else (None, None)), n)
            kept.append((matrix.copy(), bias.copy()) if constant else None)
            feeds.append(None if constant else [name for _, name in g.inputs[start:]])
        else:
            _EMITTERS[s.op](g, s, program_shapes)
    value_infos = [helper.make_tensor_value_info(
        name, TensorProto.FLOAT, ["N", *program_shapes[ref][1:]] if ref[0] == "%" else None)
        for ref, name in g.inputs]
    outputs = [helper.make_tensor_value_info(g.current[r], TensorProto.FLOAT, None)
               for r in step.outputs]
    graph = helper.make_graph(g.nodes, "segment", value_infos, outputs, g.constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    baked = [(r[1:], m.blobs[r[1:]]) for r in g.current if r[0] == "@"]
    return _Held([weakref.ref(i) for i in step.instrs], baked, kept,
                 one_thread_session(model, arena=False),
                 [(r, name) for r, name in g.inputs if r[0] == "%"],
                 [(r, g.current[r]) for r in step.outputs], feeds)


def run_graph(m, step: GraphStep) -> None:
    """Run a ``GraphStep`` on machine ``m`` (ideal mode): runs of samples on the machine's
    threads where every buffer it reads and writes has as many samples leading."""
    convs = [s for s in step.steps if isinstance(s, ic.ConvStep)]
    layers = [_weights(m, s) for s in convs]
    held = _held(m, step, layers)
    feeds = {name: m.read(ref).astype(np.float32, copy=False) for ref, name in held.inputs}
    ys = {name: np.empty(m.shape(ref), np.float32) for ref, name in held.outputs}
    weights = {}
    for names, s, (matrix, bias, _) in zip(held.feeds, convs, layers):
        if names is not None:
            weights.update(zip(names, ic.conv_weight(s, matrix, bias)[:2]))
    sizes = {len(a) for a in (*feeds.values(), *ys.values())}
    n = sizes.pop() if len(sizes) == 1 else None
    runs = [(0, None)] if n is None else even_runs(n, max(1, min(m.threads, n)))

    def one(r: tuple) -> None:
        run_bound(held.session, {**{k: v[r[0]:r[1]] for k, v in feeds.items()}, **weights},
                  {k: v[r[0]:r[1]] for k, v in ys.items()})
    try:
        m.map(one, runs)
    except Exception as exc:  # onnxruntime's own (out of memory among them), in one line
        raise RunError(f"onnxruntime failed: {str(exc).splitlines()[0]}") from None
    for ref, name in held.outputs:
        m.store(ref, ys[name])
