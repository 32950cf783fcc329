"""Train a CIFAR-style ResNet-20 on the bundled digits, upsampled to 32x32, and export it.

    python -m tools.make_digits_resnet20     # needs the `train` extra (torch) and scikit-learn

The network of He et al. 2016 (section 4.2): a 3x3 stem of 16 channels, three stages of three
basic blocks (16, 32, 64 channels; the first block of stages 2 and 3 strides by 2 and projects
its shortcut with a 1x1 conv + BatchNorm), global average pooling and a linear classifier. It is
the scale at which BasisN and reprogramming are compared on a trained network (issue 12): 19
crossbar layers, 0.27 M weights, 41 M MACs an image.

Inputs are the digits split of ``tools.make_digits_models`` (seed 0, 70/30) with every pixel
repeated 4x4 (``upsample``), so ``models/digits_test_x.npy`` upsampled is this model's test
set. Writes models/digits_resnet20.onnx (BatchNorm kept explicit, as in the other digits
models) and prints float accuracy (onnxruntime) next to torch's.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper

from tools.make_digits_models import MODELS, SEED, _model, digits_split

STAGES = ((16, 1), (32, 2), (64, 2))  # (channels, stride of the first block)
BLOCKS = 3
EPOCHS = 30


def upsample(x: np.ndarray) -> np.ndarray:
    """[N, 1, 8, 8] digits -> [N, 1, 32, 32], every pixel repeated 4x4 (nearest neighbour)."""
    return np.ascontiguousarray(x.repeat(4, axis=2).repeat(4, axis=3))


def _torch_resnet20():
    import torch.nn as nn

    def conv_bn(cin, cout, k, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                             nn.BatchNorm2d(cout))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a, self.b = conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, 1)
            self.short = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

        def forward(self, x):
            y = self.b(self.a(x).relu())
            return (y + (x if self.short is None else self.short(x))).relu()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_bn(1, 16, 3, 1)
            blocks, cin = [], 16
            for cout, stride in STAGES:
                for i in range(BLOCKS):
                    blocks.append(Block(cin, cout, stride if i == 0 else 1))
                    cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(self.blocks(self.stem(x).relu()).mean(dim=(2, 3)))
    return Net()


def train(xtr: np.ndarray, ytr: np.ndarray):
    """SGD with momentum and a cosine schedule, light shift augmentation; seeded."""
    import torch
    torch.manual_seed(SEED)
    net = _torch_resnet20()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    steps = EPOCHS * -(-len(xtr) // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    x, y = torch.from_numpy(upsample(xtr)), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS):
        net.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
            batch = torch.roll(x[idx], shifts=(dx, dy), dims=(2, 3))
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(batch), y[idx]).backward()
            opt.step()
            sched.step()
    return net.eval()


class _Exporter:
    """ONNX nodes and initializers of the trained network, built node by node."""

    def __init__(self, state: dict):
        self.sd = {k: v.detach().numpy() for k, v in state.items()}
        self.nodes, self.inits = [], {}

    def conv_bn(self, prefix: str, name: str, x: str, stride: int) -> str:
        w = self.sd[f"{prefix}.0.weight"]
        self.inits[f"{name}.weight"] = w
        k = w.shape[-1]
        self.nodes.append(helper.make_node(
            "Conv", [x, f"{name}.weight"], [f"{name}.out"], name=name,
            kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        params = [f"{name}.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
        for p, key in zip(params, ("weight", "bias", "running_mean", "running_var")):
            self.inits[p] = self.sd[f"{prefix}.1.{key}"]
        self.nodes.append(helper.make_node("BatchNormalization", [f"{name}.out"] + params,
                                           [f"{name}.bn"], name=f"{name}.bn", epsilon=1e-5))
        return f"{name}.bn"

    def relu(self, x: str, out: str) -> str:
        self.nodes.append(helper.make_node("Relu", [x], [out], name=out))
        return out

    def block(self, i: int, x: str, stride: int) -> str:
        p = f"blocks.{i}"
        y = self.relu(self.conv_bn(f"{p}.a", f"b{i}.conv1", x, stride), f"b{i}.relu1")
        y = self.conv_bn(f"{p}.b", f"b{i}.conv2", y, 1)
        short = self.conv_bn(f"{p}.short", f"b{i}.short", x, stride) \
            if f"{p}.short.0.weight" in self.sd else x
        self.nodes.append(helper.make_node("Add", [y, short], [f"b{i}.add"], name=f"b{i}.add"))
        return self.relu(f"b{i}.add", f"b{i}.out")


def export(net) -> onnx.ModelProto:
    e = _Exporter(net.state_dict())
    x = e.relu(e.conv_bn("stem", "stem", "image", 1), "stem.relu")
    for i, stride in enumerate(s if b == 0 else 1 for _, s in STAGES for b in range(BLOCKS)):
        x = e.block(i, x, stride)
    e.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    e.nodes.append(helper.make_node("Flatten", ["gap"], ["feat"], name="flatten"))
    e.inits["fc.weight"], e.inits["fc.bias"] = e.sd["fc.weight"], e.sd["fc.bias"]
    e.nodes.append(helper.make_node("Gemm", ["feat", "fc.weight", "fc.bias"], ["logits"],
                                    transB=1, name="fc"))
    model = _model(e.nodes, e.inits, "digits_resnet20")
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 32
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 32
    model.producer_name = "tools.make_digits_resnet20"
    onnx.checker.check_model(model)
    return model


def main() -> None:
    import onnxruntime as ort
    import torch
    xtr, xte, ytr, yte = digits_split()
    net = train(xtr, ytr)
    model = export(net)
    x = upsample(xte)
    with torch.no_grad():
        torch_logits = net(torch.from_numpy(x)).numpy()
    ort_logits = ort.InferenceSession(model.SerializeToString()).run(None, {"image": x})[0]
    assert np.allclose(torch_logits, ort_logits, atol=1e-3), "ONNX export disagrees with torch"
    onnx.save(model, os.path.join(MODELS, "digits_resnet20.onnx"))
    print(f"digits_resnet20: test accuracy {(ort_logits.argmax(1) == yte).mean():.4f} "
          f"(onnxruntime), {(torch_logits.argmax(1) == yte).mean():.4f} (torch)")


if __name__ == "__main__":
    main()
