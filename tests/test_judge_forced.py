"""The forced-template judge with a probability readout (rewards/forced.py): the readout's tokens, the expected
score by hand, the filled text through a scripted generator, low mass → unscorable, and the `Judge` in that mode."""

from __future__ import annotations

import math

import pytest
import torch

from credo.models.tokenizer import CharTokenizer
from credo.rewards.forced import ScoreReadout, Slot, fill, judgement_slots
from credo.rewards.judge import Judge, JudgeItem
from credo.rewards.judgement import Rubric, parse_judgement
from credo.rollout.backend import Completion
from credo.trainer.config import ConfigError, load_config

TOK = CharTokenizer()
R = Rubric(("Correctness", "Clarity"))


class ProbGen:
    """A `Generator` that writes `line` to every line slot and answers a score request (the prompt ends with the
    readout's head then one value token) with the log-prob `table[dimension][value]`, the dimension counted by the
    `## Score: ` heads in the prompt (earlier scores are in the context)."""

    def __init__(self, table: dict[int, dict[str, float]], line: str = " checks the sum\n"):
        self.table, self.line, self.tokenizer = table, line, TOK
        self.calls: list[tuple[int, int]] = []  # (requests, max_new_tokens) per call
        self.prompts: list[str] = []

    def generate(self, requests, params, rng=None):
        self.calls.append((len(requests), params.max_new_tokens))
        out = []
        for r in requests:
            text = TOK.decode(r.prompt_ids)
            self.prompts.append(text)
            if r.prompt_logprobs:
                dim = text.count("## Score: ")
                lp = torch.tensor([math.log(self.table[dim][text[-1]])])
                out.append([Completion(torch.tensor([0]), torch.zeros(1), "length", lp)])
            else:
                ids = TOK.encode(self.line)[: params.max_new_tokens]
                out.append([Completion(torch.tensor(ids), torch.zeros(len(ids)), "stop")])
        return out

    def sync_weights(self, policy):
        raise AssertionError("a judge is never synced")


TABLE = {1: {"1": 0.1, "2": 0.2, "3": 0.3, "4": 0.2},  # mass 0.8, E = 2.2 / 0.8 = 2.75, argmax 3
         2: {"1": 0.1, "2": 0.1, "3": 0.1, "4": 0.5}}  # mass 0.8, E = 2.6 / 0.8 = 3.25, argmax 4


def test_readout_tokens_and_expected_score_by_hand():
    ro = ScoreReadout.build(TOK, 1, 4)
    # one character per token: "## Score:" + " 3" is two tokens, so the head keeps the space and the value is "3"
    assert ro.head_text == "## Score: " and ro.values == (1, 2, 3, 4)
    assert ro.ids == tuple(TOK.encode("1234"))
    score, mass, best = ro.expected(torch.tensor([0.1, 0.2, 0.3, 0.2]).log())
    assert score == pytest.approx(2.75) and mass == pytest.approx(0.8) and best == 2
    assert ScoreReadout.build(TOK, 1.5, 4.5).values == (2, 3, 4)
    with pytest.raises(ValueError, match="two integer"):
        ScoreReadout.build(TOK, 1.2, 1.8)
    with pytest.raises(ValueError, match="one token"):
        ScoreReadout.build(TOK, 1, 10)  # "10" is two characters


def test_fill_writes_the_template_and_the_parser_reads_it():
    gen = ProbGen(TABLE)
    ro = ScoreReadout.build(TOK, 1, 4)
    prompt = TOK.encode_prompt("Judge this.\n")
    (text,) = fill(gen, TOK, [prompt], judgement_slots(R.dimensions), ro, line_tokens=30)
    assert text == ("# Detailed Judgement\n1. Correctness:\n## Justification: The response checks the sum\n"
                    "## Score: 2.75\n2. Clarity:\n## Justification: The response checks the sum\n## Score: 3.25\n")
    j = parse_judgement(text, R)
    assert j.ok and j.scores == {"Correctness": 2.75, "Clarity": 3.25}
    assert j.reward(R) == pytest.approx((3.0 - 1) / 3)  # mean 3.0 on 1-4
    # one generate call per line (1 row, 30 tokens) and per score (4 values, 1 token each)
    assert gen.calls == [(1, 30), (4, 1), (1, 30), (4, 1)]
    # the second dimension reads the first's most likely score in its context
    assert "## Score: 3\n2. Clarity:" in gen.prompts[-1]


