"""Hugging Face vision-language policies: tiny random-initialised Qwen2-VL / Qwen2.5-VL built offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from credo.data import Sample, collate  # noqa: E402
from credo.models import load_policy, save_policy  # noqa: E402
from credo.models.hf_vlm import HFVLMPolicy, HFVLMTokenizer, mrope_positions  # noqa: E402
from credo.models.tiny_hf import make_tiny_qwen2_vl  # noqa: E402
from credo.rollout.sampler import SamplingParams, generate  # noqa: E402
from credo.trainer.config import ModelConfig  # noqa: E402
from credo.trainer.logprobs import sequence_logprobs  # noqa: E402

ARCHS = ["qwen2_vl", "qwen2_5_vl"]


@pytest.fixture(scope="module", params=ARCHS)
def vlm_dir(request, tmp_path_factory):
    return make_tiny_qwen2_vl(tmp_path_factory.mktemp(request.param), arch=request.param)


def _img(seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad)
    mask = torch.zeros(len(prompts), P, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p)
        mask[i, P - len(p):] = True
    return ids, mask


def test_load_places_image_tokens_in_the_user_turn(vlm_dir):
    policy, tok = load_policy(vlm_dir, ModelConfig(image_size=40))  # rounded to a multiple of 8 × 2 pixels
    assert isinstance(policy, HFVLMPolicy) and isinstance(tok, HFVLMTokenizer)
    assert policy.side == 48 and policy.cfg.image_size == 48 and tok.n_patches == policy.n_patches == 9
    ids = tok.with_images(tok.encode_prompt("2+3"), 2)
    block = "<|vision_start|>" + "<|image_pad|>" * 9 + "<|vision_end|>"
    assert tok.decode(ids, skip_special=False) == f"<|im_start|>user\n{block * 2}2+3<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ids) == "user\n2+3\nassistant\n"
    with pytest.raises(ValueError, match="placeholders"):
        policy.forward(torch.tensor([ids]), images=[[_img(0)]])


def test_mrope_positions_match_the_models_own_rope_index(vlm_dir):
    """The stateless positions equal transformers' `get_rope_index`, with left padding and two images in a row;
    the model's own M-RoPE path (no position ids given) gives the same logits as `forward`."""
    policy, tok = load_policy(vlm_dir)
    policy.eval()
    a = tok.with_images(tok.encode_prompt("what is 12+7?"), 1) + tok.encode("19 then")
    b = tok.with_images(tok.encode_prompt("3"), 2)
    ids, mask = _left_pad([a, b], tok.pad_id)
    pixels, grid_thw, n = policy.pixel_inputs([[_img(0)], [_img(1), _img(2)]])
    assert n == 3 and grid_thw.tolist() == [[1, 6, 6]] * 3
    mm = (ids == policy.image_token_id).int()
    ref, delta = policy.model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=grid_thw,
                                                   attention_mask=mask.long())
    pos, nxt = mrope_positions(ids, mask, policy.image_token_id, policy.grid)
    assert torch.equal(pos, ref)
    assert nxt.tolist() == (delta[:, 0] + mask.sum(1)).tolist()
    assert not torch.equal(pos[1], pos[0])  # the height axis differs from the text axis on image tokens
    with torch.no_grad():
        ours = policy.forward(torch.tensor([a]), images=[[_img(0)]])
        mm = (torch.tensor([a]) == policy.image_token_id).int()
        theirs = policy.model(input_ids=torch.tensor([a]), pixel_values=pixels[:36], image_grid_thw=grid_thw[:1],
                              mm_token_type_ids=mm).logits
    keep = [i for i in range(ours.shape[-1]) if i not in policy.input_only]
    torch.testing.assert_close(ours[..., keep], theirs[..., keep], atol=1e-5, rtol=0)


