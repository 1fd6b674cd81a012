"""SFT forwards a batch in length groups: the same loss and update as one padded batch, less compute."""

import torch

import credo.trainer.sft as sft_mod
from credo.envs.arith import ArithConfig, ArithEnv
from credo.models.tiny import TinyConfig, TinyLM
from credo.models.tokenizer import CharTokenizer
from credo.trainer.config import SFTConfig


def _train(monkeypatch, one_group: bool):
    if one_group:
        monkeypatch.setattr(sft_mod, "length_buckets", lambda lengths: [list(range(len(lengths)))])
    torch.manual_seed(0)
    tok = CharTokenizer()
    policy = TinyLM(TinyConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=160))
    env = ArithEnv(ArithConfig(n_sft=64, n_train=8, n_test=8, direct_frac=0.5))
    hist = sft_mod.sft(policy, tok, env, SFTConfig(steps=3, batch_size=16, lr=1e-3, warmup=1), seed=0)
    return policy, [m["sft/loss"] for m in hist]


def test_bucketed_sft_equals_one_padded_batch(monkeypatch):
    a, loss_a = _train(monkeypatch, one_group=False)
    assert len(sft_mod.length_buckets([100, 20, 100, 20])) == 2  # the mixed batches really are split
    b, loss_b = _train(monkeypatch, one_group=True)
    assert torch.allclose(torch.tensor(loss_a), torch.tensor(loss_b), atol=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-5), name


def test_length_buckets_cover_every_row_once():
    lengths = [5, 90, 7, 88, 6, 91, 95, 4]
    groups = sft_mod.length_buckets(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert max(lengths[i] for i in groups[0]) < min(lengths[i] for i in groups[1])
    assert sft_mod.length_buckets([50, 52, 51]) == [[0, 1, 2]]