def test_low_mass_is_unreadable_and_the_sample_unscorable():
    table = {1: TABLE[1], 2: {"1": 0.05, "2": 0.05, "3": 0.05, "4": 0.05}}  # mass 0.2 < 0.5
    (text,) = fill(ProbGen(table), TOK, [TOK.encode_prompt("q")], judgement_slots(R.dimensions),
                   ScoreReadout.build(TOK, 1, 4), min_mass=0.5)
    assert "## Score: unreadable (mass 0.20)" in text
    j = parse_judgement(text, R)
    assert not j.ok and "Clarity" in j.error and math.isnan(j.reward(R))


def test_refine_slots_and_unknown_slot():
    slots = judgement_slots(("Correctness",), refine=True)
    assert [s.kind for s in slots] == ["", "line", "score", "line", "line"]
    (text,) = fill(ProbGen({1: TABLE[1]}, line=" compute 2+3.\n"), TOK, [TOK.encode_prompt("q")], slots,
                   ScoreReadout.build(TOK, 1, 4))
    assert parse_judgement(text, Rubric(("Correctness",))).refined_request == "Please compute 2+3."
    with pytest.raises(ValueError, match="slot kind"):
        fill(ProbGen(TABLE), TOK, [[1]], [Slot("x", "essay")], ScoreReadout.build(TOK, 1, 4))


def test_judge_in_probs_mode():
    gen = ProbGen(TABLE)
    judge = Judge(gen, TOK, R, readout="probs", line_tokens=20)
    items = [JudgeItem("What is 17*23?", "<answer>391</answer>", "391"), JudgeItem("q", "a")]
    js = judge.judge(items)
    assert [j.scores for j in js] == [{"Correctness": 2.75, "Clarity": 3.25}] * 2
    assert js[0].reward(R) == pytest.approx(2 / 3)
    first = gen.prompts[0]
    assert "Answer in exactly this format" not in first  # the template is forced, not described
    assert "# Reference Answer\n391" in first
    assert judge.judge(items[:1]) == js[:1] and judge.hits == 1  # cached like a text judgement
    with pytest.raises(ValueError, match="judge.readout"):
        Judge(gen, TOK, R, readout="logits")
    with pytest.raises(ValueError, match="images"):
        judge.judge([JudgeItem("q2", "a2", images=["img"])])


def test_config_keys():
    cfg = load_config(None, ["judge.readout=probs", "judge.line_tokens=12", "judge.min_score_mass=0.3"])
    assert (cfg.judge.readout, cfg.judge.line_tokens, cfg.judge.min_score_mass) == ("probs", 12, 0.3)
    with pytest.raises(ConfigError, match="judge.readout"):
        load_config(None, ["judge.readout=sample"])
    with pytest.raises(ConfigError, match="min_score_mass"):
        load_config(None, ["judge.min_score_mass=2"])
    with pytest.raises(ConfigError, match="line_tokens"):
        load_config(None, ["judge.line_tokens=0"])


def test_decoder_readout_equals_the_seam_readout():
    """The native judge's direct readout (one left-padded prefill) gives the log-probs the seam's prompt scoring
    gives (one request per value), rows of different lengths."""
    from credo.models import build_policy
    from credo.rewards.forced import _value_logprobs
    from credo.rollout.backend import SamplingParams, make_generator
    from credo.trainer.config import ModelConfig

    torch.manual_seed(0)
    policy, tok = build_policy(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=128))
    gen = make_generator("native", policy, tok)
    rows = [tok.encode_prompt("Judge: 2+2=4. ## Score: "), tok.encode_prompt("x ## Score: ")]
    ids = tok.encode("1234")
    direct = _value_logprobs(gen, rows, ids, SamplingParams(1, 0.0), None)

    class SeamOnly:  # the same engine without its decoder: the generic path
        tokenizer = tok

        def generate(self, requests, params, rng=None):
            return gen.generate(requests, params, rng)

    seam = _value_logprobs(SeamOnly(), rows, ids, SamplingParams(1, 0.0), None)
    assert direct.shape == (2, 4)
    torch.testing.assert_close(direct, seam, atol=1e-5, rtol=0)
    assert float(direct.exp().sum(1).max()) < 1  # four tokens of a 100-token vocabulary


