"""Critique-then-score judges (issue 19; RationalRewards, arXiv 2604.11626, methods.md §7): the total parser on a
table of judge outputs, the released reward r = (mean(scores) − 1)/3 by hand, batching and the cache, the reward
term through the registry (unscorable judgements leave training), the RationalRewards group filter, Generate–
Critique–Refine with scripted policy and judge generators, PARROT's consistency filter on scripted teacher outputs.
No real model: scripted generators, and one tiny random TinyLM for the loading path."""

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from credo.data import Example, Sample, Score
from credo.models.tokenizer import CharTokenizer
from credo.rewards.judge import (
    Judge,
    JudgeItem,
    JudgeTerm,
    Rubric,
    judge_prompt,
    judge_reward,
    parse_judgement,
    refined_request,
)
from credo.rewards.terms import TERMS, RewardModel, TermContext
from credo.rollout.backend import Completion
from credo.trainer.config import Config, ConfigError, load_config
from credo.trainer.stages import GroupFilter, group_filter_keep

TOK = CharTokenizer()
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
R = Rubric(("Correctness", "Reasoning", "Clarity"))
RNA = Rubric(("Correctness", "Reasoning", "Clarity"), na=("Clarity",))
RALL = Rubric(("Correctness", "Reasoning"), na=("Correctness", "Reasoning"))


def block(name: str, score: str, n: int | None = None, why: str = "fine") -> str:
    head = f"{n}. {name}:" if n is not None else f"{name}:"
    return f"{head}\n## Justification: {why}\n## Score: {score}\n"


def well(c: str = "4", r: str = "3", cl: str = "2") -> str:
    return ("# Detailed Judgement\n" + block("Correctness", c, 1) + block("Reasoning", r, 2) + block("Clarity", cl, 3)
            + "# Summary: ok\n")


