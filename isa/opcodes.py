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
  ``blob?`` a data blob that may be left out (only as the last operand)

Attribute types: ``int``, ``float``, ``ints`` (a list of ints), ``str`` (a quoted string).
An instruction carries every attribute of its row except those the row lists as ``optional``.

Units: ``xbar`` (the crossbar named by ``xb``), ``write`` (that crossbar and a write driver),
``vector`` (the vector unit), ``buffer`` (the scratchpad port: data movement), ``combiner``
(BasisN's coefficient unit beside the crossbars), ``digital`` (the digital MAC unit, its own
weight SRAM), ``dynamic`` (the crossbars reserved for operands computed per inference, and
their write drivers), ``control``.
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
    optional: tuple[str, ...] = ()  # attributes an instruction may leave out

    @property
    def required(self) -> set[str]:
        """The attributes every instruction of this opcode must carry."""
        return set(self.attrs) - set(self.optional)

    @property
    def variadic(self) -> bool:
        return bool(self.operands) and self.operands[-1] == "src*"

    @property
    def arity(self) -> tuple[int, int | None]:
        """(least, most) operands: an optional (``?``) last one may be left out; most is None
        for a variadic opcode."""
        least = sum(not kind.endswith("?") for kind in self.operands)
        return least, None if self.variadic else len(self.operands)

    def kind(self, i: int) -> str:
        """The kind of operand ``i`` without its ``?`` or ``*`` (a variadic one repeats)."""
        return self.operands[min(i, len(self.operands) - 1)].rstrip("?*")


# Reductions over a list of axes (one row each below), and what each computes.
REDUCTIONS = {"reducemean": "mean", "reducesum": "sum", "reducemax": "maximum",
              "reducemin": "minimum", "reduceprod": "product", "reducel1": "sum of |x|",
              "reducel2": "sqrt of the sum of x^2", "reducesumsquare": "sum of x^2",
              "reducelogsum": "log of the sum", "reducelogsumexp": "log of the sum of exp(x)",
              "argmax": "the index of the first maximum (one axis; float32 integers)",
              "argmin": "the index of the first minimum (one axis; float32 integers)"}

_WINDOW = {"kernel": "ints", "strides": "ints", "pads": "ints", "dilations": "ints"}

