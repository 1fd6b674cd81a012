"""models/fused.py: the fused RMSNorm, rotary embedding and MLP paths give transformers' numbers and gradients."""

from __future__ import annotations

import pytest
import torch

from credo.models import fused

transformers = pytest.importorskip("transformers")


def test_rms_norm_equals_transformers_forward_and_backward():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    g = torch.Generator().manual_seed(0)
    ref = LlamaRMSNorm(24, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(24, generator=g))
    x = (3 * torch.randn(2, 7, 24, generator=g)).requires_grad_()
    up = torch.randn(2, 7, 24, generator=g)
    want = ref(x)
    want_grads = torch.autograd.grad((want * up).sum(), (x, ref.weight))
    got = fused.rms_norm(x, ref.weight, 1e-5)
    got_grads = torch.autograd.grad((got * up).sum(), (x, ref.weight))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_rotary_equals_rotate_half_form_and_its_backward_rotates_back():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    g = torch.Generator().manual_seed(1)
    N, H, d = 11, 3, 16
    rope = LlamaRotaryEmbedding(LlamaConfig(hidden_size=H * d, num_attention_heads=H, max_position_embeddings=64))
    x = torch.randn(N, H, d, generator=g, requires_grad=True)
    cos, sin = rope(x, torch.randint(0, 64, (1, N), generator=g))  # [1, N, d]
    want, _ = apply_rotary_pos_emb(x.transpose(0, 1)[None], x.transpose(0, 1)[None], cos, sin)  # [1, H, N, d]
    want = want[0].transpose(0, 1)
    got = fused.rotary(x, cos[0, :, None, : d // 2], sin[0, :, None, : d // 2])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    up = torch.randn(N, H, d, generator=g)
    (gw,) = torch.autograd.grad((want * up).sum(), x)
    (gg,) = torch.autograd.grad((got * up).sum(), x)
    torch.testing.assert_close(gg, gw, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fused.rotary(got, cos[0, :, None, : d // 2], -sin[0, :, None, : d // 2]), x,
                               atol=1e-5, rtol=1e-5)  # a rotation: −θ undoes θ


def _loss_and_grads(policy, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    policy.zero_grad(set_to_none=True)
    logits = policy(ids)
    weights = torch.linspace(0.5, 1.5, ids.shape[1])[:, None]
    loss = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).mul(weights).sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fused_model_matches_transformers_under_checkpointing_and_skips_the_recomputed_last_product(
        tmp_path, monkeypatch, arch):
    """A checkpointed model with the fused paths gives the plain one's loss and gradients; the MLP's last product
    runs once per layer (the first forward), not again in the backward's recomputation."""
    from credo.models.hf import load_hf
    from credo.models.tiny_hf import make_tiny_hf

    path = make_tiny_hf(tmp_path, arch=arch, hidden_size=64, num_layers=3, intermediate_size=128)
    plain, _ = load_hf(path, fused=False)
    fast, _ = load_hf(path)
    assert fused.fuse_decoder_layers(fast.model) == 0  # already fused: idempotent
    assert fused.fuse_decoder_layers(plain.model) == 3 * 4 + 1  # per layer 2 norms, attention, MLP; final norm
    plain, _ = load_hf(path, fused=False)
    plain.train(), fast.train()
    ids = torch.randint(3, plain.model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    seen = []  # what the MLP's last projection saw: recomputing or not
    real = fused.recomputing
    monkeypatch.setattr(fused, "recomputing", lambda: seen.append(real()) or seen[-1])
    loss1, g1 = _loss_and_grads(fast, ids)
    assert seen == [False] * 3 + [True] * 3, seen  # the product in the forward; skipped in each layer's recomputation
    loss0, g0 = _loss_and_grads(plain, ids)
    assert len(seen) == 6  # the plain model never took the fused path
    torch.testing.assert_close(loss1, loss0, atol=1e-5, rtol=1e-6)
    assert g1.keys() == g0.keys() and g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-5, rtol=1e-4, msg=n)


def test_norm_falls_back_to_transformers_outside_float32(monkeypatch):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(8)
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
    want = norm(x.bfloat16())
    fused_forward = fused._norm_forward(norm, norm.forward)
    calls = []
    real = fused.rms_norm
    monkeypatch.setattr(fused, "rms_norm", lambda *a: calls.append(1) or real(*a))
    got = fused_forward(x.bfloat16())
    fused_forward(x)
    assert got.dtype == want.dtype and torch.equal(got, want)
    assert len(calls) == 1  # only the float32 call took the fused path


def test_packed_rows_take_the_token_major_attention_with_the_same_numbers(tmp_path, monkeypatch):
    """Packed prompt-sharing rows (`share_prefix="pack"`): the fused attention (token-major, fused rotary) gives
    the log-probs and gradients of transformers' attention forward over the same prefix layout."""
    from credo.models.hf import load_hf
    from credo.models.tiny_hf import make_tiny_hf
    from credo.trainer.logprobs import sequence_logprobs

    path = make_tiny_hf(tmp_path, arch="llama", hidden_size=64, num_layers=2, intermediate_size=128)
    g = torch.Generator().manual_seed(4)
    prompt = torch.randint(3, 200, (6,), generator=g).tolist()
    rows = [prompt + torch.randint(3, 200, (n,), generator=g).tolist() for n in (5, 2, 7)]
    T = max(map(len, rows))
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    mask = torch.tensor([[0] * 6 + [1] * (len(r) - 6) + [0] * (T - len(r)) for r in rows])
    rotated = []
    real = fused.rotary
    monkeypatch.setattr(fused, "rotary", lambda *a: rotated.append(1) or real(*a))
    out = {}
    for flag in (True, False):
        policy, _ = load_hf(path, fused=flag)
        policy.train()
        lp, _ = sequence_logprobs(policy, ids, 1.0, positions=mask, share_prefix="pack")
        (lp * torch.linspace(0.5, 1.5, T)).sum().backward()
        out[flag] = lp.detach(), {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}
    assert len(rotated) == 2 * 2 * 2  # fused: q and k of 2 layers, forward and recomputation
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-5, rtol=1e-5)
    for n, grad in out[False][1].items():
        torch.testing.assert_close(out[True][1][n], grad, atol=1e-5, rtol=1e-4, msg=n)


def test_bf16_compute_skips_the_recomputed_last_product_with_transformers_numbers(tmp_path, monkeypatch):
    """Under bf16 autocast (`model.dtype=bfloat16`) the norms and attention run transformers' forwards and the MLP's
    last projection still skips its recomputed product; loss and float32 master gradients equal the plain model's
    (the same bf16 products)."""
    from credo.models.hf import load_hf
    from credo.models.tiny_hf import make_tiny_hf

    path = make_tiny_hf(tmp_path, arch="llama", hidden_size=64, num_layers=2, intermediate_size=128)
    fast, _ = load_hf(path, dtype="bfloat16")
    plain, _ = load_hf(path, dtype="bfloat16", fused=False)
    fast.train(), plain.train()
    ids = torch.randint(3, plain.model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(5))
    seen = []
    real = fused.recomputing
    monkeypatch.setattr(fused, "recomputing", lambda: seen.append(real()) or seen[-1])
    loss1, g1 = _loss_and_grads(fast, ids)
    assert seen == [False] * 2 + [True] * 2
    loss0, g0 = _loss_and_grads(plain, ids)
    assert all(x.dtype == torch.float32 for x in g1.values())  # masters' gradients
    torch.testing.assert_close(loss1, loss0, atol=1e-3, rtol=1e-3)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-3, rtol=1e-2, msg=n)
