"""DAPO: soft overlong punishment at its boundaries, the dynamic-sampling keep rule, and the refill loop."""

import pytest
import torch

from credo.core.advantages import grpo
from credo.core.selection import dynamic_sampling_keep
from credo.core.shaping import overlong_penalty
from credo.data import Sample, Score
from credo.rewards.terms import RewardModel, TermContext, term_weights
from credo.trainer.config import Config, ConfigError, load_config
from credo.trainer.dapo import dynamic_sampling_fill


def _sample(group: int, reward: float, n_tokens: int = 1) -> Sample:
    return Sample(
        example_id=f"p{group}", group_id=group, prompt_ids=torch.tensor([1]),
        completion_ids=torch.ones(n_tokens, dtype=torch.long), loss_mask=torch.ones(n_tokens),
        segment_ids=torch.ones(n_tokens, dtype=torch.long),
        sampler_logprobs=torch.zeros(n_tokens), finish_reason="stop", reward=reward,
    )


def test_overlong_penalty_boundaries():
    # L_max = 20, L_cache = 4: free up to 16, then (16 − L)/4, −1 from 20 on (and beyond, clamped)
    lengths = torch.tensor([0, 15, 16, 17, 18, 19, 20, 21, 100])
    out = overlong_penalty(lengths, max_len=20, cache_len=4)
    assert out.tolist() == [0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]
    assert overlong_penalty(lengths, 20, 4, factor=0.5).tolist()[3] == -0.125
    assert overlong_penalty(lengths, 20, 0).tolist() == [0.0] * 9  # off
    # paper scale: L_max = 20480, L_cache = 4096 → free up to 16384, −0.5 at 18432
    assert overlong_penalty(torch.tensor([16384, 18432, 20480]), 20480, 4096).tolist() == [0.0, -0.5, -1.0]


def test_overlong_term_adds_to_the_outcome():
    samples = [_sample(0, 0.0, n_tokens=n) for n in (3, 7, 8)]
    for s in samples:
        s.verdict = Score(1.0)
    cfg = Config()
    cfg.rl.max_new_tokens, cfg.rl.overlong_cache = 8, 2  # free up to 6
    weights = term_weights(cfg)
    assert weights == {"outcome": 1.0, "overlong": 1.0}
    m = RewardModel(weights, TermContext(cfg=cfg, env=None))(samples, [])
    assert [s.reward for s in samples] == [1.0, 0.5, 0.0]
    assert [s.reward_parts["overlong"] for s in samples] == [0.0, -0.5, -1.0]
    assert m["reward/overlong"] == -0.5 and m["rollout/overlong_share"] == pytest.approx(2 / 3)
    assert m["reward/mean"] == pytest.approx(0.5)
    cfg.rl.overlong_cache = 0  # off: no term at all
    assert "overlong" not in term_weights(cfg)


def test_dynamic_sampling_keep():
    # groups 7 (informative), 3 (all zero), 5 (informative), 9 (informative); target 2 → keep 5 and 7 (smallest ids)
    adv = torch.tensor([0.5, -0.5, 0.0, 0.0, 1.0, -1.0, 0.2, -0.2])
    gid = torch.tensor([7, 7, 3, 3, 5, 5, 9, 9])
    keep, missing = dynamic_sampling_keep(adv, gid, target_groups=2)
    assert keep.tolist() == [0, 1, 4, 5] and missing == 0
    keep, missing = dynamic_sampling_keep(adv, gid, target_groups=5)
    assert keep.tolist() == [0, 1, 4, 5, 6, 7] and missing == 2
    keep, missing = dynamic_sampling_keep(torch.zeros(4), torch.tensor([0, 0, 1, 1]), target_groups=3)
    assert keep.numel() == 0 and missing == 3


def _fake_rollout(rewards_per_prompt: list[list[float]], calls: list[tuple[int, int]]):
    """A rollout_fn serving prompts in order; each prompt's group rewards come from ``rewards_per_prompt``."""
    pos = [0]

    def rollout_fn(n_prompts: int, first_group_id: int):
        calls.append((n_prompts, first_group_id))
        samples = []
        for i in range(n_prompts):
            rs = rewards_per_prompt[pos[0] % len(rewards_per_prompt)]
            pos[0] += 1
            samples += [_sample(first_group_id + i, r) for r in rs]
        gid = torch.tensor([s.group_id for s in samples])
        return samples, grpo(torch.tensor([s.reward for s in samples]), gid)

    return rollout_fn


def test_dynamic_sampling_fill_refills_until_target():
    # prompts in order: informative, solved, informative, unsolved, informative, informative, ...
    pattern = [[1, 0], [1, 1], [0, 1], [0, 0], [1, 0], [0, 1]]
    calls: list[tuple[int, int]] = []
    samples, m = dynamic_sampling_fill(_fake_rollout(pattern, calls), target_groups=4, max_rounds=3)
    # round 0: prompts 0-3 → 2 informative (groups 0, 2); round 1: prompts 4-7 → groups 4, 5 (+ 6, dropped)
    assert calls == [(4, 0), (4, 4)]
    assert sorted({s.group_id for s in samples}) == [0, 2, 4, 5] and len(samples) == 8
    assert m == {"dapo/rounds": 1.0, "dapo/prompts": 8.0, "dapo/informative_groups": 4.0,
                 "dapo/informative_share_first": 0.5, "dapo/short": 0.0}
    # whole groups: recomputing advantages on the kept samples gives no zero group
    gid = torch.tensor([s.group_id for s in samples])
    assert (grpo(torch.tensor([s.reward for s in samples]), gid).abs() > 0).all()


def test_dynamic_sampling_fill_stops_after_max_rounds():
    calls: list[tuple[int, int]] = []
    pattern = [[1, 1], [1, 1], [1, 1], [0, 1]]  # one informative prompt in four
    samples, m = dynamic_sampling_fill(_fake_rollout(pattern, calls), 4, max_rounds=2, prompts_per_round=2)
    assert calls == [(4, 0), (2, 4), (2, 6)]  # round 0 + 2 extra rounds of 2 prompts
    assert sorted({s.group_id for s in samples}) == [3, 7]
    assert m["dapo/short"] == 1.0 and m["dapo/rounds"] == 2.0 and m["dapo/informative_groups"] == 2.0
    # max_rounds = 0: one rollout, informative groups only
    calls.clear()
    samples, m = dynamic_sampling_fill(_fake_rollout(pattern, calls), 4, max_rounds=0)
    assert calls == [(4, 0)] and {s.group_id for s in samples} == {3} and m["dapo/short"] == 1.0


def test_dynamic_sampling_fill_no_extra_round_when_full():
    calls: list[tuple[int, int]] = []
    samples, m = dynamic_sampling_fill(_fake_rollout([[1, 0]], calls), 3, max_rounds=3)
    assert calls == [(3, 0)] and len(samples) == 6 and m["dapo/rounds"] == 0.0
    assert m["dapo/informative_share_first"] == 1.0


def test_config_switches():
    cfg = load_config(None, ["rl.dynamic_sampling=true", "rl.overlong_cache=16"])
    assert cfg.rl.dynamic_sampling and cfg.rl.dynamic_max_rounds == 3 and cfg.rl.overlong_cache == 16
    with pytest.raises(ConfigError, match="rl.overlong_cache"):
        load_config(None, ["rl.overlong_cache=1000"])  # larger than rl.max_new_tokens = 128
    with pytest.raises(ConfigError, match="rl.dynamic_max_rounds"):
        load_config(None, ["rl.dynamic_max_rounds=-1"])
