"""Multi-turn SFT: a reference trace's row is token for token the trajectory a multi-turn rollout produces when the
policy writes the same turns, with the real tool observation (crop) inside and out of the loss."""

import numpy as np
import pytest
import torch
from biased_policy import Biased

from credo.data import SEGMENTS
from credo.envs.frames import FramesConfig, FramesEnv
from credo.envs.tools import TOOLS, ToolContext
from credo.envs.zoom import ZoomConfig, ZoomEnv
from credo.models import build_policy
from credo.rollout.multiturn import OBS_START, check_turns, multiturn_rollout, reference_trajectory
from credo.rollout.sampler import SamplingParams
from credo.trainer.config import ModelConfig, SFTConfig
from credo.trainer.sft import sft, sft_rows

VLM = ModelConfig(kind="tinyvlm", d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=512, image_size=16,
                  patch_size=4)


class Forced(Biased):
    """A real TinyVLM whose logits get +`bias` on the next token of `target` (prompt + completion ids) while the
    sequence so far is a prefix of it: a policy that writes `target` as long as the tools' observations match
    it, and samples freely (diverges) as soon as they do not. Forward and cached step apply the same rule."""

    def __init__(self, inner, target: list[int], bias: float = 60.0) -> None:
        super().__init__(inner, bias)
        self.target = target

    def _forced(self, ids: list[int]) -> int | None:
        n = len(ids)
        return self.target[n] if n < len(self.target) and ids == self.target[:n] else None


def _zoom(frac: float = 1.0) -> ZoomEnv:
    return ZoomEnv(ZoomConfig(canvas=64, digit_px=8, n_digits=2, n_sft=6, n_train=2, n_test=2, sft_tool_frac=frac))


@pytest.mark.parametrize("env_name", ["zoom", "frames"])
def test_reference_trajectory_equals_a_multiturn_rollout_of_the_same_turns(env_name):
    torch.manual_seed(0)
    model, tok = build_policy(VLM)
    env = _zoom() if env_name == "zoom" else FramesEnv(FramesConfig(frame_px=32, thumb_px=4, digit_px=12, n_sft=4,
                                                                     n_train=2, n_test=2, sft_tool_frac=1.0))
    ex = env.examples("sft")[0]
    turns = env.reference_turns(ex)
    assert len(turns) == 2 and turns[0].startswith("<tool_call>")
    ref = reference_trajectory(tok, env, ex, turns, image_size=16)
    policy = Forced(model.eval(), ref.prompt_ids.tolist() + ref.completion_ids.tolist()).eval()
    samples, metrics = multiturn_rollout(policy, tok, env, [ex], 2, SamplingParams(200, 1.0),
                                         torch.Generator().manual_seed(0), max_turns=3)
    assert metrics["tools/call_rate"] == 1.0
    for s in samples:
        assert torch.equal(s.prompt_ids, ref.prompt_ids)
        assert torch.equal(s.completion_ids, ref.completion_ids), (s.text, ref.text)
        assert torch.equal(s.loss_mask, ref.loss_mask) and torch.equal(s.segment_ids, ref.segment_ids)
        assert s.finish_reason == "stop" and s.n_tool_calls == ref.n_tool_calls == 1
        assert len(s.images) == len(ref.images) == 2
        for a, b in zip(s.images, ref.images, strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b))
    # the old single-text reference (observation stub) is NOT what a rollout produces
    stub = tok.encode(env.reference_completion(ex)) + [tok.eos_id]
    assert stub != ref.completion_ids.tolist()


def test_reference_trajectory_holds_the_real_crop_out_of_the_loss():
    _, tok = build_policy(VLM)
    env = _zoom()
    ex = env.examples("sft")[1]
    ref = reference_trajectory(tok, env, ex, env.reference_turns(ex), image_size=16)
    crop = TOOLS["crop_image"]({"bbox_2d": ex.meta["box"], "target_image": 1},
                               ToolContext(images=ex.images, image_size=16)).images[0]
    assert np.array_equal(np.asarray(ref.images[1]), np.asarray(crop))
    obs = ref.segment_ids == SEGMENTS["observation"]
    assert (ref.loss_mask[obs] == 0).all() and (ref.loss_mask[~obs] == 1).all()
    slots = ref.completion_ids == tok.image_token_id
    assert int(slots.sum()) == tok.n_patches and bool(obs[slots].all())
    assert f"{OBS_START}Here is the cropped image (Image Size: 16x16):" in "\n" + ref.text
    assert ref.completion_ids[-1].item() == tok.eos_id and ref.loss_mask[-1] == 1


def test_check_turns_rejects_turns_a_rollout_cannot_produce():
    call = '<tool_call>{"name": "crop_image", "arguments": {"bbox_2d": [0, 0, 1, 1]}}</tool_call>'
    check_turns([call, "<answer>1</answer>"])
    for bad in ([], ["<answer>1</answer>", "<answer>2</answer>"], [call + " more", "x"], [call], [call + call, "x"]):
        with pytest.raises(ValueError):
            check_turns(bad)


def test_sft_rows_and_steps_on_mixed_tool_and_direct_traces():
    torch.manual_seed(0)
    model, tok = build_policy(VLM)
    env = _zoom(frac=0.5)
    exs = env.examples("sft")
    ids, mask, images = sft_rows(tok, env, exs, image_size=16)
    for i, ex in enumerate(exs):
        n_img = 2 if ex.meta["tool_trace"] else 1
        assert len(images[i]) == n_img
        assert int((ids[i] == tok.image_token_id).sum()) == n_img * tok.n_patches
        assert mask[i][ids[i] == tok.image_token_id].sum() == 0
    assert {len(x) for x in images} == {1, 2}  # both kinds present at frac 0.5 on 6 examples
    hist = sft(model, tok, env, SFTConfig(steps=3, batch_size=4, warmup=1), seed=0)
    assert len(hist) == 3 and all(np.isfinite(h["sft/loss"]) for h in hist)
