"""Multi-turn rollouts on a Hugging Face Qwen2-VL policy (tiny, random-initialised, built offline): a crop
observation carries Qwen's `<|vision_start|>…<|vision_end|>` block, and the trainer's log-probs equal the
sampler's on the policy's own tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from biased_policy import Biased

pytest.importorskip("transformers")

from credo.data import SEGMENTS, Example, collate  # noqa: E402
from credo.envs.tools import Observation  # noqa: E402
from credo.models import load_policy  # noqa: E402
from credo.models.tiny_hf import make_tiny_qwen2_vl  # noqa: E402
from credo.rollout.multiturn import image_placeholders, multiturn_rollout, observation_tokens  # noqa: E402
from credo.rollout.sampler import SamplingParams  # noqa: E402
from credo.trainer.logprobs import sequence_logprobs  # noqa: E402

CROP = '<tool_call>{"name": "crop_image", "arguments": {"bbox_2d": [0, 0, 0.5, 0.5], "target_image": 1}}</tool_call>'


class ForcedIds(Biased):
    """A real policy whose logits get +`bias` on the next id of `script` (token ids) while the ids so far end
    in a proper prefix of it (the longest one; the empty prefix forces its first id) and the script has not
    been written `n_calls` times yet; a rule on the ids alone, so forward and the cached steps agree."""

    def __init__(self, inner, script: list[int], n_calls: int = 1, bias: float = 40.0) -> None:
        super().__init__(inner, bias)
        self.script, self.n_calls = script, n_calls

    def _forced(self, ids: list[int]) -> int | None:
        s, L = self.script, len(self.script)
        if sum(ids[i : i + L] == s for i in range(len(ids) - L + 1)) >= self.n_calls:
            return None
        for k in range(min(L - 1, len(ids)), -1, -1):
            if k == 0 or ids[-k:] == s[:k]:
                return s[k]
        return None


class _Canvas:
    """One question about a random image (the rollout only needs prompts and images)."""

    name = "canvas"

    def render_prompt(self, example: Example) -> str:
        return example.prompt


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return load_policy(make_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2_vl")))


def test_image_placeholders_use_the_tokenizers_image_block(qwen):
    _, tok = qwen
    block = [tok.vision_start_id, *[tok.image_token_id] * tok.n_patches, tok.vision_end_id]
    assert image_placeholders(tok, 2) == block * 2 and image_placeholders(tok, 0) == []
    ids = observation_tokens(tok, Observation("crop:", [np.zeros((8, 8, 3), np.uint8)]))
    assert ids[ids.index(tok.vision_start_id) :][: len(block)] == block


def test_qwen2_vl_crop_observation_has_the_vision_block_and_logprobs_match(qwen):
    policy, tok = qwen
    policy.eval()
    rng = np.random.default_rng(0)
    exs = [Example(id=f"c{i}", prompt="which digit?", reference=1, env="canvas",
                   images=[rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]) for i in range(2)]
    forced = ForcedIds(policy, tok.encode(CROP)).eval()
    samples, metrics = multiturn_rollout(forced, tok, _Canvas(), exs, 2, SamplingParams(160, 1.0),
                                         torch.Generator().manual_seed(0), max_turns=2, max_images=2)
    assert metrics["tools/call_rate"] == 1.0 and metrics["tools/malformed"] == 0
    block = [tok.vision_start_id, *[tok.image_token_id] * tok.n_patches, tok.vision_end_id]
    for s in samples:
        c = s.completion_ids.tolist()
        assert s.text.startswith(CROP) and len(s.images) == 2 and s.n_tool_calls == 1
        k = c.index(tok.vision_start_id)  # the crop's block sits inside the observation, out of the loss
        assert c[k : k + len(block)] == block and c.count(tok.image_token_id) == tok.n_patches
        assert (s.loss_mask[k : k + len(block)] == 0).all()
        assert (s.segment_ids[k : k + len(block)] == SEGMENTS["observation"]).all()
        assert s.loss_mask[len(tok.encode(CROP)) + 1 :].sum() > 0  # the policy wrote a second turn
    batch = collate(samples, tok.pad_id)
    with torch.no_grad():
        lp, _ = sequence_logprobs(forced, batch.input_ids, images=batch.images)
    m = batch.loss_mask.bool()
    assert m.any()
    assert (lp[m] - batch.old_logprobs[m]).abs().max() < 1e-4
