"""Ideal mode runs a layer's bias copy, mvm group and in-place activation as one step."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter

import numpy as np
import pytest
from conftest import MODELS

from compiler import compile_model
from isa import kernels
from isa.printer import text_line
from runtime import RunError, intgemm, run
from runtime.epilogues import IN_PLACE, Fused, fuse
from runtime.mvm_groups import plan


@pytest.fixture(scope="module")
def mlp():
    return compile_model(os.path.join(MODELS, "digits_mlp.onnx"))


def test_each_layer_becomes_one_step_with_its_activation(mlp):
    steps = fuse(plan(mlp.text), mlp)
    fused = [s for s in steps if isinstance(s, Fused)]
    assert [(s.copy.operands[0], s.act.op if s.act else None) for s in fused] == [
        ("%relu0", "relu"), ("%relu1", "relu"), ("%logits", None)]
    left = [s.op for s in steps if not isinstance(s, (Fused, list))]
    assert "copy" not in left and "relu" not in left


def test_a_product_over_part_of_its_destination_is_not_fused(mlp):
    steps = plan(mlp.text)
    first = next(i for i, s in enumerate(steps) if isinstance(s, list) and s[0].op == "mvm")
    steps[first] = steps[first][:-1]  # fc0's last column tile missing: its bias stays alone
    fused = fuse(steps, mlp)
    assert steps[first - 1] in fused and steps[first] in fused
    assert sum(isinstance(s, Fused) for s in fused) == 2


def test_a_fused_run_computes_each_layer_and_counts_every_instruction(mlp, digits_test):
    x = digits_test[0][:32]
    result = run(mlp, x, timing=False)
    blobs = {b.name: np.ascontiguousarray(b.data) for b in mlp.blobs}  # as crossbars hold
    h = x.reshape(len(x), -1)

    def product(a, w):  # ideal mode's products: MLAS's, whose rows do not depend on batching
        return intgemm.sgemm(a, w, np.empty((len(a), w.shape[1]), np.float32))
    for layer in ("fc0", "fc1"):
        h = np.maximum(product(h, blobs[f"{layer}.matrix"]) + blobs[f"{layer}.b"], 0)
    want = product(h, blobs["fc2.matrix"]) + blobs["fc2.b"]
    assert np.array_equal(result.outputs["logits"], want)
    assert result.stats["opcode_counts"] == dict(sorted(Counter(
        i.op for i in mlp.text if i.op != "halt").items())) | {"halt": 1}


def test_a_product_of_its_own_destination_is_not_fused(mlp):
    """``copy %y, @b; mvm %y, %y`` adds b @ W to b: the product reads the bias, so the two
    cannot be one step."""
    steps = plan(mlp.text)
    first = next(i for i, s in enumerate(steps) if isinstance(s, list) and s[0].op == "mvm")
    dst = steps[first][0].operands[0]
    steps[first] = [dataclasses.replace(i, operands=(dst, dst)) for i in steps[first]]
    assert not any(isinstance(s, Fused) and s.copy.operands[0] == dst
                   for s in fuse(steps, mlp))


def test_an_error_in_a_fused_step_names_the_products_line(mlp, digits_test):
    text = [i for i in mlp.text if i.op != "reshape"]  # %flat is never written
    broken = dataclasses.replace(mlp, text=text)
    mvm = next(n for n, i in enumerate(text) if i.op == "mvm")
    with pytest.raises(RunError, match=rf"line {text_line(broken, mvm)} \(mvm\): %flat is "
                                       "read before anything was written"):
        run(broken, digits_test[0][:2], timing=False)


@pytest.mark.parametrize("kind, attrs", [("relu", {}), ("clip", {"min": -0.5, "max": 0.25})])
def test_in_place_activations_compute_what_the_activations_do(kind, attrs):
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    x[:4] = [np.nan, -0.0, 0.0, -np.inf]
    want = kernels.activation(kind, x, attrs)
    got = x.copy()
    IN_PLACE[kind](got, attrs)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(np.signbit(got), np.signbit(want))