def test_cached_decoding_matches_the_full_forward_with_images(vlm_dir):
    policy, tok = load_policy(vlm_dir)
    policy.eval()
    prompts = [tok.with_images(tok.encode_prompt("what is 12+7?"), 1), tok.with_images(tok.encode_prompt("3"), 2)]
    images = [[_img(0)], [_img(1, 64), _img(2, 32)]]  # other sizes are resized to the policy's side
    ids, mask = _left_pad(prompts, tok.pad_id)
    steps = torch.tensor([[50, 90], [70, 110]])
    with torch.no_grad():
        cache = policy.new_cache(2, ids.shape[1] + 2)
        got = [policy.step(ids, cache, mask, images=images)[:, -1]]
        got += [policy.step(steps[:, k : k + 1], cache)[:, -1] for k in range(2)]
        for i, p in enumerate(prompts):
            full = policy.forward(torch.tensor([p + steps[i].tolist()]), images=[images[i]])[0]
            for k in range(3):
                torch.testing.assert_close(got[k][i], full[-3 + k], atol=1e-4, rtol=0)
        other = policy.forward(torch.tensor([prompts[0]]), images=[[_img(5)]])[0, -1]
    assert (other - got[0][0]).abs().max() > 1e-3  # the image is read


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_sampler_logprobs_equal_trainer_logprobs_with_images(vlm_dir, temperature):
    policy, tok = load_policy(vlm_dir)
    policy.eval()
    texts = ["1+1", "what is 17+25?", "count the red"]
    images = [[_img(i)] for i in range(3)] * 2
    prompts = [tok.with_images(tok.encode_prompt(t), 1) for t in texts] * 2
    params = SamplingParams(max_new_tokens=16, temperature=temperature)
    comps = generate(policy, prompts, params, tok.eos_ids, tok.pad_id, generator=torch.Generator().manual_seed(0),
                     images=images)
    samples = [
        Sample(example_id=str(i), group_id=i, prompt_ids=torch.tensor(c.prompt_ids), completion_ids=c.completion_ids,
               loss_mask=torch.ones(len(c.completion_ids)), segment_ids=torch.zeros(len(c.completion_ids)).long(),
               sampler_logprobs=c.logprobs, finish_reason=c.finish_reason, text="", images=images[i])
        for i, c in enumerate(comps)
    ]
    batch = collate(samples, tok.pad_id)
    assert all(policy.image_token_id not in c.completion_ids.tolist() for c in comps)
    with torch.no_grad():
        lp, _ = sequence_logprobs(policy, batch.input_ids, images=batch.images)
    m = batch.loss_mask.bool()
    assert m.sum() > 20
    assert (lp[m] - batch.old_logprobs[m]).abs().max() < 1e-4


def test_save_and_reload_roundtrip(vlm_dir, tmp_path):
    policy, tok = load_policy(vlm_dir)
    with torch.no_grad():
        policy.model.model.visual.patch_embed.proj.weight.add_(0.5)
    save_policy(policy, tok, tmp_path / "m")
    again, tok2 = load_policy(tmp_path / "m")
    assert isinstance(again, HFVLMPolicy)
    ids = torch.tensor([tok.with_images(tok.encode_prompt("x"), 1)])
    assert tok2.with_images(tok2.encode_prompt("x"), 1) == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(policy(ids, images=[[_img(3)]]), again(ids, images=[[_img(3)]]))


def test_two_rl_steps_on_scenes_train_the_vision_tower(tmp_path):
    """`credo.trainer.loop.train` on the scenes sandbox with a tiny Qwen2-VL at `model.path`: finite losses,
    gradients, and every parameter (vision tower included) changed. A random model never writes a scenes answer,
    so the reward is the completion's length (`verify_helpers:length_reward`): groups have reward variance."""
    import json

    from credo.trainer.config import load_config
    from credo.trainer.loop import train

    src = make_tiny_qwen2_vl(tmp_path / "qwen2_vl")
    cfg = load_config(None, [
        f"model.path={src}", "model.image_size=48", "env.name=scenes", "env.n_sft=8", "env.n_train=16",
        "env.n_test=4", "sft.enabled=false", "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=4",
        "rl.max_new_tokens=12", "rl.minibatches=2", "rl.lr=1e-3", "reward.function=verify_helpers:length_reward",
        "reward.workers=0", "eval.n_samples=1",
        "eval.pass_k=[1]", "eval.every=100", "run.progress=false", "run.threads=1", f"run.out_dir={tmp_path}",
        "run.name=v",
    ])
    train(cfg)
    rl = [json.loads(x) for x in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rl if r["phase"] == "rl"]
    assert len(rl) == 2 and all(np.isfinite(r["loss/policy"]) for r in rl)
    assert all(r["loss/grad_norm"] > 0 for r in rl), rl
    start, _ = load_policy(tmp_path / "v" / "start_model")
    final, _ = load_policy(tmp_path / "v" / "final_model")
    assert isinstance(final, HFVLMPolicy)
    s, f = start.state_dict(), final.state_dict()
    assert any(n.startswith("model.model.visual.") for n in s)
    unchanged = [n for n in s if torch.equal(s[n], f[n])]
    assert not unchanged, f"parameters that did not change: {unchanged}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cached_decoding_on_cuda_in_bfloat16(vlm_dir):
    policy, tok = load_policy(vlm_dir, ModelConfig(device="cuda", dtype="bfloat16"))
    policy.eval()
    p = tok.with_images(tok.encode_prompt("2+2"), 1)
    with torch.no_grad():
        cache = policy.new_cache(1, len(p))
        step = policy.step(torch.tensor([p], device="cuda"), cache, images=[[_img(0)]])[0, -1].float()
        full = policy.forward(torch.tensor([p], device="cuda"), images=[[_img(0)]])[0, -1].float()
    torch.testing.assert_close(step, full, atol=5e-2, rtol=0)