ERR = "error:"
TABLE = [  # (id, judge output, rubric, expected scores or "error:<substring>")
    ("well-formed", well(), R, {"Correctness": 4.0, "Reasoning": 3.0, "Clarity": 2.0}),
    ("half points", well("3.5", "2.5", "1"), R, {"Correctness": 3.5, "Reasoning": 2.5, "Clarity": 1.0}),
    ("bold score", well().replace("## Score:", "**Score:**"), R, {"Correctness": 4.0, "Reasoning": 3.0,
                                                                   "Clarity": 2.0}),
    ("bold value", well("**4**"), R, {"Correctness": 4.0, "Reasoning": 3.0, "Clarity": 2.0}),
    ("x/4", well("3/4"), R, {"Correctness": 3.0, "Reasoning": 3.0, "Clarity": 2.0}),
    ("out of 4", well("3 out of 4"), R, {"Correctness": 3.0, "Reasoning": 3.0, "Clarity": 2.0}),
    ("trailing words", well("3 (solid work)"), R, {"Correctness": 3.0, "Reasoning": 3.0, "Clarity": 2.0}),
    ("trailing period", well("3."), R, {"Correctness": 3.0, "Reasoning": 3.0, "Clarity": 2.0}),
    ("other scale", well("7/10"), R, ERR + "another scale"),
    ("above range", well("5"), R, ERR + "out of range"),
    ("below range", well("0"), R, ERR + "out of range"),
    ("negative", well("-1"), R, ERR + "out of range"),
    ("just above", well(cl="4.5"), R, ERR + "out of range"),
    ("word score", well("three"), R, ERR + "not a number"),
    ("empty score", well(r=""), R, ERR + "not a number"),
    ("comma decimal", well("2,5"), R, ERR + "not a number"),
    ("wrong separator", well().replace("## Score: 2", "## Score = 2"), R, ERR + "missing score for Clarity"),
    ("missing dimension", block("Correctness", "4", 1) + block("Reasoning", "3", 2), R,
     ERR + "missing score for Clarity"),
    ("truncated justification", block("Correctness", "4", 1) + block("Reasoning", "3", 2)
     + "3. Clarity:\n## Justification: the answer is cl", R, ERR + "missing score for Clarity"),
    ("truncated score line", well()[: well().rindex("## Score") + 5], R, ERR + "missing score for Clarity"),
    ("reordered", block("Clarity", "1", 1) + block("Correctness", "4", 2) + block("Reasoning", "2", 3), R,
     {"Correctness": 4.0, "Reasoning": 2.0, "Clarity": 1.0}),
    ("duplicated, same", well() + block("Clarity", "2", 3), R, {"Correctness": 4.0, "Reasoning": 3.0, "Clarity": 2.0}),
    ("duplicated, different", well() + block("Clarity", "3", 3), R, ERR + "Clarity scored twice"),
    ("extra text", "Sure! Here is my evaluation.\n\n" + well() + "# User Request Refinement:\n"
     "## Refinement Comments: none\n## Refined Request: Add 2 and 3.\nThanks!", R,
     {"Correctness": 4.0, "Reasoning": 3.0, "Clarity": 2.0}),
    ("extra dimension", well() + block("Creativity", "1", 4), R,
     {"Correctness": 4.0, "Reasoning": 3.0, "Clarity": 2.0}),
    ("extra dimension between", block("Correctness", "4", 1) + block("Style", "1", 2) + block("Reasoning", "3", 3)
     + block("Clarity", "2", 4), R, {"Correctness": 4.0, "Reasoning": 3.0, "Clarity": 2.0}),
    ("N/A allowed", well(cl="N/A"), RNA, {"Correctness": 4.0, "Reasoning": 3.0, "Clarity": None}),
    ("n/a lower case", well(cl="n/a"), RNA, {"Correctness": 4.0, "Reasoning": 3.0, "Clarity": None}),
    ("not applicable", well(cl="Not applicable"), RNA, {"Correctness": 4.0, "Reasoning": 3.0, "Clarity": None}),
    ("N/A not allowed", well(c="N/A"), RNA, ERR + "N/A for Correctness"),
    ("N/A strict rubric", well(cl="N/A"), R, ERR + "N/A for Clarity"),
    ("all N/A", block("Correctness", "N/A", 1) + block("Reasoning", "NA", 2), RALL, ERR + "every dimension N/A"),
    ("empty", "", R, ERR + "empty judgement"),
    ("whitespace", "  \n\t\n", R, ERR + "empty judgement"),
    ("not a string", None, R, ERR + "empty judgement"),
    ("scores without headers", "## Score: 3\n## Score: 3\n## Score: 3\n", R, ERR + "missing score for Correctness"),
    ("lower-case names", well().replace("Correctness", "correctness").replace("Clarity", "CLARITY"), R,
     {"Correctness": 4.0, "Reasoning": 3.0, "Clarity": 2.0}),
    ("unnumbered headers", block("Correctness", "4") + block("Reasoning", "3") + block("Clarity", "2"), R,
     {"Correctness": 4.0, "Reasoning": 3.0, "Clarity": 2.0}),
    ("inline scores", "1. Correctness: ## Score: 4\n2. Reasoning: ## Score: 1\n3. Clarity: ## Score: 2\n", R,
     {"Correctness": 4.0, "Reasoning": 1.0, "Clarity": 2.0}),
    ("markdown headers", "### 1. **Correctness**:\n## Score: 4\n### 2. **Reasoning**:\n## Score: 3\n"
     "### 3. **Clarity**:\n## Score: 2\n", R, {"Correctness": 4.0, "Reasoning": 3.0, "Clarity": 2.0}),
    ("name inside a justification", block("Correctness", "4", 1, why="ok.\nReasoning: looks fine to me")
     + block("Reasoning", "3", 2) + block("Clarity", "2", 3), R, {"Correctness": 4.0, "Reasoning": 3.0,
                                                                   "Clarity": 2.0}),
    ("second score in a section", well().replace("## Score: 4\n", "## Score: 4\nScore: 1\n"), R,
     {"Correctness": 4.0, "Reasoning": 3.0, "Clarity": 2.0}),
    ("summary ends the section", block("Correctness", "4", 1) + block("Reasoning", "3", 2) + "3. Clarity:\n"
     "## Justification: cut\n# Summary: good\n## Score: 4\n", R, ERR + "missing score for Clarity"),
    ("long repetition after", well() + "blah " * 6000, R, {"Correctness": 4.0, "Reasoning": 3.0, "Clarity": 2.0}),
]


