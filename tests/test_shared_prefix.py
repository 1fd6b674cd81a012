"""Shared-prompt forward (`rl.share_prefix`, trainer.logprobs): each prompt of a group runs once, and the rows'
log-probs and gradients equal the plain forward's."""

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from credo.models.hf import load_hf  # noqa: E402
from credo.models.tiny_hf import make_tiny_hf  # noqa: E402
from credo.trainer.logprobs import pack_groups, prompt_groups, sequence_logprobs  # noqa: E402


def test_prompt_groups_by_hand():
    # rows 0 and 2 share the prompt [5, 6]; row 1's prompt is [5, 7, 8]; row 3 has nothing scored: all prompt
    ids = torch.tensor([[5, 6, 1, 2, 0], [5, 7, 8, 3, 0], [5, 6, 4, 0, 0], [5, 6, 1, 2, 0]])
    pos = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
    first, owner, heads = prompt_groups(ids, pos)
    assert first.tolist() == [2, 3, 2, 5]
    assert owner.tolist() == [0, 1, 0, 2]
    assert heads.tolist() == [0, 1, 3]
    assert prompt_groups(ids[:2], pos[:2]) is None  # no prompt shared: nothing to save


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def policy(tmp_path_factory, request):
    path = make_tiny_hf(tmp_path_factory.mktemp(request.param), arch=request.param, hidden_size=64, num_layers=2,
                        intermediate_size=128)
    policy, _ = load_hf(path, gradient_checkpointing=False)
    return policy


def _rows(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts (lengths 4 and 6) × 3 responses of different lengths, right-padded, rows interleaved."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (4,), generator=g), torch.randint(3, vocab, (6,), generator=g)]
    rows, masks = [], []
    for i, n in enumerate([3, 5, 1, 2, 4, 6]):
        p = prompts[i % 2]
        r = torch.randint(3, vocab, (n,), generator=g)
        rows.append(torch.cat([p, r]))
        masks.append(torch.cat([torch.zeros(len(p)), torch.ones(n)]))
    T = max(len(r) for r in rows)
    ids = torch.stack([torch.nn.functional.pad(r, (0, T - len(r))) for r in rows])
    mask = torch.stack([torch.nn.functional.pad(m, (0, T - len(m))) for m in masks])
    return ids, mask


def _logprobs_and_grads(policy, ids, mask, mode, pack_tokens=1024):
    policy.zero_grad(set_to_none=True)
    lp, ent = sequence_logprobs(policy, ids, 1.0, True, positions=mask, share_prefix=mode, pack_tokens=pack_tokens)
    (lp * mask * torch.linspace(0.5, 1.5, ids.shape[1])).sum().backward()
    return lp.detach(), ent, {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}


def _assert_same(got, want):
    (lp1, ent1, g1), (lp0, ent0, g0) = got, want
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent1, ent0, atol=1e-5, rtol=1e-5)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("mode,pack_tokens,way", [
    ("cache", 1024, "prefix"), ("pack", 1024, "packed"), ("pack", 9, "packed"),
    ("auto", 1024, "packed"),  # every group fits one packed row
    ("auto", 9, "prefix"),  # a group needs two: the cache way, which the policy can run here
])
def test_shared_prefix_logprobs_and_gradients_match(policy, mode, pack_tokens, way):
    ids, mask = _rows(policy.model.config.vocab_size)
    mask[4, 8] = 0  # a hole: an unscored token inside row 4's continuation (a masked observation) stays context
    mask[5, 6:] = 0  # row 5: nothing scored
    assert prompt_groups(ids, mask)[2].tolist() == [0, 1, 5]
    calls = []
    for name in ("prefix_hidden_states", "packed_hidden_states"):
        fn = getattr(policy, name)
        setattr(policy, name, lambda *a, _fn=fn, _n=name: calls.append(_n) or _fn(*a))
    try:
        got = _logprobs_and_grads(policy, ids, mask, mode, pack_tokens)
    finally:
        del policy.prefix_hidden_states, policy.packed_hidden_states
    assert calls == [f"{way}_hidden_states"]
    assert (got[0][mask == 0] == 0).all()
    _assert_same(got, _logprobs_and_grads(policy, ids, mask, "off"))


def test_pack_groups_by_hand():
    # rows 0, 1, 3 share the prompt [5, 6] (first scored position 2); row 2's prompt is [5, 7, 8]
    ids = torch.tensor([[5, 6, 1, 2, 3], [5, 6, 4, 9, 0], [5, 7, 8, 3, 0], [5, 6, 7, 0, 0]])
    pos = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0]])
    groups = prompt_groups(ids, pos)
    packing = pack_groups(ids, pos, groups, pack_tokens=6)
    # a row contributes its tokens before its last scored one (the state there predicts nothing scored): row 0
    # [1, 2], row 1 [4]; row 2's prompt is [5, 7, 8] and its only scored position 3: nothing after the prompt;
    # row 3 likewise nothing
    assert packing.input_ids.tolist() == [[5, 6, 1, 2, 4], [5, 7, 8, 0, 0]]  # packed rows padded to the longest
    assert not packing.split
    assert packing.segments.tolist() == [[0, 0, 1, 1, 2], [0, 0, 0, -1, -1]]
    assert packing.position_ids.tolist() == [[0, 1, 2, 3, 2], [0, 1, 2, 0, 0]]
    # row 1's state at position 2 (token 4) sits at column 4 of pack 0; row 2 lives in pack 1 (flat offset 5)
    assert packing.where[1, :3].tolist() == [0, 1, 4]
    assert packing.where[2, :3].tolist() == [5, 6, 7]
    two = pack_groups(ids, pos, groups, pack_tokens=4)  # row 1 does not fit behind row 0: the prompt again
    assert two.input_ids.tolist() == [[5, 6, 1, 2], [5, 6, 4, 0], [5, 7, 8, 0]] and two.split
    assert pack_groups(ids, torch.zeros_like(pos), groups, 6) is None


def test_packed_prefix_under_activation_checkpointing_and_eager(tmp_path):
    """Under activation checkpointing transformers turns the KV cache off, so "auto" packs; eager attention takes
    the block mask as an additive one. Both equal the plain forward."""
    path = make_tiny_hf(tmp_path / "m", arch="llama", hidden_size=64, num_layers=2, intermediate_size=128)
    policy, _ = load_hf(path, gradient_checkpointing=True)
    policy.model.train()
    assert not policy.shares_prefix and policy.packs_prefix
    ids, mask = _rows(policy.model.config.vocab_size)
    _assert_same(_logprobs_and_grads(policy, ids, mask, "auto"), _logprobs_and_grads(policy, ids, mask, "off"))
    policy.model.config._attn_implementation = "eager"
    _assert_same(_logprobs_and_grads(policy, ids, mask, "pack"), _logprobs_and_grads(policy, ids, mask, "off"))
    with pytest.raises(ValueError, match="share_prefix"):
        sequence_logprobs(policy, ids, positions=mask, share_prefix="yes")
