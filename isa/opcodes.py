"""The crossbar ISA, declared once.

Every opcode is one row of ``OPCODES``: its mnemonic, the operands it takes (in order), the
attributes it accepts (with their value types), and the hardware unit it occupies. The parser,
printer, verifier and the runtime's interpreter all read this table; nothing else in the code
base knows which opcodes exist.

Operand kinds:
  ``dst``   a buffer the instruction writes (``%name``)
  ``src``   a buffer or a data blob it reads (``%name`` or ``@name``)
  ``src*``  one or more such sources (variadic, only as the last operand)
  ``blob``  a data blob (``@name``)

Attribute types: ``int``, ``float``, ``ints`` (a list of ints), ``str`` (a quoted string).

Units: ``xbar`` (the crossbar named by ``xb``), ``write`` (that crossbar and a write driver),
``vector`` (the vector unit), ``buffer`` (the scratchpad port: data movement), ``combiner``
(BasisN's coefficient unit beside the crossbars), ``control``.
What each costs, in time and energy, is ``isa.timing.COSTS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Opcode:
    mnemonic: str
    operands: tuple[str, ...]
    attrs: dict[str, str] = field(default_factory=dict)
    unit: str = "vector"
    doc: str = ""

    @property
    def variadic(self) -> bool:
        return bool(self.operands) and self.operands[-1] == "src*"


_WINDOW = {"kernel": "ints", "strides": "ints", "pads": "ints", "dilations": "ints"}

_TABLE = [
    Opcode("write", ("blob",), {"xb": "int", "rows": "ints", "cols": "ints"}, "write",
           "program crossbar xb with the blob window [rows[0]:rows[1], cols[0]:cols[1]]"),
    Opcode("mvm", ("dst", "src"), {"xb": "int", "rows": "ints", "cols": "ints", "vecs": "ints"},
           "xbar", "with src viewed as [B, V, K] and dst as [B, V, N]: dst[:, vecs, cols] += "
           "src[:, vecs, rows] @ tile(xb); rows/cols are the tile's window, vecs the input "
           "vectors this crossbar processes (replicas of a tile split them)"),
    Opcode("combine", ("dst", "src", "blob", "blob"), {"bits": "int", "unit": "int"},
           "combiner", "BasisN: with proj viewed as [B, V, J] and dst as [B, V, M]: dst += "
           "proj @ (levels * scale), levels [J, M] integers within 2**(bits-1)-1, scale [M]; "
           "J is units x unit basis columns. The combiner adds each unit's selected "
           "projections one coefficient bit-plane at a time (cost: isa.timing)"),
    Opcode("fill", ("dst",), {"value": "float"}, "buffer", "dst[...] = value"),
    Opcode("im2col", ("dst", "src"), dict(_WINDOW), "buffer",
           "src [B,C,*S] -> patches [B, prod(out S), C*prod(kernel)], zero padded"),
    Opcode("unpatch", ("dst", "src"), {}, "buffer", "[B, P, M] -> [B, M, *S] (dst shape)"),
    Opcode("add", ("dst", "src", "src"), {}, "vector", "broadcasting a + b"),
    Opcode("sub", ("dst", "src", "src"), {}, "vector", "broadcasting a - b"),
    Opcode("mul", ("dst", "src", "src"), {}, "vector", "broadcasting a * b"),
    Opcode("div", ("dst", "src", "src"), {}, "vector", "broadcasting a / b"),
    Opcode("relu", ("dst", "src"), {}, "vector", "max(x, 0)"),
    Opcode("leakyrelu", ("dst", "src"), {"alpha": "float"}, "vector", "x if x >= 0 else alpha x"),
    Opcode("clip", ("dst", "src"), {"min": "float", "max": "float"}, "vector", "clamp"),
    Opcode("sigmoid", ("dst", "src"), {}, "vector", "1 / (1 + exp(-x))"),
    Opcode("tanh", ("dst", "src"), {}, "vector", "tanh(x)"),
    Opcode("hardsigmoid", ("dst", "src"), {"alpha": "float", "beta": "float"}, "vector",
           "max(0, min(1, alpha x + beta))"),
    Opcode("maxpool", ("dst", "src"), {**_WINDOW, "ceil": "int"}, "vector",
           "max over windows; pads are -inf"),
    Opcode("avgpool", ("dst", "src"), {**_WINDOW, "ceil": "int", "count_pad": "int"}, "vector",
           "mean over windows; count_pad counts explicit padding in the divisor"),
    Opcode("gavgpool", ("dst", "src"), {}, "vector", "mean over all spatial axes"),
    Opcode("gmaxpool", ("dst", "src"), {}, "vector", "max over all spatial axes"),
    Opcode("reshape", ("dst", "src"), {}, "buffer", "same data, dst's shape"),
    Opcode("transpose", ("dst", "src"), {"perm": "ints"}, "buffer", "axis permutation"),
    Opcode("concat", ("dst", "src*"), {"axis": "int"}, "buffer", "join along axis"),
    Opcode("pad", ("dst", "src"), {"pads": "ints", "mode": "str", "value": "float"}, "buffer",
           "ONNX Pad: pads = begins then ends; mode constant|reflect|edge|wrap"),
    Opcode("softmax", ("dst", "src"), {"axis": "int"}, "vector", "softmax along axis"),
    Opcode("lrn", ("dst", "src"), {"size": "int", "alpha": "float", "beta": "float",
                                   "bias": "float"}, "vector", "local response normalisation"),
    Opcode("copy", ("dst", "src"), {}, "buffer", "dst = src (broadcast to dst's shape)"),
    Opcode("barrier", (), {"label": "str"}, "control",
           "starts when every earlier instruction has ended; later ones start after it. "
           "label=\"inference\" ends the load phase"),
    Opcode("halt", (), {}, "control", "end of program"),
]

OPCODES: dict[str, Opcode] = {op.mnemonic: op for op in _TABLE}
