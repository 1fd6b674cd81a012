"""DRO's reasoning reflection reward R3 (issue 20; arXiv 2506.13351 v3 §4.1.3), checked by hand:

    R3_i = Σ_j w_Δ(σ_j) · [ log π(y*_j | q, ĉ_i, y*_<j) − log π(y*_j | q, c_masked, y*_<j) ],  σ_j = std_i(...)
    r_len = 1 − β · | |y*| − |ŷ| | / |y*|

on a group of 3 chains of thought and a 4-token reference, from a fixed log-prob table served by a scripted scorer
that also checks the rows it is given (prompt + chain of thought + "<answer>" + teacher-forced reference); then the
term end to end through the registry on a tiny model, its batched group forward against one forward per row."""

import math

import pytest
import torch

from credo.data import Example, Sample, Score
from credo.models import build_policy, save_policy
from credo.models.tokenizer import CharTokenizer
from credo.rewards.r3 import RewardPolicy, r3_weights, row_chunks, split_cot
from credo.rewards.terms import RewardModel, TermContext, term_weights
from credo.trainer.config import Config, ModelConfig
from credo.trainer.logprobs import sequence_logprobs
from credo.trainer.stages import SigmaFilter, sigma_keep

TOK = CharTokenizer()
REF = "abcd"  # 4 char tokens
PROMPT = "Q?"
COTS = ["x", "yy", "zzz"]
ANSWERS = ["wxyz", "ab", "abcdefg"]  # 4, 2 and 7 tokens
# log π(y*_j | q, ĉ_i, y*_<j): rows = the 3 chains of thought, columns = the 4 reference tokens
TABLE = [[-1.0, -0.5, -2.0, -0.1],
         [-1.0, -1.5, -0.5, -0.1],
         [-1.0, -1.0, -2.0, -0.4]]
MASKED = [-1.2, -2.0, -2.5, -0.3]  # log π(y*_j | q, c_masked, y*_<j)


def _sample(i: int, group: int = 0, ex_id: str = "e0", prompt: str = PROMPT) -> Sample:
    text = f"{COTS[i]}<answer>{ANSWERS[i]}</answer>"
    ids = torch.tensor(TOK.encode(text))
    n = len(ids)
    return Sample(example_id=ex_id, group_id=group, prompt_ids=torch.tensor(TOK.encode_prompt(prompt)),
                  completion_ids=ids, loss_mask=torch.ones(n), segment_ids=torch.ones(n, dtype=torch.long),
                  sampler_logprobs=torch.zeros(n), finish_reason="stop", text=text, verdict=Score(0.0))


def scripted_logprobs(policy, ids, positions, chunk=512):
    """A stand-in for `sequence_logprobs`: checks the R3 rows, returns TABLE / MASKED at the reference positions."""
    prompt = TOK.encode_prompt(PROMPT)
    cots = [*COTS, ""]  # the masked row comes last (when there is one), its chain of thought is r3.masked_cot = ""
    assert ids.shape[0] in (3, 4) and positions.shape == ids.shape
    out = torch.zeros(ids.shape)
    for r, cot in enumerate(cots[: ids.shape[0]]):
        row = prompt + TOK.encode(cot + "<answer>") + TOK.encode(REF)
        assert ids[r, : len(row)].tolist() == row and positions[r].sum() == 4
        assert positions[r, len(row) - 4 : len(row)].all()
        out[r, positions[r]] = torch.tensor(TABLE[r] if r < 3 else MASKED)
    return out, None


def _cfg(**r3) -> Config:
    cfg = Config()
    for k, v in r3.items():
        setattr(cfg.r3, k, v)
    return cfg


def _term_values(name: str, cfg: Config) -> tuple[list[float], list[Sample], dict]:
    samples = [_sample(i) for i in range(3)]
    ctx = TermContext(cfg=cfg, env=None, tokenizer=TOK, policy=torch.nn.Linear(1, 1), logprobs=scripted_logprobs)
    metrics = RewardModel({name: 1.0}, ctx)(samples, [Example("e0", PROMPT, REF)])
    return [s.reward_parts[name] for s in samples], samples, metrics


# σ_j by hand (population std over the 3 chains of thought):
#   j=0: all −1.0 → 0; j=1: −0.5, −1.5, −1.0 (mean −1.0) → √(1/6); j=2: −2, −0.5, −2 (mean −1.5) → √(1/2);
#   j=3: −0.1, −0.1, −0.4 (mean −0.2) → √(0.02)
SIGMA = [0.0, math.sqrt(1 / 6), math.sqrt(0.5), math.sqrt(0.02)]
DELTA = [[TABLE[i][j] - MASKED[j] for j in range(4)] for i in range(3)]  # masked-CoT subtraction


