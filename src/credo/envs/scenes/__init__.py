"""The `scenes` sandbox (vision): rendered shapes, questions that need seeing and thinking, checkable claims.

    credo train env.name=scenes env.options.max_objects=4 env.options.families=[count,compare]

Files: `scene.py` (objects on a grid), `render.py` (Pillow → uint8 [3, H, W]), `questions.py` (families),
`solver.py` (the exact program reasoner), `claims.py` (the perception grammar), `env.py` (`ScenesEnv`),
`attribution.py` (bad seeing vs bad thinking).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from credo.envs.scenes.env import ScenesConfig, ScenesEnv

OPTIONS = {f.name for f in dataclasses.fields(ScenesConfig)} - {"n_sft", "n_train", "n_test", "seed"}


def from_config(cfg: Any) -> ScenesEnv:  # cfg: trainer.config.EnvConfig
    """`ScenesEnv` from an `EnvConfig`: n_sft, n_train, n_test, seed, and `options` for the `ScenesConfig` rest."""
    options = dict(getattr(cfg, "options", None) or {})
    unknown = set(options) - OPTIONS
    if unknown:
        raise ValueError(f"scenes: unknown env.options {sorted(unknown)}; available: {', '.join(sorted(OPTIONS))}")
    families = options.get("families")
    if isinstance(families, str):  # an unquoted command-line list arrives as one string: "[count,compare]"
        options["families"] = tuple(re.findall(r"[a-z]+", families))
    elif families is not None:
        options["families"] = tuple(families)
    return ScenesEnv(ScenesConfig(n_sft=cfg.n_sft, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed, **options))


__all__ = ["ScenesConfig", "ScenesEnv", "from_config"]
