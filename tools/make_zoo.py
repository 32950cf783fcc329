"""Generate ResNet-18/50 and DenseNet-121 ONNX models with seeded random weights (no download).

    python -m tools.make_zoo [--out models/zoo] [--only resnet50-imagenet] [--seed 0]

Variants: ImageNet (1x3x224x224 input, 1000 classes, 7x7/2 stem conv + max pool) and CIFAR-100
(1x3x32x32, 100 classes, 3x3 stem, no stem pool). Convolutions are He-initialised
(normal, std sqrt(2 / fan_in)); every conv is followed by an explicit BatchNormalization node
with non-trivial statistics (gamma in [0.5, 1.5], beta and mean ~ N(0, 0.1), var in [0.5, 1.5]);
the last BN of each residual branch has a small gamma, as zero-init-residual training leaves it,
so activations stay bounded through 50 layers. The batch dimension is symbolic ("N").
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VARIANTS = {"imagenet": (224, 1000), "cifar100": (32, 100)}


class Builder:
    """Appends nodes and initializers; every helper returns the name of its output."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def _init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(self, x, cin, cout, k, stride=1, relu=True, residual_gamma=False):
        name = self._name("conv")
        std = np.sqrt(2.0 / (cin * k * k))
        w = self._init(f"{name}.weight", self.rng.normal(0, std, (cout, cin, k, k)))
        self.nodes.append(helper.make_node("Conv", [x, w], [f"{name}.out"], name=name,
                                           kernel_shape=[k, k], strides=[stride, stride],
                                           pads=[k // 2] * 4))
        return self.bn(f"{name}.out", cout, relu, residual_gamma)

    def bn(self, x, c, relu=True, residual_gamma=False):
        name = self._name("bn")
        lo, hi = (0.0, 0.2) if residual_gamma else (0.5, 1.5)
        params = [self._init(f"{name}.gamma", self.rng.uniform(lo, hi, c)),
                  self._init(f"{name}.beta", self.rng.normal(0, 0.1, c)),
                  self._init(f"{name}.mean", self.rng.normal(0, 0.1, c)),
                  self._init(f"{name}.var", self.rng.uniform(0.5, 1.5, c))]
        self.nodes.append(helper.make_node("BatchNormalization", [x] + params, [f"{name}.out"],
                                           name=name))
        return self.relu(f"{name}.out") if relu else f"{name}.out"

    def op(self, kind, inputs, **attrs):
        name = self._name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [f"{name}.out"], name=name, **attrs))
        return f"{name}.out"

    def relu(self, x):
        return self.op("Relu", [x])

    def head(self, x, cin, classes):
        x = self.op("Flatten", [self.op("GlobalAveragePool", [x])])
        std = np.sqrt(1.0 / cin)
        w = self._init("fc.weight", self.rng.normal(0, std, (classes, cin)))
        b = self._init("fc.bias", np.zeros(classes))
        self.nodes.append(helper.make_node("Gemm", [x, w, b], ["logits"], name="fc", transB=1))
        return "logits"

    def stem(self, x, cout, imagenet):
        if imagenet:
            x = self.conv_bn(x, 3, cout, 7, stride=2)
            return self.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
        return self.conv_bn(x, 3, cout, 3)


def resnet(b: Builder, x, imagenet, classes, bottleneck, blocks):
    x = b.stem(x, 64, imagenet)
    cin = 64
    for stage, n in enumerate(blocks):
        width = 64 * 2 ** stage
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            cout = width * 4 if bottleneck else width
            if bottleneck:
                y = b.conv_bn(x, cin, width, 1)
                y = b.conv_bn(y, width, width, 3, stride)
                y = b.conv_bn(y, width, cout, 1, relu=False, residual_gamma=True)
            else:
                y = b.conv_bn(x, cin, width, 3, stride)
                y = b.conv_bn(y, width, cout, 3, relu=False, residual_gamma=True)
            short = x if stride == 1 and cin == cout else b.conv_bn(x, cin, cout, 1, stride,
                                                                     relu=False)
            x = b.relu(b.op("Add", [y, short]))
            cin = cout
    return b.head(x, cin, classes)


def densenet121(b: Builder, x, imagenet, classes, growth=32, blocks=(6, 12, 24, 16)):
    c = 2 * growth
    x = b.stem(x, c, imagenet)
    for i, n in enumerate(blocks):
        feats = [x]
        for _ in range(n):
            cat = feats[0] if len(feats) == 1 else b.op("Concat", feats, axis=1)
            y = b.bn(cat, c)
            y = b.conv_bn(y, c, 4 * growth, 1)
            name = b._name("conv")
            std = np.sqrt(2.0 / (4 * growth * 9))
            w = b._init(f"{name}.weight", b.rng.normal(0, std, (growth, 4 * growth, 3, 3)))
            b.nodes.append(helper.make_node("Conv", [y, w], [f"{name}.out"], name=name,
                                            kernel_shape=[3, 3], pads=[1] * 4))
            feats.append(f"{name}.out")
            c += growth
        x = b.op("Concat", feats, axis=1)
        if i < len(blocks) - 1:
            x = b.bn(x, c)
            name = b._name("conv")
            w = b._init(f"{name}.weight", b.rng.normal(0, np.sqrt(2.0 / c), (c // 2, c, 1, 1)))
            b.nodes.append(helper.make_node("Conv", [x, w], [f"{name}.out"], name=name,
                                            kernel_shape=[1, 1]))
            c //= 2
            x = b.op("AveragePool", [f"{name}.out"], kernel_shape=[2, 2], strides=[2, 2])
    x = b.bn(x, c)
    return b.head(x, c, classes)


ARCHS = {
    "resnet18": lambda b, x, i, k: resnet(b, x, i, k, False, (2, 2, 2, 2)),
    "resnet50": lambda b, x, i, k: resnet(b, x, i, k, True, (3, 4, 6, 3)),
    "densenet121": densenet121,
}
NAMES = [f"{a}-{v}" for a in ARCHS for v in VARIANTS]


def build(name: str, seed: int = 0) -> onnx.ModelProto:
    """Build one model by name (e.g. ``resnet50-imagenet``)."""
    arch, variant = name.split("-")
    size, classes = VARIANTS[variant]
    b = Builder(seed)
    out = ARCHS[arch](b, "image", variant == "imagenet", classes)
    graph = helper.make_graph(
        b.nodes, name, [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                      ["N", 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", classes])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="tools.make_zoo")
    onnx.checker.check_model(model)
    return model


def random_images(name: str, count: int, seed: int = 0) -> np.ndarray:
    """``count`` float32 N(0, 1) images [count, 3, size, size] for model ``name``'s input
    (the benchmarks' inputs: seeded, so runs compare)."""
    size = VARIANTS[name.split("-")[1]][0]
    return np.random.default_rng(seed).standard_normal((count, 3, size, size)).astype(
        np.float32)


def save_new(path: str, make) -> str:
    """``path``, after writing ``make()`` (a ModelProto) there atomically if it is missing."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + ".tmp"
        onnx.save(make(), tmp)
        os.replace(tmp, path)
    return path


def ensure(name: str, directory: str, seed: int = 0) -> str:
    """Path of ``name`` in ``directory``, generating it if it is not there yet."""
    return save_new(os.path.join(directory, f"{name}.onnx"), lambda: build(name, seed))


def generator_parser(doc: str, names) -> argparse.ArgumentParser:
    """The options every model generator takes: --out, --only, --seed."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join("models", "zoo"), help="output directory")
    p.add_argument("--only", choices=names, action="append", help="generate only these")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    return p


def main(argv=None) -> None:
    args = generator_parser(__doc__, NAMES).parse_args(argv)
    for name in args.only or NAMES:
        print(ensure(name, args.out, args.seed))


if __name__ == "__main__":
    main()
