"""Analyses of rollouts that feed credit transforms and diagnostics (strategic grams and planning tokens for HICRA).

Unlike ``core/`` these modules see text and tokenizers; they hand ``core`` plain tensors (a planning mask [B, T]).
"""

from credo.analysis.strategic_grams import (
    SEEDS,
    StrategicGrams,
    apply_hicra,
    entropy_split,
    hicra_metrics,
    mine_grams,
    planning_mask,
    semantic_entropy,
)

__all__ = [
    "SEEDS",
    "StrategicGrams",
    "apply_hicra",
    "entropy_split",
    "hicra_metrics",
    "mine_grams",
    "planning_mask",
    "semantic_entropy",
]
