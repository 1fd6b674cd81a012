"""Token credit transforms: token advantages [B, T] and the batch's credit inputs → advantages [B, T].

A credit transform redistributes a sequence's advantage over its tokens (HICRA amplifies planning tokens;
MoCA routes credit to perception or reasoning segments; first_error blames a failed chain's first wrong step).
One signature: ``fn(advantages, batch, cfg) -> advantages``. ``batch`` is any object with the `CreditInputs`
fields (``credo.data.Batch`` is one: each field is filled by the stage that knows it); ``cfg`` any object with the
`CreditConfig` constants (``credo.trainer.config.RLConfig`` is one). A method names the inputs it needs in
``NEEDS`` so the trainer can fill them without testing method names.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class CreditInputs(Protocol):
    """What credit methods read from a batch (``credo.data.Batch``); optional fields are None when not computed."""

    segment_ids: Tensor  # [B, T] long, credo.data.SEGMENTS labels
    correct: Tensor | None  # [B] bool, the verifier's verdict
    planning_mask: Tensor | None  # [B, T] bool, HICRA's planning tokens
    perception_ok: Tensor | None  # [B] bool, MoCA's R_P
    step_labels: Tensor | None  # [B, T] long, BEFORE / WRONG / AFTER (first_error)


class CreditConfig(Protocol):
    """The methods' constants (``credo.trainer.config.RLConfig`` has them)."""

    hicra_alpha: float  # α, HICRA's planning amplification (paper 0.2)
    moca_alpha_protect: float  # α_protect (MoCA; inferred 0.2)
    moca_alpha_punish: float  # α_punish (MoCA; inferred 0.2)


def _need(value: Tensor | None, method: str, field: str, shape: tuple[int, ...]) -> Tensor:
    if value is None:
        raise ValueError(f"credit {method!r} needs batch.{field}, which no stage filled")
    if tuple(value.shape) != shape:
        raise ValueError(f"credit {method!r}: batch.{field} {tuple(value.shape)} must be {shape}")
    return value


def identity(advantages: Tensor, batch: CreditInputs | None = None, cfg: CreditConfig | None = None) -> Tensor:
    """No credit transform: A'_{i,t} = A_{i,t} (the outcome advantage on every token, as in GRPO).

    ``batch`` and ``cfg`` are unused. Returns the input tensor itself, not a copy.
    """
    return advantages  # [B, T]


def hicra(advantages: Tensor, batch: CreditInputs, cfg: CreditConfig) -> Tensor:
    """HICRA planning-token credit ("Emergent Hierarchical Reasoning in LLMs through RL", arXiv 2509.03646).

    Â_{i,t} = A_{i,t} + α·|A_{i,t}| if t ∈ S_i (planning token), else A_{i,t}; α = 0.2.

    For A > 0 a planning token gets (1 + α)·A, for A < 0 it gets (1 − α)·A (less blame), execution tokens keep A.
    ``batch.planning_mask`` [B, T] marks S_i (see ``credo.analysis.strategic_grams.apply_hicra``); it is a
    constant, no gradient flows through it; α = ``cfg.hicra_alpha``. Padding and prompt positions already carry
    A = 0 (advantages are broadcast over ``loss_mask``), so they stay 0. No public code exists; departure: the
    paper's planning set comes from semantically clustered strategic grams, credo's from exact n-gram groups.
    """
    planning = _need(batch.planning_mask, "hicra", "planning_mask", tuple(advantages.shape))
    mask = planning.to(device=advantages.device, dtype=advantages.dtype)  # [B, T], 0/1
    return advantages + cfg.hicra_alpha * advantages.abs() * mask  # [B, T]


PERCEPTION = 3  # segment id of perception tokens: credo.data.SEGMENTS["perception"] (core imports only torch)


