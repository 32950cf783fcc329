"""The hardware-aware fine-tuning tool (needs the optional `train` extra: torch)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import model_path, ort_run, rel_err

torch = pytest.importorskip("torch")

from tools import finetune_noise  # noqa: E402


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_torch_execution_matches_onnxruntime(name, digits_test):
    x = digits_test[0][:64]
    net = finetune_noise.OnnxModule(onnx.load(model_path(name)))
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    (want,) = ort_run(model_path(name), {"image": x})
    assert rel_err(got, want) < 1e-4


def test_finetuning_changes_weights_and_keeps_the_graph(digits_test):
    x, y = digits_test
    model = onnx.load(model_path("digits_cnn"))
    tuned = finetune_noise.finetune(model, x[:128], y[:128], noise=0.05, epochs=1, seed=0)
    assert [n.op_type for n in tuned.graph.node] == [n.op_type for n in model.graph.node]
    before = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    after = {i.name: onnx.numpy_helper.to_array(i) for i in tuned.graph.initializer}
    assert not np.array_equal(before["conv1.weight"], after["conv1.weight"])
    assert np.array_equal(before["bn1.running_mean"], after["bn1.running_mean"])


def test_basis_finetuning_writes_a_model_the_basis_file_reproduces(tmp_path, digits_test):
    from compiler import compile_model
    from runtime import run
    from tools import finetune_basis
    x, y = digits_test
    model = onnx.load(model_path("digits_cnn"))
    tuned, basis = finetune_basis.finetune(model, x[:128], y[:128], n=3, epochs=2, seed=0,
                                           log=lambda s: None)
    basis.save(str(tmp_path / "b.npz"))
    assert basis.n == 3 and set(basis.layers) == {"conv1", "dw", "pw", "conv4", "fc"}
    program = compile_model(tuned, basis=type(basis).load(str(tmp_path / "b.npz")),
                            max_xbars=2, batch=64)
    got = run(program, {"image": x[:64]}, mode="ideal", timing=False).outputs["logits"]
    (want,) = ort_run(tuned, {"image": x[:64]})
    assert rel_err(got, want) < 1e-4  # the compiled program is the trained model


def test_contest_term_balances_column_loads():
    from compiler.basis import BasisLayer, BasisSet
    from tools.finetune_basis import BasisLayers
    model = onnx.load(model_path("digits_cnn"))
    start = BasisSet(np.eye(9, 2, dtype=np.float32), 4)
    from compiler.basis.layers import layer_matrices
    for name, w in layer_matrices(model).items():
        u, m = -(-w.shape[0] // 9), w.shape[1]
        start.layers[name] = BasisLayer(np.zeros((u, 2, m), np.int32), np.ones(m, np.float32),
                                        w.shape[0])
    bl = BasisLayers(model, start)
    for *_, coef, _, _ in bl.layers.values():
        with torch.no_grad():
            coef[:, 0] = 7.0  # every kernel loads column 0 only
    unbalanced = float(bl.contest().detach())
    for *_, coef, _, _ in bl.layers.values():
        with torch.no_grad():
            coef[:, 0], coef[:, 1] = 3.5, 3.5  # same total, spread over both columns
    assert float(bl.contest().detach()) < unbalanced
