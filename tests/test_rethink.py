"""Forced Rethinking (rollout/rethink.py): trigger rule, truncation, acceptance, token bookkeeping on a TinyLM."""

import dataclasses
from collections import Counter

import pytest
import torch

from credo.data import SEGMENTS, Sample, collate
from credo.envs.arith import ArithConfig, ArithEnv
from credo.envs.base import Score
from credo.models import build_policy
from credo.models.tokenizer import CharTokenizer
from credo.rewards.terms import RewardModel, TermContext
from credo.rollout.engine import rollout
from credo.rollout.rethink import (
    TRIGGERS,
    accept,
    choose_trigger,
    count_waits,
    forced_rethink,
    has_rethinking,
    rethink_nll_loss,
    rethink_nll_mask,
    rethink_reward,
    select_candidates,
    self_verifies,
    truncate_before_last_answer,
    truncate_text,
)
from credo.rollout.sampler import SamplingParams
from credo.trainer.config import ModelConfig, RethinkConfig
from credo.trainer.logprobs import sequence_logprobs

# ---- trigger selection -------------------------------------------------------------------------------------


@pytest.mark.parametrize("correct,expected", [(True, (0.2, 0.3, 0.5, 0.0)), (False, (0.2, 0.3, 0.0, 0.5))])
def test_trigger_distribution(correct, expected):
    g = torch.Generator().manual_seed(0)
    n = 20_000
    counts = Counter(choose_trigger(correct, g) for _ in range(n))
    assert set(counts) <= set(TRIGGERS)
    for trigger, p in zip(TRIGGERS, expected, strict=True):
        # binomial std <= sqrt(.25/n) = 0.0035; 0.015 is over 4 std
        assert abs(counts[trigger] / n - p) < 0.015, (trigger, counts[trigger] / n, p)


def test_trigger_uniform_mode_and_config_defaults():
    g = torch.Generator().manual_seed(1)
    counts = Counter(choose_trigger(False, g, uniform=True) for _ in range(8000))
    assert all(abs(counts[t] / 8000 - 0.25) < 0.03 for t in TRIGGERS)
    cfg = RethinkConfig()
    assert tuple(cfg.triggers) == TRIGGERS and (cfg.p_generic, cfg.p_bare_wait) == (0.5, 0.4)
    assert (cfg.temperature, cfg.skip_prob, cfg.truncate_prob, cfg.max_per_prompt) == (0.9, 0.35, 0.5, 2)
    assert not cfg.enabled and cfg.nll_coef == 0.0


# ---- truncation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,sep,expected",
    [
        ("Step 1.\n\nStep 2: x=3.\n\nSo the answer is \\boxed{3}.", "\n\n", "Step 1.\n\nStep 2: x=3."),
        ("A.\n\nB is \\boxed{2}.\n\nWait, let me redo. \\boxed{3}", "\n\n", "A."),  # last Wait, then last boxed
        ("Answer first.\n\nmore", "\n\n", ""),  # "answer" matched case-insensitively at 0
        ("no markers at all", "\n\n", "no markers at all"),
        ("first 1+2=3\nthen 3*2=6\ncheck: done\n<answer>6</answer>", "\n", "first 1+2=3\nthen 3*2=6\ncheck: done"),
        ("first 1+2=3\ncheck: done\n<answer>3</answer>", "\n\n", "first 1+2=3\ncheck: done\n<"),  # release sep
    ],
)
def test_truncate_text(text, sep, expected):
    assert truncate_text(text, sep) == expected


def test_truncate_token_level_drops_straddling_token():
    tok = CharTokenizer()
    text = "first 1+2=3\ncheck: done\n<answer>3</answer>"
    assert tok.decode(tok.encode(text)[: truncate_before_last_answer(tok.encode(text), tok.decode, "\n")]) == (
        "first 1+2=3\ncheck: done")
    # a 3-character "BPE" vocabulary: the cut at len("first 1+2=3\ncheck: done") = 24 falls inside no token
    # boundary unless it is a multiple of 3, so the straddling token goes and the kept text is a strict prefix
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    ids = list(range(len(pieces)))

    def decode(xs):
        return "".join(pieces[i] for i in xs)

    k = truncate_before_last_answer(ids, decode, "\n")
    kept = truncate_text(text, "\n")
    assert kept.startswith(decode(ids[:k])) and not kept.startswith(decode(ids[: k + 1]))
    assert len(kept) - len(decode(ids[:k])) < 3