def moca(advantages: Tensor, batch: CreditInputs, cfg: CreditConfig) -> Tensor:
    """MoCA advantage routing ("Bad Seeing or Bad Thinking? Rewarding Perception for Multimodal Reasoning",
    arXiv 2605.14054).

    For a failed trajectory (R_O = 0) and a perception token t: A'_t = A + α_protect·|A| if R_P = 1 ("bad
    thinking": protect the seeing), A'_t = A − α_punish·|A| if R_P = 0 ("bad seeing": blame the seeing);
    reasoning and answer tokens, and every token of a successful trajectory, keep A.

    Perception tokens are ``batch.segment_ids == PERCEPTION``; failed = not ``batch.correct`` (the verifier's
    verdict), R_P = ``batch.perception_ok``; both [B] constants, no gradient flows through them; padding and prompt
    positions carry A = 0 and stay 0. α_protect, α_punish = ``cfg.moca_alpha_protect``, ``cfg.moca_alpha_punish``.
    No public code exists; departure: α_protect = α_punish = 0.2 are inferred (mirroring HICRA's α), the paper's
    values are not public.
    """
    B = advantages.shape[0]
    correct = _need(batch.correct, "moca", "correct", (B,))
    perception_ok = _need(batch.perception_ok, "moca", "perception_ok", (B,))
    dev, dtype = advantages.device, advantages.dtype
    failed = ~correct.to(device=dev, dtype=torch.bool)[:, None]  # [B, 1]
    ok = perception_ok.to(device=dev, dtype=torch.bool)[:, None]  # [B, 1]
    protect = torch.tensor(cfg.moca_alpha_protect, dtype=dtype, device=dev)
    punish = torch.tensor(-cfg.moca_alpha_punish, dtype=dtype, device=dev)
    sign = torch.where(ok, protect, punish)  # [B, 1]: +α_protect or −α_punish, in the advantages' dtype
    route = (batch.segment_ids.to(dev) == PERCEPTION) & failed  # [B, T]: perception tokens of failed rows
    return advantages + route.to(dtype) * sign * advantages.abs()  # [B, T]


BEFORE, WRONG, AFTER = 0, 1, 2  # first_error's per-token step labels


def first_error(advantages: Tensor, batch: CreditInputs, cfg: CreditConfig | None = None) -> Tensor:
    """Step-verified credit: a failed sequence's blame lands on its first wrong step only (credo's own method).

    With W_i the tokens of the first wrong step of sequence i (from a step checker that knows the correct
    steps, an oracle process reward) and A_i its outcome advantage:

        A'_{i,t} = A_{i,t}          if A_{i,t} ≥ 0 or sequence i has no located wrong step
        A'_{i,t} = A_{i,t}·1[t ∈ W_i]  otherwise (A < 0): no blame before the error, none after it

    Why: with outcome credit every token of a failed chain is pushed down, including the correct steps before the
    slip and the correct arithmetic after it (conditioned on a wrong value); only the slip explains the failure.
    Successful sequences keep their credit on every token. ``batch.step_labels`` [B, T] holds WRONG on the tokens
    of the first wrong step, AFTER past it, BEFORE elsewhere (``credo.rewards.steps.step_labels``); padding and
    prompt positions carry A = 0 and stay 0. Departure: outcome-level GRPO advantages, masked per token; no
    learned process reward model.
    """
    steps = _need(batch.step_labels, "first_error", "step_labels", tuple(advantages.shape)).to(advantages.device)
    located = (steps == WRONG).any(dim=1, keepdim=True)  # [B, 1]
    blame_only_the_step = located & (advantages < 0)  # [B, T]
    return torch.where(blame_only_the_step & (steps != WRONG), torch.zeros_like(advantages), advantages)  # [B, T]


CREDIT = {"none": identity, "hicra": hicra, "moca": moca, "first_error": first_error}
# the batch fields each method reads beyond segment_ids (the trainer fills them through its input providers)
NEEDS: dict[str, tuple[str, ...]] = {
    "none": (), "hicra": ("planning_mask",), "moca": ("correct", "perception_ok"), "first_error": ("step_labels",),
}
