"""Hardware-aware fine-tuning: train an ONNX model's weights with the chip's noise injected.

    python -m tools.finetune_noise models/digits_cnn.onnx -o tuned.onnx
        [--data X.npy --labels y.npy] [--noise 0.055] [--epochs 10] [--seed 0]

Needs the ``train`` extra (torch); the compiler and runtime never import it. The ONNX graph is
executed with torch ops (``OPS``, one function per ONNX op the tool understands), its float
initializers are the parameters, and BatchNormalization uses its stored statistics (inference
form). Every forward pass perturbs each Conv/Gemm/MatMul weight with Gaussian noise of
``--noise`` times the largest magnitude of its output channel: with the default chip and no
mitigation, a weight's error is about 0.077 levels x 64 (MSB slice) x sqrt(2) (differential
pair) / 127 = 5.5 % of its column's largest weight. The trained initializers are written back
into a copy of the model, written atomically. Without --data the digits training split of
tools.make_digits_models is used.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import onnx
from onnx import numpy_helper

NOISY = {"Conv": 1, "Gemm": 1, "MatMul": 1}


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv(F, x, w, b=None, **a):
    pads = a.get("pads", [0] * (2 * (w.dim() - 2)))
    n = len(pads) // 2
    if any(pads[i] != pads[n + i] for i in range(n)):
        raise SystemExit("finetune_noise: asymmetric Conv padding is not supported")
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[w.dim()]
    return conv(x, w, b, stride=a.get("strides", 1), padding=pads[:n],
                dilation=a.get("dilations", 1), groups=a.get("group", 1))


def _gemm(F, x, w, b=None, **a):
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    y = a.get("alpha", 1.0) * (x @ w)
    return y if b is None else y + a.get("beta", 1.0) * b


def _bn(F, x, s, b, m, v, **a):
    return F.batch_norm(x, m, v, s, b, training=False, eps=a.get("epsilon", 1e-5))


def _pool(kind):
    def run(F, x, **a):
        k, pads = a["kernel_shape"], a.get("pads", [0] * 2 * len(a["kernel_shape"]))
        fn = F.max_pool2d if kind == "max" else F.avg_pool2d
        extra = {} if kind == "max" else {"count_include_pad": bool(a.get("count_include_pad"))}
        return fn(x, k, a.get("strides", k), pads[:len(k)], ceil_mode=bool(a.get("ceil_mode")),
                  **extra)
    return run


OPS = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": lambda F, x, w: x @ w,
    "BatchNormalization": _bn,
    "Relu": lambda F, x: F.relu(x), "Sigmoid": lambda F, x: x.sigmoid(),
    "Tanh": lambda F, x: x.tanh(),
    "LeakyRelu": lambda F, x, **a: F.leaky_relu(x, a.get("alpha", 0.01)),
    "Add": lambda F, x, y: x + y, "Sub": lambda F, x, y: x - y, "Mul": lambda F, x, y: x * y,
    "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda F, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "Flatten": lambda F, x, **a: x.flatten(a.get("axis", 1)),
    "Concat": lambda F, *xs, **a: __import__("torch").cat(xs, a["axis"]),
    "Identity": lambda F, x: x, "Dropout": lambda F, x, *r, **a: x,
}


class OnnxModule:
    """The ONNX graph as a torch function of its float initializers."""

    def __init__(self, model: onnx.ModelProto):
        import torch
        self.model, self.torch = model, torch
        missing = sorted({n.op_type for n in model.graph.node} - set(OPS))
        if missing:
            raise SystemExit(f"finetune_noise: unsupported ops {', '.join(missing)}")
        stats = {i for n in model.graph.node if n.op_type == "BatchNormalization"
                 for i in n.input[3:5]}  # running statistics stay as they are
        self.params = {i.name: torch.tensor(numpy_helper.to_array(i).astype(np.float32),
                                            requires_grad=i.name not in stats)
                       for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
        self.noisy = {n.input[NOISY[n.op_type]] for n in model.graph.node if n.op_type in NOISY}

    def __call__(self, x, noise: float = 0.0, generator=None, replace=None):
        """Run the graph on ``x``; ``replace``: {initializer name: tensor} used instead of the
        parameters (BasisN fine-tuning builds weights from basis and coefficients)."""
        import torch.nn.functional as F
        env = {self.model.graph.input[0].name: x}
        for name, p in self.params.items():
            if replace and name in replace:
                env[name] = replace[name]
                continue
            if noise and name in self.noisy:
                peak = p.detach().abs().flatten(1).amax(1) if p.dim() > 1 else p.detach().abs()
                shape = (-1,) + (1,) * (p.dim() - 1)
                p = p + noise * peak.reshape(shape) * self.torch.randn(p.shape,
                                                                       generator=generator)
            env[name] = p
        for node in self.model.graph.node:
            ins = [env[i] for i in node.input if i]
            env[node.output[0]] = OPS[node.op_type](F, *ins, **_attrs(node))
        return env[self.model.graph.output[0].name]

    def export(self, replace=None) -> onnx.ModelProto:
        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        values = {**self.params, **(replace or {})}
        for init in out.graph.initializer:
            if init.name in values:
                init.CopyFrom(numpy_helper.from_array(values[init.name].detach().numpy(),
                                                      init.name))
        return out


def finetune(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, noise: float, epochs: int,
             seed: int, lr: float = 1e-3) -> onnx.ModelProto:
    import torch
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = OnnxModule(model)
    opt = torch.optim.Adam([t for t in net.params.values() if t.requires_grad], lr=lr)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    for epoch in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xt[idx], noise, gen), yt[idx])
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}", flush=True)
    return net.export()


def training_data(data: str | None, labels: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and labels from .npy files, or the digits training split."""
    if data:
        return np.load(data, allow_pickle=False), np.load(labels, allow_pickle=False)
    from tools.make_digits_models import digits_split
    x, _, y, _ = digits_split()
    return x, y


def save_model(model: onnx.ModelProto, path: str) -> None:
    """Write atomically: a crash never leaves a half-written model at ``path``."""
    tmp = path + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="the float model (.onnx)")
    p.add_argument("-o", "--output", required=True, help="fine-tuned model (.onnx)")
    p.add_argument("--data", help="training inputs .npy (default: the digits training split)")
    p.add_argument("--labels", help="training labels .npy")
    p.add_argument("--noise", type=float, default=0.055,
                   help="weight noise, fraction of each output channel's largest weight")
    p.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    p.add_argument("--seed", type=int, default=0, help="torch's seed (default 0)")
    args = p.parse_args(argv)
    x, y = training_data(args.data, args.labels)
    save_model(finetune(onnx.load(args.model), x, y, args.noise, args.epochs, args.seed),
               args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
