"""Generate encoder-only transformers (ViT, BERT) as ONNX with seeded random weights (no download).

    python -m tools.make_transformers [--out models/zoo] [--only vit-tiny] [--seed 0]
                                      [--opset 17] [--depth L]

Graphs are built with onnx.helper in the forms torch's TorchScript exporter emits for the usual
PyTorch code (compare tools/make_digits_vit.py): ``nn.Linear`` on tokens is MatMul with a constant
[in, out] weight then Add(bias, .), on a [N, D] vector it is Gemm (transB=1); attention is Reshape
to [B, S, H, Dh] with the shape computed by Shape/Gather/Unsqueeze/Concat, Transpose (K straight
to [B, H, Dh, S]), MatMul of two dynamic operands, Mul (ViT) or Div (BERT) by sqrt(Dh), Softmax
on the last axis, MatMul with V, Transpose and Reshape back; GELU is the exact Erf form (Div by
sqrt 2, Erf, Add 1, Mul, Mul 0.5), or the Gelu op at opset >= 20 with ``gelu_op``; LayerNorm is
LayerNormalization at opset >= 17 and decomposed (ReduceMean, Sub, Pow 2, ReduceMean, Add eps,
Sqrt, Div, Mul gamma, Add beta) below; scalars are Constant nodes. With a static ``batch`` the
shape computations are constants, as torch's constant folding leaves them. The IR version is
the lowest the opset allows (7 for opset 13, 8 for 17), as torch writes it.

ViT (``vit``): input "image" float32 [N, C, H, W]; patch embedding Conv (kernel = stride = patch),
Reshape + Transpose to tokens, a class token Expanded to the batch and Concat'ed in front, position
embedding Add, pre-norm blocks, final LayerNorm, the class token (Gather axis 1) and a Gemm head:
output "logits" [N, classes]. BERT (``bert``): inputs "input_ids" int64 [N, S] and
"attention_mask" float32 [N, S] (1 = token, 0 = padding); word, position (constant position ids)
and token-type (constant zero ids) embedding Gathers, Add, LayerNorm; the extended mask
(1 - mask) * -10000 Unsqueeze'd to [N, 1, 1, S] is added to every block's scores; post-norm
blocks; the pooler (first token, Gemm, Tanh) and a Gemm classifier: output "logits"
[N, classes] (the last hidden state is not an output).

Weights are N(0, 0.02) (BERT's initialisation), LayerNorm gamma 1 + N(0, 0.1), biases, beta and
the class token N(0, 0.02). Configurations: ``VIT`` and ``BERT``; ``--depth`` (or ``depth=`` and
any other key as a keyword of ``build``) overrides one for fast tests. bert-base is ~440 MB.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tools.make_zoo import generator_parser, save_new

VIT = {
    "vit-tiny": dict(image=224, patch=16, dim=192, depth=12, heads=3, mlp=768, classes=1000,
                     channels=3),
    "vit-small": dict(image=224, patch=16, dim=384, depth=12, heads=6, mlp=1536, classes=1000,
                      channels=3),
    "vit-digits": dict(image=8, patch=2, dim=64, depth=3, heads=4, mlp=128, classes=10,
                       channels=1),
}
BERT = {
    "bert-tiny": dict(vocab=30522, seq=128, dim=128, depth=2, heads=2, mlp=512, classes=2),
    "bert-base": dict(vocab=30522, seq=128, dim=768, depth=12, heads=12, mlp=3072, classes=2),
}
NAMES = [*VIT, *BERT]
STD = 0.02


class Builder:
    """Appends nodes and initializers; every helper returns the name of its output. ``batch`` is
    a symbolic name (shapes computed at run time from Shape) or an int (constant shapes);
    ``gelu_op`` writes GELU as the Gelu op (opset >= 20) instead of its Erf form."""

    def __init__(self, seed: int, opset: int, batch: str | int, gelu_op: bool = False):
        if gelu_op and opset < 20:
            raise ValueError(f"the Gelu op needs opset >= 20, not {opset}")
        self.rng = np.random.default_rng(seed)
        self.opset, self.batch, self.gelu_op = opset, batch, gelu_op
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def op(self, kind: str, inputs: list[str], scope: str = "", **attrs) -> str:
        self.count += 1
        name = f"{scope}/{kind}_{self.count}"
        self.nodes.append(helper.make_node(kind, inputs, [f"{name}_output"], name=name, **attrs))
        return f"{name}_output"

    def const(self, value, dtype=np.float32, scope: str = "") -> str:
        """A Constant node holding ``value`` (a scalar stays 0-d)."""
        return self.op("Constant", [], scope, value=numpy_helper.from_array(
            np.asarray(value, dtype)))

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def normal(self, name: str, shape, mean: float = 0.0, std: float = STD) -> str:
        return self.init(name, (mean + std * self.rng.standard_normal(shape, np.float32))
                         .astype(np.float32))

    def shape(self, x: str, lead: list, tail: list[int], scope: str) -> str:
        """The 1-D int64 shape ``lead + tail``: the leading dims read from ``x`` (torch's
        ``x.shape[i]``: Shape, Gather, Unsqueeze, then Concat with the constant tail), or one
        constant when the batch is static (``lead`` then holds their sizes)."""
        if not isinstance(self.batch, str):
            return self.const([self.batch, *lead[1:], *tail], np.int64, scope)
        dims = [self.op("Unsqueeze", [self.op("Gather", [self.op("Shape", [x], scope),
                                                         self.const(i, np.int64, scope)],
                                              scope, axis=0),
                                      self.const([0], np.int64, scope)], scope)
                for i in range(len(lead))]
        return self.op("Concat", dims + [self.const([t], np.int64, scope) for t in tail], scope,
                       axis=0)

    def linear(self, x: str, din: int, dout: int, name: str) -> str:
        """Tokens [.., din] -> [.., dout]: MatMul by a constant [din, dout], Add(bias, .)."""
        scope = "/" + name.replace(".", "/")
        y = self.op("MatMul", [x, self.normal(f"{name}.weight", (din, dout))], scope)
        return self.op("Add", [self.normal(f"{name}.bias", dout), y], scope)

    def gemm(self, x: str, din: int, dout: int, name: str, out: str | None = None) -> str:
        """A vector [N, din] -> [N, dout] (named ``out`` if given): Gemm with a [dout, din]
        weight (transB=1)."""
        w, b = self.normal(f"{name}.weight", (dout, din)), self.normal(f"{name}.bias", dout)
        y = self.op("Gemm", [x, w, b], "/" + name, alpha=1.0, beta=1.0, transB=1)
        if out:
            self.nodes[-1].output[0] = y = out
        return y

    def layernorm(self, x: str, dim: int, eps: float, name: str) -> str:
        scope = "/" + name.replace(".", "/")
        gamma = self.normal(f"{name}.weight", dim, mean=1.0, std=0.1)
        beta = self.normal(f"{name}.bias", dim)
        if self.opset >= 17:
            return self.op("LayerNormalization", [x, gamma, beta], scope, axis=-1, epsilon=eps)
        mean = self.op("ReduceMean", [x], scope, axes=[-1])
        d = self.op("Sub", [x, mean], scope)
        var = self.op("ReduceMean", [self.op("Pow", [d, self.const(2.0, scope=scope)], scope)],
                      scope, axes=[-1])
        std = self.op("Sqrt", [self.op("Add", [var, self.const(eps, scope=scope)], scope)], scope)
        y = self.op("Mul", [self.op("Div", [d, std], scope), gamma], scope)
        return self.op("Add", [y, beta], scope)

    def gelu(self, x: str, scope: str) -> str:
        if self.gelu_op:
            return self.op("Gelu", [x], scope)
        e = self.op("Erf", [self.op("Div", [x, self.const(np.sqrt(2.0), scope=scope)], scope)],
                    scope)
        y = self.op("Mul", [x, self.op("Add", [e, self.const(1.0, scope=scope)], scope)], scope)
        return self.op("Mul", [y, self.const(0.5, scope=scope)], scope)

    def attention(self, x: str, c: dict, name: str, mask: str | None, div: bool) -> str:
        """Multi-head self-attention of tokens ``x`` [B, S, D]; ``mask`` broadcasts to the
        scores [B, H, S, S]; the scores are divided (``div``) or multiplied by sqrt(Dh)."""
        scope = "/" + name.replace(".", "/")
        d, h, s = c["dim"], c["heads"], c["tokens"]
        dh = d // h
        heads = {}
        for p in "qkv":
            y = self.linear(x, d, d, f"{name}.{p}")
            y = self.op("Reshape", [y, self.shape(y, [self.batch, s], [h, dh], scope)], scope)
            heads[p] = self.op("Transpose", [y], scope, perm=[0, 2, 3, 1] if p == "k"
                               else [0, 2, 1, 3])
        scores = self.op("MatMul", [heads["q"], heads["k"]], scope)
        scores = (self.op("Div", [scores, self.const(np.sqrt(dh), scope=scope)], scope) if div
                  else self.op("Mul", [scores, self.const(dh ** -0.5, scope=scope)], scope))
        if mask is not None:
            scores = self.op("Add", [scores, mask], scope)
        y = self.op("MatMul", [self.op("Softmax", [scores], scope, axis=-1), heads["v"]], scope)
        y = self.op("Transpose", [y], scope, perm=[0, 2, 1, 3])
        y = self.op("Reshape", [y, self.shape(x, [self.batch, s], [d], scope)], scope)
        return self.linear(y, d, d, f"{name}.proj")

    def mlp(self, x: str, c: dict, name: str) -> str:
        y = self.linear(x, c["dim"], c["mlp"], f"{name}.fc1")
        y = self.gelu(y, "/" + name.replace(".", "/") + "/act")
        return self.linear(y, c["mlp"], c["dim"], f"{name}.fc2")

    def pre_norm_block(self, x: str, c: dict, i: int) -> str:
        p = f"blocks.{i}"
        y = self.attention(self.layernorm(x, c["dim"], 1e-6, f"{p}.norm1"), c, f"{p}.attn",
                           None, div=False)
        x = self.op("Add", [x, y], f"/{p}")
        y = self.mlp(self.layernorm(x, c["dim"], 1e-6, f"{p}.norm2"), c, f"{p}.mlp")
        return self.op("Add", [x, y], f"/{p}")

    def post_norm_block(self, x: str, c: dict, i: int, mask: str) -> str:
        p = f"encoder.layer.{i}"
        y = self.attention(x, c, f"{p}.attention", mask, div=True)
        x = self.layernorm(self.op("Add", [y, x], f"/{p}"), c["dim"], 1e-12, f"{p}.norm1")
        y = self.mlp(x, c, f"{p}.mlp")
        return self.layernorm(self.op("Add", [y, x], f"/{p}"), c["dim"], 1e-12, f"{p}.norm2")

    def first_token(self, x: str) -> str:
        """[N, S, D] -> [N, D], torch's ``x[:, 0]``."""
        return self.op("Gather", [x, self.const(0, np.int64)], axis=1)


