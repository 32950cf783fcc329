"""Ideal mode: a convolution layer as one onnxruntime Conv, with no patches in memory.

A compiled convolution is ``im2col %P, %X``, the layer's ``Fused`` step (bias, the mvm group
reading ``%P``, an in-place activation: ``epilogues``) into ``%C``, and ``unpatch %Y, %C``.
Run as written, im2col copies every input prod(kernel) times into patches, and the product
then reads them: 42 % of an ideal run of the digits CNN went to im2col (its depthwise
layer's patches are 144 floats a position, 9 in 10 of them multiplied by zeros).
``fuse_convs`` makes such a run one ``ConvStep`` when nothing later reads ``%P`` or ``%C``:
the matrix the crossbars hold now, with im2col's row order and unpatch's channel order, is
a Conv weight [K, C / groups, *kernel] (grouped where every entry outside the groups'
blocks is zero, as a depthwise layer's are), and onnxruntime computes ``%Y`` from ``%X``
with the activation fused, as it runs the model's own Conv.

The sums are those of the same products in another order (float32 rounding, as between
MLAS's and numpy's products): ideal mode promises the float arithmetic of the program, not
one summation order. Grouped, the zeros outside the blocks are not multiplied, so an
infinite input gives no NaN (inf x 0) in the other groups' channels, as it does unfused.
A sample's outputs do not depend on the other samples of its run: onnxruntime convolves
image by image, and a session runs on one thread (the machine's threads take runs of
samples).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from isa import Instr, Program
from isa import windows as win

from .epilogues import Fused, instructions
from .errors import RunError
from .intgemm import one_thread_session, run_into
from .mvm_groups import even_runs
from .semantics import window

_LOCK = threading.Lock()


@dataclass
class ConvStep:
    """``im2col`` (its window), ``layer`` (the Fused bias, product and activation that read
    its patches) and ``unpatch`` (into the layer's output), run as one Conv."""

    im2col: Instr
    layer: Fused
    unpatch: Instr

    @property
    def instrs(self) -> list[Instr]:
        """The step's instructions in program order."""
        return [self.im2col, *self.layer.instrs, self.unpatch]


def fuse_convs(steps: list, program: Program) -> list:
    """``steps`` (``epilogues.fuse``'s) with every im2col, Fused layer step over all of its
    patches' rows and unpatch of its output into the convolution's own shape made one
    ``ConvStep``, where no later step and no output port reads the patches or the layer's
    columns."""
    shapes = {"%" + b.name: b.type.shape for b in program.buffers}
    shapes.update({"@" + b.name: b.data.shape for b in program.blobs})
    last = _last_uses(steps, program)
    out: list = []
    i = 0
    while i < len(steps):
        run = steps[i:i + 3]
        if len(run) == 3 and _conv_run(*run, shapes) and \
                last[run[0].operands[0]] <= i + 1 and last[run[2].operands[1]] <= i + 2:
            out.append(ConvStep(*run))
            i += 3
        else:
            out.append(steps[i])
            i += 1
    return out


def _conv_run(im2col, layer, unpatch, shapes: dict) -> bool:
    """im2col writes the patches the layer's mvms read; unpatch reads the layer's output
    into [B, K, *out], the shape a Conv of im2col's input writes; the bias is one value a
    column."""
    if not (isinstance(im2col, Instr) and im2col.op == "im2col" and isinstance(layer, Fused)
            and isinstance(unpatch, Instr) and unpatch.op == "unpatch"):
        return False
    patches, cols = im2col.operands[0], layer.copy.operands[0]
    x, y, bias = (shapes.get(r, ()) for r in (im2col.operands[1], unpatch.operands[0],
                                            layer.copy.operands[1]))
    if not (layer.group[0].operands[1] == patches and unpatch.operands[1] == cols
            and len(x) >= 3 and len(shapes.get(patches, ())) == 3):
        return False
    kernel, strides, pads, dilations = window(im2col)
    out = win.out_size(x[2:], kernel, strides, pads, dilations)
    k = shapes[cols][-1]
    return (tuple(y) == (x[0], k, *out)
            and max(i.attr("rows")[1] for i in layer.group) <= shapes[patches][-1]
            and len(bias) >= 1 and bias[-1] == k and math.prod(bias) == k)


def _last_uses(steps: list, program: Program) -> dict[str, float]:
    """The index of the last step with each buffer among its operands (infinity for the
    output ports' buffers: read after the last step)."""
    last: dict[str, float] = {}
    for k, step in enumerate(steps):
        for ins in instructions(step):
            for ref in ins.operands:
                last[ref] = k
    for port in program.outputs:
        last["%" + port.buffer] = float("inf")
    return last


def run_conv(m, step: ConvStep) -> None:
    """Run a ``ConvStep`` on machine ``m`` (ideal mode)."""
    ins = step.im2col
    x = m.read(ins.operands[1]).astype(np.float32, copy=False)
    matrix, bias = layer_matrix(m, step, x.shape[1])
    dst = step.unpatch.operands[0]
    y = np.empty(m.shape(dst), np.float32)
    session, feeds = _session(step, matrix, bias)
    runs = even_runs(len(x), max(1, min(m.threads, len(x))))
    try:
        m.map(lambda r: run_into(session, {"x": x[r[0]:r[1]], **feeds}, y[r[0]:r[1]]), runs)
    except Exception as exc:  # onnxruntime's own (out of memory among them), in one line
        raise RunError(f"onnxruntime's Conv failed: {str(exc).splitlines()[0]}") from None
    m.store(dst, y)


def layer_matrix(m, step: ConvStep, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The transpose [K, C x prod(kernel)] of the matrix the layer's crossbars hold now
    (zeros where no tile is), so that a Conv weight is a view of it, and its bias [K]: the
    unfused step computes ``patches @ matrix + bias``."""
    rows = channels * math.prod(step.im2col.attr("kernel"))
    matrix = np.zeros((m.shape(step.layer.copy.operands[0])[-1], rows), np.float32)
    for ins in step.layer.group:
        (r0, r1), (c0, c1) = ins.attr("rows"), ins.attr("cols")
        matrix[c0:c1, r0:r1] += m.xbar(ins.attr("xb"), (r1 - r0, c1 - c0), ins).T
    bias = m.read(step.layer.copy.operands[1]).astype(np.float32, copy=False)
    return matrix, bias.reshape(matrix.shape[:1])  # ([M], or [1, M]: fuse_convs checks)


def conv_weight(step: ConvStep, matrix: np.ndarray, bias: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """The Conv weight [K, C / groups, *kernel], bias [K] and group count of a layer's
    transposed ``matrix`` and ``bias`` (``layer_matrix``): its columns in im2col's order
    (channel-major patches, permuted by im2col's ``perm``), its rows the output channels
    unpatch's ``perm`` picks."""
    kernel = step.im2col.attr("kernel")
    taps = math.prod(kernel)
    rows, cols = step.im2col.attr("perm"), step.unpatch.attr("perm")
    if rows is not None:  # patches' column i is the unpermuted patches' column rows[i]
        unpermuted = np.zeros_like(matrix)
        unpermuted[:, np.asarray(rows, np.int64)] = matrix
        matrix = unpermuted
    if cols is not None:
        matrix, bias = matrix[np.asarray(cols, np.int64)], bias[np.asarray(cols, np.int64)]
    k, channels = matrix.shape[0], matrix.shape[1] // taps
    weight = matrix.reshape((k, channels, taps))
    groups = _groups(weight) if 2 * np.count_nonzero(matrix) <= matrix.size else 1
    if groups > 1:  # each group's block of output channels by its input channels
        per, block = channels // groups, k // groups
        weight = np.concatenate([weight[g * block:(g + 1) * block, g * per:(g + 1) * per]
                                 for g in range(groups)])
    weight = weight.reshape((k, channels // groups, *kernel))
    return np.ascontiguousarray(weight), np.ascontiguousarray(bias), groups


def _groups(weight: np.ndarray) -> int:
    """The most groups whose blocks hold every non-zero of ``weight`` [K, C, taps]: a
    divisor of both K and C (1 for a dense layer; callers skip layers more than half
    non-zero, which g >= 2 groups cannot hold)."""
    k, c = weight.shape[:2]
    nonzero = np.any(weight != 0, axis=2)
    for g in sorted((d for d in range(2, math.gcd(k, c) + 1) if k % d == 0 and c % d == 0),
                    reverse=True):
        block = (np.arange(k)[:, None] // (k // g)) == (np.arange(c)[None, :] // (c // g))
        if not np.any(nonzero & ~block):
            return g
    return 1


# Sessions built with a layer's weights as constants, by layer: onnxruntime then runs its
# blocked (NCHWc) convolutions, which it picks only for constant weights (the digits CNN's
# depthwise layer over 540 images 1.8 -> 0.19 ms, its 3x3 layers 2.4 -> 1.0). Each holds a
# copy of the matrix and bias it was built for, compared on every run (rebuilt if the
# crossbars ever hold others), and goes once its im2col instruction has (its program), at
# the next build.
# Building one costs about four copies of the weights, and onnxruntime keeps about three,
# so only layers of at most CONSTANT_BYTES of non-zero weights are built so; larger ones
# (ResNet-50's from its third stage on, whose few output positions gain least: 1.33 -> 0.98
# ms for a 512-channel 3x3 layer on one image, against 1.78 -> 0.92 ms for a 64-channel
# one) take their weights as inputs. One cimrun of one ResNet-50 image: 0.97 GB peak and
# 2.1 s with every layer constant, 0.50 GB and 1.7 s so (0.50 GB and 1.6 s before this
# module). The choice depends on the layer alone, so a sample's outputs do not depend on
# the run it is in, or on the runs before it. Held sessions count RESIDENT_COPIES times
# their matrix against CACHE_BYTES, the least recently used given up first (and rebuilt,
# alike, when met again).
CACHE_BYTES = 512 * 2 ** 20
CONSTANT_BYTES = 2 ** 20
RESIDENT_COPIES = 4


@dataclass
class _Held:
    im2col: weakref.ref
    unpatch: weakref.ref
    act: tuple
    matrix: np.ndarray
    bias: np.ndarray
    session: object

    def serves(self, step: ConvStep, act: tuple, matrix: np.ndarray, bias: np.ndarray) -> bool:
        return (self.im2col() is step.im2col and self.unpatch() is step.unpatch
                and self.act == act and np.array_equal(self.matrix, matrix)
                and np.array_equal(self.bias, bias))


_SESSIONS: OrderedDict[int, _Held] = OrderedDict()


def _session(step: ConvStep, matrix: np.ndarray, bias: np.ndarray):
    """``step``'s Conv session with ``matrix`` and ``bias`` (``layer_matrix``) as constants,
    held or built, for a layer of at most ``CONSTANT_BYTES`` of non-zero weights; else its
    Conv's with weights as inputs. Returns it and what it takes besides x (nothing, or the
    weight and bias)."""
    if np.count_nonzero(matrix) * matrix.itemsize > CONSTANT_BYTES:
        weight, bias, groups = conv_weight(step, matrix, bias)
        return _input_session(step, groups), {"w": weight, "b": bias}
    key, act = id(step.im2col), _activation(step.layer.act)
    with _LOCK:
        held = _SESSIONS.get(key)
        if held is not None and held.serves(step, act, matrix, bias):
            _SESSIONS.move_to_end(key)
            return held.session, {}
        keep(_SESSIONS, key, _Held(weakref.ref(step.im2col), weakref.ref(step.unpatch), act,
                                   matrix.copy(), bias.copy(),
                                   _build(step, *conv_weight(step, matrix, bias))),
             lambda h: h.im2col() is not None, lambda h: h.matrix.nbytes)
        return _SESSIONS[key].session, {}


def keep(cache: OrderedDict, key, held, alive, nbytes) -> None:
    """Hold ``held`` in ``cache`` under ``key`` (the caller holds the cache's lock): first
    drop what ``alive(h)`` says no program holds any more, then give up the least recently
    used while ``RESIDENT_COPIES`` times their ``nbytes(h)`` exceeds ``CACHE_BYTES``."""
    for gone in [k for k, h in cache.items() if not alive(h)]:
        del cache[gone]
    cache[key] = held
    while len(cache) > 1 and RESIDENT_COPIES * sum(map(nbytes, cache.values())) > CACHE_BYTES:
        cache.popitem(last=False)


_INPUT_SESSIONS: dict = {}


def _input_session(step: ConvStep, groups: int):
    """The session of ``step``'s Conv and activation with weights and bias as inputs, one
    per window, group count and activation (a few small sessions, kept)."""
    key = (tuple(map(tuple, window(step.im2col))), groups, _activation(step.layer.act))
    with _LOCK:
        if key not in _INPUT_SESSIONS:
            _INPUT_SESSIONS[key] = _build(step, None, None, groups)
        return _INPUT_SESSIONS[key]


def _activation(act: Instr | None) -> tuple:
    """The layer's activation as the session's node after the Conv: () none, ("Relu",), or
    ("Clip", min, max) (``epilogues.IN_PLACE``'s, the same floats: onnxruntime fuses them
    into the convolution's output loop)."""
    if act is None:
        return ()
    if act.op == "relu":
        return ("Relu",)
    return ("Clip", float(np.float32(act.attr("min"))), float(np.float32(act.attr("max"))))


def conv_nodes(step: ConvStep, x: str, w: str, b: str, y: str, groups: int,
               fresh) -> tuple[list, list]:
    """The ONNX nodes of ``step``'s Conv of value ``x`` by weight ``w`` and bias ``b`` into
    ``y``, then its activation (``_activation``), and the activation's bound constants;
    ``fresh(stem)`` names the values between them."""
    from onnx import helper, numpy_helper

    act = _activation(step.layer.act)
    kernel, strides, pads, dilations = window(step.im2col)
    c = fresh("c") if act else y
    nodes = [helper.make_node("Conv", [x, w, b], [c], kernel_shape=kernel, strides=strides,
                              pads=pads, dilations=dilations, group=groups)]
    if not act:
        return nodes, []
    bounds = [fresh(f"{act[0]}{i}") for i in range(len(act) - 1)]
    nodes.append(helper.make_node(act[0], [c, *bounds], [y]))
    return nodes, [numpy_helper.from_array(np.array(v, np.float32), name)
                   for name, v in zip(bounds, act[1:])]


def _build(step: ConvStep, weight: np.ndarray | None, bias: np.ndarray | None, groups: int):
    """A session on one intra-op thread of x's Conv, then the step's activation if any: its
    weight and bias these constants, or inputs w and b (None)."""
    from onnx import TensorProto, helper, numpy_helper

    kernel = step.im2col.attr("kernel")
    nodes, initializers = conv_nodes(step, "x", "w", "b", "y", groups, lambda stem: stem)
    if weight is not None:
        initializers += [numpy_helper.from_array(weight, "w"),
                         numpy_helper.from_array(bias, "b")]
    spatial = [f"s{i}" for i in range(len(kernel))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C", *spatial])]
    if weight is None:
        inputs += [helper.make_tensor_value_info("w", TensorProto.FLOAT, ["K", "G", *kernel]),
                   helper.make_tensor_value_info("b", TensorProto.FLOAT, ["K"])]
    graph = helper.make_graph(nodes, "conv", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializers)
    # no arena: what the session allocates itself (NCHWc buffers, the Conv's output before
    # its activation) is given back after each run (one ResNet-50 image: 0.45 against 0.52
    # GB peak with it)
    return one_thread_session(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), arena=False)
