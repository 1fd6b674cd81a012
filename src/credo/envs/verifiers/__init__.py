"""Total verifiers: `verify(completion, reference) -> Score`, never raising.

`VERIFIERS` maps a config name (`env.verifier`) to `"module:function"`; a user's own verifier is given as an
import path of the same form. Every function takes `(completion: str, reference: Any)` and returns a `Score`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from math import isfinite  # not `import math`: the submodule `verifiers.math` rebinds that name here
from typing import Any

from credo.data import InputError
from credo.envs.base import Score

VERIFIERS: dict[str, str] = {
    "integer": "credo.envs.verifiers.answer_tag:verify_integer",
    "math": "credo.envs.verifiers.math:verify_math",
    "math_tagged": "credo.envs.verifiers.math:verify_math_tagged",  # math, the answer required in a tag or box
    "mcq": "credo.envs.verifiers.choice:verify_choice",
    "number_list": "credo.envs.verifiers.number_list:verify_number_list",
    "numeric": "credo.envs.verifiers.numeric:verify_numeric",
    "typed": "credo.envs.verifiers.typed:verify_typed",  # Structured Verbal Verification (MoCA)
}


def get_verifier(name: str) -> Callable[[str, Any], Score]:
    """The verifier registered as `name`, or imported from `"module:function"`; ValueError names a bad one."""
    target = VERIFIERS.get(name, name)
    if ":" not in target:
        raise InputError(f"unknown verifier {name!r}; available: {', '.join(sorted(VERIFIERS))} "
                         "or an import path 'module:function'")
    module, attr = target.split(":", 1)
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"verifier {name!r}: cannot import {target!r}: {e}") from e


def call_verifier(verifier: Callable[[str, Any], Score], completion: str, reference: Any, name: str = "") -> Score:
    """`verifier(completion, reference)`, made total: an exception, or a result that is not a `Score` with a finite
    value, gives `Score.unscorable` with the reason (DESIGN.md, reliability rules), never a 0.

    >>> call_verifier(lambda c, r: 1 / 0, "x", 1, "broken").reason
    'verifier broken raised ZeroDivisionError: division by zero'
    >>> call_verifier(lambda c, r: Score(float("nan")), "x", 1, "nan").status
    'unscorable'
    """
    try:
        score = verifier(completion, reference)
    except Exception as e:  # a user's verifier may raise; the sample is then unscorable
        return Score.unscorable(f"verifier {name} raised {type(e).__name__}: {e}")
    if not isinstance(score, Score) or not isfinite(score.value):
        return Score.unscorable(f"verifier {name} returned {score!r:.80}, not a Score with a finite value")
    return score


__all__ = ["VERIFIERS", "call_verifier", "get_verifier"]
