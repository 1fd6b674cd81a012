"""HICRA: planning-token credit (core), its registry entry, and the planning/execution and semantic-entropy metrics."""

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from credo.analysis.strategic_grams import StrategicGrams, apply_hicra, entropy_split, hicra_metrics, semantic_entropy
from credo.core.advantages import to_tokens
from credo.core.credit import CREDIT, NEEDS, hicra
from credo.data import SEGMENTS, Sample, collate
from credo.models.tokenizer import CharTokenizer
from credo.trainer.config import Config, RLConfig


def _batch(planning):
    """The credit inputs HICRA reads (`core.credit.CreditInputs`): only the planning mask is set."""
    planning = None if planning is None else torch.as_tensor(planning, dtype=torch.bool)
    shape = (1, 1) if planning is None else tuple(planning.shape)
    return SimpleNamespace(segment_ids=torch.zeros(shape, dtype=torch.long), correct=None, planning_mask=planning,
                           perception_ok=None, step_labels=None)


def test_hicra_hand_case_positive_and_negative_advantages():
    # row 0: A = +1 → planning tokens get 1 + 0.2·1 = 1.2; row 1: A = −0.5 → planning −0.5 + 0.2·0.5 = −0.4
    adv = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-0.5, -0.5, -0.5, 0.0]])
    mask = [[1, 0, 1, 0], [0, 1, 1, 1]]
    out = hicra(adv, _batch(mask), RLConfig(hicra_alpha=0.2))
    assert torch.allclose(out, torch.tensor([[1.2, 1.0, 1.2, 0.0], [-0.5, -0.4, -0.4, 0.0]]))
    assert torch.equal(adv, torch.tensor([[1.0, 1.0, 1.0, 0.0], [-0.5, -0.5, -0.5, 0.0]]))  # input untouched


def test_hicra_alpha_zero_and_empty_mask_are_identity():
    adv = torch.randn(3, 5)
    assert torch.equal(hicra(adv, _batch(torch.ones(3, 5)), RLConfig(hicra_alpha=0.0)), adv)
    assert torch.equal(hicra(adv, _batch(torch.zeros(3, 5)), RLConfig()), adv)


def test_hicra_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(4, 7, generator=g)
    mask = torch.rand(4, 7, generator=g) > 0.5
    out = hicra(adv, _batch(mask), RLConfig(hicra_alpha=0.3))
    for i in range(4):
        for t in range(7):
            a = float(adv[i, t])
            assert math.isclose(float(out[i, t]), a + 0.3 * abs(a) if mask[i, t] else a, rel_tol=1e-6)


def test_hicra_keeps_dtype_and_gradient_through_advantages_only():
    adv = torch.tensor([[2.0, -2.0]], dtype=torch.float64, requires_grad=True)
    out = hicra(adv, _batch([[True, True]]), RLConfig())
    assert out.dtype == torch.float64
    out.sum().backward()
    assert adv.grad.tolist() == [[1.2, 0.8]]  # d/dA (A + α|A|) = 1 + α·sign(A)


def test_hicra_needs_the_planning_mask_of_matching_shape():
    with pytest.raises(ValueError, match="planning_mask, which no stage filled"):
        hicra(torch.zeros(1, 2), _batch(None), RLConfig())
    with pytest.raises(ValueError, match=r"planning_mask \(1, 3\) must be \(1, 2\)"):
        hicra(torch.zeros(1, 2), _batch(torch.zeros(1, 3)), RLConfig())


def test_registry_needs_and_config_defaults():
    assert CREDIT["hicra"] is hicra and NEEDS["hicra"] == ("planning_mask",)
    adv = torch.randn(2, 3)
    assert CREDIT["none"](adv, _batch(torch.ones(2, 3)), RLConfig()) is adv
    cfg = RLConfig()
    assert (cfg.hicra_alpha, cfg.hicra_ngram) == (0.2, [3, 4, 5])
    assert cfg.hicra_refresh >= 1 and 0 < cfg.hicra_min_support <= 1


def _sample(tok, prompt: str, text: str, gid: int, reward: float) -> Sample:
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    n = len(ids)
    return Sample(
        example_id=str(gid), group_id=gid, prompt_ids=torch.tensor(tok.encode_prompt(prompt)), completion_ids=ids,
        loss_mask=torch.ones(n), segment_ids=torch.full((n,), SEGMENTS["reasoning"]), sampler_logprobs=torch.zeros(n),
        finish_reason="stop", text=text, reward=reward,
    )


