"""Token credit transforms: token advantages [B, T] and per-token segment labels [B, T] → advantages [B, T].

A credit transform redistributes a sequence's advantage over its tokens (HICRA amplifies planning tokens;
MoCA routes credit to perception or reasoning segments). Signature:
``fn(advantages, segment_ids, params=None) -> advantages``; ``params`` is the method's own constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def identity(advantages: Tensor, segment_ids: Tensor, params: object | None = None) -> Tensor:
    """No credit transform: A'_{i,t} = A_{i,t} (the outcome advantage on every token, as in GRPO).

    ``segment_ids`` and ``params`` are unused. Returns the input tensor itself, not a copy.
    """
    return advantages  # [B, T]


@dataclass
class HicraParams:
    """Inputs of ``hicra`` beyond advantages and segments.

    The planning mask travels here rather than as a segment label: a planning token is a tag over the reasoning
    (or answer) segment, not a segment of its own, and ``segment_ids`` holds one label per token.
    """

    planning_mask: Tensor  # [B, T] bool: 1 on planning tokens (strategic-gram matches), aligned with advantages
    alpha: float = 0.2  # α, the planning-token amplification (HICRA's value)


def hicra(advantages: Tensor, segment_ids: Tensor, params: HicraParams | None = None) -> Tensor:
    """HICRA planning-token credit ("Emergent Hierarchical Reasoning in LLMs through RL", arXiv 2509.03646).

    Â_{i,t} = A_{i,t} + α·|A_{i,t}| if t ∈ S_i (planning token), else A_{i,t}; α = 0.2.

    For A > 0 a planning token gets (1 + α)·A, for A < 0 it gets (1 − α)·A (less blame), execution tokens keep A.
    ``params.planning_mask`` [B, T] marks S_i (see ``credo.analysis.strategic_grams.apply_hicra``); it is a
    constant, no gradient flows through it. ``segment_ids`` is unused: padding and prompt positions already carry
    A = 0 (advantages are broadcast over ``loss_mask``), so they stay 0. No public code exists; departure: the
    paper's planning set comes from semantically clustered strategic grams, credo's from exact n-gram groups.
    """
    if params is None:
        raise ValueError("hicra needs params=HicraParams(planning_mask=[B, T] bool, alpha=...)")
    mask = params.planning_mask.to(device=advantages.device, dtype=advantages.dtype)  # [B, T], 0/1
    if mask.shape != advantages.shape:
        raise ValueError(f"hicra: planning_mask {tuple(mask.shape)} must match advantages {tuple(advantages.shape)}")
    return advantages + params.alpha * advantages.abs() * mask  # [B, T]


PERCEPTION = 3  # segment id of perception tokens: credo.data.SEGMENTS["perception"] (core imports only torch)


@dataclass
class MocaParams:
    """Inputs of ``moca`` beyond advantages and segments: per-sequence outcome and perception verdicts.

    Built from the samples' reward parts by ``credo.rewards.perception.moca_params``.
    """

    failed: Tensor  # [B] bool: the outcome failed (R_O = 0)
    perception_ok: Tensor  # [B] bool: R_P = 1, the blindfolded reasoner answered right from the perception alone
    alpha_protect: float = 0.2  # α_protect: credit added to correct perception of a failed trajectory
    alpha_punish: float = 0.2  # α_punish: extra blame on wrong perception of a failed trajectory
    perception_id: int = PERCEPTION  # the segment id that marks perception tokens


def moca(advantages: Tensor, segment_ids: Tensor, params: MocaParams | None = None) -> Tensor:
    """MoCA advantage routing ("Bad Seeing or Bad Thinking? Rewarding Perception for Multimodal Reasoning",
    arXiv 2605.14054).

    For a failed trajectory (R_O = 0) and a perception token t: A'_t = A + α_protect·|A| if R_P = 1 ("bad
    thinking": protect the seeing), A'_t = A − α_punish·|A| if R_P = 0 ("bad seeing": blame the seeing);
    reasoning and answer tokens, and every token of a successful trajectory, keep A.

    Perception tokens are ``segment_ids == params.perception_id``. ``failed`` and ``perception_ok`` are [B]
    constants, no gradient flows through them; padding and prompt positions carry A = 0 and stay 0.
    No public code exists; departure: α_protect = α_punish = 0.2 are inferred (mirroring HICRA's α), the paper's
    values are not public.
    """
    if params is None:
        raise ValueError("moca needs params=MocaParams(failed=[B] bool, perception_ok=[B] bool, ...)")
    B = advantages.shape[0]
    if params.failed.shape != (B,) or params.perception_ok.shape != (B,):
        raise ValueError(f"moca: failed {tuple(params.failed.shape)} and perception_ok "
                         f"{tuple(params.perception_ok.shape)} must both be ({B},)")
    dev, dtype = advantages.device, advantages.dtype
    failed = params.failed.to(device=dev, dtype=torch.bool)[:, None]  # [B, 1]
    ok = params.perception_ok.to(device=dev, dtype=torch.bool)[:, None]  # [B, 1]
    protect = torch.tensor(params.alpha_protect, dtype=dtype, device=dev)
    punish = torch.tensor(-params.alpha_punish, dtype=dtype, device=dev)
    sign = torch.where(ok, protect, punish)  # [B, 1]: +α_protect or −α_punish, in the advantages' dtype
    route = (segment_ids.to(dev) == params.perception_id) & failed  # [B, T]: perception tokens of failed rows
    return advantages + route.to(dtype) * sign * advantages.abs()  # [B, T]


BEFORE, WRONG, AFTER = 0, 1, 2  # first_error's per-token step labels


@dataclass
class FirstErrorParams:
    """Input of ``first_error`` beyond advantages: where each completion first goes wrong.

    Built by ``credo.rewards.steps.first_error_params`` from the environment's step checker.
    """

    steps: Tensor  # [B, T] long: WRONG on the tokens of the first wrong step, AFTER past it, BEFORE elsewhere


def first_error(advantages: Tensor, segment_ids: Tensor, params: FirstErrorParams | None = None) -> Tensor:
    """Step-verified credit: a failed sequence's blame lands on its first wrong step only (credo's own method).

    With W_i the tokens of the first wrong step of sequence i (from a step checker that knows the correct
    steps, an oracle process reward) and A_i its outcome advantage:

        A'_{i,t} = A_{i,t}          if A_{i,t} ≥ 0 or sequence i has no located wrong step
        A'_{i,t} = A_{i,t}·1[t ∈ W_i]  otherwise (A < 0): no blame before the error, none after it

    Why: with outcome credit every token of a failed chain is pushed down, including the correct steps before the
    slip and the correct arithmetic after it (conditioned on a wrong value); only the slip explains the failure.
    Successful sequences keep their credit on every token. ``segment_ids`` is unused; padding and prompt
    positions carry A = 0 and stay 0. Departure: outcome-level GRPO advantages, masked per token; no learned
    process reward model.
    """
    if params is None:
        raise ValueError("first_error needs params=FirstErrorParams(steps=[B, T] long)")
    steps = params.steps.to(advantages.device)
    if steps.shape != advantages.shape:
        raise ValueError(f"first_error: steps {tuple(steps.shape)} must match advantages {tuple(advantages.shape)}")
    located = (steps == WRONG).any(dim=1, keepdim=True)  # [B, 1]
    blame_only_the_step = located & (advantages < 0)  # [B, T]
    return torch.where(blame_only_the_step & (steps != WRONG), torch.zeros_like(advantages), advantages)


CREDIT = {"none": identity, "hicra": hicra, "moca": moca, "first_error": first_error}