_TABLE = [
    Opcode("write", ("blob",), {"xb": "int", "rows": "ints", "cols": "ints", "low_slices": "int",
                                "low_write": "float", "low_seed": "int"}, "write",
           "program crossbar xb with the blob window [rows[0]:rows[1], cols[0]:cols[1]]: the "
           "cells whose digit changes. Bit stucking (optional, all three or none; only after "
           "barrier label=\"inference\"): in the low_slices lowest-order slices only a random "
           "fraction low_write of those cells, chosen by (low_seed, xb, the crossbar's n-th "
           "write); the others keep their digit (isa.cells.LowWrite)",
           optional=("low_slices", "low_write", "low_seed")),
    Opcode("mvm", ("dst", "src"), {"xb": "int", "rows": "ints", "cols": "ints", "vecs": "ints"},
           "xbar", "with src viewed as [B, V, K] and dst as [B, V, N]: dst[:, vecs, cols] += "
           "src[:, vecs, rows] @ tile(xb); rows/cols are the tile's window, vecs the input "
           "vectors this crossbar processes (replicas of a tile split them)"),
    Opcode("combine", ("dst", "src", "blob", "blob"), {"bits": "int", "unit": "int"},
           "combiner", "BasisN: with proj viewed as [B, V, J] and dst as [B, V, M]: dst += "
           "proj @ (levels * scale), levels [J, M] integers within 2**(bits-1)-1, scale [M]; "
           "J is units x unit basis columns. The combiner adds each unit's selected "
           "projections one coefficient bit-plane at a time (cost: isa.timing)"),
    Opcode("dmatmul", ("dst", "src", "blob", "blob?"), {}, "digital",
           "digital MAC unit: with src viewed as [B, V, K] and dst as [B, V, M]: dst = src @ "
           "weight (+ bias), weight [K, M], bias [M]. Ideal mode: float32. Quantized and "
           "analog modes: weights at weight_bits, rounded with a symmetric scale per output "
           "column as a crossbar write rounds them; inputs at input_bits a sign, against the "
           "range a crossbar's DAC would use (the buffer's calibrated range, else each "
           "sample's maximum); exact integer accumulation; no ADC and no noise "
           "(runtime.digital; cost: isa.timing.dmatmul_cost)"),
    Opcode("fill", ("dst",), {"value": "float"}, "buffer", "dst[...] = value"),
    Opcode("permute", ("dst", "src", "blob"), {}, "buffer",
           "dst[..., i] = src[..., perm[i]]: a gather along the last axis by the blob perm, "
           "a permutation of 0..n-1 (float32 integers); weight sorting's input and output "
           "order (compiler/passes/sort_weights.py)"),
    Opcode("im2col", ("dst", "src"), {**_WINDOW, "perm": "ints"}, "buffer",
           "src [B,C,*S] -> patches [B, prod(out S), C*prod(kernel)], zero padded; perm "
           "(optional): the patch positions in that order, dst[..., i] = patches[..., "
           "perm[i]] (weight sorting's row order, at no extra cost)", optional=("perm",)),
    Opcode("unpatch", ("dst", "src"), {"perm": "ints"}, "buffer",
           "[B, P, M] -> [B, M, *S] (dst shape); perm (optional): channel i of dst is column "
           "perm[i] of src (weight sorting's column order, at no extra cost)",
           optional=("perm",)),
    Opcode("add", ("dst", "src", "src"), {}, "vector", "broadcasting a + b"),
    Opcode("sub", ("dst", "src", "src"), {}, "vector", "broadcasting a - b"),
    Opcode("mul", ("dst", "src", "src"), {}, "vector", "broadcasting a * b"),
    Opcode("div", ("dst", "src", "src"), {}, "vector", "broadcasting a / b"),
    Opcode("pow", ("dst", "src", "src"), {}, "vector", "broadcasting a ** b"),
    Opcode("relu", ("dst", "src"), {}, "vector", "max(x, 0)"),
    Opcode("gelu", ("dst", "src"), {"approximate": "str"}, "vector",
           "x Phi(x): approximate \"none\" (erf) or \"tanh\""),
    Opcode("erf", ("dst", "src"), {}, "vector", "the error function"),
    Opcode("sqrt", ("dst", "src"), {}, "vector", "square root"),
    Opcode("reciprocal", ("dst", "src"), {}, "vector", "1 / x"),
    Opcode("exp", ("dst", "src"), {}, "vector", "e ** x"),
    Opcode("neg", ("dst", "src"), {}, "vector", "-x"),
    *(Opcode(k, ("dst", "src"), {}, "vector", what) for k, what in (
        ("abs", "|x|"), ("log", "natural logarithm"), ("floor", "floor(x)"),
        ("ceil", "ceil(x)"), ("round", "x rounded, halves to even"), ("sign", "-1, 0 or 1"),
        ("sin", "sine"), ("cos", "cosine"),
        ("softplus", "log(1 + exp(x))"), ("softsign", "x / (1 + |x|)"),
        ("hardswish", "x max(0, min(1, x / 6 + 1 / 2))"), ("mish", "x tanh(softplus(x))"))),
    Opcode("elu", ("dst", "src"), {"alpha": "float"}, "vector",
           "x if x > 0 else alpha (exp(x) - 1)"),
    Opcode("selu", ("dst", "src"), {"alpha": "float", "gamma": "float"}, "vector",
           "gamma (x if x > 0 else alpha (exp(x) - 1))"),
    Opcode("celu", ("dst", "src"), {"alpha": "float"}, "vector",
           "max(0, x) + min(0, alpha (exp(x / alpha) - 1))"),
    Opcode("thresholdedrelu", ("dst", "src"), {"alpha": "float"}, "vector",
           "x if x > alpha else 0"),
    Opcode("shrink", ("dst", "src"), {"bias": "float", "lambd": "float"}, "vector",
           "x + bias if x < -lambd, x - bias if x > lambd, else 0"),
    Opcode("max", ("dst", "src", "src"), {}, "vector", "broadcasting max(a, b)"),
    Opcode("min", ("dst", "src", "src"), {}, "vector", "broadcasting min(a, b)"),
    Opcode("prelu", ("dst", "src", "src"), {}, "vector",
           "broadcasting x if x >= 0 else slope x (x, slope)"),
    *(Opcode(k, ("dst", "src", "src"), {}, "vector", f"broadcasting {what}, 1.0 or 0.0")
      for k, what in (("less", "a < b"), ("lessorequal", "a <= b"), ("greater", "a > b"),
                      ("greaterorequal", "a >= b"), ("equal", "a == b"),
                      ("and", "a and b (non-zero is true)"), ("or", "a or b"),
                      ("xor", "a xor b"))),
    Opcode("not", ("dst", "src"), {}, "vector", "1.0 where x is 0, else 0.0"),
    Opcode("tobool", ("dst", "src"), {}, "vector", "1.0 where x is not 0, else 0.0 (a cast "
           "to bool: booleans are float32 0 and 1)"),
    Opcode("where", ("dst", "src", "src", "src"), {}, "vector",
           "broadcasting a where cond is not 0, else b (cond, a, b)"),
    Opcode("layernorm", ("dst", "src", "src", "src"), {"axis": "int", "epsilon": "float"},
           "vector", "(x - mean) / sqrt(var + epsilon) * scale + bias over the axes from axis "
           "on (x, scale, bias)"),
    Opcode("rmsnorm", ("dst", "src", "src"), {"axis": "int", "epsilon": "float"}, "vector",
           "x / sqrt(mean(x^2) + epsilon) * scale over the axes from axis on (x, scale)"),
    *(Opcode(k, ("dst", "src"), {"axes": "ints", "keepdims": "int"}, "vector",
             f"{what} over axes")
      for k, what in REDUCTIONS.items()),
    Opcode("slice", ("dst", "src"), {"starts": "ints", "ends": "ints", "steps": "ints"},
           "buffer", "src[start:end:step] on every axis (end -1: past the front, for a "
           "negative step)"),
    Opcode("gather", ("dst", "src", "src"), {"axis": "int"}, "buffer",
           "take(data, indices, axis): indices non-negative integers held as floats "
           "(token ids, validated on input against the rows they index; an embedding table "
           "is a blob read from the weight store)"),
    Opcode("dbmm", ("dst", "src", "src"), {}, "digital",
           "digital MAC unit, both operands computed: dst = a @ b, a [..., M, K], b [..., K, "
           "N], leading axes broadcast. Ideal mode: float32. Quantized and analog modes: b "
           "per matrix as dmatmul's weights (weight_bits, a scale per column), a as its inputs "
           "(input_bits a sign, per sample), exact integer accumulation (runtime.dynamic; "
           "cost: isa.timing.dbmm_cost)"),
    Opcode("wbmm", ("dst", "src", "src"), {"xbs": "ints"}, "dynamic",
           "crossbars written per inference: dst = a @ b as dbmm, with every matrix b [K, N] "
           "programmed (program-and-verify, tiled to the crossbar) onto the crossbars xbs "
           "in turn and a's rows read through them as mvms. Quantized and analog modes: as "
           "write + mvm, analog with fresh programming noise at every inference "
           "(runtime.dynamic; cost, wear: isa.timing.wbmm_cost)"),
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
    Opcode("logsoftmax", ("dst", "src"), {"axis": "int"}, "vector",
           "log of softmax along axis (x - max - log sum exp(x - max))"),
    Opcode("lrn", ("dst", "src"), {"size": "int", "alpha": "float", "beta": "float",
                                   "bias": "float"}, "vector", "local response normalisation"),
    Opcode("copy", ("dst", "src"), {}, "buffer", "dst = src (broadcast to dst's shape)"),
    Opcode("interp", ("dst", "src", "blob", "blob"), {"axis": "int"}, "vector",
           "resampling along axis with blobs index and weight [out, taps] (indices as float32 "
           "integers): dst[..., o, ...] = sum over t of weight[o, t] src[..., index[o, t], "
           "...]; Resize's interpolation (compiler/resize.py) and ConvTranspose's zero "
           "insertion (compiler/conv_transpose.py), an axis at a time"),
    Opcode("barrier", (), {"label": "str"}, "control",
           "starts when every earlier instruction has ended; later ones start after it. "
           "label=\"inference\" ends the load phase"),
    Opcode("halt", (), {}, "control", "end of program"),
]

OPCODES: dict[str, Opcode] = {op.mnemonic: op for op in _TABLE}

# Vector opcodes by how their destination's shape follows from their sources (the verifier
# checks them so): that of their one source, or the sources' broadcast shape.
ELEMENTWISE = frozenset({
    "relu", "leakyrelu", "clip", "sigmoid", "tanh", "hardsigmoid", "erf", "sqrt",
    "reciprocal", "exp", "neg", "abs", "log", "floor", "ceil", "round", "sign", "sin", "cos",
    "elu", "selu", "celu", "softplus", "softsign", "hardswish", "mish", "thresholdedrelu",
    "shrink", "not", "tobool"})
BROADCASTING = frozenset({
    "add", "sub", "mul", "div", "pow", "max", "min", "prelu", "less", "lessorequal",
    "greater", "greaterorequal", "equal", "and", "or", "xor", "where"})
