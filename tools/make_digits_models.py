"""Train the small digits models in models/ and export them to ONNX (reproducible, seeded).

    python -m tools.make_digits_models        # needs the `train` extra (torch) and scikit-learn

Writes models/digits_mlp.onnx, models/digits_cnn.onnx, models/digits_test_x.npy (float32
[N,1,8,8], pixel values scaled to [0,1]), models/digits_test_y.npy (int64 labels) and
models/digits_sample.npy (one image), and a labelled calibration set from the training split,
models/digits_calib_x.npy / digits_calib_y.npy (``write_calibration``: the first 300 training
images, for ``cimc --calibrate ... --calibrate-labels``). The data is scikit-learn's bundled
digits set, split 70/30 with seed 0. Graphs are built node by node with onnx.helper so that
they keep explicit BatchNormalization nodes (the compiler's fold-batchnorm pass removes them).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
SEED = 0


def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # [N,1,8,8]
    return train_test_split(x, d.target.astype(np.int64), test_size=0.3, random_state=SEED,
                            stratify=d.target)


def _model(nodes, inits, name, opset=13):
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="tools.make_digits_models")
    onnx.checker.check_model(model)
    return model


def make_mlp(xtr, ytr):
    from sklearn.neural_network import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=600, random_state=SEED)
    clf.fit(xtr.reshape(len(xtr), -1), ytr)
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], name="flatten")]
    inits, prev = {}, "flat"
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        inits[f"fc{i}.weight"], inits[f"fc{i}.bias"] = w.T, b
        out = "logits" if i == len(clf.coefs_) - 1 else f"fc{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"], [out],
                                      transB=1, name=f"fc{i}"))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            prev = f"relu{i}"
    return _model(nodes, inits, "digits_mlp")


def _torch_cnn():
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.dw, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
            self.pw, self.bn3 = nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16)
            self.pool = nn.MaxPool2d(2)
            self.conv4, self.bn4 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            r = self.bn1(self.conv1(x)).relu()
            y = self.bn2(self.dw(r)).relu()
            y = (self.bn3(self.pw(y)) + r).relu()
            y = self.bn4(self.conv4(self.pool(y))).relu()
            return self.fc(y.mean(dim=(2, 3)))
    return Net()


def train_cnn(xtr, ytr):
    import torch
    torch.manual_seed(SEED)
    net = _torch_cnn()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(40):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def export_cnn(net):
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    inits, nodes = {}, []

    def conv(name, x, out, bn, **attrs):
        inits[f"{name}.weight"], inits[f"{name}.bias"] = sd[f"{name}.weight"], sd[f"{name}.bias"]
        nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"],
                                      [f"{name}.out"], name=name, **attrs))
        params = [f"{bn}.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
        for p in params:
            inits[p] = sd[p]
        nodes.append(helper.make_node("BatchNormalization", [f"{name}.out"] + params, [out],
                                      name=bn, epsilon=1e-5))

    def relu(x, out):
        nodes.append(helper.make_node("Relu", [x], [out], name=out))

    conv("conv1", "image", "bn1.out", "bn1", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    relu("bn1.out", "r1")
    conv("dw", "r1", "bn2.out", "bn2", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=16)
    relu("bn2.out", "r2")
    conv("pw", "r2", "bn3.out", "bn3", kernel_shape=[1, 1])
    nodes.append(helper.make_node("Add", ["bn3.out", "r1"], ["res"], name="residual_add"))
    relu("res", "r3")
    nodes.append(helper.make_node("MaxPool", ["r3"], ["pool"], kernel_shape=[2, 2],
                                  strides=[2, 2], name="maxpool"))
    conv("conv4", "pool", "bn4.out", "bn4", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    relu("bn4.out", "r4")
    nodes.append(helper.make_node("GlobalAveragePool", ["r4"], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["feat"], name="flatten"))
    inits["fc.weight"], inits["fc.bias"] = sd["fc.weight"], sd["fc.bias"]
    nodes.append(helper.make_node("Gemm", ["feat", "fc.weight", "fc.bias"], ["logits"],
                                  transB=1, name="fc"))
    return _model(nodes, inits, "digits_cnn")


def _accuracy(model, x, y) -> float:
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return float((sess.run(None, {"image": x})[0].argmax(1) == y).mean())


CALIBRATION = 300


def write_calibration() -> None:
    """The labelled calibration split (no training needed: ``python -c 'from
    tools.make_digits_models import write_calibration; write_calibration()'``)."""
    xtr, _, ytr, _ = digits_split()
    np.save(os.path.join(MODELS, "digits_calib_x.npy"), xtr[:CALIBRATION])
    np.save(os.path.join(MODELS, "digits_calib_y.npy"), ytr[:CALIBRATION])


def main() -> None:
    import torch
    xtr, xte, ytr, yte = digits_split()
    os.makedirs(MODELS, exist_ok=True)
    net = train_cnn(xtr, ytr)
    cnn = export_cnn(net)
    with torch.no_grad():
        torch_logits = net(torch.from_numpy(xte)).numpy()
    import onnxruntime as ort
    ort_logits = ort.InferenceSession(cnn.SerializeToString()).run(None, {"image": xte})[0]
    assert np.allclose(torch_logits, ort_logits, atol=1e-4), "ONNX export disagrees with torch"
    for name, model in (("digits_mlp", make_mlp(xtr, ytr)), ("digits_cnn", cnn)):
        onnx.save(model, os.path.join(MODELS, f"{name}.onnx"))
        print(f"{name}: test accuracy {_accuracy(model, xte, yte):.4f} (onnxruntime)")
    np.save(os.path.join(MODELS, "digits_test_x.npy"), xte)
    np.save(os.path.join(MODELS, "digits_test_y.npy"), yte)
    np.save(os.path.join(MODELS, "digits_sample.npy"), xte[:1])
    write_calibration()


if __name__ == "__main__":
    main()
