"""DAPO (arXiv 2503.14476) dynamic sampling with refill: the extra rollout rounds.

The maths is in the core (``core/selection.py::dynamic_sampling_keep``); the soft overlong punishment
(``core/shaping.py::overlong_penalty``) is the reward term ``overlong`` (``rewards/terms.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from credo.core.selection import dynamic_sampling_keep, nonzero_groups
from credo.data import Sample
from credo.trainer import distributed as dist

# rollout_fn(n_prompts, first_group_id) -> (samples, sequence advantages [B]): takes the next n_prompts prompts,
# rolls out their groups with group ids first_group_id, first_group_id + 1, ..., scores them and computes advantages.
RolloutFn = Callable[[int, int], tuple[list[Sample], Tensor]]


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
    Data parallel (torchrun): the counts are global. ``rollout_fn`` rolls out this rank's share of each round's
    prompts; after each round the ranks' informative-group counts are gathered, so every rank takes the same
    decision to stop or roll again (no rank waits in a collective another skipped), and the earliest
    ``target_groups`` groups of the whole run are kept, ordered by round, then rank (``_global_quota``): a rank
    keeps its own earliest ``quota`` informative groups. One process: the same with one rank.
    Departure: verl raises once ``max_num_gen_batches`` rounds are spent; credo trains on the informative
    groups it has (``dapo/short`` = 1) and never returns an uninformative group.
    Metrics (global): ``dapo/rounds`` (extra rounds used), ``dapo/prompts`` (prompts rolled out),
    ``dapo/informative_groups`` (groups kept), ``dapo/informative_share_first`` (share of informative groups in
    round 0), ``dapo/short``.
    """
    per_round = prompts_per_round or target_groups
    samples: list[Sample] = []
    advs: list[Tensor] = []
    found: list[int] = []  # informative groups per round, this rank
    n_prompts, rounds, first_share = 0, 0, 0.0
    while True:
        n = target_groups if rounds == 0 else per_round
        new, adv = rollout_fn(n, n_prompts)
        adv = adv.detach().cpu().reshape(-1)
        samples += new
        advs.append(adv)
        found.append(_informative_count(adv, new))
        n_prompts += n
        quota, missing = _global_quota(found, target_groups)
        if rounds == 0:
            first_share = (target_groups - missing) / max(1, target_groups)
        if missing == 0 or rounds >= max_rounds:
            break
        rounds += 1
    gid = torch.tensor([s.group_id for s in samples], dtype=torch.long)  # [B_all]
    keep, _ = dynamic_sampling_keep(torch.cat(advs), gid, quota)
    kept = [samples[i] for i in keep.tolist()]
    metrics = {
        "dapo/rounds": float(rounds),
        "dapo/prompts": float(n_prompts),
        "dapo/informative_groups": float(target_groups - missing),
        "dapo/informative_share_first": first_share,
        "dapo/short": float(missing > 0),
    }
    return kept, metrics


def _informative_count(advantages: Tensor, samples: list[Sample]) -> int:
    """Informative groups (``core.selection.nonzero_groups``) among one round's samples."""
    if not samples:
        return 0
    gid = torch.tensor([s.group_id for s in samples], dtype=torch.long)  # [B_round]
    return int(torch.unique(gid[nonzero_groups(advantages, gid)]).numel())


def _global_quota(found: list[int], target_groups: int) -> tuple[int, int]:
    """(informative groups this rank keeps, groups still missing globally) from every rank's per-round counts
    ``found`` (a collective under torchrun: every rank calls it once per round, with as many rounds).

    The first ``target_groups`` informative groups are taken round by round and, within a round, rank by rank.
    One process: (min(Σ found, target), max(0, target − Σ found))."""
    table = dist.all_gather_object(list(found))  # [world][rounds]
    remaining, mine = target_groups, 0
    for r in range(len(found)):
        for k, counts in enumerate(table):
            take = min(counts[r], remaining)
            remaining -= take
            if k == dist.rank():
                mine += take
    return mine, remaining
