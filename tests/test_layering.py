"""Imports flow one way (DESIGN.md, "Layers"; issue 13): a layer imports only itself and the layers to its right,

    cli → trainer → rewards → rollout → analysis → envs → models → data → core

(`analysis/` sits between rollout and envs), `core/` imports only torch and the standard library, and no
function in the package is longer than 80 lines (STYLE.md rule 12, issue 13). Every module under `src/credo`
is parsed with `ast`; imports at module level, inside functions, under `if TYPE_CHECKING:` and literal
`importlib.import_module("credo....")` calls all count. Failures list every offender as `file:line → module`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "credo"
LAYERS = ("cli", "trainer", "rewards", "rollout", "analysis", "envs", "models", "data", "core")
MAX_FUNCTION_LINES = 80
CORE_ALLOWED = {"torch"} | set(sys.stdlib_module_names)


def module_name(path: Path, src: Path = SRC) -> str:
    """`src/credo/rewards/terms.py` → `credo.rewards.terms`; a package's `__init__.py` → the package."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    """The layer of a `credo.…` module (`credo.data` → `data`); None for the package root or a non-credo module."""
    parts = module.split(".")
    if parts[0] != "credo" or len(parts) < 2:
        return None
    if parts[1] == "__main__":  # `python -m credo`: the command line's entry point
        return "cli"
    if parts[1] not in LAYERS:
        raise ValueError(f"{module}: not in a declared layer {LAYERS}; declare it in DESIGN.md and here")
    return parts[1]


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, relative ones resolved against `module`.

    `from credo import data` yields `credo.data` (a submodule imported by name); `from credo.x import y` yields
    `credo.x` (y may be a submodule or an attribute: the layer is the same)."""
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == "credo":
                out += [(node.lineno, f"credo.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__"):
                out.append((node.lineno, node.args[0].value))
    return out


def _files(src: Path) -> list[Path]:
    return sorted((src / "credo").rglob("*.py"))


def layer_violations(src: Path = SRC) -> list[str]:
    """`file:line (layer) → module (layer)` for every import of a layer to the importer's left."""
    bad = []
    for path in _files(src):
        mod = module_name(path, src)
        here = layer_of(mod)
        if here is None:
            continue
        for line, target in imported_modules(path.read_text(), mod, path.name == "__init__.py"):
            there = layer_of(target)
            if there is not None and LAYERS.index(there) < LAYERS.index(here):
                bad.append(f"{path.relative_to(src.parent)}:{line} ({here}) → {target} ({there})")
    return bad


def core_violations(src: Path = SRC) -> list[str]:
    """`file:line → module` for every import in `core/` of anything but torch, the stdlib or `credo.core`."""
    bad = []
    for path in sorted((src / "credo" / "core").rglob("*.py")):
        mod = module_name(path, src)
        for line, target in imported_modules(path.read_text(), mod, path.name == "__init__.py"):
            root = target.split(".")[0]
            if not (root in CORE_ALLOWED or target == "credo.core" or target.startswith("credo.core.")):
                bad.append(f"{path.relative_to(src.parent)}:{line} → {target}")
    return bad


def long_functions(src: Path = SRC, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """`file:line name (n lines)` for every function or method longer than `limit` lines (`def` to last line,
    decorators not counted; a nested function counts on its own and inside its parent)."""
    bad = []
    for path in _files(src):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    bad.append(f"{path.relative_to(src.parent)}:{node.lineno} {node.name} ({n} lines)")
    return bad


# ---- the checkers on hand-written sources -----------------------------------------------------------------


@pytest.mark.parametrize(("source", "module", "is_package", "expected"), [
    ("import torch\nfrom credo.data import Sample", "credo.core.x", False, [(1, "torch"), (2, "credo.data")]),
    ("from ..data import Batch", "credo.core.credit", False, [(1, "credo.data")]),
    ("from . import terms", "credo.rewards", True, [(1, "credo.rewards")]),
    ("from .terms import TERMS", "credo.rewards", True, [(1, "credo.rewards.terms")]),
    ("from .steps import x", "credo.rewards.terms", False, [(1, "credo.rewards.steps")]),
    ("from credo import data, trainer", "credo.envs.base", False, [(1, "credo.data"), (1, "credo.trainer")]),
    ("def f():\n    from credo.trainer.loop import train\n", "credo.envs.zoom", False,
     [(2, "credo.trainer.loop")]),  # a function-level import counts
    ("import importlib\nm = importlib.import_module('credo.cli')", "credo.models.x", False,
     [(1, "importlib"), (2, "credo.cli")]),
])
def test_imported_modules_resolves_every_form(source, module, is_package, expected):
    assert imported_modules(source, module, is_package) == expected


def test_layer_order_and_names():
    assert layer_of("credo.data") == "data" and layer_of("credo.rewards.terms") == "rewards"
    assert layer_of("credo") is None and layer_of("torch.nn") is None
    assert LAYERS.index("analysis") == LAYERS.index("rollout") + 1 == LAYERS.index("envs") - 1
    with pytest.raises(ValueError, match="declared layer"):
        layer_of("credo.diagnostics.x")


def _write(src: Path, rel: str, text: str) -> None:
    path = src / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_checkers_on_a_fake_package(tmp_path):
    src = tmp_path / "src"
    _write(src, "credo/__init__.py", "")
    _write(src, "credo/data.py", "import torch\n")
    _write(src, "credo/core/__init__.py", "")
    _write(src, "credo/core/credit.py", "import math\nimport numpy\nfrom ..data import Batch\n")
    _write(src, "credo/envs/zoom.py", "from credo.data import Sample\n\n\ndef f():\n    from credo.trainer import x\n")
    _write(src, "credo/rollout/rethink.py", "from credo.analysis import grams\nfrom credo.envs import runner\n")
    _write(src, "credo/analysis/grams.py", "from credo.rollout.backend import Generator\n")
    assert layer_violations(src) == [
        "src/credo/analysis/grams.py:1 (analysis) → credo.rollout.backend (rollout)",
        "src/credo/core/credit.py:3 (core) → credo.data (data)",
        "src/credo/envs/zoom.py:5 (envs) → credo.trainer (trainer)",
    ]
    assert core_violations(src) == ["src/credo/core/credit.py:2 → numpy", "src/credo/core/credit.py:3 → credo.data"]
    body = "def short():\n" + "    x = 1\n" * 79 + "\n\ndef long():\n" + "    x = 1\n" * 80  # 80 and 81 lines
    _write(src, "credo/models/tiny.py", body)
    assert long_functions(src) == ["src/credo/models/tiny.py:83 long (81 lines)"]


def test_every_module_is_in_a_declared_layer():
    for path in _files(SRC):
        layer_of(module_name(path))  # raises for an undeclared top-level module


# ---- the package ------------------------------------------------------------------------------------------


def test_imports_flow_one_way():
    bad = layer_violations()
    assert not bad, f"{len(bad)} upward import(s) (order {' → '.join(LAYERS)}):\n" + "\n".join(bad)


def test_core_imports_only_torch_and_the_standard_library():
    bad = core_violations()
    assert not bad, f"{len(bad)} import(s) in core/ beyond torch and the stdlib:\n" + "\n".join(bad)


def test_no_function_longer_than_80_lines():
    bad = long_functions()
    assert not bad, f"{len(bad)} function(s) over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(bad)
