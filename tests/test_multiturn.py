"""Multi-turn rollouts: observations masked out of the loss, trainer log-probs = sampler log-probs on the policy's
tokens across turns, malformed calls, turn and image limits, a text-only tool on arith and crops on a TinyVLM."""

import numpy as np
import torch
from biased_policy import Biased
from toy_env import ImageDigitsEnv

import credo.rollout.multiturn as mt
from credo.data import SEGMENTS, collate
from credo.envs.arith import ArithConfig, ArithEnv
from credo.models import build_policy
from credo.rollout.multiturn import CALL_END, multiturn_rollout, parse_tool_call
from credo.rollout.sampler import SamplingParams
from credo.trainer.config import ModelConfig
from credo.trainer.logprobs import sequence_logprobs

LM = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=512)
VLM = ModelConfig(kind="tinyvlm", d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=512, image_size=16,
                  patch_size=4)
CALC = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'
CROP = '<tool_call>{"name": "crop_image", "arguments": {"bbox_2d": [0, 0, 0.5, 0.5], "target_image": 1}}</tool_call>'


class Scripted(Biased):
    """A real TinyLM(/VLM) whose logits get +`bias` on the next character of `script` while the text after the
    last newline is a proper prefix of it and fewer than `n_calls` calls were written; otherwise the model's own
    distribution. Forward and cached step apply the same rule, so the log-probs stay comparable."""

    def __init__(self, inner, tok, script: str, n_calls: int = 1, bias: float = 30.0) -> None:
        super().__init__(inner, bias)
        self.tok, self.script, self.n_calls = tok, script, n_calls

    def _forced(self, ids: list[int]) -> int | None:
        text = self.tok.decode(ids)
        if text.count(CALL_END) >= self.n_calls:
            return None
        tail = text.rsplit("\n", 1)[-1]
        if len(tail) < len(self.script) and self.script.startswith(tail):
            return self.tok.stoi[self.script[len(tail)]]
        return None


def _arith():
    return ArithEnv(ArithConfig(n_sft=4, n_train=4, n_test=2, rl_depths=(1,), sft_depths=(1,), width=1))


def _check_logprobs(policy, samples, tok):
    batch = collate(samples, tok.pad_id)
    with torch.no_grad():
        lp, _ = sequence_logprobs(policy, batch.input_ids, images=batch.images)
    m = batch.loss_mask.bool()
    assert m.any()
    assert (lp[m] - batch.old_logprobs[m]).abs().max() < 1e-5


def test_parse_tool_call():
    assert parse_tool_call("a <tool_call>{}</tool_call> b " + CALC) == ("calculator", {"expression": "6*7"})
    assert parse_tool_call('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>') == ("f", {"x": 1})
    for bad in ("no call", "<tool_call>{bad json</tool_call>", '<tool_call>["x"]</tool_call>',
                '<tool_call>{"name": "f", "arguments": 3}</tool_call>'):
        try:
            parse_tool_call(bad)
        except mt.ToolError:
            continue
        raise AssertionError(bad)


def test_calculator_on_arith_masks_observations_and_logprobs_match():
    torch.manual_seed(0)
    model, tok = build_policy(LM)
    policy = Scripted(model.eval(), tok, CALC).eval()
    exs = _arith().examples("train")[:2]
    samples, metrics = multiturn_rollout(policy, tok, _arith(), exs, 2, SamplingParams(120, 1.0),
                                         torch.Generator().manual_seed(0), max_turns=3)
    assert len(samples) == 4 and [s.group_id for s in samples] == [0, 0, 1, 1]
    for s in samples:
        assert s.n_tool_calls == 1 and s.text.startswith(CALC)
        assert "<observation>42</observation>" in s.text  # the text tool's answer, then the model continues
        obs = s.segment_ids == SEGMENTS["observation"]
        assert obs.sum() == len(tok.encode("\n<observation>42</observation>\n"))
        assert (s.loss_mask[obs] == 0).all() and (s.loss_mask[~obs] == 1).all()
        assert (s.sampler_logprobs[obs] == 0).all()
        call = s.segment_ids == SEGMENTS["tool_call"]
        assert call.sum() == len(CALC) and bool(call[: len(CALC)].all())
        assert len(s.completion_ids) > len(CALC) + int(obs.sum())  # a second, freely sampled turn
    assert metrics["tools/call_rate"] == 1.0 and metrics["tools/calls_per_rollout"] == 1.0
    assert metrics["tools/malformed_rate"] == 0.0
    _check_logprobs(policy, samples, tok)


def test_plain_tinylm_malformed_calls_logprobs_and_turn_limit(monkeypatch):
    """A random TinyLM whose "call end" is a common character: every turn ends in a malformed call, gets an
    error observation and continues; all tokens are the model's own samples."""
    monkeypatch.setattr(mt, "CALL_END", " ")
    torch.manual_seed(1)
    model, tok = build_policy(LM)
    model.eval()
    exs = _arith().examples("train")[:2]
    samples, metrics = multiturn_rollout(model, tok, _arith(), exs, 2, SamplingParams(150, 1.0),
                                         torch.Generator().manual_seed(0), max_turns=3)
    assert metrics["tools/malformed"] > 0 and metrics["tools/call_rate"] == 0.0
    assert metrics["tools/malformed_rate"] == 1.0 and metrics["tools/turns"] <= 3
    for s in samples:
        assert s.n_tool_calls == 0
        assert s.text.count("<observation>") <= 2  # at most max_turns − 1 observations
        assert s.text.count("<observation>Execution error:") == s.text.count("<observation>")
        obs = s.segment_ids == SEGMENTS["observation"]
        assert torch.equal(s.loss_mask == 0, obs)
    assert any("<observation>Execution error:" in s.text for s in samples)
    _check_logprobs(model, samples, tok)