def test_cached_fill_equals_the_generic_path():
    """Greedy lines on the native backend run on one KV cache (`CachedFill`): on a random TinyLM judge, rows of
    different lengths whose lines end at different steps (newline, EOS or the 8-token cap), the filled texts equal
    those of the generic path (a prefill per line and per score through the seam), scores within 1e-3, and the
    engine's `generate` is never called."""
    from credo.models import build_policy
    from credo.rollout.backend import make_generator
    from credo.trainer.config import ModelConfig

    torch.manual_seed(3)
    policy, tok = build_policy(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=512))
    gen = make_generator("native", policy, tok)
    nl, eos = tok.encode("\n")[0], tok.eos_ids[0]

    class Nudged:  # the judge's decoder, made to end lines at positions that differ between rows
        def __init__(self, inner):
            self.inner = inner

        def new_cache(self, *args):
            return self.inner.new_cache(*args)

        def parameters(self):
            return self.inner.parameters()

        def step(self, ids, cache, attention_mask=None):
            out = self.inner.step(ids, cache, attention_mask).clone()
            out[:, -1, nl] += 50.0 * (cache.next_pos % 6 == 0)  # next_pos: real tokens so far, padding not counted
            out[:, -1, eos] += 50.0 * (cache.next_pos % 17 == 0)
            return out

    gen.decoder = Nudged(gen.decoder)
    prompts = [tok.encode_prompt(q) for q in ("Judge: 2+2=4.", "x", "Is 17*3=51 right? Check it.")]
    slots = judgement_slots(("Correctness", "Clarity"), refine=True)
    ro = ScoreReadout.build(tok, 1, 4)

    class SeamOnly:  # the same engine without its decoder: the generic path
        tokenizer, calls = tok, 0

        def generate(self, requests, params, rng=None):
            SeamOnly.calls += 1
            return gen.generate(requests, params, rng)

    generic = fill(SeamOnly(), tok, prompts, slots, ro, line_tokens=8, min_mass=0.0)
    gen.generate = None  # the cached path must not generate through the seam
    cached = fill(gen, tok, prompts, slots, ro, line_tokens=8, min_mass=0.0)
    assert SeamOnly.calls > 0

    def parts(text):
        lines = text.splitlines()
        return ([ln for ln in lines if not ln.startswith("## Score:")],
                [float(ln.split(":")[1]) for ln in lines if ln.startswith("## Score:")])

    lengths = set()
    for a, b in zip(generic, cached, strict=True):
        (ta, sa), (tb, sb) = parts(a), parts(b)
        assert ta == tb and len(sa) == 2
        assert sa == pytest.approx(sb, abs=1e-3)
        lengths.add(tuple(len(ln) for ln in ta))
    assert len(lengths) > 1  # the rows' lines differ, so the lockstep really padded


def test_parrot_teacher_template_is_read_by_the_consistency_filter():
    """scripts/parrot.py with a forced teacher: the two-part template, each part parsed; A's read-out score 2.75
    above B's 1.25 keeps a pair whose chosen is A and drops it as inconsistent when the chosen is B."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "parrot.py"
    spec = importlib.util.spec_from_file_location("parrot_script", path)
    parrot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parrot)
    r1 = Rubric(("Correctness",))
    table = {1: TABLE[1], 2: {"1": 0.6, "2": 0.1, "3": 0.05, "4": 0.05}}  # B: (0.6+0.2+0.15+0.2)/0.8 = 1.4375
    (text,) = fill(ProbGen(table), TOK, [TOK.encode_prompt("q")], parrot.teacher_slots(r1),
                   ScoreReadout.build(TOK, 1, 4))
    assert text.startswith("# Response A\n1. Correctness:\n## Justification: The response checks the sum\n"
                           "## Score: 2.75\n# Response B\n1. Correctness:")
    verdict, js = parrot.check_pair(text, True, r1)
    assert verdict == "kept" and js["chosen"].scores == {"Correctness": 2.75}
    assert js["rejected"].scores["Correctness"] == pytest.approx(1.4375, abs=1e-3)
    assert parrot.check_pair(text, False, r1)[0] == "inconsistent"
