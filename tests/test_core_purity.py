"""core/ imports only torch and a small standard-library allow-list (STYLE.md rule 1)."""

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "src" / "credo" / "core"
ALLOWED_ROOTS = {
    "torch",
    "typing",
    "math",
    "dataclasses",
    "__future__",
    "collections",
    "functools",
    "itertools",
    "enum",
    "abc",
}


def bad_imports(source: str) -> list[str]:
    """Every import in ``source`` outside the allow-list, plus dynamic ``__import__`` calls."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.split(".")[0] not in ALLOWED_ROOTS]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1:  # from . / from .x: inside credo.core
                continue
            allowed = module.split(".")[0] in ALLOWED_ROOTS or module.startswith("credo.core")
            if node.level > 1 or not allowed:  # level > 1 climbs out of credo.core
                bad.append("." * node.level + module)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            bad.append("__import__(...)")
    return bad


def test_core_files_exist():
    assert {p.name for p in CORE.glob("*.py")} >= {
        "__init__.py",
        "advantages.py",
        "losses.py",
        "aggregation.py",
        "kl.py",
        "stats.py",
        "credit.py",
        "selection.py",
    }


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: p.name)
def test_core_imports_are_pure(path):
    assert bad_imports(path.read_text()) == []


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ("import numpy", False),
        ("import numpy as np", False),
        ("from numpy import ndarray", False),
        ("import os", False),
        ("from credo.trainer import loop", False),
        ("from ..data import Batch", False),
        ("x = __import__('numpy')", False),
        ("import torch\nimport torch.nn.functional as F", True),
        ("from torch import Tensor", True),
        ("from __future__ import annotations\nimport math", True),
        ("from .stats import masked_mean", True),
        ("from credo.core.stats import masked_mean", True),
    ],
)
def test_checker_flags_forbidden_imports(source, ok):
    assert (bad_imports(source) == []) is ok
