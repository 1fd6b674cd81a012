"""Environments: datasets of `Example`s with their verifiers. `make_env` builds one from the config."""

from __future__ import annotations

import importlib
from typing import Any

from credo.data import InputError
from credo.envs.base import Environment, Score

# name -> "module:factory"; imported only when chosen
ENVS: dict[str, str] = {
    "arith": "credo.envs.arith:from_config",
    "reasoning_gym": "credo.envs.reasoning_gym:from_config",  # name = "reasoning_gym:<task>"
    "dataset": "credo.envs.dataset:from_config",  # local JSONL / parquet / CSV files through `datasets`
    "zoom": "credo.envs.zoom:from_config",  # small details readable only after a crop_image call
    "frames": "credo.envs.frames:from_config",  # a frame sequence as thumbnails; one frame read via select_frames
    "scenes": "credo.envs.scenes:from_config",  # rendered shapes: perception claims + typed answers (vision)
}


def make_env(cfg: Any) -> Environment:
    """Build the environment named `cfg.name` from an `EnvConfig`.

    The name is a key of `ENVS`, a key with an argument (`"reasoning_gym:chain_sum"`: the factory reads the part
    after the colon from `cfg.name`), or, for a user's own environment, an import path
    `"package.module:factory"` whose factory takes the `EnvConfig`.
    """
    head = cfg.name.split(":", 1)[0]
    target = ENVS.get(cfg.name, ENVS.get(head, cfg.name))
    if ":" not in target:
        raise InputError(f"unknown environment {cfg.name!r}; available: {', '.join(sorted(ENVS))} "
                         "or an import path 'module:factory'")
    module, attr = target.split(":", 1)
    return getattr(importlib.import_module(module), attr)(cfg)


__all__ = ["ENVS", "Environment", "Score", "make_env"]
