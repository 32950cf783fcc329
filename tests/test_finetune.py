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
