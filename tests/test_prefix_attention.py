"""Prefix attention over packed rows (`models.prefix_attention`): the layout by hand, the attention equal to the block
mask's (grouped-query heads, gradients), and the packed forward of a Hugging Face model under activation
checkpointing equal to the plain forward (the recomputation takes the same path)."""

import pytest
import torch
import torch.nn.functional as F

from credo.models.prefix_attention import flatten, prefix_attention


def test_flatten_by_hand():
    # row 0: prompt [0, 1], continuation 1 = tokens 2, 3, continuation 2 = token 4; row 1: prompt of 3 + padding
    keep, layout = flatten(torch.tensor([[0, 0, 1, 1, 2], [0, 0, 0, -1, -1]]))
    assert keep.tolist() == [[True] * 5, [True, True, True, False, False]]
    assert layout.shape == (2, 3, 2, 2)  # 2 rows, prompts padded to 3, at most 2 continuations, of at most 2
    # prompt block [2, 3] (padding: token 0), then continuation block [2, 2, 2] (row 1 has none)
    assert layout.slots.tolist() == [0, 1, 0, 5, 6, 7] + [2, 3, 4, 0] + [0, 0, 0, 0]
    assert layout.out_index.tolist() == [0, 1, 6, 7, 8, 3, 4, 5]  # each token's slot
    ok = lambda bias: (bias == 0).int().tolist()  # noqa: E731
    assert ok(layout.prompt_bias[0, 0]) == [[1, 0, 0], [1, 1, 0], [1, 1, 0]]  # causal, 2 real keys
    assert ok(layout.prompt_bias[1, 0]) == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    # continuation 1 (tokens 2, 3): the prompt's 2 real keys, then itself causally
    assert ok(layout.cont_bias[0, 0]) == [[1, 1, 0, 1, 0], [1, 1, 0, 1, 1]]
    assert ok(layout.cont_bias[1, 0]) == [[1, 1, 0, 1, 0], [1, 1, 0, 1, 0]]  # 1 token; a padded query
    assert ok(layout.cont_bias[2, 0]) == [[1, 1, 1, 0, 0]] * 2  # row 1's empty slot: its prompt only


def test_flatten_refuses_bad_rows():
    with pytest.raises(ValueError, match="does not start with its prompt"):
        flatten(torch.tensor([[1, 1, 0, 0]]))
    with pytest.raises(ValueError, match="segment 1 is not contiguous"):
        flatten(torch.tensor([[0, 1, 2, 1]]))


def _block_mask(segments: torch.Tensor) -> torch.Tensor:
    """The dense [N, N] mask of the flat row: same packed row, causal, key in the prompt or the query's segment."""
    keep = segments >= 0
    seg = segments[keep]
    row = torch.arange(segments.shape[0])[:, None].expand_as(segments)[keep]
    n = seg.numel()
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return causal & (row[:, None] == row[None, :]) & ((seg[None, :] == 0) | (seg[None, :] == seg[:, None]))


def test_prefix_attention_equals_block_mask_with_gqa_and_gradients():
    g = torch.Generator().manual_seed(0)
    segments = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 3, 3, -1], [0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 2],
                             [0, 0, 4, 4, 4, -1, -1, -1, -1, -1, -1]])
    _, layout = flatten(segments)
    N, H, Hkv, d = int((segments >= 0).sum()), 4, 2, 8
    q = torch.randn(1, H, N, d, generator=g, requires_grad=True)
    k = torch.randn(1, Hkv, N, d, generator=g, requires_grad=True)
    v = torch.randn(1, Hkv, N, d, generator=g, requires_grad=True)
    w = torch.randn(1, N, H, d, generator=g)
    got = prefix_attention(*(x[0].transpose(0, 1) for x in (q, k, v)), layout, scaling=0.3)[None]  # [1, N, H, d]
    grads = torch.autograd.grad((got * w).sum(), (q, k, v))
    kr, vr = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
    want = F.scaled_dot_product_attention(q, kr, vr, attn_mask=_block_mask(segments), scale=0.3).transpose(1, 2)
    want_grads = torch.autograd.grad((want * w).sum(), (q, k, v))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention,checkpointing", [("credo_sdpa", True), ("credo_sdpa", False), ("eager", True)])
def test_packed_forward_of_hf_model_equals_plain(tmp_path, attention, checkpointing):
    """The packed forward (flat row + segment attention; eager: padded rows + additive block mask) in training mode
    gives the plain forward's log-probs and gradients; under activation checkpointing the backward's recomputation
    must take the segment path too, or the gradients differ."""
    pytest.importorskip("transformers")
    from credo.models.hf import load_hf
    from credo.models.tiny_hf import make_tiny_hf
    from credo.trainer.logprobs import sequence_logprobs

    path = make_tiny_hf(tmp_path, arch="llama", hidden_size=64, num_layers=2, intermediate_size=128)
    policy, _ = load_hf(path, gradient_checkpointing=checkpointing)
    policy.train()
    assert policy.model.config._attn_implementation == "credo_sdpa"  # sdpa switched at construction
    policy.model.config._attn_implementation = attention
    g = torch.Generator().manual_seed(1)
    V = policy.model.config.vocab_size
    rows, pos = [], []
    for plen, lens in ((5, (3, 7, 1)), (9, (4, 2))):
        prompt = torch.randint(3, V, (plen,), generator=g).tolist()
        for n in lens:
            rows.append(prompt + torch.randint(3, V, (n,), generator=g).tolist())
            pos.append([0] * plen + [1] * n)
    T = max(map(len, rows))
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    mask = torch.tensor([p + [0] * (T - len(p)) for p in pos])

    def run(mode: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        policy.zero_grad(set_to_none=True)
        lp, _ = sequence_logprobs(policy, ids, 1.0, positions=mask, share_prefix=mode)
        (lp * torch.linspace(0.5, 1.5, T)).sum().backward()
        return lp.detach(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}

    (lp1, g1), (lp0, g0) = run("pack"), run("off")
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    assert g1.keys() == g0.keys() and g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-5, rtol=1e-4, msg=n)