def _vit_graph(b: Builder, c: dict) -> str:
    d, patch = c["dim"], c["patch"]
    patches = (c["image"] // patch) ** 2
    c["tokens"] = patches + 1
    w = b.normal("patch_embed.weight", (d, c["channels"], patch, patch))
    x = b.op("Conv", ["image", w, b.normal("patch_embed.bias", d)], "/patch_embed",
             kernel_shape=[patch, patch], strides=[patch, patch], pads=[0, 0, 0, 0])
    x = b.op("Reshape", [x, b.shape(x, [b.batch, d], [-1], "/patch_embed")])
    x = b.op("Transpose", [x], perm=[0, 2, 1])
    cls = b.op("Expand", [b.normal("cls_token", (1, 1, d)), b.shape(x, [b.batch], [1, d], "")])
    x = b.op("Concat", [cls, x], axis=1)
    x = b.op("Add", [x, b.normal("pos_embed", (1, patches + 1, d))])
    for i in range(c["depth"]):
        x = b.pre_norm_block(x, c, i)
    x = b.first_token(b.layernorm(x, d, 1e-6, "norm"))
    return b.gemm(x, d, c["classes"], "head", "logits")


def _bert_graph(b: Builder, c: dict) -> str:
    d, s = c["dim"], c["seq"]
    c["tokens"] = s
    x = b.op("Gather", [b.normal("embeddings.word_embeddings.weight", (c["vocab"], d)),
                        "input_ids"], "/embeddings/word_embeddings")
    ids = b.init("embeddings.position_ids", np.arange(s, dtype=np.int64)[None])
    pos = b.op("Gather", [b.normal("embeddings.position_embeddings.weight", (s, d)), ids],
               "/embeddings/position_embeddings")
    x = b.op("Add", [x, pos], "/embeddings")
    types = b.op("Gather", [b.normal("embeddings.token_type_embeddings.weight", (2, d)),
                            b.const(np.zeros((1, s)), np.int64)],
                 "/embeddings/token_type_embeddings")
    x = b.layernorm(b.op("Add", [x, types], "/embeddings"), d, 1e-12, "embeddings.LayerNorm")
    mask = b.op("Unsqueeze", ["attention_mask", b.const([1], np.int64)])
    mask = b.op("Unsqueeze", [mask, b.const([2], np.int64)])
    mask = b.op("Mul", [b.op("Sub", [b.const(1.0), mask]), b.const(-10000.0)])
    for i in range(c["depth"]):
        x = b.post_norm_block(x, c, i, mask)
    x = b.op("Tanh", [b.gemm(b.first_token(x), d, d, "pooler.dense")], "/pooler")
    return b.gemm(x, d, c["classes"], "classifier", "logits")


def _inputs(kind: str, c: dict, batch) -> list[onnx.ValueInfoProto]:
    if kind == "vit":
        return [helper.make_tensor_value_info(
            "image", TensorProto.FLOAT, [batch, c["channels"], c["image"], c["image"]])]
    return [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, c["seq"]]),
            helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, [batch, c["seq"]])]


