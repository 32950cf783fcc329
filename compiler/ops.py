"""The graph IR's op table: every op kind declared once, as ``isa.opcodes`` declares the ISA.

A row (``OpDef``) states, for one kind:

- ``level``: its dialect. ``onnx``: an ONNX operator straight from the frontend, carrying its
  NodeProto in ``op.proto`` (any ONNX type: those outside the table fold away in
  canonicalize, see ``ONNX_NODE``). ``canonical``: what canonicalize makes (conv, matmul,
  batchnorm, relu, add, maxpool, ...), with explicit numeric attributes. ``crossbar``: what
  lower-to-crossbar, basis-decompose and sort-weights make (im2col, xbar_matmul,
  digital_matmul, dyn_digital, dyn_write, unpatch, basis_project, combine, permute).
  ``until`` is the last level the kind may appear at (conv, matmul and dynmatmul are
  lowered; the other canonical kinds stay and reach the chip).
- ``operands``: in order, each ``data`` (any tensor, value or constant) or ``const`` (a
  compile-time constant: crossbars hold static weights), possibly ``optional`` (left out at the
  end; an ONNX op may also name it "") or ``variadic`` (the last, one or more tensors).
- ``attrs``: the attribute schema, each with a type of ``ATTR_TYPES`` and whether it is
  required (an optional one may be absent or None). Attributes named ``_...`` are private to
  passes (the NodeProto, ...) and outside the schema. ONNX rows have no schema (None): their
  attributes are ONNX's, checked by onnx.checker.
- ``shape``: the result-shape rule (``compiler.shapes``); None for ONNX rows, whose shapes are
  ONNX shape inference's.
- ``opcode``: the ISA opcode the kind maps to one-to-one (same operands after the destination,
  same attributes), which is all codegen needs to know about it; None when codegen has a rule.
- Columns single passes read: ``rewrite`` (canonicalize, ONNX rows: ``normalize`` through
  ``compiler.normalize.NORMALIZERS``, ``drop`` the no-op, or ``fold`` into a constant);
  ``fusable`` (fuse-activation: an activation that can be a producer's epilogue, stored as
  its ``act`` attribute); ``bn_fold`` (fold-batchnorm: a producer a batchnorm folds into, as
  (channel axis of its weight, channel axis of its result)).

Readers: ``support`` (which ONNX ops compile), canonicalize, fold-batchnorm, fuse-activation,
the verifier, the printer and codegen. The IR evaluator (``compiler.evaluate.KINDS``) has one
function per non-ONNX kind; tests/test_ops.py checks the tables agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import shapes as S

LEVELS = ("onnx", "canonical", "crossbar")
ONNX, CANONICAL, CROSSBAR = LEVELS


class Act(NamedTuple):
    """A fused activation (the ``act`` attribute of an epilogue-carrying op)."""
    kind: str
    attrs: dict


@dataclass(frozen=True)
class Operand:
    name: str
    role: str = "data"  # "data" | "const"
    optional: bool = False
    variadic: bool = False

    def __str__(self) -> str:
        return ("@" if self.role == "const" else "%") + self.name + \
            ("?" if self.optional else "") + ("..." if self.variadic else "")


@dataclass(frozen=True)
class Attr:
    name: str
    type: str  # a key of ATTR_TYPES
    required: bool = True


@dataclass(frozen=True)
class OpDef:
    name: str
    level: str
    operands: tuple[Operand, ...]
    attrs: tuple[Attr, ...] | None = ()
    shape: Callable | None = S.same
    opcode: str | None = None
    until: str = CROSSBAR
    rewrite: str = ""
    fusable: bool = False
    bn_fold: tuple[int, int] | None = None

    @property
    def epilogue(self) -> bool:
        """Whether ops of this kind may carry a fused activation (``act``)."""
        return any(a.type == "act" for a in self.attrs or ())

    @property
    def arity(self) -> tuple[int, int | None]:
        """(least, most) operands; most is None for a variadic kind."""
        least = sum(not o.optional for o in self.operands)
        return least, None if any(o.variadic for o in self.operands) else len(self.operands)

    def allowed_at(self, level: str) -> bool:
        return LEVELS.index(self.level) <= LEVELS.index(level) <= LEVELS.index(self.until)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_ints(v, n: int | None = None) -> bool:
    return isinstance(v, (list, tuple)) and all(map(_is_int, v)) and n in (None, len(v))


def _is_windows(v) -> bool:
    return isinstance(v, list) and all(_is_ints(t, 4) and 0 <= t[0] < t[1] and 0 <= t[2] < t[3]
                                       for t in v)


# type -> (check of a value, what the check wants, for messages)
ATTR_TYPES: dict[str, tuple[Callable[[object], bool], str]] = {
    "int": (_is_int, "an int"),
    "float": (lambda v: isinstance(v, (float, np.floating)), "a float"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "ints": (_is_ints, "a list of ints"),
    "dims": (lambda v: _is_ints(v) and len(v) > 0 and min(v) >= 1, "a list of ints >= 1"),
    "act": (lambda v: isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str)
            and isinstance(v[1], dict), "an activation (kind, attributes)"),
    "tiles": (_is_windows, "a list of (row0, row1, col0, col1) windows"),
    "placement": (lambda v: isinstance(v, list) and all(
        isinstance(t, list) and all(_is_ints(r, 3) for r in t) for t in v),
        "per tile, a list of (crossbar, first vector, end vector)"),
    "flags": (lambda v: isinstance(v, list) and all(isinstance(f, bool) for f in v),
              "a list of bools"),
    "chunks": (lambda v: isinstance(v, list) and all(_is_ints(c) for c in v),
               "a list of lists of tile indices"),
    "work": (lambda v: isinstance(v, list) and all(_is_ints(t, 4) for t in v),
             "a list of (crossbar, group, first vector, end vector)"),
}


def _onnx(name: str, *operands: Operand, rewrite: str = "normalize") -> OpDef:
    return OpDef(name, ONNX, operands, None, None, until=ONNX, rewrite=rewrite)


_X, _W, _B = Operand("x"), Operand("w", "const"), Operand("b", "const", optional=True)
_WINDOW = (Attr("kernel", "dims"), Attr("strides", "dims"), Attr("pads", "ints"),
           Attr("dilations", "dims"))
_ACT = Attr("act", "act", required=False)
_BN = tuple(Operand(n, "const") for n in ("scale", "bias", "mean", "var"))


def _unary(name: str, *attrs: str, fusable: bool = True) -> OpDef:
    """An elementwise op on the vector unit (as its opcode) with float attributes; an
    activation (``fusable``) unless said otherwise."""
    return OpDef(name, CANONICAL, (_X,), tuple(Attr(a, "float") for a in attrs), S.same,
                 name, fusable=fusable)


# Elementwise kinds added after issue 11, ONNX type -> canonical kind: math functions (not
# epilogues), and activations (epilogues) with their float attributes' ONNX defaults.
MATH = {"Abs": "abs", "Log": "log", "Floor": "floor", "Ceil": "ceil", "Round": "round",
        "Sign": "sign", "Sin": "sin", "Cos": "cos"}
ONNX_ACTIVATIONS = {
    "Elu": ("elu", {"alpha": 1.0}), "Celu": ("celu", {"alpha": 1.0}),
    "Selu": ("selu", {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}),
    "Softplus": ("softplus", {}), "Softsign": ("softsign", {}), "HardSwish": ("hardswish", {}),
    "Mish": ("mish", {}), "ThresholdedRelu": ("thresholdedrelu", {"alpha": 1.0}),
    "Shrink": ("shrink", {"bias": 0.0, "lambd": 0.5})}
ACTIVATIONS = {kind: tuple(defaults) for kind, defaults in ONNX_ACTIVATIONS.values()}
ONNX_UNARY = (*MATH, *ONNX_ACTIVATIONS)
# Comparisons and logic (booleans held as float32 0 and 1), ONNX type -> canonical kind.
LOGIC = {"Less": "less", "LessOrEqual": "lessorequal", "Greater": "greater",
         "GreaterOrEqual": "greaterorequal", "Equal": "equal", "And": "and", "Or": "or",
         "Xor": "xor"}
ONNX_REDUCTIONS = {f"Reduce{k}": f"reduce{k.lower()}" for k in (
    "Mean", "Sum", "Max", "Min", "Prod", "L1", "L2", "SumSquare", "LogSum", "LogSumExp")}
# The index of the first (or, select_last_index, last) extreme along one axis: a reduction
# whose integer result is held as float32 (``support.held_integers``)
ONNX_ARGS = {"ArgMax": "argmax", "ArgMin": "argmin"}


def _binary(name: str) -> OpDef:
    return OpDef(name, CANONICAL, (Operand("a"), Operand("b")), (), S.broadcast, name)


_TABLE = [
    # -- ONNX operators the compiler supports (and ``support.RESTRICTIONS`` on some) ---------
    _onnx("Conv", _X, _W, _B), _onnx("ConvTranspose", _X, _W, _B), _onnx("Gemm", _X, _W, _B),
    _onnx("MatMul", _X, Operand("b")),  # a constant 2-D b: crossbars; else a dynamic product
    _onnx("LayerNormalization", _X, Operand("scale", "const"), _B),
    _onnx("RMSNormalization", _X, Operand("scale", "const")),
    _onnx("Gather", Operand("data"), Operand("indices")),
    _onnx("Slice", _X, *(Operand(n, "const", optional=n in ("axes", "steps"))
                         for n in ("starts", "ends", "axes", "steps"))),
    _onnx("Split", _X, Operand("split", "const", True)),
    _onnx("Expand", _X, Operand("shape", "const")), _onnx("Cast", _X),
    _onnx("CastLike", _X, Operand("target")),  # as Cast: a copy, or to bool ``tobool``
    *(_onnx(k, _X, Operand("axes", "const", True)) for k in ONNX_REDUCTIONS),
    *(_onnx(k, _X) for k in ONNX_ARGS),
    *(_onnx(k, _X) for k in ("Gelu", "Erf", "Sqrt", "Reciprocal", "Exp", "Neg", "LogSoftmax",
                             *ONNX_UNARY)),
    _onnx("Pow", Operand("a"), Operand("b")), _onnx("PRelu", _X, Operand("slope")),
    _onnx("Resize", _X, *(Operand(n, "const", True) for n in ("roi", "scales", "sizes"))),
    *(_onnx(k, Operand("xs", variadic=True)) for k in ("Max", "Min")),
    *(_onnx(k, Operand("a"), Operand("b")) for k in LOGIC), _onnx("Not", _X),
    _onnx("Where", Operand("cond"), Operand("a"), Operand("b")),
    _onnx("BatchNormalization", _X, *_BN),
    *(_onnx(k, _X) for k in ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "MaxPool",
                             "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten",
                             "Transpose", "Softmax", "LRN")),
    _onnx("Clip", _X, Operand("min", "const", True), Operand("max", "const", True)),
    *(_onnx(k, Operand("a"), Operand("b")) for k in ("Add", "Sub", "Mul", "Div")),
    _onnx("Sum", Operand("xs", variadic=True)), _onnx("Concat", Operand("xs", variadic=True)),
    _onnx("Reshape", _X, Operand("shape", "const")),
    _onnx("Squeeze", _X, Operand("axes", "const", True)),
    _onnx("Unsqueeze", _X, Operand("axes", "const")),
    _onnx("Pad", _X, Operand("pads", "const"), Operand("value", "const", True),
          Operand("axes", "const", True)),
    _onnx("Identity", _X, rewrite="drop"),
    _onnx("Dropout", _X, Operand("ratio", "const", True), Operand("training", "const", True),
          rewrite="drop"),
    _onnx("Shape", _X, rewrite="fold"), _onnx("Constant", rewrite="fold"),
    _onnx("ConstantOfShape", Operand("shape", "const"), rewrite="fold"),
    # -- canonical: after canonicalize -------------------------------------------------------
    OpDef("conv", CANONICAL, (_X, _W, _B), (*_WINDOW, Attr("group", "int"), _ACT), S.conv,
          until=CANONICAL, bn_fold=(0, 1)),
    OpDef("matmul", CANONICAL, (_X, _W, _B), (_ACT,), S.matmul, until=CANONICAL, bn_fold=(1, -1)),
    OpDef("batchnorm", CANONICAL, (_X, *_BN), (Attr("epsilon", "float"),), S.batchnorm),
    _unary("relu"), _unary("sigmoid"), _unary("tanh"), _unary("leakyrelu", "alpha"),
    _unary("clip", "min", "max"), _unary("hardsigmoid", "alpha", "beta"),
    _binary("add"), _binary("sub"), _binary("mul"), _binary("div"), _binary("pow"),
    OpDef("gelu", CANONICAL, (_X,), (Attr("approximate", "str"),), S.same, "gelu",
          fusable=True),
    *(_unary(k, fusable=False) for k in ("erf", "sqrt", "reciprocal", "exp", "neg",
                                         *MATH.values())),
    *(_unary(k, *attrs) for k, attrs in ACTIVATIONS.items()),
    _binary("max"), _binary("min"), _binary("prelu"),
    *(_binary(k) for k in LOGIC.values()),
    *(_unary(k, fusable=False) for k in ("not", "tobool")),
    OpDef("where", CANONICAL, (Operand("cond"), Operand("a"), Operand("b")), (), S.broadcast,
          "where"),
    OpDef("layernorm", CANONICAL, (_X, Operand("scale", "const"), Operand("bias", "const")),
          (Attr("axis", "int"), Attr("epsilon", "float")), S.layernorm, "layernorm"),
    OpDef("rmsnorm", CANONICAL, (_X, Operand("scale", "const")),
          (Attr("axis", "int"), Attr("epsilon", "float")), S.layernorm, "rmsnorm"),
    *(OpDef(k, CANONICAL, (_X,), (Attr("axes", "ints"), Attr("keepdims", "int")), S.reduce, k)
      for k in (*ONNX_REDUCTIONS.values(), *ONNX_ARGS.values())),
    OpDef("slice", CANONICAL, (_X,), tuple(Attr(a, "ints") for a in ("starts", "ends",
                                                                     "steps")),
          S.sliced, "slice"),
    OpDef("gather", CANONICAL, (Operand("data"), Operand("indices")), (Attr("axis", "int"),),
          S.gather, "gather"),
    OpDef("dynmatmul", CANONICAL, (Operand("a"), Operand("b")), (), S.dynmatmul,
          until=CANONICAL),
    OpDef("maxpool", CANONICAL, (_X,), (*_WINDOW, Attr("ceil", "int")), S.pool, "maxpool"),
    OpDef("avgpool", CANONICAL, (_X,), (*_WINDOW, Attr("ceil", "int"), Attr("count_pad", "int")),
          S.pool, "avgpool"),
    OpDef("gavgpool", CANONICAL, (_X,), (), S.global_pool, "gavgpool"),
    OpDef("gmaxpool", CANONICAL, (_X,), (), S.global_pool, "gmaxpool"),
    OpDef("reshape", CANONICAL, (_X,), (), S.reshape, "reshape"),
    OpDef("transpose", CANONICAL, (_X,), (Attr("perm", "ints"),), S.transpose, "transpose"),
    OpDef("concat", CANONICAL, (Operand("xs", variadic=True),), (Attr("axis", "int"),),
          S.concat, "concat"),
    OpDef("pad", CANONICAL, (_X,), (Attr("pads", "ints"), Attr("mode", "str"),
                                    Attr("value", "float")), S.pad, "pad"),
    *(OpDef(k, CANONICAL, (_X,), (Attr("axis", "int"),), S.axis, k)
      for k in ("softmax", "logsoftmax")),
    OpDef("lrn", CANONICAL, (_X,), (Attr("size", "int"), *(Attr(a, "float") for a in
                                                          ("alpha", "beta", "bias"))),
          S.same, "lrn"),
    OpDef("copy", CANONICAL, (_X,), (), S.copy, "copy"),
    OpDef("interp", CANONICAL, (_X, Operand("index", "const"), Operand("weight", "const")),
          (Attr("axis", "int"),), S.interp, "interp"),
    # -- crossbar: after lower-to-crossbar (and basis-decompose) ------------------------------
    OpDef("im2col", CROSSBAR, (_X,), (*_WINDOW, Attr("perm", "ints", False)), S.im2col,
          "im2col"),
    OpDef("xbar_matmul", CROSSBAR, (_X, _W, _B),
          (Attr("tiles", "tiles"), _ACT, Attr("placement", "placement", False),
           Attr("resident", "flags", False), Attr("chunks", "chunks", False)), S.xbar_matmul),
    OpDef("digital_matmul", CROSSBAR, (_X, _W, _B), (_ACT,), S.matmul),  # dmatmul + act
    OpDef("dyn_digital", CROSSBAR, (Operand("a"), Operand("b")), (), S.dynmatmul, "dbmm"),
    OpDef("dyn_write", CROSSBAR, (Operand("a"), Operand("b")), (Attr("xbs", "ints", False),),
          S.dynmatmul, "wbmm"),
    OpDef("unpatch", CROSSBAR, (_X,), (Attr("perm", "ints", False),), S.unpatch, "unpatch"),
    OpDef("permute", CROSSBAR, (_X, Operand("perm", "const")), (), S.same, "permute"),
    OpDef("basis_project", CROSSBAR, (_X, Operand("tile", "const")),
          (Attr("unit", "int"), Attr("copies", "int"), Attr("groups", "int"),
           Attr("placement", "work", False)), S.basis_project),
    OpDef("combine", CROSSBAR, (Operand("proj"), Operand("levels", "const"),
                                Operand("scale", "const"), _B),
          (Attr("bits", "int"), Attr("unit", "int"), _ACT,
           *(Attr(a, "float", False) for a in ("rel_err", "sparsity", "contest"))), S.combine),
]

OPS: dict[str, OpDef] = {row.name: row for row in _TABLE}

# An ONNX operator outside the table: one that folds away in canonicalize (its inputs are
# constants, or its output is a Shape of a static tensor); the frontend refuses any other.
ONNX_NODE = OpDef("onnx", ONNX, (Operand("inputs", optional=True, variadic=True),), None,
                  None, until=ONNX, rewrite="fold")

FUSABLE = frozenset(k for k, row in OPS.items() if row.fusable)


def lookup(op) -> OpDef | None:
    """The row of ``op`` (an ``ir.Op``): its kind's, ``ONNX_NODE`` for an ONNX node outside the
    table (it carries a NodeProto of its kind), else None (an unknown kind)."""
    row = OPS.get(op.kind)
    if row is None and getattr(op.proto, "op_type", None) == op.kind:
        return ONNX_NODE
    return row


def level_of(op) -> str | None:
    """The dialect of ``op``'s kind, None for an unknown kind."""
    row = lookup(op)
    return row.level if row else None


def attr_problem(row: OpDef, attrs: dict) -> str | None:
    """The first way ``attrs`` break ``row``'s schema (an unknown, missing or ill-typed
    attribute; a fused activation is checked against its own row), or None."""
    if row.attrs is None:
        return None
    schema = {a.name: a for a in row.attrs}
    unknown = [k for k in attrs if not k.startswith("_") and k not in schema]
    if unknown:
        return f"unknown attribute {unknown[0]} (the schema has: {', '.join(schema) or 'none'})"
    for a in row.attrs:
        value = attrs.get(a.name)
        if value is None:
            if a.required:
                return f"missing attribute {a.name} ({ATTR_TYPES[a.type][1]})"
            continue
        check, wants = ATTR_TYPES[a.type]
        if not check(value):
            return f"attribute {a.name} must be {wants}, got {value!r}"
        if a.type == "act" and (why := _act_problem(Act(*value))):
            return f"attribute act: {why}"
    return None


def _act_problem(act: Act) -> str | None:
    row = OPS.get(act.kind)
    if row is None or not row.fusable:
        return f"{act.kind} is not a fusable activation ({', '.join(sorted(FUSABLE))})"
    return attr_problem(row, act.attrs)