def test_trainer_sequence_collate_apply_hicra_credit():
    """collate → apply_hicra fills `batch.planning_mask` → advantages → CREDIT["hicra"](adv, batch, cfg)."""
    tok = CharTokenizer()
    samples = [
        _sample(tok, "1+2", "first 1+2=3\n<answer>3</answer>", 0, 1.0),
        _sample(tok, "1+2", "first 1+2=4\n<answer>4</answer>", 0, 0.0),
        _sample(tok, "7*7", "then 49", 1, 1.0),
    ]
    batch = collate(samples, tok.pad_id)
    grams = StrategicGrams(seeds=["first", "then"], refresh=0)
    batch.planning_mask = apply_hicra(samples, grams, tok)  # [B, T]
    assert batch.planning_mask.shape == batch.loss_mask.shape
    adv = torch.tensor([1.0, -1.0, 0.5])
    out = CREDIT["hicra"](to_tokens(adv, batch.loss_mask), batch, RLConfig(hicra_alpha=0.2))
    P = len(samples[0].prompt_ids)
    assert out[0, P : P + 5].tolist() == pytest.approx([1.2] * 5)  # "first"
    assert out[0, P + 5 : P + 12].tolist() == [1.0] * 7  # " 1+2=3\n" stays
    assert out[1, P : P + 5].tolist() == pytest.approx([-0.8] * 5)
    assert out[:, :P].abs().sum() == 0 and out[batch.loss_mask == 0].abs().sum() == 0  # prompt, padding: 0
    m = hicra_metrics(samples, grams, batch.planning_mask)  # planning tokens: "first" ×2, "then" → 14
    assert m["hicra/planning_frac"] == pytest.approx(14 / sum(len(s.completion_ids) for s in samples))
    # 3 occurrences: ("first",) twice, ("then",) once
    assert m["hicra/semantic_entropy"] == pytest.approx(-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3))


def test_credit_stage_with_the_planning_provider_sets_token_advantages():
    """The loop's stage: `stages.make_providers` builds the planning-mask provider from `NEEDS["hicra"]`, and
    `credit_stage` stores each sample's credit-assigned token advantages [C] on the sample."""
    from credo.trainer import stages

    tok = CharTokenizer()
    samples = [_sample(tok, "1+2", "first 1+2=3", 0, 1.0), _sample(tok, "1+2", "then 1+2=4", 0, 0.0)]
    cfg = Config()
    cfg.rl.credit, cfg.rl.hicra_refresh, cfg.rl.planning_metrics = "hicra", 0, False  # seeds only: arith's
    unused = {f.name: None for f in dataclasses.fields(stages.StepContext)}  # fields the credit stage never reads
    ctx = stages.StepContext(**{**unused, "cfg": cfg, "env": SimpleNamespace(name="arith"), "tokenizer": tok,
                                "generator": torch.Generator(), "by_id": {}, "providers": {}})
    ctx.providers = stages.make_providers(ctx)
    assert list(ctx.providers) == ["planning_mask"]
    record: dict = {}
    stages.credit_stage(ctx, samples, torch.tensor([1.0, -1.0]), 0, record)
    # "first"/"then" (seeds) are planning: (1 + 0.2)·1 and (1 − 0.2)·(−1); the rest keeps ±1
    assert samples[0].token_advantages.tolist() == pytest.approx([1.2] * 5 + [1.0] * 6)
    assert samples[1].token_advantages.tolist() == pytest.approx([-0.8] * 4 + [-1.0] * 6)
    assert record["hicra/planning_frac"] == pytest.approx(9 / 21)


def test_entropy_split_hand_case():
    entropy = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 5.0, 6.0, 7.0]])
    planning = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0]], dtype=torch.bool)
    loss_mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    # planning ∩ loss: 1 and 5 → 3; execution: 2, 3, 4, 6, 7 → 4.4; (0, 3) is outside the loss mask
    assert entropy_split(entropy, planning, loss_mask) == pytest.approx(
        {"hicra/entropy_planning": 3.0, "hicra/entropy_execution": 4.4}
    )


def test_entropy_split_empty_sets_give_zero():
    out = entropy_split(torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.bool), torch.zeros(1, 3))
    assert out == {"hicra/entropy_planning": 0.0, "hicra/entropy_execution": 0.0}


def test_semantic_entropy_hand_cases():
    # counts a: 2, b: 1, c: 1 → p = (1/2, 1/4, 1/4) → H = ½ ln 2 + 2 · ¼ ln 4 = 1.5 ln 2
    assert semantic_entropy([["a", "a", "b"], ["c"]]) == pytest.approx(1.5 * math.log(2))
    assert semantic_entropy([["a"], ["a", "a"]]) == 0.0  # one strategy
    assert semantic_entropy([[], []]) == 0.0  # no strategic gram at all
    assert semantic_entropy([["a", "b", "c", "d"]]) == pytest.approx(math.log(4))  # uniform: log K