@pytest.mark.parametrize("case", TABLE, ids=[c[0] for c in TABLE])
def test_parser_table(case):
    _, text, rubric, expected = case
    j = parse_judgement(text, rubric)
    if isinstance(expected, str):
        assert not j.ok and expected.removeprefix(ERR) in j.error, j.error
        assert math.isnan(j.reward(rubric))
        assert not j.to_score(rubric).scorable
    else:
        assert j.ok, j.error
        assert j.scores == expected


def test_table_is_large_and_mixed():
    assert len(TABLE) >= 30
    assert sum(isinstance(c[3], str) for c in TABLE) >= 12 and sum(isinstance(c[3], dict) for c in TABLE) >= 12


def test_reward_by_hand():
    j = parse_judgement(well("4", "3", "N/A"), RNA)
    assert j.reward(RNA) == pytest.approx(((4 + 3) / 2 - 1) / 3)  # 0.8333: N/A left out of the mean
    assert j.reward(RNA, "min") == pytest.approx((3 - 1) / 3)
    assert j.reward(RNA, "raw") == pytest.approx(3.5)
    assert j.reward(RNA, "mean", ["Correctness"]) == pytest.approx(1.0)  # released edit code: a subset of dimensions
    assert math.isnan(j.reward(RNA, "mean", ["Clarity"]))  # only an N/A dimension: no value
    assert judge_reward(torch.tensor([1.0, 1.0])) == 0.0 and judge_reward(torch.tensor([4.0])) == 1.0
    assert judge_reward(torch.tensor([3.0, 2.0]), lo=0, hi=10) == pytest.approx(0.25)
    s = j.to_score(RNA)
    assert s.scorable and s.correct and s.parts == {"Correctness": 4.0, "Reasoning": 3.0}
    with pytest.raises(ValueError, match="judge.reward"):
        j.reward(RNA, "median")


def test_rubric_checks():
    with pytest.raises(ValueError, match="distinct"):
        Rubric(("A", "a"))
    with pytest.raises(ValueError, match="scale_min"):
        Rubric(("A",), 4, 1)
    with pytest.raises(ValueError, match="na_dimensions"):
        Rubric(("A",), na=("B",))


def test_refined_request():
    text = "## Refinement Comments: x\n## Refined Request: Compute 2+3.\nShow the steps.\n# Next\n"
    assert refined_request(text) == "Compute 2+3.\nShow the steps."
    assert refined_request("## Refined Request:   \n# End") is None
    assert refined_request("no request") is None


# ---- the judge model behind the seam -------------------------------------------------------------------------


class ScriptedGen:
    """A `Generator` whose reply is `reply(prompt_text)`, followed by EOS; it records every call."""

    def __init__(self, reply, max_len=None):
        self.reply, self.max_len, self.tokenizer, self.image_size = reply, max_len, TOK, 48
        self.calls: list[list[str]] = []

    def generate(self, requests, params, rng=None):
        texts = [TOK.decode(r.prompt_ids) for r in requests]
        self.calls.append(texts)
        out = []
        for r, t in zip(requests, texts, strict=True):
            ids = TOK.encode(self.reply(t))[: params.max_new_tokens]
            out.append([Completion(torch.tensor(ids, dtype=torch.long), torch.zeros(len(ids)), "stop")
                        for _ in range(r.n)])
        return out

    def sync_weights(self, policy):
        raise AssertionError("a judge is never synced")


def response_of(prompt: str) -> str:
    return prompt.split("# Response\n", 1)[1].split("\n\n", 1)[0]


def grader(prompt: str) -> str:
    """4s for a response holding "391", 1s for another number, no scores for "garbage"."""
    resp = response_of(prompt)
    if "garbage" in resp:
        return "I cannot judge this."
    s = "4" if "391" in resp else "1"
    return well(s, s, s)