# ---- selection and acceptance ------------------------------------------------------------------------------


def _sample(gid: int, n: int = 5, finish: str = "stop", text: str = "", rethought: bool = False) -> Sample:
    return Sample(
        example_id=f"e{gid}", group_id=gid, prompt_ids=torch.tensor([1, 5]), completion_ids=torch.full((n,), 7),
        loss_mask=torch.ones(n), segment_ids=torch.ones(n, dtype=torch.long), sampler_logprobs=torch.zeros(n),
        finish_reason=finish, text=text, rethought=rethought,
    )


def test_select_candidates_rules():
    cfg = RethinkConfig(skip_prob=0.0, reserve_tokens=10)
    # group 0: 3/4 correct (> easy_acc 0.7) -> its wrong one is skipped; group 1: 1/4 correct -> all kept,
    # except an unfinished one and one too long (> 20 - 10 tokens)
    samples = [_sample(0) for _ in range(4)] + [_sample(1), _sample(1, finish="length"), _sample(1, n=11), _sample(1)]
    correct = [True, True, True, False, True, False, False, False]
    assert select_candidates(samples, correct, cfg, 20, None) == [0, 1, 2, 4, 7]
    wrong = dataclasses.replace(cfg, select="wrong")  # only wrong ones, in groups with accuracy <= 0.6
    assert select_candidates(samples, correct, wrong, 20, None) == [7]
    with pytest.raises(ValueError, match="rethink.select"):
        select_candidates(samples, correct, dataclasses.replace(cfg, select="bad"), 20, None)
    g = torch.Generator().manual_seed(0)
    many = [_sample(i) for i in range(4000)]
    kept = select_candidates(many, [True] * 4000, dataclasses.replace(cfg, skip_prob=0.35), 20, g)
    assert abs(len(kept) / 4000 - 0.65) < 0.03


def test_accept_filter_hand_cases():
    c = RethinkConfig()
    ok = "then 3+4=7 so it holds."
    assert accept(31, ok, True, True, 0, c) == ""
    assert accept(30, ok, True, True, 0, c) == "length"  # strictly more than 30
    assert accept(1024, ok, True, True, 0, c) == "length"  # strictly fewer than 1024
    assert accept(100, ok, True, False, 0, c) == "unfinished"
    assert accept(100, ok, False, True, 0, c) == "incorrect"
    assert accept(100, ok, False, True, 0, dataclasses.replace(c, require_correct=False)) == ""
    assert accept(100, ok, True, True, 2, c) == "per_prompt"
    assert accept(100, "Wait, a. Wait, b. Alternatively c.", True, True, 0, c) == ""  # 1 + 3 = 4 waits
    assert accept(100, "Wait, a. Wait, b. Wait a sec. Alternatively c.", True, True, 0, c) == "waits"


def test_wait_counting_and_self_verification():
    assert count_waits("Wait, no. WAIT a bit. alternatively x. Wait") == 3
    assert self_verifies("\n\nWait") and self_verifies("let's double check") and self_verifies("re-examine it")
    assert not self_verifies("first 1+2=3\ncheck: done\n<answer>3</answer>")


# ---- reward shaping and NLL --------------------------------------------------------------------------------


def test_rethink_reward_rules():
    assert rethink_reward(True, True, True, "5", False) == 1.0
    assert rethink_reward(True, True, True, "Wait, 5. Wait, yes", False) == 1.1  # 0 < n_wait < 3
    assert rethink_reward(True, True, True, "wait, " * 3 + "5", False) == pytest.approx(0.4)  # 1 - 0.2 * 3
    assert rethink_reward(True, True, True, "wait, " * 5 + "5", False) == pytest.approx(0.0)
    assert rethink_reward(True, True, True, "Wait, 5. Wait, yes", True) == 1.0  # forced rethinks: no shaping
    assert rethink_reward(False, True, True, "Wait, 6", False) == 0.0
    assert rethink_reward(True, True, True, "wait " * 6, False) == -0.1  # more than 5 "wait" words: invalid
    assert rethink_reward(True, False, True, "5", False) == -0.1  # no EOS
    assert rethink_reward(True, True, False, "5", False) == -0.1  # no answer format