def test_sigma_and_linear_weights_by_hand():
    S = sum(SIGMA)
    w = [s / S for s in SIGMA]  # w_j = σ_j / Σσ: token 0 (same log-prob under every CoT) gets no weight
    expected = [sum(w[j] * DELTA[i][j] for j in range(4)) for i in range(3)]
    # row 0 by hand: Δ = [0.2, 1.5, 0.5, 0.2]; row 1: [0.2, 0.5, 2.0, 0.2]; row 2: [0.2, 1.0, 0.5, −0.1]
    assert DELTA[0] == pytest.approx([0.2, 1.5, 0.5, 0.2]) and DELTA[2] == pytest.approx([0.2, 1.0, 0.5, -0.1])
    values, samples, metrics = _term_values("r3", _cfg(weighting="linear"))
    assert values == pytest.approx(expected, abs=1e-6)
    assert values[1] > values[2]  # the CoT that makes the high-σ token 2 likely wins
    assert all(s.reference_sigma == pytest.approx(math.sqrt(0.5)) for s in samples)  # max_j σ_j
    assert metrics["r3/sigma_max"] == pytest.approx(math.sqrt(0.5))
    assert metrics["r3/masked"] == pytest.approx(sum(MASKED) / 4)


def test_softmax_and_uniform_weights_by_hand():
    tau = 0.5
    e = [math.exp(s / tau) for s in SIGMA]
    w = [x / sum(e) for x in e]  # w_j = softmax_j(σ_j / τ)
    values, _, _ = _term_values("r3", _cfg(weighting="softmax", tau=tau))
    assert values == pytest.approx([sum(w[j] * DELTA[i][j] for j in range(4)) for i in range(3)], abs=1e-6)
    values, _, _ = _term_values("r3", _cfg(weighting="uniform"))
    assert values == pytest.approx([sum(DELTA[i]) / 4 for i in range(3)], abs=1e-6)


def test_masked_subtraction_is_a_group_constant():
    # without the masked row: R3 = Σ_j w_j logp_ij; the difference is Σ_j w_j · masked_j, the same for all i
    with_mask, _, _ = _term_values("r3", _cfg(weighting="linear"))
    S = sum(SIGMA)
    w = [s / S for s in SIGMA]
    plain = [sum(w[j] * TABLE[i][j] for j in range(4)) for i in range(3)]
    shift = sum(w[j] * MASKED[j] for j in range(4))
    assert [a - b for a, b in zip(plain, with_mask, strict=True)] == pytest.approx([shift] * 3, abs=1e-6)


def test_aggregate_certainty_by_hand():
    values, _, _ = _term_values("r3_aggregate", _cfg())
    assert values == pytest.approx([-0.9, -0.775, -1.1])  # mean of each table row
    values, _, _ = _term_values("r3_aggregate", _cfg(aggregate="prob"))
    assert values == pytest.approx([sum(math.exp(x) for x in row) / 4 for row in TABLE])


def test_length_term_by_hand():
    # |y*| = 4; answers of 4, 2, 7 tokens; β = 0.5: 1 − 0.5·0/4, 1 − 0.5·2/4, 1 − 0.5·3/4
    values, _, _ = _term_values("r3_length", _cfg(len_beta=0.5))
    assert values == pytest.approx([1.0, 0.75, 0.625])


def test_weights_of_the_config_and_bad_settings():
    cfg = _cfg()
    cfg.reward.outcome, cfg.reward.r3, cfg.reward.r3_length = 0.0, 1.0, 0.2
    assert term_weights(cfg) == {"r3": 1.0, "r3_length": 0.2}
    with pytest.raises(ValueError, match="weighting"):
        r3_weights(torch.ones(2), "cubic")
    with pytest.raises(ValueError, match="policy"):
        _term_values("r3", _cfg(policy="yesterday"))
    assert r3_weights(torch.zeros(3), "linear").tolist() == pytest.approx([1 / 3] * 3)  # no σ: uniform
    assert split_cot("think <answer>a</answer> <answer>b") == ("think <answer>a</answer> ", "b")


def test_sigma_filter_drops_flat_groups():
    # groups 0, 1, 2 with σ_max 0.05, 0.7, 0.3: min_sigma 0.1 drops group 0; drop_frac 1/3 then drops group 2
    sig = [0.05, 0.05, 0.7, 0.7, 0.3, 0.3]
    gid = [0, 0, 1, 1, 2, 2]
    assert sigma_keep(sig, gid, 0.1, 0.0) == [2, 3, 4, 5]
    assert sigma_keep(sig, gid, 0.1, 0.34) == [2, 3]
    assert sigma_keep(sig, gid, 0.0, 0.5) == [2, 3, 4, 5]  # ⌊0.5·3⌋ = 1 group: the lowest, group 0

    class KeepAll:
        def __call__(self, samples, adv, g):
            return samples, {}

    samples = [_sample(i % 3, group=g) for i, g in enumerate(gid)]
    for s, v in zip(samples, sig, strict=True):
        s.reference_sigma = v
    used, m = SigmaFilter(KeepAll(), 0.1, 0.0)(samples, torch.zeros(6), torch.Generator())
    assert [s.group_id for s in used] == [1, 1, 2, 2] and m["select/sigma_dropped_groups"] == pytest.approx(1 / 3)