def test_judge_batches_and_caches():
    gen = ScriptedGen(grader)
    judge = Judge(gen, TOK, R, max_new_tokens=400, batch_size=2)
    items = [JudgeItem("What is 17*23?", f"<answer>{a}</answer>") for a in (391, 390, 389, 388, 387)]
    js = judge.judge([*items, items[0]])  # a duplicate inside one call is judged once
    assert [len(c) for c in gen.calls] == [2, 2, 1]  # 5 distinct prompts in batches of 2
    assert [j.reward(R) for j in js] == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert judge.calls == 6 and judge.hits == 1
    again = judge.judge(items[:3])
    assert len(gen.calls) == 3 and judge.hits == 4  # all from the cache: no generate call
    assert again == js[:3]
    judge.judge([JudgeItem("What is 17*23?", "<answer>391</answer>", reference="391")])  # the key holds the reference
    assert len(gen.calls) == 4
    small = Judge(ScriptedGen(grader), TOK, R, max_new_tokens=400, cache_size=2)
    small.judge(items[:3])
    assert len(small.cache) == 2  # least recently used dropped


def test_prompt_too_long_is_unscorable():
    gen = ScriptedGen(grader, max_len=300)
    judge = Judge(gen, TOK, R, max_new_tokens=100)
    (j,) = judge.judge([JudgeItem("What is 17*23?", "<answer>391</answer>")])
    assert j.error == "judge prompt too long" and gen.calls == []


def test_prompt_shows_reference_only_when_asked():
    p = judge_prompt(R, "What is 17*23?", "<answer>1</answer>", reference="391")
    assert "# Reference Answer\n391" in p and "1. Correctness:" in p and "3. Clarity:" in p
    assert "Reference" not in judge_prompt(R, "What is 17*23?", "<answer>1</answer>")
    assert "## Refined Request:" in judge_prompt(R, "q", "a", refine=True)
    assert "N/A" in judge_prompt(RNA, "q", "a") and "N/A" not in judge_prompt(R, "q", "a")


# ---- the reward term ------------------------------------------------------------------------------------------


class CalcEnv:
    name = "calc"

    def __init__(self):
        self._ex = [Example("mul", "What is 17*23?", 391), Example("add", "What is 2+2?", 4)]

    def examples(self, split):
        return list(self._ex)

    def render_prompt(self, ex):
        return ex.prompt

    def verify(self, completion, ex):
        m = re.findall(r"<answer>(.*?)</answer>", completion)
        return Score(float(bool(m) and m[-1].strip() == str(ex.reference)))


def _sample(text: str, group: int = 0, ex_id: str = "mul", correct: bool | None = None) -> Sample:
    ids = torch.tensor(TOK.encode(text))
    n = len(ids)
    verdict = None if correct is None else Score(float(correct))
    return Sample(example_id=ex_id, group_id=group, prompt_ids=torch.tensor([1]), completion_ids=ids,
                  loss_mask=torch.ones(n), segment_ids=torch.ones(n, dtype=torch.long),
                  sampler_logprobs=torch.zeros(n), finish_reason="stop", text=text, verdict=verdict)


def test_term_through_registry(monkeypatch):
    cfg = Config()
    cfg.judge.max_new_tokens = 400
    gen = ScriptedGen(grader)
    seen = []
    monkeypatch.setitem(TERMS, "judge", lambda ctx: seen.append(ctx) or JudgeTerm(ctx, judge=Judge(gen, TOK, R, 400)))
    env = CalcEnv()
    model = RewardModel({"judge": 1.0}, TermContext(cfg=cfg, env=env, tokenizer=TOK))
    samples = [_sample("<answer>391</answer>", correct=True), _sample("<answer>7</answer>", correct=False),
               _sample("garbage", correct=False), _sample("<answer>391</answer>", correct=True)]
    m = model(samples, env.examples("train"))
    assert [s.reward for s in samples[:2]] == [1.0, 0.0] and samples[3].reward == 1.0
    assert math.isnan(samples[2].reward) and not samples[2].scorable  # counted, not trained
    assert m["reward/unscorable"] == 1.0 and m["judge/unscorable"] == 0.25
    assert m["judge/verifier_agreement"] == 1.0 and m["judge/cache_hits"] == 0.25
    assert "# Reference Answer\n391" in gen.calls[0][0]  # with_reference is on by default
    rows = m["judge/samples"]
    assert len(rows) == 4 and rows[2]["reward"] is None and rows[2]["error"] == "missing score for Correctness"
    assert rows[0]["scores"] == {"Correctness": 4.0, "Reasoning": 4.0, "Clarity": 4.0}
    cfg.judge.with_reference = False
    m2 = model([_sample("<answer>390</answer>", correct=False)], env.examples("train"))
    assert "Reference" not in gen.calls[-1][0] and "judge/samples" not in m2  # shown on call 1 and every eval.every


