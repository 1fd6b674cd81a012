"""The generation seam (`rollout.backend`): a new backend is one class plus one `BACKENDS` entry. A scripted backend
(fixed text per prompt, fixed log-probs) drives single-turn rollouts, multi-turn tool use, Forced Rethinking and the
policy PV reasoner, so every output below is checkable by hand. Also: only what the policy wrote is scored
(`multiturn.scored_text`, issue 12 kind 4)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from credo.data import SEGMENTS, Example, Sample
from credo.envs.base import Score
from credo.envs.tools import TOOLS
from credo.envs.verifiers.numeric import verify_numeric
from credo.models.tokenizer import CharTokenizer
from credo.rewards.perception import TEMPLATE, PolicyReasoner, make_reasoner
from credo.rollout.backend import BACKENDS, Completion, GenerationRequest, SamplingParams, make_generator
from credo.rollout.engine import rollout
from credo.rollout.multiturn import multiturn_rollout, scored_text
from credo.rollout.rethink import forced_rethink
from credo.trainer.config import RethinkConfig

TOK = CharTokenizer()
LOGPROB, PROMPT_LOGPROB = -0.25, -1.0  # what the scripted backend reports for every sampled / scored prompt token


class ScriptedGenerator:
    """A `Generator` that writes `replies(prompt_text, k)` for the k-th completion of a prompt, cut as the contract
    says: at the first stop string (kept, "stop"), else followed by EOS ("stop"), then at max_new_tokens
    ("length"). Every completion token has log-prob LOGPROB, every scored prompt token PROMPT_LOGPROB. It records
    each call's requests and params, and counts weight syncs."""

    def __init__(self, policy: object, tokenizer: CharTokenizer, replies: Callable[[str, int], str],
                 max_len: int | None = None, image_size: int = 48) -> None:
        self.tokenizer, self.replies, self.max_len, self.image_size = tokenizer, replies, max_len, image_size
        self.calls: list[tuple[list[GenerationRequest], SamplingParams]] = []
        self.synced = 0

    def generate(self, requests: list[GenerationRequest], params: SamplingParams,
                 rng: torch.Generator | None = None) -> list[list[Completion]]:
        self.calls.append((requests, params))
        return [[self._complete(self.replies(self.tokenizer.decode(r.prompt_ids), k), r, params) for k in range(r.n)]
                for r in requests]

    def _complete(self, text: str, r: GenerationRequest, params: SamplingParams) -> Completion:
        ends = [text.index(s) + len(s) for s in params.stop if s in text]
        ids = self.tokenizer.encode(text[: min(ends)]) if ends else self.tokenizer.encode(text) + [TOK.eos_id]
        reason = "stop"
        if len(ids) > params.max_new_tokens:
            ids, reason = ids[: params.max_new_tokens], "length"
        plp = torch.full((r.prompt_logprobs,), PROMPT_LOGPROB) if r.prompt_logprobs else None
        return Completion(torch.tensor(ids), torch.full((len(ids),), LOGPROB), reason, plp)

    def sync_weights(self, policy: object) -> None:
        self.synced += 1


class CalcEnv:
    """Two questions whose answers the numeric verifier checks."""

    name = "calc"

    def __init__(self) -> None:
        self._examples = [Example("mul", "What is 17*23?", 391, env=self.name),
                          Example("add", "What is 2+2?", 4, env=self.name)]

    def examples(self, split: str) -> list[Example]:
        return list(self._examples)

    def render_prompt(self, example: Example) -> str:
        return f"{example.prompt}\n"

    def reference_completion(self, example: Example) -> str:
        return f"<answer>{example.reference}</answer>"

    def verify(self, completion: str, example: Example) -> Score:
        return verify_numeric(completion, example.reference)


@pytest.fixture
def scripted(monkeypatch):
    """`make_generator("scripted", …)`: the backend registered by one registry entry, as a real one would be."""
    monkeypatch.setitem(BACKENDS, "scripted", f"{__name__}:ScriptedGenerator")
    return lambda replies, **kw: make_generator("scripted", None, TOK, replies=replies, **kw)


def test_a_backend_is_one_registry_entry(scripted):
    gen = scripted(lambda prompt, k: "x")
    assert isinstance(gen, ScriptedGenerator) and gen.tokenizer is TOK
    with pytest.raises(ValueError, match="unknown value 'nope'.*native"):
        make_generator("nope", None, TOK)