def test_rethink_shaping_term_is_a_delta_on_the_outcome():
    """The `rethink_shaping` term is rethink_reward − R_O, so outcome + shaping is the released value (1.1 bonus,
    −0.1 invalid) and every other term still reaches the total (issue 12, kind 11)."""
    a, b, c = _sample(0, text="Wait, 5"), _sample(0, text="5", rethought=True), _sample(0, text="6")
    d, e = _sample(0, text="5", finish="length"), _sample(0, text="5")  # no EOS; no answer format
    for s, value, fmt in ((a, 1.0, 1.0), (b, 1.0, 1.0), (c, 0.0, 1.0), (d, 1.0, 1.0), (e, 1.0, 0.0)):
        s.verdict = Score(value, {"format": fmt})
    samples = [a, b, c, d, e]
    m = RewardModel({"outcome": 1.0, "rethink_shaping": 1.0}, TermContext(cfg=None, env=None))(samples, [])
    assert [s.reward for s in samples] == pytest.approx([1.1, 1.0, 0.0, -0.1, -0.1])
    assert [s.reward_parts["rethink_shaping"] for s in samples] == pytest.approx([0.1, 0.0, 0.0, -1.1, -1.1])
    assert m["reward/mean"] == pytest.approx(1.9 / 5)
    assert m["reward/rethink_bonus"] == pytest.approx(1 / 5) and m["reward/rethink_invalid"] == pytest.approx(2 / 5)


def test_nll_mask_and_loss():
    samples = [_sample(0, text="ok"), _sample(0, text="Wait, ok"), _sample(0, text="x", rethought=True),
               _sample(0, text="Wait, no")]
    rethinks = has_rethinking(samples)
    assert rethinks.tolist() == [False, True, True, True]
    loss_mask = torch.tensor([[1.0, 1, 0], [1, 1, 1], [0, 1, 1], [1, 1, 1]])
    adv = torch.tensor([1.0, 0.5, 0.5, -1.0])
    mask = rethink_nll_mask(loss_mask, adv, rethinks)
    assert mask.tolist() == [[0, 0, 0], [1, 1, 1], [0, 1, 1], [0, 0, 0]]
    logprobs = torch.tensor([[-9.0, -9, -9], [-1, -2, -3], [-9, -4, -5], [-9, -9, -9]])
    assert rethink_nll_loss(logprobs, mask).item() == pytest.approx(15 / 5)
    assert rethink_nll_loss(logprobs, torch.zeros(4, 3)).item() == 0.0


# ---- the whole step on a TinyLM ----------------------------------------------------------------------------


class ManyEosTokenizer(CharTokenizer):
    """An untrained TinyLM almost never samples EOS; letting a few characters also end a completion gives
    finished rollouts and continuations of a chosen typical length, so accepted rethinks get exercised."""

    def __init__(self, extra_eos: str) -> None:
        super().__init__()
        self.eos_ids = [self.eos_id, *self.encode(extra_eos)]


class AlwaysRight(ArithEnv):
    """Arith whose verifier accepts every answer: the released acceptance rule then keeps long enough rethinks."""

    def verify(self, completion, example):
        return Score(1.0, {"correct": 1.0, "format": 1.0})


def _setup(temperature: float = 1.0, extra_eos: str = "0123456789", max_new_tokens: int = 64, env_cls=ArithEnv):
    torch.manual_seed(0)
    policy, _ = build_policy(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=256))
    policy.eval()
    tok = ManyEosTokenizer(extra_eos)
    env = env_cls(ArithConfig(n_train=16, n_test=4, n_sft=4))
    examples = env.examples("train")[:4]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    g = torch.Generator().manual_seed(0)
    samples = rollout(policy, tok, env, examples, 4, params, g)
    return policy, tok, env, {e.id: e for e in examples}, params, g, samples