def test_term_report_section():
    from credo.trainer.report import _judge_section

    rec = {"phase": "rl", "step": 1, "judge/samples": [
        {"prompt": "Q <b>", "completion": "A", "critique": "C", "scores": {"Correctness": 4.0, "Clarity": None},
         "reward": 1.0, "error": "", "correct": True},
        {"prompt": "Q", "completion": "B", "critique": "?", "scores": {}, "reward": None,
         "error": "missing score for Correctness", "correct": False}]}
    html = "".join(_judge_section([rec]))
    assert "Judge critiques" in html and "Q &lt;b&gt;" in html and "Clarity: N/A" in html
    assert "unscorable (missing score for Correctness)" in html


def test_tiny_random_judge_model_loads_and_is_unscorable(tmp_path):
    from credo.models import build_policy, save_policy
    from credo.trainer.config import ModelConfig

    torch.manual_seed(0)
    policy, tok = build_policy(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=1024))
    save_policy(policy, tok, tmp_path / "judge")
    cfg = load_config(None, [f"judge.model={tmp_path / 'judge'}", "judge.max_new_tokens=8", "reward.judge=1"])
    term = TERMS["judge"](TermContext(cfg=cfg, env=CalcEnv(), tokenizer=TOK))
    assert not any(p.requires_grad for p in term.judge.gen.decoder.parameters())  # frozen, its own engine
    assert term.judge.gen.keep_packed is False  # never slept by the loop: no packed copies kept through updates
    res = term([_sample("<answer>391</answer>")], CalcEnv().examples("train"))
    assert math.isnan(float(res.values[0])) and res.metrics["judge/unscorable"] == 1.0


def test_config_validation():
    with pytest.raises(ConfigError, match="judge.reward"):
        load_config(None, ["judge.reward=median"])
    with pytest.raises(ConfigError, match="judge model"):
        load_config(None, ["reward.judge=1"])
    with pytest.raises(ConfigError, match="distinct"):
        load_config(None, ["judge.dimensions=[]"])
    with pytest.raises(ConfigError, match="reward_dimensions"):
        load_config(None, ["judge.reward_dimensions=[\"Style\"]"])
    cfg = load_config("configs/smollm2_judge.toml", [])
    assert cfg.reward.judge > 0 and cfg.reward.outcome == 0 and cfg.judge.model


# ---- the group filter ---------------------------------------------------------------------------------------


def test_group_filter_by_hand():
    rewards = [0.5, 0.52, 0.0, 1.0, 0.95, 0.9, 0.75, 1.0, 0.3]
    groups = [0, 0, 1, 1, 2, 2, 3, 3, 4]
    # g0: std 0.01 < 0.05 (drop); g1: std 0.5, mean 0.5 (keep); g2: mean 0.925 > 0.9 (drop);
    # g3: std 0.125, mean 0.875 (keep); g4: a single sample, std 0 (drop)
    assert group_filter_keep(rewards, groups) == [2, 3, 6, 7]
    # the bounds themselves are kept (drop when std < min_std or mean > max_mean): std 0.25, mean 0.75
    assert group_filter_keep([0.5, 1.0], [0, 0], min_std=0.25, max_mean=0.75) == [0, 1]
    assert group_filter_keep(rewards, groups, min_std=0.0, max_mean=1.0) == list(range(9))

    class Inner:
        def __call__(self, samples, adv, g):
            return samples, {"inner": float(len(samples))}

    samples = [_sample("x", group=g) for g in groups]
    for s, r in zip(samples, rewards, strict=True):
        s.reward = r
    used, m = GroupFilter(Inner(), 0.05, 0.9)(samples, torch.zeros(9), torch.Generator())
    assert [s.group_id for s in used] == [1, 1, 3, 3] and m["inner"] == 4 and m["select/group_filter_dropped"] == 0.6