def test_turn_limit_stops_repeated_calls():
    torch.manual_seed(0)
    model, tok = build_policy(LM)
    policy = Scripted(model.eval(), tok, CALC, n_calls=10).eval()
    samples, metrics = multiturn_rollout(policy, tok, _arith(), _arith().examples("train")[:1], 2,
                                         SamplingParams(120, 1.0), torch.Generator().manual_seed(0), max_turns=3)
    for s in samples:
        assert s.n_tool_calls == 2 and s.text.count(CALL_END) == 3 and s.finish_reason == "stop"
    assert metrics["tools/unexecuted"] == 2.0 and metrics["tools/turns"] == 3.0


def test_unknown_tool_and_completion_budget():
    torch.manual_seed(0)
    model, tok = build_policy(LM)
    policy = Scripted(model.eval(), tok, CALC.replace("calculator", "nope")).eval()
    samples, metrics = multiturn_rollout(policy, tok, _arith(), _arith().examples("train")[:1], 2,
                                         SamplingParams(120, 1.0), torch.Generator().manual_seed(0), max_turns=3,
                                         max_completion_tokens=len(CALC) + 150)
    assert metrics["tools/malformed"] == 2.0
    for s in samples:
        assert "unknown tool 'nope'" in s.text and s.n_tool_calls == 0
        assert len(s.completion_ids) <= len(CALC) + 150
    _check_logprobs(policy, samples, tok)


def test_vlm_crop_observation_images_in_placeholder_order_and_image_limit():
    torch.manual_seed(0)
    model, tok = build_policy(VLM)
    policy = Scripted(model.eval(), tok, CROP, n_calls=2).eval()
    env = ImageDigitsEnv(n=32, size=16)
    samples, metrics = multiturn_rollout(policy, tok, env, env.examples("train")[:2], 2, SamplingParams(120, 1.0),
                                         torch.Generator().manual_seed(0), max_turns=3, max_images=2)
    for s in samples:
        # prompt image + the first crop; the second crop would exceed max_images = 2
        assert len(s.images) == 2 and s.n_tool_calls == 2
        assert "image limit reached" in s.text
        n_slots = int((s.completion_ids == tok.image_token_id).sum())
        assert n_slots == tok.n_patches  # one observation image inside the completion
        assert (s.loss_mask[s.completion_ids == tok.image_token_id] == 0).all()
    assert metrics["tools/image_limited"] == 4.0
    _check_logprobs(policy, samples, tok)
    # the crop is really read: a different observation image changes the recomputed log-probs after it
    batch = collate(samples, tok.pad_id)
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    other = [[row[0], noise] for row in batch.images]  # the env's images are solid, so are their crops
    with torch.no_grad():
        a, _ = sequence_logprobs(policy, batch.input_ids, images=batch.images)
        b, _ = sequence_logprobs(policy, batch.input_ids, images=other)
    m = batch.loss_mask.bool()
    assert (a[m] - b[m]).abs().max() > 1e-4


def test_tool_use_metrics_split_accuracy():
    from credo.data import Sample, Score
    from credo.rollout.multiturn import tool_use_metrics

    def s(calls, ok):  # accuracy reads the verdict's `correct` (issue 12, kind 10)
        z = torch.zeros(1)
        return Sample("e", 0, z.long(), z.long(), z, z.long(), z, "stop", n_tool_calls=calls, verdict=Score(ok))

    m = tool_use_metrics([s(1, 1.0), s(2, 0.0), s(0, 1.0), s(0, 1.0)])
    assert m == {"tools/acc_with_tools": 0.5, "tools/acc_without_tools": 1.0, "tools/share_with_tools": 0.5}


def test_zoom_crop_trajectory_on_a_tinyvlm():
    from credo.envs.zoom import ZoomConfig, ZoomEnv

    torch.manual_seed(0)
    model, tok = build_policy(VLM)
    env = ZoomEnv(ZoomConfig(canvas=64, digit_px=8, n_digits=2, n_sft=2, n_train=2, n_test=2))
    ex = env.examples("train")[0]
    call, _ = env.tool_trace(ex)
    policy = Scripted(model.eval(), tok, call).eval()
    samples, metrics = multiturn_rollout(policy, tok, env, [ex], 2, SamplingParams(120, 1.0),
                                         torch.Generator().manual_seed(0), max_turns=2)
    assert metrics["tools/call_rate"] == 1.0
    for s in samples:
        assert s.text.startswith(call) and "Here is the cropped image (Image Size: 16x16)" in s.text
        assert len(s.images) == 2 and s.images[1].size == (16, 16)
    _check_logprobs(policy, samples, tok)