def _split(old: Sample, new: Sample, tok: CharTokenizer) -> tuple[int, list[int]]:
    """(p, trigger ids): new = old[:p] + trigger + continuation."""
    ids = new.completion_ids.tolist()
    hits = [(p, t) for t in (tok.encode(x) for x in TRIGGERS) for p in range(len(old.completion_ids) + 1)
            if ids[p : p + len(t)] == t and ids[:p] == old.completion_ids[:p].tolist()]
    assert hits, tok.decode(ids)
    return max(hits, key=lambda h: (h[0], len(h[1])))


LOOSE = dict(skip_prob=0.0, reserve_tokens=24, min_continuation=0, require_correct=False, max_per_prompt=4)


@pytest.mark.parametrize("temperature,train_trigger", [(1.0, True), (0.7, False)])
def test_forced_rethink_token_bookkeeping(temperature, train_trigger):
    policy, tok, env, by_id, params, g, samples = _setup(temperature)
    cfg = RethinkConfig(enabled=True, train_trigger=train_trigger, **LOOSE)
    new, m = forced_rethink(policy, tok, env, samples, by_id, cfg, params, g)
    assert len(new) == len(samples)
    changed = [i for i, (a, b) in enumerate(zip(samples, new, strict=True)) if a is not b]
    assert len(changed) >= 4, m  # the loose config accepts most continuations
    assert m["rethink/accepted"] == pytest.approx(len(changed) / len(samples))
    assert 0 < m["rethink/rate"] <= 1 and 0 <= m["rethink/acc_before"] <= 1 and 0 <= m["rethink/acc_after"] <= 1
    assert 0 <= m["rethink/self_verify_rate"] <= 1
    for i in changed:
        old, s = samples[i], new[i]
        C = len(s.completion_ids)
        assert s.rethought and s.group_id == old.group_id and torch.equal(s.prompt_ids, old.prompt_ids)
        assert len(s.sampler_logprobs) == len(s.loss_mask) == len(s.segment_ids) == C
        assert C <= params.max_new_tokens and s.text == tok.decode(s.completion_ids.tolist())
        # the original tokens before the trigger are unchanged, with their original log-probs and mask
        p, t = _split(old, s, tok)
        assert torch.equal(s.sampler_logprobs[:p], old.sampler_logprobs[:p])
        assert torch.equal(s.loss_mask[:p], old.loss_mask[:p])
        assert s.loss_mask[p : p + len(t)].tolist() == [float(train_trigger)] * len(t)
        assert s.loss_mask[p + len(t) :].eq(1).all()
        assert s.segment_ids.eq(SEGMENTS["reasoning"]).all()
    # the trainer's recomputed log-probs equal the stored ones on every trained token
    batch = collate(new, tok.pad_id)
    with torch.no_grad():
        lp, _ = sequence_logprobs(policy, batch.input_ids, temperature)
    on = batch.loss_mask.bool()
    assert (lp[on] - batch.old_logprobs[on]).abs().max() < 1e-5
    # and on the trigger tokens too, when they are masked out
    for i in changed:
        P, C = len(new[i].prompt_ids), len(new[i].completion_ids)
        assert (lp[i, P : P + C] - new[i].sampler_logprobs).abs().max() < 1e-5


def test_forced_rethink_released_filters():
    # released filters, with the length floor scaled to the test's ~20-token completions (30 -> 5)
    policy, tok, env, by_id, params, g, samples = _setup(extra_eos="0123", env_cls=AlwaysRight)
    cfg = RethinkConfig(enabled=True, reserve_tokens=24, min_continuation=5)
    new, m = forced_rethink(policy, tok, env, samples, by_id, cfg, params, g)
    assert len(new) == len(samples)
    per_group = Counter(s.group_id for s in new if s.rethought)
    assert per_group and all(k <= 2 for k in per_group.values()), m
    for old, s in zip(samples, new, strict=True):
        if s.rethought:
            p, t = _split(old, s, tok)
            assert 5 < len(s.completion_ids) - p - len(t) < 1024 and s.finish_reason == "stop"
    drops = sum(v for k, v in m.items() if k.startswith("rethink/drop_"))
    assert drops + m["rethink/accept_rate"] == pytest.approx(1.0)
    one, _ = forced_rethink(policy, tok, env, samples, by_id, dataclasses.replace(cfg, max_per_prompt=1), params, g)
    assert max(Counter(s.group_id for s in one if s.rethought).values(), default=0) <= 1
    # nothing selected: the batch comes back unchanged
    none, m0 = forced_rethink(policy, tok, env, samples, by_id, dataclasses.replace(cfg, skip_prob=1.0), params, g)
    assert all(a is b for a, b in zip(none, samples, strict=True)) and m0["rethink/rate"] == 0.0