# ---- Generate–Critique–Refine ------------------------------------------------------------------------------------


def test_refine_rounds():
    from credo.trainer.refine import markdown, refine

    def policy(prompt: str) -> str:  # right only when the request was refined
        if prompt.startswith("REFINED"):
            return "<answer>391</answer>" if "17*23" in prompt else "<answer>4</answer>"
        return "<answer>0</answer>"

    def judge_reply(prompt: str) -> str:
        assert "Reference" not in prompt  # no reference at test time
        resp = response_of(prompt)
        ok = "391" in resp or "<answer>4<" in resp
        s = "4" if ok else "1"
        out = well(s, s, s)
        if "Refined Request" in prompt and "17*23" in prompt:  # only the first task gets a refined request
            out += "# User Request Refinement:\n## Refinement Comments: wrong\n## Refined Request: REFINED 17*23\n"
        return out

    env = CalcEnv()
    pgen, jgen = ScriptedGen(policy), ScriptedGen(judge_reply)
    result = refine(pgen, TOK, Judge(jgen, TOK, R, 400), env, env.examples("test"), rounds=2, max_new_tokens=32)
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [r["accuracy"] for r in rounds] == [0.0, 0.5, 0.5]
    assert [r["judge_score"] for r in rounds] == [0.0, 0.5, 0.5]
    assert [r["refined_missing"] for r in rounds] == [0.5, 0.5, 0.0]
    mul = result["examples"][0]["rounds"]
    assert [r["request"] for r in mul] == ["What is 17*23?", "REFINED 17*23", "REFINED 17*23"]
    assert mul[0]["refined_request"] == "REFINED 17*23" and mul[2]["refined_request"] is None
    assert len(pgen.calls) == 3 and len(jgen.calls) == 3
    assert "Refined Request" not in jgen.calls[2][0]  # the last round only scores
    md = markdown(result)
    assert "| 1 | 0.500 | 0.500 |" in md and "REFINED 17*23" in md
    with pytest.raises(ValueError, match="rounds"):
        refine(pgen, TOK, Judge(jgen, TOK, R, 400), env, env.examples("test"), rounds=-1)
    # keep_task: the next request is the task, then the refined request (the policy above then never sees a
    # request starting with REFINED, so no round is right)
    kept = refine(ScriptedGen(policy), TOK, Judge(ScriptedGen(judge_reply), TOK, R, 400), env, env.examples("test"),
                  rounds=1, max_new_tokens=32, keep_task=True)
    assert [r["request"] for r in kept["examples"][0]["rounds"]] == ["What is 17*23?", "What is 17*23?\nREFINED 17*23"]
    assert [r["accuracy"] for r in kept["rounds"]] == [0.0, 0.0]


