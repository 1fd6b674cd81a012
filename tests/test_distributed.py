"""Data parallelism (issue 17, `trainer.distributed`): FSDP2 under gloo on the CPU, two processes.

1. One RL update with N = 2 equals one process's update of the same global batch (parameters within 1e-5, fp32)
   for every aggregation mode, with an uneven token split, a rank whose share has only zero advantages, micro-batch
   counts that differ between ranks (ghost micro-batches), clipping active, and a rank that brings no rows at all.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from credo.core.aggregation import aggregate, denominator
from credo.data import Batch
from credo.models.tiny import TinyConfig, TinyLM
from credo.trainer import distributed as dist
from credo.trainer.config import RLConfig
from credo.trainer.update import empty_batch, policy_update

V = 40
MODES = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
# rows of the global batch on rank 0 / rank 1: uneven tokens (3 short rows / 4 long ones); a rank 0 whose two
# rows have only zero advantages; a rank 0 with no rows at all
SPLIT = {"uneven": [(0, 3), (3, 7)], "zero_adv": [(0, 2), (2, 7)], "empty": [(0, 0), (0, 7)]}
# SGD without clipping sees the gradient's scale (AdamW and clipping hide it); AdamW + active clipping checks the
# sharded optimizer state and the DTensor clipping
CASES = [(split, mode, "sgd") for split in SPLIT for mode in MODES] + [("uneven", "token_mean", "adamw")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _policy() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(TinyConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=64))


def _batch() -> Batch:
    """7 rows: rows 0-1 short (3-4 completion tokens) with zero advantages, rows 2-6 of 8-16 tokens with ±1."""
    g = torch.Generator().manual_seed(1)
    prompt, lens = 4, [3, 4, 8, 16, 12, 9, 14]
    B, T = len(lens), prompt + max(lens)
    ids = torch.randint(1, V, (B, T), generator=g)
    attn, loss_mask = torch.zeros(B, T, dtype=torch.bool), torch.zeros(B, T)
    for i, n in enumerate(lens):
        attn[i, : prompt + n] = True
        loss_mask[i, prompt : prompt + n] = 1.0
        ids[i, prompt + n :] = 0
    sign = torch.tensor([0.0, 0.0, -1.0, 1.0, -1.0, 1.0, 1.0])
    old = (torch.randn(B, T, generator=g) * 0.1 - 3.0) * loss_mask
    return Batch(input_ids=ids, attention_mask=attn, loss_mask=loss_mask, segment_ids=torch.zeros(B, T).long(),
                 old_logprobs=old, advantages=sign[:, None] * loss_mask, group_ids=torch.arange(B) // 2,
                 rewards=torch.zeros(B))


def _update(policy: torch.nn.Module, batch: Batch, mode: str, optim: str) -> dict[str, float]:
    """2 minibatches × 2 epochs; a 60-token budget gives the rank with long rows more micro-batches."""
    sgd = optim == "sgd"
    cfg = RLConfig(aggregation=mode, minibatches=2, ppo_epochs=2, lr=0.5 if sgd else 1e-3, warmup_steps=0,
                   max_grad_norm=1e9 if sgd else 0.05, max_new_tokens=16, max_tokens_per_microbatch=60)
    opt = torch.optim.SGD(policy.parameters()) if sgd else torch.optim.AdamW(policy.parameters(), betas=(0.9, 0.99))
    return policy_update(policy, opt, batch, cfg, torch.Generator().manual_seed(0))


def _update_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    assert dist.init_from_env("cpu")
    results = {}
    for split, mode, optim in CASES:
        lo, hi = SPLIT[split][rank]
        local = _batch().select(torch.arange(lo, hi)) if hi > lo else empty_batch()
        policy = dist.shard_policy(_policy())
        m = _update(policy, local, mode, optim)
        results[(split, mode, optim)] = (dist.full_model_state(policy), m)
    if dist.is_main():
        torch.save(results, out)
    dist.close()


def test_denominators_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert denominator(mask, "token_mean") == 3.0
    assert denominator(mask, "seq_mean_token_mean") == 2.0
    assert denominator(mask, "seq_mean_token_sum_norm", 10) == 30.0
    loss = torch.randn(3, 3)
    for mode in MODES:  # aggregate · D is a sum over rows: the halves add up
        d = denominator(mask, mode, 10)
        halves = sum(float(aggregate(loss[r], mask[r], mode, 10)) * denominator(mask[r], mode, 10)
                     for r in (slice(0, 1), slice(1, 3)))
        assert abs(float(aggregate(loss, mask, mode, 10)) * d - halves) < 1e-5
    with pytest.raises(KeyError, match="valid modes"):
        denominator(mask, "nope")


def test_helpers_are_one_process_no_ops():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(dist.shared_permutation(9, g1), torch.randperm(9, generator=g2))
    assert dist.row_offset(5) == (0, 5) and dist.share([1, 2, 3]) == [1, 2, 3] and dist.rank_seed(7) == 7
    assert dist.reduce_metrics({"a": 1.0}, 0.0) == {"a": 1.0} and dist.any_true(False) is False
    p = _policy()
    assert dist.shard_policy(p) is p and dist.generation_copy(p) is p


def test_two_process_update_equals_one_process(tmp_path):
    out = tmp_path / "dp.pt"
    mp.spawn(_update_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    results = torch.load(out, weights_only=False)
    assert sorted(results) == sorted(CASES)
    for key, (state, m) in results.items():
        policy = _policy()
        before = {n: p.detach().clone() for n, p in policy.named_parameters()}
        ref = _update(policy, _batch(), key[1], key[2])
        moved = max(float((p.detach() - before[n]).abs().max()) for n, p in policy.named_parameters())
        assert moved > 1e-3, key  # the update did something
        for n, p in policy.state_dict().items():
            torch.testing.assert_close(state[n], p, atol=1e-5, rtol=0, msg=f"{key} {n}")
        assert m["loss/optimizer_steps"] == ref["loss/optimizer_steps"] == 4.0, key
        assert abs(m["loss/policy"] - ref["loss/policy"]) < 1e-5, key
        assert abs(m["loss/grad_norm"] - ref["loss/grad_norm"]) < 1e-4, key