def test_forced_rethink_random_policy_rejects_wrong_rethinks():
    policy, tok, env, by_id, params, g, samples = _setup()
    new, m = forced_rethink(policy, tok, env, samples, by_id, RethinkConfig(enabled=True, reserve_tokens=24), params, g)
    for s in new:  # an untrained policy is (almost) never right: whatever is accepted must be
        assert not s.rethought or env.verify(s.text, by_id[s.example_id]).value == 1.0
    assert "rethink/acc_after" in m or m["rethink/rate"] == 0.0


@pytest.mark.parametrize("workers", [0, 1])
def test_forced_rethink_checks_go_through_the_runner_and_failures_are_counted(workers):
    import verify_helpers as vh

    from credo.envs.runner import VerifyRunner

    policy, tok, env, by_id, params, g, samples = _setup()
    cfg = RethinkConfig(enabled=True, **LOOSE)
    with VerifyRunner(vh.raise_after_wait, workers=workers, timeout_s=10.0) as runner:
        new, m = forced_rethink(policy, tok, env, samples, by_id, cfg, params, g, runner=runner)
    n_rows = round(m["rethink/rate"] * len(samples) * (1 - m.get("rethink/drop_no_room", 0)))  # continued
    round0_errors = sum("Wait" in s.text for s in samples)
    assert n_rows > 0 and m["verify/errors"] == round0_errors + n_rows and m["verify/timeouts"] == 0
    assert m["rethink/acc_after"] == 0.0  # a check that raised counts as wrong


def test_forced_rethink_on_a_vision_policy_keeps_the_images():
    import numpy as np

    from credo.rollout.backend import make_generator

    torch.manual_seed(0)
    policy, tok = build_policy(ModelConfig(kind="tinyvlm", d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=160,
                                           image_size=16, patch_size=4))
    policy.eval()
    tok.eos_ids = [tok.eos_id, *tok.encode("0123456789")]  # finished rollouts, as ManyEosTokenizer does
    env = ArithEnv(ArithConfig(n_train=16, n_test=4, n_sft=4))
    rng = np.random.default_rng(0)
    examples = [dataclasses.replace(e, images=[rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)])
                for e in env.examples("train")[:4]]
    by_id = {e.id: e for e in examples}
    params = SamplingParams(max_new_tokens=64, temperature=1.0)
    g = torch.Generator().manual_seed(0)
    samples = rollout(policy, tok, env, examples, 4, params, g)
    seen = []
    gen = make_generator("native", policy, tok)
    real_generate = gen.generate

    def spy(requests, params, rng=None):  # the images each continuation request carries
        seen.append([r.images for r in requests])
        return real_generate(requests, params, rng)

    gen.generate = spy
    new, m = forced_rethink(gen, tok, env, samples, by_id, RethinkConfig(enabled=True, **LOOSE), params, g)
    changed = [s for s in new if s.rethought]
    assert changed, m
    assert seen and all(imgs is not None and all(len(x) == 1 for x in imgs) for imgs in seen)
    batch = collate(changed, tok.pad_id)
    with torch.no_grad():
        lp, _ = sequence_logprobs(policy, batch.input_ids, 1.0, images=batch.images)
    for i, s in enumerate(changed):  # the stored log-probs are the image-conditioned ones
        P, C = len(s.prompt_ids), len(s.completion_ids)
        assert (lp[i, P : P + C] - s.sampler_logprobs).abs().max() < 1e-5