def _model(kind: str, config, seed: int, opset: int, batch, gelu_op: bool) -> onnx.ModelProto:
    table = VIT if kind == "vit" else BERT
    c = dict(table[config]) if isinstance(config, str) else {**next(iter(table.values())), **config}
    b = Builder(seed, opset, batch, gelu_op)
    (_vit_graph if kind == "vit" else _bert_graph)(b, c)
    name = config if isinstance(config, str) else kind
    graph = helper.make_graph(
        b.nodes, name, _inputs(kind, c, batch),
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, c["classes"]])],
        b.inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="tools.make_transformers",
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model, full_check=True)
    return model


def vit(config, seed: int = 0, opset: int = 17, batch="N", gelu_op: bool = False):
    """A ViT as an onnx.ModelProto; ``config`` is a name in ``VIT`` or a dict of keys that
    override vit-tiny's (e.g. ``dict(image=16, patch=4, dim=32, depth=2)``)."""
    return _model("vit", config, seed, opset, batch, gelu_op)


def bert(config, seed: int = 0, opset: int = 17, batch="N", gelu_op: bool = False):
    """A BERT encoder with a pooler and classifier as an onnx.ModelProto; ``config`` is a name
    in ``BERT`` or a dict of keys that override bert-tiny's."""
    return _model("bert", config, seed, opset, batch, gelu_op)


