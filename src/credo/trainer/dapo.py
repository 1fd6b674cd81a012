"""DAPO (arXiv 2503.14476) pieces that act on rollouts: soft overlong punishment and dynamic sampling with refill.

The maths is in the core (``core/shaping.py::overlong_penalty``, ``core/selection.py::dynamic_sampling_keep``);
this file applies them to ``Sample``s and runs the extra rollout rounds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from credo.core.selection import dynamic_sampling_keep
from credo.core.shaping import overlong_penalty
from credo.data import Sample

# rollout_fn(n_prompts, first_group_id) -> (samples, sequence advantages [B]): takes the next n_prompts prompts,
# rolls out their groups with group ids first_group_id, first_group_id + 1, ..., scores them and computes advantages.
RolloutFn = Callable[[int, int], tuple[list[Sample], Tensor]]


def apply_overlong_penalty(
    samples: list[Sample], max_len: int, cache_len: int, factor: float = 1.0
) -> dict[str, float]:
    """Add DAPO's soft overlong punishment to each ``Sample.reward`` (and ``reward_parts["overlong"]``).

    Length = completion tokens (``len(completion_ids)``), L_max = the generation cap. ``cache_len = 0`` is off
    (rewards untouched, zero metrics). Call it after the verifier rewards and before advantages.
    Returns ``reward/overlong`` (mean penalty) and ``rollout/overlong_share`` (share of samples penalised).
    """
    lengths = torch.tensor([len(s.completion_ids) for s in samples], dtype=torch.long)  # [B]
    penalty = overlong_penalty(lengths, max_len, cache_len, factor)  # [B]
    if cache_len > 0:
        for s, p in zip(samples, penalty.tolist(), strict=True):
            s.reward += p
            s.reward_parts["overlong"] = p
    n = max(1, len(samples))
    return {"reward/overlong": float(penalty.sum()) / n, "rollout/overlong_share": float((penalty < 0).sum()) / n}


def dynamic_sampling_fill(
    rollout_fn: RolloutFn, target_groups: int, max_rounds: int, prompts_per_round: int | None = None
) -> tuple[list[Sample], dict[str, float]]:
    """DAPO dynamic sampling (§3.2): roll out until ``target_groups`` informative groups are found, then train on them.

    Round 0 rolls out ``target_groups`` prompts; while fewer than ``target_groups`` groups have a non-zero
    advantage, up to ``max_rounds`` extra rounds each roll out ``prompts_per_round`` more (default
    ``target_groups``, verl's ``gen_batch_size = train_batch_size``). Group ids run on across rounds, so they stay
    unique. Kept: whole informative groups, the earliest ``target_groups`` of them
    (``core.selection.dynamic_sampling_keep``). Whole groups are kept, so recomputing the group advantages of
    the returned samples gives the values ``rollout_fn`` returned.
    Departure: verl raises once ``max_num_gen_batches`` rounds are spent; credo trains on the informative
    groups it has (``dapo/short`` = 1) and never returns an uninformative group.
    Metrics: ``dapo/rounds`` (extra rounds used), ``dapo/prompts`` (prompts rolled out), ``dapo/informative_groups``
    (groups kept), ``dapo/informative_share_first`` (share of informative groups in round 0), ``dapo/short``.
    """
    per_round = prompts_per_round or target_groups
    samples: list[Sample] = []
    advs: list[Tensor] = []
    n_prompts, rounds, first_share = 0, 0, 0.0
    while True:
        n = target_groups if rounds == 0 else per_round
        new, adv = rollout_fn(n, n_prompts)
        samples += new
        advs.append(adv.detach().cpu().reshape(-1))
        n_prompts += n
        gid = torch.tensor([s.group_id for s in samples], dtype=torch.long)  # [B_all]
        keep, missing = dynamic_sampling_keep(torch.cat(advs), gid, target_groups)
        if rounds == 0:
            first_share = (target_groups - missing) / max(1, target_groups)
        if missing == 0 or rounds >= max_rounds:
            break
        rounds += 1
    kept = [samples[i] for i in keep.tolist()]
    metrics = {
        "dapo/rounds": float(rounds),
        "dapo/prompts": float(n_prompts),
        "dapo/informative_groups": float(target_groups - missing),
        "dapo/informative_share_first": first_share,
        "dapo/short": float(missing > 0),
    }
    return kept, metrics
