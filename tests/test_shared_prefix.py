"""Shared-prompt forward (`rl.share_prefix`, trainer.logprobs): each prompt of a group runs once, and the rows'
log-probs and gradients equal the plain forward's."""

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from credo.models.hf import load_hf  # noqa: E402
from credo.models.tiny_hf import make_tiny_hf  # noqa: E402
from credo.trainer.logprobs import prompt_groups, sequence_logprobs  # noqa: E402


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


def test_shared_prefix_logprobs_and_gradients_match(policy):
    ids, mask = _rows(policy.model.config.vocab_size)
    assert prompt_groups(ids, mask)[2].tolist() == [0, 1]
    grads = []
    results = []
    for share in (False, True):
        policy.zero_grad(set_to_none=True)
        lp, ent = sequence_logprobs(policy, ids, 1.0, True, positions=mask, share_prefix=share)
        (lp * mask * torch.linspace(0.5, 1.5, ids.shape[1])).sum().backward()
        results.append((lp.detach(), ent))
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
    (lp0, ent0), (lp1, ent1) = results
    assert (lp1[mask == 0] == 0).all()
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent1, ent0, atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-4, msg=n)


def test_shared_prefix_off_under_activation_checkpointing(tmp_path):
    path = make_tiny_hf(tmp_path / "m", arch="llama", hidden_size=64, num_layers=2, intermediate_size=128)
    policy, _ = load_hf(path, gradient_checkpointing=True)
    policy.model.train()
    assert not policy.shares_prefix  # transformers drops the cache there: the plain forward runs instead
    ids, mask = _rows(policy.model.config.vocab_size)
    lp, _ = sequence_logprobs(policy, ids, positions=mask, share_prefix=True)
    assert lp.shape == ids.shape and torch.isfinite(lp).all()
