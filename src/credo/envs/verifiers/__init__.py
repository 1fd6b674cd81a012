"""Total verifiers: `verify(completion, reference) -> Score`, never raising.

`VERIFIERS` maps a config name (`env.verifier`) to `"module:function"`; a user's own verifier is given as an
import path of the same form. Every function takes `(completion: str, reference: Any)` and returns a `Score`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from credo.envs.base import Score

VERIFIERS: dict[str, str] = {
    "integer": "credo.envs.verifiers.answer_tag:verify_integer",
    "math": "credo.envs.verifiers.math:verify_math",
    "mcq": "credo.envs.verifiers.choice:verify_choice",
    "numeric": "credo.envs.verifiers.numeric:verify_numeric",
    "typed": "credo.envs.verifiers.typed:verify_typed",  # Structured Verbal Verification (MoCA)
}


def get_verifier(name: str) -> Callable[[str, Any], Score]:
    """The verifier registered as `name`, or imported from `"module:function"`; ValueError names a bad one."""
    target = VERIFIERS.get(name, name)
    if ":" not in target:
        raise ValueError(f"unknown verifier {name!r}; available: {', '.join(sorted(VERIFIERS))} "
                         "or an import path 'module:function'")
    module, attr = target.split(":", 1)
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"verifier {name!r}: cannot import {target!r}: {e}") from e


__all__ = ["VERIFIERS", "get_verifier"]