def test_refine_writes_json_and_markdown(tmp_path):
    from credo.trainer.refine import write_outputs

    result = {"rounds": [{"round": 0, "accuracy": 1.0, "judge_score": math.nan, "judge_unscorable": 1.0,
                          "refined_missing": 0.0}], "examples": []}
    js, md = write_outputs(result, tmp_path / "r" / "refine.json")
    back = json.loads(js.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert back["rounds"][0]["accuracy"] == 1.0 and back["rounds"][0]["judge_score"] is None
    assert md.suffix == ".md" and "| 0 | 1.000 | nan |" in md.read_text()


# ---- PARROT -----------------------------------------------------------------------------------------------------


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def part(letter: str, s: str, why: str = "checks the sum") -> str:
    return f"# Response {letter}\n" + "".join(block(d, s, i, why) for i, d in enumerate(R.dimensions, 1)) + \
        "# Summary: done\n"


def test_parrot_consistency_filter(tmp_path):
    parrot = _script("parrot")
    pairs = [{"prompt": f"Q{i}: 2+{i}", "chosen": f"GOOD <answer>{2 + i}</answer>",
              "rejected": f"BAD <answer>{i}</answer>"} for i in range(6)]

    def teacher(prompts):
        out = []
        for p in prompts:
            q = int(re.search(r"Q(\d+)", p).group(1))
            chosen_is_a = "# Response A\nGOOD" in p
            assert f"preferred Response {'A' if chosen_is_a else 'B'}" in p  # the teacher sees the label
            good, bad = ("A", "B") if chosen_is_a else ("B", "A")
            if q == 0:  # consistent
                text = part(good, "4") + part(bad, "1")
            elif q == 1:  # inconsistent: the rejected response scores higher
                text = part(good, "1") + part(bad, "4")
            elif q == 2:  # a tie does not reproduce the winner
                text = part(good, "3") + part(bad, "3")
            elif q == 3:  # one part unparsable
                text = part(good, "4") + f"# Response {bad}\nbad one"
            elif q == 4:  # the critique names the other response: leaks the comparison
                text = part(good, "4", why="better than Response B") + part(bad, "1")
            else:  # the second part is missing (truncated)
                text = part("A", "4")
            out.append(text)
        return out

    rows, stats = parrot.parrot(pairs, teacher, R)
    assert stats["pairs"] == 6 and stats["kept"] == 1 and stats["kept_share"] == pytest.approx(1 / 6)
    assert stats["reasons"] == {"kept": 1, "inconsistent": 2, "unparsable": 1, "leaks the label": 1,
                                "missing part": 1}
    assert len(rows) == 2  # the chosen and the rejected critique of the kept pair
    for row, resp, s in zip(rows, ("GOOD <answer>2</answer>", "BAD <answer>0</answer>"), (4.0, 1.0), strict=True):
        assert "prefer" not in row["prompt"] and "Reference" not in row["prompt"] and resp in row["prompt"]
        assert row["prompt"] == judge_prompt(R, "Q0: 2+0", resp)
        assert parse_judgement(row["solution"], R).scores == dict.fromkeys(R.dimensions, s)
        assert row["solution"].startswith("# Detailed Judgement\n1. Correctness:")
    rows_m, stats_m = parrot.parrot(pairs[:1], teacher, R, margin=3.5)
    assert stats_m["reasons"] == {"inconsistent": 1} and rows_m == []  # 4 − 1 = 3 is not above the margin
    # the rows are what `credo sft` reads from a dataset env with env.prompt_template="{prompt}"
    from credo.envs.dataset import DatasetEnv

    path = tmp_path / "parrot.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = DatasetEnv(sft_files=[str(path)], prompt_template="{prompt}")
    exs = env.examples("sft")
    assert len(exs) == 2 and env.render_prompt(exs[0]) == rows[0]["prompt"]
    assert env.reference_completion(exs[0]) == rows[0]["solution"]


def test_make_pairs_and_kappa():
    make_pairs = _script("make_pairs")
    agreement = _script("judge_agreement")
    from credo.envs import make_env

    env = make_env(load_config(None, ["env.n_test=4", "env.n_train=4"]).env)
    pairs = make_pairs.make_pairs(env, env.examples("test"), seed=0)
    assert len(pairs) == 4
    for p, ex in zip(pairs, env.examples("test"), strict=True):
        assert env.verify(p["chosen"], ex).correct and not env.verify(p["rejected"], ex).correct
    assert agreement.cohen_kappa([True, True, False, False], [True, False, False, False]) == pytest.approx(0.5)
    assert agreement.cohen_kappa([True, False], [True, False]) == 1.0
    assert agreement.cohen_kappa([True, False, True, False], [False, True, False, True]) == -1.0
    assert math.isnan(agreement.cohen_kappa([], []))
    a = agreement.agreement([True, False, True, False], [1.0, 0.0, 0.0, math.nan])
    assert a["accuracy"] == pytest.approx(2 / 3) and a["unscorable"] == 0.25 and a["reward_correct"] == 0.5
    # AUC by hand: correct rewards {1.0, 0.0} vs wrong {0.0}: 1 win + 1 tie of 2 pairs
    assert a["auc"] == pytest.approx(0.75)
    assert agreement.roc_auc([0.9, 0.5], [0.5, 0.1]) == pytest.approx(0.875)
    assert math.isnan(agreement.roc_auc([], [0.1]))