def test_single_turn_rollout_through_the_seam(scripted):
    gen = scripted(lambda prompt, k: f"<answer>{k}</answer> and more" if "2+2" in prompt else "no idea")
    env = CalcEnv()
    samples = rollout(gen, TOK, env, env.examples("train"), 2, SamplingParams(32, stop=("</answer>",)), None, 5)
    (requests, params), = gen.calls
    assert [r.n for r in requests] == [2, 2] and params.stop == ("</answer>",)
    assert requests[0].prompt_ids == [TOK.bos_id, *TOK.encode("What is 17*23?\n")]
    assert [s.group_id for s in samples] == [5, 5, 6, 6]
    assert [s.text for s in samples] == ["no idea", "no idea", "<answer>0</answer>", "<answer>1</answer>"]
    assert samples[0].completion_ids.tolist() == TOK.encode("no idea") + [TOK.eos_id]  # EOS kept, "stop"
    assert samples[2].completion_ids.tolist() == TOK.encode("<answer>0</answer>")  # cut after the stop string
    assert all(s.finish_reason == "stop" and s.loss_mask.eq(1).all() for s in samples)
    assert samples[2].sampler_logprobs.tolist() == [LOGPROB] * 18
    assert torch.equal(samples[2].prompt_ids, torch.tensor([TOK.bos_id, *TOK.encode("What is 2+2?\n")]))
    short = rollout(gen, TOK, env, env.examples("train")[:1], 1, SamplingParams(4))
    assert short[0].text == "no i" and short[0].finish_reason == "length"


CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "17*23"}}</tool_call>'
OBS = "\n<observation>391</observation>\n"


def test_multiturn_call_observation_answer_through_the_seam(scripted):
    """Issue 12, kind 4: the calculator's observation is 391, the policy then writes "I am not sure.": the
    trajectory scores 0 with `numeric` (reading the whole text, the observation would have scored 1)."""
    gen = scripted(lambda prompt, k: "I am not sure." if "<observation>" in prompt else CALL)
    env = CalcEnv()
    (s,), m = multiturn_rollout(gen, TOK, env, env.examples("train")[:1], 1, SamplingParams(128), max_turns=3,
                                tools={"calculator": TOOLS["calculator"]})
    call, obs, answer = TOK.encode(CALL), TOK.encode(OBS), TOK.encode("I am not sure.") + [TOK.eos_id]
    assert s.completion_ids.tolist() == call + obs + answer
    assert s.loss_mask.tolist() == [1.0] * len(call) + [0.0] * len(obs) + [1.0] * len(answer)
    assert s.sampler_logprobs.tolist() == [LOGPROB] * len(call) + [0.0] * len(obs) + [LOGPROB] * len(answer)
    assert s.segment_ids.tolist() == ([SEGMENTS["tool_call"]] * len(call) + [SEGMENTS["observation"]] * len(obs)
                                      + [SEGMENTS["reasoning"]] * len(answer))
    assert s.n_tool_calls == 1 and s.finish_reason == "stop" and m["tools/turns"] == 2.0
    (first, p1), (second, p2) = gen.calls
    assert "</tool_call>" in p1.stop and second[0].prompt_ids == first[0].prompt_ids + call + obs  # token-in/out
    assert scored_text(s, TOK) == s.policy_text == s.scored_text == "I am not sure."  # what the verifier reads
    assert verify_numeric(scored_text(s, TOK), 391).value == 0.0
    assert verify_numeric(s.text, 391).value == 1.0  # the trap: the observation holds the right number


def test_forced_rethink_through_the_seam(scripted):
    wrong, cont = "<answer>5</answer>", ", 2+2 is 4. <answer>4</answer>"
    gen = scripted(lambda prompt, k: cont if prompt.endswith("Wait") else wrong)
    env = CalcEnv()
    ex = env.examples("train")[1]
    params = SamplingParams(64, temperature=0.7)  # the trainer's temperature
    samples = rollout(gen, TOK, env, [ex], 2, params)
    cfg = RethinkConfig(enabled=True, triggers=["\n\nWait"] * 4, skip_prob=0.0, truncate_prob=0.0, reserve_tokens=8,
                        min_continuation=0)
    new, m = forced_rethink(gen, TOK, env, samples, {ex.id: ex}, cfg, params, torch.Generator().manual_seed(0))
    (requests, cparams) = gen.calls[-1]
    kept, trig, tail = TOK.encode(wrong), TOK.encode("\n\nWait"), TOK.encode(cont) + [TOK.eos_id]
    assert [r.prompt_ids for r in requests] == [samples[0].prompt_ids.tolist() + kept + trig] * 2  # EOS dropped
    assert [r.prompt_logprobs for r in requests] == [6, 6]
    assert (cparams.temperature, cparams.logprob_temperature, cparams.max_new_tokens) == (0.9, 0.7, 64 - 18 - 6)
    for s in new:
        assert s.rethought and s.completion_ids.tolist() == kept + trig + tail
        assert s.text == wrong + "\n\nWait" + cont and s.finish_reason == "stop"
        assert s.sampler_logprobs.tolist() == [LOGPROB] * 18 + [PROMPT_LOGPROB] * 6 + [LOGPROB] * len(tail)
        assert s.loss_mask.eq(1).all()
    assert (m["rethink/rate"], m["rethink/accepted"], m["rethink/acc_before"], m["rethink/acc_after"]) == (1, 1, 0, 1)
    assert all(s.policy_text is None and s.scored_text == s.text for s in new)  # no observation: the whole text


