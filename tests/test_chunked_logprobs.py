"""Chunked log-probs (trainer.logprobs): equal to the full log-softmax, with gradients, without holding [B, T, V]."""

from __future__ import annotations

import pytest
import torch

from credo.core.stats import logprobs_from_logits, token_entropy
from credo.models.tiny import TinyConfig, TinyLM
from credo.models.vlm import TinyVLM, VLMConfig
from credo.trainer.logprobs import sequence_logprobs


def _full(policy, ids, temperature, images=None):
    """The reference: full logits [B, T, V] from forward, one log-softmax over all of them."""
    logits = (policy(ids) if images is None else policy(ids, images=images))[:, :-1].float() / temperature
    lp = torch.cat([torch.zeros(ids.shape[0], 1), logprobs_from_logits(logits, ids[:, 1:])], 1)  # [B, T]
    ent = torch.cat([torch.zeros(ids.shape[0], 1), token_entropy(logits.detach())], 1)  # [B, T]
    return lp, ent


def _grads(policy, lp, mask):
    policy.zero_grad(set_to_none=True)
    (lp * mask).sum().backward()
    return {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}


def _tiny(vocab=61):
    torch.manual_seed(0)
    return TinyLM(TinyConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=64))


@pytest.mark.parametrize("chunk", [1, 7, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_full_logprobs_entropies_and_gradients(chunk, temperature):
    policy = _tiny()
    ids = torch.randint(0, 61, (3, 19))
    mask = torch.rand(3, 19) < 0.7  # the positions the loss reads
    mask[:, 0] = False
    lp_ref, ent_ref = _full(policy, ids, temperature)
    g_ref = _grads(policy, lp_ref, mask)
    lp, ent = sequence_logprobs(policy, ids, temperature, True, chunk=chunk)
    torch.testing.assert_close(lp, lp_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(ent, ent_ref, atol=1e-6, rtol=0)
    assert not ent.requires_grad
    g = _grads(policy, lp, mask)
    assert g.keys() == g_ref.keys() and len(g) == len(list(policy.parameters()))
    for n in g:
        torch.testing.assert_close(g[n], g_ref[n], atol=1e-6, rtol=1e-5, msg=n)


def test_positions_score_only_the_selected_tokens_with_the_same_gradient():
    policy = _tiny()
    ids = torch.randint(0, 61, (2, 12))
    pos = torch.zeros(2, 12)
    pos[0, 5:] = 1
    pos[1, 3:9] = 1
    lp_ref, _ = _full(policy, ids, 1.0)
    g_ref = _grads(policy, lp_ref, pos)
    lp, ent = sequence_logprobs(policy, ids, with_entropy=True, positions=pos, chunk=4)
    torch.testing.assert_close(lp, lp_ref * pos, atol=1e-6, rtol=0)  # 0 off the selected positions
    assert bool((ent[pos == 0] == 0).all())
    g = _grads(policy, lp, pos)
    for n in g_ref:
        torch.testing.assert_close(g[n], g_ref[n], atol=1e-6, rtol=1e-5, msg=n)


def test_no_selected_position_gives_zeros_that_still_backpropagate():
    policy = _tiny()
    lp, _ = sequence_logprobs(policy, torch.randint(0, 61, (2, 6)), positions=torch.zeros(2, 6))
    assert lp.requires_grad and bool((lp == 0).all())
    lp.sum().backward()  # a minibatch without trained tokens must not break the update


def test_vlm_chunked_equals_full():
    torch.manual_seed(0)
    cfg = VLMConfig(vocab_size=30, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=64, image_size=16,
                    patch_size=8, image_token_id=29)
    policy = TinyVLM(cfg)
    ids = torch.randint(1, 29, (2, 14))
    ids[:, 1:5] = 29  # 4 patches of one image per row
    images = [[torch.rand(16, 16, 3).numpy()] for _ in range(2)]
    lp_ref, ent_ref = _full(policy, ids, 1.0, images)
    lp, ent = sequence_logprobs(policy, ids, 1.0, True, images, chunk=5)
    torch.testing.assert_close(lp, lp_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(ent, ent_ref, atol=1e-6, rtol=0)


def _largest_saved(fn, policy):
    """Bytes of the largest activation autograd saves for the backward pass while `fn` runs (parameters left
    out: they are held anyway), and fn's result."""
    params = {p.untyped_storage().data_ptr() for p in policy.parameters()}
    sizes = [0]

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            sizes.append(t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return max(sizes), out


def test_backward_holds_no_full_vocabulary_tensor():
    """The full path saves [B, T-1, V] float32 logits for its backward; the chunked path saves nothing larger
    than one chunk's logits (here it saves no logits at all: checkpointing keeps the chunk's hidden states)."""
    policy = _tiny(vocab=4096)
    B, T, V, chunk = 4, 40, 4096, 16
    ids = torch.randint(0, V, (B, T))
    full, _ = _largest_saved(lambda: _full(policy, ids, 1.0), policy)
    chunked, (lp, _) = _largest_saved(lambda: sequence_logprobs(policy, ids, chunk=chunk), policy)
    assert full >= B * (T - 1) * V * 4
    assert chunked < chunk * V * 4
    lp.sum().backward()  # and the backward works from what was kept


def test_bad_chunk_is_an_error():
    with pytest.raises(ValueError, match="chunk"):
        sequence_logprobs(_tiny(), torch.zeros(1, 3, dtype=torch.long), chunk=0)


@pytest.mark.parametrize("vocab_block", [4096, 8])
@pytest.mark.parametrize("chunk", [5, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_head_with_its_own_backward_equals_autograd_of_the_checkpointed_head(dtype, temperature, chunk,
                                                                           vocab_block, monkeypatch):
    """`_HeadLogprob` (bias-free linear heads: `HFPolicy.lm_head`) gives the log-probs, entropies and gradients of
    `_score_chunk` under activation checkpointing (plain autograd), in float32 and with bfloat16 compute, in one
    chunk and in chunks of 5 of the 13 positions (the weight's gradient summed over them in float32, as autograd
    sums the chunks' gradients of the weight), over the 37-entry vocabulary in one tile and (float32) in tiles of
    8, the last of 5, with the log-sum-exp and entropy accumulated online; without entropies the same log-probs
    and zeros."""
    from credo.trainer import logprobs as L

    monkeypatch.setattr(L, "VOCAB_BLOCK", vocab_block)
    tiles = len(L._LinearHead(torch.zeros(37, 16), dtype, 1.0, 8).blocks)
    assert tiles == (5 if vocab_block == 8 and dtype == torch.float32 else 1)  # the online path runs where meant

    g = torch.Generator().manual_seed(0)
    h = torch.randn(13, 16, generator=g, requires_grad=True)
    w = (torch.randn(37, 16, generator=g) * 0.5).requires_grad_(True)
    y = torch.randint(0, 37, (13,), generator=g)
    y[:6] = torch.tensor([0, 7, 8, 31, 32, 36])  # the first and last entries of tiles of 8, the last tile's last
    up = torch.randn(13, generator=g)

    def head(x):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            return torch.nn.functional.linear(x, w)

    parts = [torch.utils.checkpoint.checkpoint(L._score_chunk, head, h[i : i + chunk], y[i : i + chunk], temperature,
                                               True, use_reentrant=False) for i in range(0, 13, chunk)]
    lp0, ent0 = (torch.cat(x) for x in zip(*parts, strict=True))
    g0 = torch.autograd.grad((lp0 * up).sum(), (h, w))
    lp1, ent1 = L._HeadLogprob.apply(h, w, y, temperature, True, dtype, chunk)
    g1 = torch.autograd.grad((lp1 * up).sum(), (h, w))
    torch.testing.assert_close(lp1, lp0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ent1, ent0, atol=1e-6, rtol=1e-6)
    assert not ent1.requires_grad
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    lp2, ent2 = L._HeadLogprob.apply(h, w, y, temperature, False, dtype, chunk)
    torch.testing.assert_close(lp2, lp0, atol=1e-6, rtol=1e-6)
    assert not ent2.any()
    for bad in (37, -1):  # a target outside the vocabulary: one tile indexes (and raises), tiles check
        with pytest.raises(ValueError, match="outside the vocabulary") if tiles > 1 else \
                pytest.raises((RuntimeError, IndexError)):
            L._HeadLogprob.apply(h, w, torch.full_like(y, bad), temperature, True, dtype, chunk)
