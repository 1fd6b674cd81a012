"""Environments: datasets of `Example`s with their verifiers. `make_env` builds one from the config."""

from __future__ import annotations

import importlib
from typing import Any

from credo.envs.base import Environment, Score

# name -> "module:factory"; imported only when chosen
ENVS: dict[str, str] = {
    "arith": "credo.envs.arith:from_config",
}


def make_env(cfg: Any) -> Environment:
    """Build the environment named `cfg.name` from an `EnvConfig`."""
    if cfg.name not in ENVS:
        raise ValueError(f"unknown environment {cfg.name!r}; available: {', '.join(sorted(ENVS))}")
    module, attr = ENVS[cfg.name].split(":")
    return getattr(importlib.import_module(module), attr)(cfg)


__all__ = ["ENVS", "Environment", "Score", "make_env"]