def build(name: str, seed: int = 0, opset: int = 17, batch="N", gelu_op: bool = False,
          **overrides) -> onnx.ModelProto:
    """The model ``name`` (in ``NAMES``) with ``overrides`` (e.g. ``depth=2``) of its config."""
    kind = "vit" if name in VIT else "bert"
    model = _model(kind, {**(VIT if kind == "vit" else BERT)[name], **overrides}, seed, opset,
                   batch, gelu_op)
    model.graph.name = name
    return model


def filename(name: str, seed: int = 0, opset: int = 17, depth: int | None = None) -> str:
    """``<name>.onnx`` for the defaults, else with ``-op<opset>``, ``-depth<L>``, ``-seed<s>``."""
    return (name + ("" if opset == 17 else f"-op{opset}")
            + ("" if depth is None else f"-depth{depth}") + ("" if seed == 0 else f"-seed{seed}")
            + ".onnx")


def ensure(name: str, directory: str, seed: int = 0, opset: int = 17,
           depth: int | None = None) -> str:
    """Path of the model in ``directory`` (``filename``), generating it if it is not there."""
    overrides = {} if depth is None else {"depth": depth}
    return save_new(os.path.join(directory, filename(name, seed, opset, depth)),
                    lambda: build(name, seed, opset, **overrides))


def main(argv=None) -> None:
    p = generator_parser(__doc__, NAMES)
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (13: decomposed LayerNorm)")
    p.add_argument("--depth", type=int, help="number of blocks (default: the config's)")
    args = p.parse_args(argv)
    for name in args.only or NAMES:
        path = ensure(name, args.out, args.seed, args.opset, args.depth)
        params = sum(int(np.prod(t.dims)) for t in onnx.load(path, load_external_data=False)
                     .graph.initializer if t.data_type == TensorProto.FLOAT)
        print(f"{path}: {params / 1e6:.2f} M parameters, {os.path.getsize(path) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
