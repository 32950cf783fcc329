"""Golden text: the IR after every pass and the .cim program of the bundled digits MLP.

The files under tests/golden/digits_mlp/ are committed; a change to the compiler that changes
any of them fails here and shows its diff, to be reviewed like code. After a reviewed change,
regenerate them with ``CIM_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py``.
"""

from __future__ import annotations

import difflib
import os

import pytest
from conftest import ROOT, model_path

import isa
from compiler import compile_model
from compiler.printer import format_graph

GOLDEN = os.path.join(ROOT, "tests", "golden", "digits_mlp")
UPDATE = os.environ.get("CIM_UPDATE_GOLDEN") == "1"


def _texts() -> dict[str, str]:
    """{file name: text} of every IR stage and the program, as the compiler emits them now."""
    stages: list[tuple[str, str]] = []
    program = compile_model(model_path("digits_mlp"),
                            dump=lambda stage, graph: stages.append(
                                (stage, format_graph(graph, stage))))
    texts = {f"{i:02d}-{stage}.ir": text for i, (stage, text) in enumerate(stages)}
    texts["digits_mlp.cim"] = isa.print_program(program)
    return texts


def _diff(name: str, want: str, got: str) -> str:
    lines = difflib.unified_diff(want.splitlines(), got.splitlines(), f"golden/{name}",
                                 f"now/{name}", lineterm="", n=2)
    return "\n".join(list(lines)[:60])


def test_golden_text_of_the_digits_mlp():
    texts = _texts()
    if UPDATE:
        os.makedirs(GOLDEN, exist_ok=True)
        for old in os.listdir(GOLDEN):
            os.remove(os.path.join(GOLDEN, old))
        for name, text in texts.items():
            with open(os.path.join(GOLDEN, name), "w", encoding="utf-8") as f:
                f.write(text)
        pytest.skip("golden files rewritten; review them with git diff")
    assert sorted(os.listdir(GOLDEN)) == sorted(texts), "the stages changed"
    for name, text in texts.items():
        with open(os.path.join(GOLDEN, name), encoding="utf-8") as f:
            want = f.read()
        assert text == want, _diff(name, want, text)
