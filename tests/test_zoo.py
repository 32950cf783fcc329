"""ResNet-18/50 and DenseNet-121 (ImageNet and CIFAR-100 shapes) match onnxruntime (point 3)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ort_run, rel_err

import isa
from compiler import compile_model
from runtime import run
from tools import make_zoo


@pytest.mark.parametrize("name", make_zoo.NAMES)
def test_zoo_model_matches_onnxruntime(name, zoo_dir, tmp_path):
    path = make_zoo.ensure(name, zoo_dir)
    size = make_zoo.VARIANTS[name.split("-")[1]][0]
    x = np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)
    program = compile_model(path)
    isa.save(program, tmp_path / "p.cim")
    program = isa.load(tmp_path / "p.cim")  # the file, not the in-memory program, is run
    got = run(program, x).outputs["logits"]
    (want,) = ort_run(path, {"image": x})
    assert rel_err(got, want) < 1e-4
    assert got.argmax() == want.argmax()
    weights = sum(b.data.size for b in program.blobs if b.data.ndim == 2)
    assert program.chip.xbars >= weights / (128 * 16)  # every weight is on some crossbar


def test_resnet50_schedules(zoo_dir):
    """Issue 5: weight-stationary efficiency, and reprogramming on 64 crossbars."""
    from runtime import run
    path = make_zoo.ensure("resnet50-imagenet", zoo_dir)
    ws = run(compile_model(path), mode="timing").stats
    assert ws["writes_per_inference"] == 0 and 0 < ws["schedule_efficiency"] <= 1
    naive = run(compile_model(path, max_xbars=64, schedule="naive"), mode="timing").stats
    opt = run(compile_model(path, max_xbars=64), mode="timing").stats
    assert opt["cycles_per_inference"] < naive["cycles_per_inference"]
    assert opt["schedule_efficiency"] >= 0.8
    assert naive["writes_per_inference"] >= ws["load"]["cells_written"] / (128 * 16 * 8)
