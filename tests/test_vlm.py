"""TinyVLM: patch embeddings in place of image placeholders; images flow Example → Sample → Batch → forward."""

import numpy as np
import pytest
import torch
from PIL import Image
from toy_env import ImageDigitsEnv

from credo.data import collate
from credo.models import build_policy, load_policy, save_policy
from credo.models.vlm import patchify
from credo.rollout.engine import rollout
from credo.rollout.sampler import SamplingParams
from credo.trainer.config import ModelConfig, load_config
from credo.trainer.logprobs import sequence_logprobs
from credo.trainer.loop import train

VLM = ModelConfig(kind="tinyvlm", d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=128, image_size=16,
                  patch_size=4)


def _img(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def test_patchify_row_major():
    x = torch.arange(2 * 4 * 4, dtype=torch.float).view(1, 2, 4, 4)  # C=2, 4×4, p=2
    p = patchify(x, 2)
    assert p.shape == (1, 4, 8)
    assert p[0, 1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]  # top-right patch: channel 0 then channel 1


def test_image_changes_the_logits_and_placeholders_are_checked():
    torch.manual_seed(0)
    model, tok = build_policy(VLM)
    ids = torch.tensor([tok.with_images(tok.encode_prompt("1+1"), 1)])
    assert ids.shape[1] == 1 + 16 + 3
    a = model(ids, images=[[_img(0)]])
    b = model(ids, images=[[_img(1)]])
    assert not torch.allclose(a[0, -1], b[0, -1])
    with pytest.raises(ValueError, match="placeholders"):
        model(ids, images=[[_img(0), _img(1)]])
    pil = Image.fromarray(_img(0)).resize((32, 32))  # PIL images are resized to image_size
    assert model(ids, images=[[pil]]).shape == a.shape


def test_cached_decode_and_sampler_logprobs_match_the_trainer():
    torch.manual_seed(0)
    model, tok = build_policy(VLM)
    model.eval()
    env = ImageDigitsEnv(n=32, size=16)
    samples = rollout(model, tok, env, env.examples("train")[:3], 2, SamplingParams(12, 1.0),
                      torch.Generator().manual_seed(0))
    assert all(s.images is not None and len(s.images) == 1 for s in samples)
    batch = collate(samples, tok.pad_id)
    assert batch.images is not None and len(batch.images) == len(samples)
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, batch.input_ids, images=batch.images)
    m = batch.loss_mask.bool()
    assert (lp[m] - batch.old_logprobs[m]).abs().max() < 1e-5
    sub = batch.select(torch.tensor([4, 1]))
    assert [id(x) for x in sub.images] == [id(batch.images[4]), id(batch.images[1])]


def test_save_load_roundtrip(tmp_path):
    model, tok = build_policy(VLM)
    save_policy(model, tok, tmp_path / "m")
    again, tok2 = load_policy(tmp_path / "m")
    ids = torch.tensor([tok.with_images(tok.encode_prompt("2"), 1)])
    assert tok2.image_token_id == tok.image_token_id and tok2.n_patches == 16
    torch.testing.assert_close(model(ids, images=[[_img(3)]]), again(ids, images=[[_img(3)]]))


def test_text_model_refuses_images():
    env = ImageDigitsEnv(n=32)
    model, tok = build_policy(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64))
    with pytest.raises(ValueError, match="takes none"):
        rollout(model, tok, env, env.examples("train")[:1], 1, SamplingParams(4, 1.0))


def test_two_rl_steps_train_every_vlm_parameter(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, "env.name=toy_env:make_images", "sft.enabled=false", "run.name=v",
                             "model.kind=tinyvlm", "model.image_size=16", "model.patch_size=4"])
    train(cfg)
    start, _ = load_policy(tmp_path / "v" / "start_model")
    final, _ = load_policy(tmp_path / "v" / "final_model")
    s, f = dict(start.named_parameters()), dict(final.named_parameters())
    assert "patch.weight" in s and "patch_pos" in s
    assert not [n for n in s if torch.equal(s[n], f[n])]
