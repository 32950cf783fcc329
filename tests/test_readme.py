"""The README's Python example runs as written (from a directory that has the bundled models)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import MODELS, ROOT


def test_readme_python_example_runs(tmp_path):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README has no Python example"
    os.symlink(MODELS, tmp_path / "models")
    for code in blocks:
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
    assert "(540, 10)" in r.stdout
    assert (tmp_path / "cnn.cim").is_file()