def test_forced_rethink_of_a_multiturn_sample_keeps_its_observation_unscored(scripted):
    def reply(prompt: str, k: int) -> str:
        if prompt.endswith("Wait"):
            return ", the tool said so."
        return "I am not sure." if "<observation>" in prompt else CALL

    gen = scripted(reply)
    env = CalcEnv()
    ex = env.examples("train")[0]
    samples, _ = multiturn_rollout(gen, TOK, env, [ex], 1, SamplingParams(200), max_turns=3,
                                   tools={"calculator": TOOLS["calculator"]})
    cfg = RethinkConfig(enabled=True, triggers=["\n\nWait"] * 4, skip_prob=0.0, truncate_prob=0.0, reserve_tokens=8,
                        min_continuation=0, require_correct=False)
    (new,), _ = forced_rethink(gen, TOK, env, samples, {ex.id: ex}, cfg, SamplingParams(200))
    assert new.rethought and "391" in new.text  # the observation is still in the trajectory ...
    assert new.scored_text == "I am not sure.\n\nWait, the tool said so."  # ... but not in what is scored
    assert verify_numeric(new.scored_text, 391).value == 0.0


def test_policy_pv_reasoner_through_the_seam(scripted):
    gen = scripted(lambda prompt, k: "<answer>2</answer> extra" if "2 red cubes" in prompt else "no idea",
                   max_len=400)
    reasoner = make_reasoner("policy", CalcEnv(), gen, max_new_tokens=32)
    assert isinstance(reasoner, PolicyReasoner) and reasoner.max_prompt_tokens == 400 - 32
    assert reasoner.answers(["How many cubes?", "How many balls?"], ["2 red cubes", "a blue ball"]) == ["2", "no idea"]
    (requests, params), = gen.calls
    assert requests[0].prompt_ids == TOK.encode_prompt(TEMPLATE.format(question="How many cubes?",
                                                                       perception="2 red cubes"))
    assert (params.temperature, params.stop, params.max_new_tokens) == (0.0, ("</answer>",), 32)


# ---- only what the policy wrote is scored (issue 12, kind 4) -----------------------------------------------


def _trajectory(*parts: tuple[str, str]) -> Sample:
    """A multi-turn sample from ("policy" | "obs", text) parts, labelled as the rollout labels them."""
    ids, seg, mask = [], [], []
    for kind, text in parts:
        t = TOK.encode(OBS.replace("391", text) if kind == "obs" else text)
        ids += t
        seg += [SEGMENTS["observation" if kind == "obs" else "reasoning"]] * len(t)
        mask += [0.0 if kind == "obs" else 1.0] * len(t)
    return Sample("x", 0, torch.tensor([TOK.bos_id]), torch.tensor(ids), torch.tensor(mask), torch.tensor(seg),
                  torch.zeros(len(ids)), "stop", text=TOK.decode(ids))


def _call(expression: str) -> str:
    return CALL.replace("17*23", expression)


@pytest.mark.parametrize("parts,expected_text,value", [
    # the case: the observation's 391 is not the policy's answer
    ((("policy", _call("17*23")), ("obs", "391"), ("policy", "I am not sure.")), "I am not sure.", 0.0),
    # an answer tag inside an observation (a tool that echoes tags) is not the policy's
    ((("policy", _call("17*23")), ("obs", "<answer>391</answer>"), ("policy", "hmm")), "hmm", 0.0),
    # the policy's own tagged answer after the observation
    ((("policy", _call("17*23")), ("obs", "391"), ("policy", "<answer>391</answer>")), None, 1.0),
    # a tag in an earlier policy turn counts (policy turns joined, observations removed) ...
    ((("policy", "<answer>391</answer>" + _call("17*23")), ("obs", "391"), ("policy", "sure")), None, 1.0),
    # ... and a wrong earlier tag is not rescued by the observation
    ((("policy", "<answer>390</answer>" + _call("17*23")), ("obs", "391"), ("policy", "sure")), None, 0.0),
    # untagged: a call's arguments are not an answer (the last turn is an unexecuted call on "391")
    ((("policy", _call("17*23")), ("obs", "391"), ("policy", _call("391"))), "", 0.0),
    # untagged: the last policy turn is read, without the observation before it
    ((("policy", _call("17*23")), ("obs", "391"), ("policy", "The product is 391.")), "The product is 391.", 1.0),
    # a boxed answer is a tagged answer too
    ((("policy", "so \\boxed{391}. " + _call("17*23")), ("obs", "12"), ("policy", "ok")), None, 1.0),
])
def test_scored_text_reads_only_the_policy(parts, expected_text, value):
    s = _trajectory(*parts)
    text = scored_text(s, TOK)
    if expected_text is not None:
        assert text == expected_text
    assert "<observation>" not in text
    assert verify_numeric(text, 391).value == value


def test_scored_text_of_a_single_turn_sample_is_its_text():
    s = _trajectory(("policy", "first " + _call("1+1") + " then 391"))
    assert scored_text(s, TOK) == s.text  # no observation: nothing to remove, even a call's text stays
