"""A plain, non-editable install works from outside the repository (issue 10).

Builds a wheel of the repository, installs it into a fresh venv (no system site packages, no dev
extras; dependencies come from the package index) and runs the installed console scripts from a
temporary directory: help, a compile and a run on every chip preset, and a BasisN compile and
run. This catches what the editable dev install hides: package data missing from the wheel,
subpackages left out of it, and run-time imports of packages that are not dependencies.

The wheel is built from a copy of the source tree, so the build's ``build/`` and ``*.egg-info``
never land in the working tree and stale build output cannot leak into the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS, ROOT, model_path, ort_run

REPO = Path(ROOT)
SAMPLE = os.path.join(MODELS, "digits_sample.npy")
# Generated or installed at the repository root: not source, never copied for the build.
# models/ is data the test reads in place; it is not package data.
NOT_SOURCE = {".git", ".venv", "build", "dist", "out", "models",
              ".pytest_cache", ".hypothesis", ".ruff_cache"}
DEV_ONLY = ["pytest", "hypothesis", "sklearn", "matplotlib", "torch", "ruff", "ray",
            "pyarrow"]


@dataclass(frozen=True)
class Install:
    """A fresh venv holding only the wheel and its dependencies."""

    bin: Path
    env: dict[str, str]  # the caller's environment without anything pointing at the repo


def _not_source(directory: str, names: list[str]) -> set[str]:
    at_root = Path(directory) == REPO
    return {n for n in names if n == "__pycache__" or n.endswith(".egg-info")
            or (at_root and n in NOT_SOURCE)}


def _pip(python: str, *args: str) -> None:
    """Run pip; fail the test with pip's own last lines if it does not succeed."""
    proc = subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=1200)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        pytest.fail(f"`pip {args[0]}` failed with exit status {proc.returncode}. It needs the "
                    f"package index (PyPI) for build and run-time dependencies: is it "
                    f"reachable from here?\n{tail}", pytrace=False)


@pytest.fixture(scope="module")
def install(tmp_path_factory) -> Install:
    """Build the wheel, make the venv, install the wheel: once for the whole module."""
    base = tmp_path_factory.mktemp("install")
    assert REPO not in base.parents, "the install must be tested outside the repository"
    src, wheels, venv = base / "src", base / "wheels", base / "venv"
    shutil.copytree(REPO, src, ignore=_not_source)
    _pip(sys.executable, "wheel", "--no-deps", "--quiet", "-w", str(wheels), str(src))
    [wheel] = wheels.glob("cimstack-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    bin_dir = venv / "bin"
    _pip(str(bin_dir / "python"), "install", "--quiet", "--timeout", "30", "--retries", "2",
         str(wheel))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return Install(bin_dir, env)


def run(install: Install, cwd: Path, tool: str, *args: str) -> str:
    """Run one of the venv's executables in ``cwd``; assert exit status 0; return stdout."""
    proc = subprocess.run([str(install.bin / tool), *args], cwd=cwd, env=install.env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{tool} {' '.join(args)} -> {proc.returncode}\n{proc.stderr}"
    return proc.stdout


PROBE = f"""
import importlib.util, json, os, sysconfig
import cimsweep, compiler, isa, runtime
from isa.chip import presets
purelib = sysconfig.get_paths()["purelib"]
print(json.dumps({{
    "purelib": purelib,
    "top_level": sorted(os.listdir(purelib)),
    "modules": {{m.__name__: m.__file__ for m in (cimsweep, compiler, isa, runtime)}},
    "dev_only_found": [n for n in {DEV_ONLY!r} if importlib.util.find_spec(n)],
    "presets": presets(),
}}))
"""


@pytest.fixture(scope="module")
def probe(install, tmp_path_factory) -> dict:
    """What the venv's Python sees, asked from a directory outside the repository."""
    return json.loads(run(install, tmp_path_factory.mktemp("probe"), "python", "-c", PROBE))


def test_packages_import_from_site_packages_without_dev_extras(probe):
    purelib = Path(probe["purelib"])
    for name, file in probe["modules"].items():
        assert purelib in Path(file).parents, f"{name} imported from {file}, not {purelib}"
        assert REPO not in Path(file).parents
    assert not {"tests", "tools"} & set(probe["top_level"])
    assert {"cimsweep", "compiler", "isa", "runtime"} <= set(probe["top_level"])
    assert probe["dev_only_found"] == []


def test_help(install, tmp_path):
    assert "usage: cimc" in run(install, tmp_path, "cimc", "--help")
    assert "usage: cimrun" in run(install, tmp_path, "cimrun", "--help")
    assert "usage: cimsweep" in run(install, tmp_path, "cimsweep", "--help")


def test_sweep_without_the_sweep_extra(install, tmp_path):
    """CSV results need neither pyarrow nor matplotlib; Parquet, plots and Ray say which
    extra to install."""
    x = np.load(os.path.join(MODELS, "digits_test_x.npy"))[:8]
    y = np.load(os.path.join(MODELS, "digits_test_y.npy"))[:8]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    body = (f'[models]\nmlp = "{model_path("digits_mlp")}"\n[dataset]\ninputs = "x.npy"\n'
            'labels = "y.npy"\nshards = 2\n[grid]\nadc-bits = [6, 8]\n')
    (tmp_path / "s.toml").write_text('results = "s.csv"\n' + body)
    out = run(install, tmp_path, "cimsweep", "s.toml", "--jobs", "2")
    assert "4 points run (0 failed)" in out, out
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("model,adc_bits,seed,mode,status")
    (tmp_path / "p.toml").write_text('results = "p.parquet"\n' + body)
    for args, extra in ((["p.toml"], "cimstack[sweep]"), (["plot", "s.csv"], "cimstack[sweep]"),
                        (["s.toml", "--executor", "ray"], "cimstack[ray]")):
        proc = subprocess.run([str(install.bin / "cimsweep"), *args], cwd=tmp_path,
                              env=install.env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and extra in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "p.jsonl").exists()  # refused before any point ran


def test_compile_and_run_on_every_preset(install, probe, tmp_path):
    assert "default" in probe["presets"]
    out = run(install, tmp_path, "cimc", model_path("digits_cnn"), "-o", "p.cim")
    assert "cimc: wrote p.cim" in out and (tmp_path / "p.cim").is_file()
    want = ort_run(model_path("digits_cnn"), {"image": np.load(SAMPLE)})[0]
    for chip in probe["presets"]:
        out = run(install, tmp_path, "cimrun", "p.cim", "--input", SAMPLE, "--chip", chip,
                  "-o", f"{chip}.npy")
        assert "cimrun: 1 sample(s)" in out and "per inference" in out, out
        np.testing.assert_allclose(np.load(tmp_path / f"{chip}.npy"), want,
                                   rtol=1e-4, atol=1e-4, err_msg=chip)


def test_basis_compile_and_run(install, tmp_path):
    out = run(install, tmp_path, "cimc", model_path("digits_cnn"), "--basis", "4", "--xbars", "2",
              "-o", "b.cim")
    assert "cimc: wrote b.cim" in out and "2 crossbars" in out
    out = run(install, tmp_path, "cimrun", "b.cim", "--input", SAMPLE)
    assert "cimrun: 1 sample(s)" in out and "0 crossbar writes" in out, out
    logits = np.load(tmp_path / "b.out.npy")
    assert logits.shape == (1, 10) and np.isfinite(logits).all()
