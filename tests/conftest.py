"""Shared fixtures: paths to the bundled models, a cache of generated zoo models, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import onnxruntime as ort
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")
DIGITS = ["digits_mlp", "digits_cnn"]


def model_path(name: str) -> str:
    return os.path.join(MODELS, f"{name}.onnx")


def ort_run(model, feeds: dict) -> list[np.ndarray]:
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, feeds)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def assert_alone_as_in_runs(program, x: np.ndarray, picks, output: str) -> np.ndarray:
    """A sample's ideal-mode ``output`` is the same bits run alone (one thread) as within a
    run of all of ``x`` (two threads); returns the run's outputs."""
    from runtime import run
    together = run(program, x, timing=False, threads=2).outputs[output]
    for k in picks:
        alone = run(program, x[k:k + 1], timing=False, threads=1).outputs[output]
        assert np.array_equal(alone[0], together[k]), k
    return together


def cli(tool: str, *args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``cimc`` or ``cimrun`` as a user would (a separate process)."""
    module = {"cimc": "compiler.cli", "cimrun": "runtime.cli"}[tool]
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=cwd)


def fails(result, *needles) -> None:
    """A CLI run that failed as a user error should: status 2, one line on stderr with every
    needle, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def zero_bomb(nbytes: int, chunk: int = 1 << 20) -> bytes:
    """A valid zlib stream of ``nbytes`` zeros (a multiple of ``chunk``), built in
    milliseconds: one sync-flushed deflate block of ``chunk`` zeros repeats (it refers only
    to earlier zeros), then the final block and the Adler-32 of all ``nbytes`` zeros."""
    c = zlib.compressobj(9)
    head = c.compress(bytes(chunk)) + c.flush(zlib.Z_SYNC_FLUSH)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_SYNC_FLUSH)
    tail = c.flush()[:-4]
    adler = (nbytes % 65521) << 16 | 1
    return head + block * (nbytes // chunk - 1) + tail + adler.to_bytes(4, "big")


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def digits_test():
    return (np.load(os.path.join(MODELS, "digits_test_x.npy")),
            np.load(os.path.join(MODELS, "digits_test_y.npy")))