def test_lagged_policy_refreshes_every_lag_calls_and_resumes():
    live = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(live.weight, 1.0)
    rp = RewardPolicy("lagged", live, sequence_logprobs, lag=2)
    with torch.no_grad():
        for call, expected in enumerate([1.0, 1.0, 3.0, 3.0]):  # the copy catches up at call 2 (0-based), then 4
            live.weight.fill_(float(call + 1))  # the live policy changes every step
            rp.tick()
            assert float(rp.frozen.weight) == pytest.approx(expected)
    state = rp.state_dict()
    other = RewardPolicy("lagged", torch.nn.Linear(1, 1, bias=False), sequence_logprobs, lag=2)
    other.load_state_dict(state)
    assert other.calls == 4 and float(other.frozen.weight) == pytest.approx(3.0)


# ---- end to end on a tiny model ---------------------------------------------------------------------------------


def _tiny():
    torch.manual_seed(0)
    return build_policy(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=64))


def test_r3_through_the_registry_on_a_tiny_model(tmp_path):
    policy, tok = _tiny()
    save_policy(policy, tok, tmp_path / "start_model")
    cfg = _cfg(weighting="linear")
    cfg.model = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=64)
    samples = [_sample(i, group=g, ex_id=f"e{g}") for g in (0, 1) for i in range(3)]
    examples = [Example("e0", PROMPT, REF), Example("e1", PROMPT, "12")]
    weights = {"r3": 1.0, "r3_length": 0.5, "r3_aggregate": 0.0}
    ctx = TermContext(cfg=cfg, env=None, tokenizer=tok, policy=policy, logprobs=sequence_logprobs,
                      start_model=str(tmp_path / "start_model"))
    m = RewardModel({k: w for k, w in weights.items() if w}, ctx)(samples, examples)
    assert all(math.isfinite(s.reward) for s in samples) and math.isfinite(m["r3/sigma_max"])
    # the group's one padded forward equals one unpadded forward per row (teacher forcing, positions)
    for g, ref in ((0, REF), (1, "12")):
        rows = [torch.tensor(s.prompt_ids.tolist() + tok.encode(split_cot(s.text)[0] + "<answer>") + tok.encode(ref))
                for s in samples[3 * g : 3 * g + 3]]
        masked = torch.tensor(samples[0].prompt_ids.tolist() + tok.encode("<answer>") + tok.encode(ref))
        J = len(ref)
        with torch.no_grad():
            lp = torch.stack([sequence_logprobs(policy, r[None])[0][0, -J:] for r in rows])  # [3, J]
            lm = sequence_logprobs(policy, masked[None])[0][0, -J:]  # [J]
        sigma = lp.std(0, correction=0)
        w = sigma / sigma.sum() if sigma.sum() > 0 else torch.full((J,), 1 / J)
        expected = (lp - lm) @ w
        got = [s.reward_parts["r3"] for s in samples[3 * g : 3 * g + 3]]
        assert got == pytest.approx(expected.tolist(), abs=1e-5)
        assert samples[3 * g].reference_sigma == pytest.approx(float(sigma.max()), abs=1e-6)
    # the initial reward policy is the saved start model: before any update, the same values
    cfg.r3.policy = "initial"
    fresh = [_sample(i, group=g, ex_id=f"e{g}") for g in (0, 1) for i in range(3)]
    RewardModel({"r3": 1.0}, ctx)(fresh, examples)
    assert [s.reward_parts["r3"] for s in fresh] == pytest.approx([s.reward_parts["r3"] for s in samples], abs=1e-5)


def test_row_chunks_by_a_padded_token_budget():
    # rows of 5, 7, 3, 9, 2 tokens, budget 15: [5, 7] pads to 2·7 = 14; adding 3 → 3·7 = 21 > 15, so a new chunk;
    # [3, 9] → 18 > 15, so 3 alone; 9 alone (2·9 > 15 with the 2); a row over the budget still gets a chunk
    assert row_chunks([5, 7, 3, 9, 2], 15) == [[0, 1], [2], [3], [4]]
    assert row_chunks([5, 7, 3, 9, 2], 18) == [[0, 1], [2, 3], [4]]
    assert row_chunks([5, 7, 3], 0) == [[0, 1, 2]] and row_chunks([20], 4) == [[0]] and row_chunks([], 10) == []
