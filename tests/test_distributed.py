"""Data parallelism (issue 17, `trainer.distributed`): FSDP2 under gloo on the CPU, two processes.

1. One RL update with N = 2 equals one process's update of the same global batch (parameters within 1e-5, fp32)
   for every aggregation mode, with an uneven token split, a rank whose share has only zero advantages, micro-batch
   counts that differ between ranks (ghost micro-batches), clipping active, and a rank that brings no rows at all.
2. `torchrun --nproc-per-node 2 -m credo train` finishes; rank 0's metrics and report are complete; a run stopped
   at step k and resumed with N = 2 is bit-identical to the uninterrupted N = 2 run; resumed with N = 1 it continues
   from the same checkpoint (model, optimizer, data position), with other samples (only statistically equal).
3. The SFT warm start with N = 2 (each rank its share of every batch, gradients summed) equals one process's; so
   does an update of a Hugging Face model whose groups share prompts (packed rows under FSDP2).
4. R3 scored with the sharded live policy or a lagged whole copy gives each rank one process's values.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY

from credo.core.aggregation import aggregate, denominator
from credo.data import Batch, Sample
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


# ---- shared prompts under FSDP2: a Hugging Face model, rows packed behind their prompt -------------------------


def _shared_prompt_batch(vocab: int) -> Batch:
    """8 rows: 2 groups of 4 rows, each group one 5-token prompt, completions of 2-9 tokens, advantages ±1."""
    g = torch.Generator().manual_seed(2)
    prompt, lens = 5, [3, 9, 2, 6, 7, 4, 8, 5]
    B, T = len(lens), prompt + max(lens)
    ids = torch.randint(3, vocab, (B, T), generator=g)
    for i in range(B):
        ids[i, :prompt] = ids[i // 4 * 4, :prompt]
    attn, loss_mask = torch.zeros(B, T, dtype=torch.bool), torch.zeros(B, T)
    for i, n in enumerate(lens):
        attn[i, : prompt + n] = True
        loss_mask[i, prompt : prompt + n] = 1.0
        ids[i, prompt + n :] = 0
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0])
    old = (torch.randn(B, T, generator=g) * 0.1 - 3.0) * loss_mask
    return Batch(input_ids=ids, attention_mask=attn, loss_mask=loss_mask, segment_ids=torch.zeros(B, T).long(),
                 old_logprobs=old, advantages=sign[:, None] * loss_mask, group_ids=torch.arange(B) // 4,
                 rewards=torch.zeros(B))


def _hf_update(path: str, rows: tuple[int, int] | None, lora: bool = False) -> tuple[dict[str, torch.Tensor], int]:
    """One SGD step of a tiny Hugging Face Llama (activation checkpointing on) on `rows` of the shared-prompt batch
    (all rows when None), sharded when distributed (with `lora`: rank-4 adapters, replicated as the loop keeps
    them); the full state (the adapters' with `lora`) and how many packed forwards ran."""
    import credo.trainer.logprobs as logprobs
    from credo.models.hf import load_hf
    from credo.models.lora import apply_lora

    policy, _ = load_hf(path, gradient_checkpointing=True)
    if lora:
        policy = apply_lora(policy, SimpleNamespace(rank=4, alpha=8.0, dropout=0.0,
                                                    target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    batch = _shared_prompt_batch(policy.model.config.vocab_size)
    if rows is not None:
        batch = batch.select(torch.arange(*rows))
    calls, packed = [], logprobs._packed_prefix_states
    logprobs._packed_prefix_states = lambda *a: calls.append(1) or packed(*a)
    try:
        policy = policy if lora else dist.shard_policy(policy)
        cfg = RLConfig(minibatches=1, ppo_epochs=1, lr=0.5, warmup_steps=0, max_grad_norm=1e9, max_new_tokens=16)
        params = [p for p in policy.parameters() if p.requires_grad]
        policy_update(policy, torch.optim.SGD(params), batch, cfg, torch.Generator().manual_seed(0))
    finally:
        logprobs._packed_prefix_states = packed
    return (policy.adapter_state_dict() if lora else dist.full_model_state(policy)), len(calls)


def _hf_pack_worker(rank: int, world: int, port: int, path: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    assert dist.init_from_env("cpu")
    rows = [(0, 4), (4, 8)][rank]  # whole groups per rank, as the rollout splits them
    results = {lora: _hf_update(path, rows, lora) for lora in (False, True)}
    torch.save(results, f"{out}.{rank}")
    dist.close()


def test_two_process_update_with_packed_prompts_equals_one_process(tmp_path):
    """Under torchrun the update runs shared prompts the "pack" way (one ordinary forward, FSDP2's hooks on
    `packed_hidden_states`), here with activation checkpointing on a Hugging Face model: N = 2 gives one
    process's parameters within 1e-5; and with LoRA adapters (not sharded, gradients summed over ranks) every
    rank's adapters equal one process's."""
    from credo.models.tiny_hf import make_tiny_hf

    path = make_tiny_hf(tmp_path / "m", arch="llama", hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                        intermediate_size=128, vocab_size=64)
    out = tmp_path / "pack.pt"
    mp.spawn(_hf_pack_worker, args=(2, _free_port(), str(path), str(out)), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    state, calls = ranks[0][False]
    ref, ref_calls = _hf_update(str(path), None)
    assert calls >= 1 and ref_calls >= 1  # both took the packed way
    before = _hf_state(path)
    assert max(float((ref[n] - before[n]).abs().max()) for n in ref) > 1e-3  # the step moved the weights
    for n, p in ref.items():
        torch.testing.assert_close(state[n], p, atol=1e-5, rtol=0, msg=n)
    # LoRA under torchrun: replicated adapters, gradients summed over ranks: every rank holds one process's adapters
    ref, _ = _hf_update(str(path), None, lora=True)
    assert any(float(t.abs().max()) > 1e-4 for n, t in ref.items() if "lora_B" in n)  # B moved from its zeros
    for r in range(2):
        got, _ = ranks[r][True]
        assert got.keys() == ref.keys()
        for n, p in ref.items():
            torch.testing.assert_close(got[n], p, atol=1e-5, rtol=0, msg=f"LoRA rank {r} {n}")


def _hf_state(path: Path) -> dict[str, torch.Tensor]:
    from credo.models.hf import load_hf

    policy, _ = load_hf(path, gradient_checkpointing=False)
    return {n: t.detach().clone() for n, t in policy.state_dict().items()}


# ---- data-parallel SFT warm start --------------------------------------------------------------------------------

SFT_BATCHES = [5, 1]  # an uneven split (3 rows / 2 rows), and a rank with no rows at all


def _sft(batch_size: int) -> tuple[dict[str, torch.Tensor], list[float]]:
    from credo.envs.arith import ArithConfig, ArithEnv
    from credo.models.tokenizer import CharTokenizer
    from credo.trainer.config import SFTConfig
    from credo.trainer.sft import sft

    torch.manual_seed(0)
    tok = CharTokenizer()
    policy = TinyLM(TinyConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=160))
    env = ArithEnv(ArithConfig(n_sft=32, n_train=8, n_test=8, direct_frac=0.5))
    hist = sft(policy, tok, env, SFTConfig(steps=3, batch_size=batch_size, lr=1e-3, warmup=1), seed=0)
    return {n: p.detach().clone() for n, p in policy.state_dict().items()}, [m["sft/loss"] for m in hist]


def _sft_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    assert dist.init_from_env("cpu")
    results = {b: _sft(b) for b in SFT_BATCHES}
    torch.save(results, f"{out}.{rank}")
    dist.close()


def test_two_process_sft_equals_one_process(tmp_path):
    """The warm start under torchrun: each rank runs its share of every batch, gradients summed over ranks, the
    loss normalised by the batch's token count: the same parameters and losses as one process (within 1e-5)."""
    out = tmp_path / "sft.pt"
    mp.spawn(_sft_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    for b in SFT_BATCHES:
        state, losses = _sft(b)
        for r in range(2):
            got, got_losses = ranks[r][b]
            assert got_losses == pytest.approx(losses, abs=1e-5), (b, r)
            for n, p in state.items():
                torch.testing.assert_close(got[n], p, atol=1e-5, rtol=0, msg=f"batch {b} rank {r} {n}")


# ---- DAPO dynamic sampling with global counts -------------------------------------------------------------------

# informative (1) or all-equal (0) groups per round, for each rank's 2 prompts of a round (4 prompts per round)
REFILL = {
    # globally 2 of 4 in round 0 (all on rank 0: alone it would have its 2 and stop), 5 of 4 after round 1
    "refill": {0: [[1, 1], [1, 1], [1, 1]], 1: [[0, 0], [1, 0], [1, 1]]},
    # never enough: 1 + 1 + 0 after max_rounds = 2 extra rounds
    "short": {0: [[0, 0], [0, 1], [0, 0]], 1: [[1, 0], [0, 0], [0, 0]]},
}


def _refill_worker(rank: int, world: int, port: int, out: str) -> None:
    from types import SimpleNamespace

    from credo.trainer.dapo import dynamic_sampling_fill

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    assert dist.init_from_env("cpu")
    results = {}
    for case, script in REFILL.items():
        rounds: list[int] = []

        def rollout_fn(n: int, first_group: int, script=script, rounds=rounds):
            r = len(rounds)
            rounds.append(n)
            mine = dist.share(list(range(n)))  # this rank's prompts of the round, as rollout_stage takes them
            samples, adv = [], []
            for i, flag in zip(mine, script[rank][r], strict=True):
                samples += [SimpleNamespace(group_id=first_group + i, case=(rank, r, i))] * 2
                adv += [float(flag), -float(flag)]
            return samples, torch.tensor(adv)

        kept, m = dynamic_sampling_fill(rollout_fn, target_groups=4, max_rounds=2)
        results[case] = ([s.case for s in kept[::2]], m, rounds)
    gathered = dist.all_gather_object(results)
    if dist.is_main():
        torch.save(gathered, out)
    dist.close()


def test_dapo_refill_with_two_processes_uses_global_counts(tmp_path):
    """Both ranks roll out the same number of rounds (a rank that has enough groups locally keeps rolling while
    the global count is short, so no collective waits on a rank that stopped), and the earliest 4 informative groups
    of the whole run are kept, by round then rank."""
    out = tmp_path / "refill.pt"
    mp.spawn(_refill_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    by_rank = torch.load(out, weights_only=False)
    (kept0, m0, r0), (kept1, m1, r1) = by_rank[0]["refill"], by_rank[1]["refill"]
    assert r0 == r1 == [4, 4] and m0 == m1
    assert m0["dapo/rounds"] == 1.0 and m0["dapo/prompts"] == 8.0 and m0["dapo/informative_groups"] == 4.0
    assert m0["dapo/informative_share_first"] == 0.5 and m0["dapo/short"] == 0.0
    # round 0: rank 0's 2; round 1: rank 0's 2 fill the target; rank 1's round-1 group comes after them
    assert kept0 == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)] and kept1 == []
    (kept0, m0, r0), (kept1, m1, r1) = by_rank[0]["short"], by_rank[1]["short"]
    assert r0 == r1 == [4, 4, 4] and m0 == m1
    assert m0["dapo/rounds"] == 2.0 and m0["dapo/informative_groups"] == 2.0 and m0["dapo/short"] == 1.0
    assert kept0 == [(0, 1, 1)] and kept1 == [(1, 0, 2)]


# ---- SSR with global counts -------------------------------------------------------------------------------------

# per rank: (sample ids, group ids, advantages, history ids, history advantages); rank 1 has no effective sample
SSR = {0: ([0, 1, 2, 3, 4, 5, 6, 7], [0, 0, 1, 1, 2, 2, 3, 3], [1.0, -1.0, 0.0, 0.0, 0.5, -0.5, 0.0, 0.0],
           [20, 21], [0.2, -0.2]),
       1: ([10, 11, 12, 13, 14, 15, 16, 17], [0, 0, 1, 1, 2, 2, 3, 3], [0.0] * 8, [30, 31, 32], [0.3, 0.9, -0.4])}


def _ssr_sample(k: int, group: int) -> Sample:
    return Sample(example_id=f"e{k}", group_id=group, prompt_ids=torch.tensor([1]), completion_ids=torch.tensor([k]),
                  loss_mask=torch.ones(1), segment_ids=torch.ones(1, dtype=torch.long),
                  sampler_logprobs=torch.zeros(1), finish_reason="stop", reward=0.0)


def _ssr_worker(rank: int, world: int, port: int, out: str) -> None:
    from credo.trainer.config import RLConfig
    from credo.trainer.replay import ReplayBuffer, ssr_select

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    assert dist.init_from_env("cpu")
    ids, gids, adv, hist, hist_adv = SSR[rank]
    buf = ReplayBuffer(capacity=8)
    buf.add([_ssr_sample(k, 100 + k) for k in hist], torch.tensor(hist_adv))
    kept, kept_adv, m = ssr_select([_ssr_sample(k, g) for k, g in zip(ids, gids, strict=True)], torch.tensor(adv),
                                   buf, RLConfig(ssr=True, ssr_batch_frac=1.0),
                                   torch.Generator().manual_seed(dist.rank_seed(0)))
    gathered = dist.all_gather_object(([int(s.completion_ids[0]) for s in kept], kept_adv, m))
    if dist.is_main():
        torch.save(gathered, out)
    dist.close()


def test_ssr_with_two_processes_draws_once_over_the_global_batch(tmp_path):
    """size = ssr_batch_frac · the global batch (16); the 4 effective samples (all on rank 0) are drawn by rank 0's
    generator and the 12 replays from the union of both ranks' histories, as one draw over the concatenated
    batch and history would pick them; each rank trains on what lives on it; metrics are global and equal."""
    from credo.core.selection import replay_fill, ssr_sample

    out = tmp_path / "ssr.pt"
    mp.spawn(_ssr_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    (ids0, adv0, m0), (ids1, adv1, m1) = torch.load(out, weights_only=False)
    assert m0 == m1 == {"ssr/effective_share_before": 0.25, "ssr/effective_share_after": 1.0, "ssr/replayed": 12.0,
                        "ssr/buffer_size": 9.0, "ssr/batch_size": 16.0}
    # the same draw by hand: batch = rank 0's rows then rank 1's (group ids offset), history = rank 0's then rank 1's
    batch_ids, g_adv = SSR[0][0] + SSR[1][0], torch.tensor(SSR[0][2] + SSR[1][2])
    g_gid = torch.tensor(SSR[0][1] + [g + 4 for g in SSR[1][1]])
    hist_ids = SSR[0][3] + [0, 1, 4, 5] + SSR[1][3]  # each rank's history after adding its effective samples
    g_hist = torch.tensor(SSR[0][4] + [1.0, -1.0, 0.5, -0.5] + SSR[1][4], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    cur = ssr_sample(g_adv, 4, 1.0, True, gen, group_ids=g_gid)
    rep = replay_fill(g_hist, 12, 1e-4, gen)
    want = [batch_ids[i] for i in cur] + [hist_ids[j] for j in rep]
    assert sorted(ids0 + ids1) == sorted(want)
    assert set(ids1) <= set(SSR[1][3]) and len(ids1) >= 3  # rank 1: its history only, each item at least once
    assert (adv0.abs() > 0).all() and (adv1.abs() > 0).all() and len(ids0) + len(ids1) == 16


# ---- R3 scored with the sharded live policy, and a lagged whole copy ---------------------------------------------

R3_MODEL = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=64)
R3_CASES = [("live", 0), ("live", 40), ("lagged", 0)]  # (r3.policy, rl.max_tokens_per_microbatch)


def _r3_values(policy: torch.nn.Module, kind: str, start_model: str, groups: list[int],
               max_tokens: int = 0) -> list[list[float]]:
    """R3 of `groups`' samples (group 2's example has no reference) over two reward calls, the live policy's
    weights scaled by 1.05 between them; r3.lag = 1, so the lagged copy catches up at the second call. A budget
    of 40 padded tokens: two rows per forward, so rank 0 makes 4 forwards a call and rank 1 none of its own."""
    from test_r3 import PROMPT, REF, TOK, _sample

    from credo.data import Example
    from credo.rewards.r3 import R3
    from credo.rewards.terms import TermContext
    from credo.trainer.config import Config, ModelConfig
    from credo.trainer.logprobs import sequence_logprobs

    cfg = Config()
    cfg.model = ModelConfig(**R3_MODEL)
    cfg.r3.policy, cfg.r3.lag, cfg.rl.max_tokens_per_microbatch = kind, 1, max_tokens
    term = R3(TermContext(cfg=cfg, env=None, tokenizer=TOK, policy=policy, logprobs=sequence_logprobs,
                          start_model=start_model))
    examples = [Example("e0", PROMPT, REF), Example("e1", PROMPT, "12"), Example("e2", PROMPT, None)]
    out = []
    for _ in range(2):
        samples = [_sample(i, group=g, ex_id=f"e{g}") for g in groups for i in range(3)]
        out.append(term(samples, examples).values.tolist())
        with torch.no_grad():
            for p in policy.parameters():
                p.mul_(1.05)
    return out


def _r3_worker(rank: int, world: int, port: int, start_model: str, out: str) -> None:
    from credo.models import load_policy
    from credo.trainer.config import ModelConfig

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    assert dist.init_from_env("cpu")
    groups = [0, 1] if rank == 0 else [2]  # rank 1 has nothing to score: one-token forwards match rank 0's count
    results = {}
    for kind, max_tokens in R3_CASES:
        policy = dist.shard_policy(load_policy(start_model, ModelConfig(**R3_MODEL))[0])
        results[kind, max_tokens] = _r3_values(policy, kind, start_model, groups, max_tokens)
    torch.save(results, f"{out}.{rank}")
    dist.close()


def test_two_process_r3_with_live_and_lagged_policies_equals_one_process(tmp_path):
    """R3 under FSDP2: "live" scores through the sharded policy (every rank makes the same number of forwards, also
    a rank with nothing to score, with and without a token budget), "lagged" keeps a whole copy refreshed from the
    gathered shards; each rank's values equal one process's on the same samples within 1e-5."""
    from credo.models import build_policy, load_policy, save_policy
    from credo.models.tokenizer import CharTokenizer
    from credo.trainer.config import ModelConfig

    torch.manual_seed(0)
    save_policy(build_policy(ModelConfig(**R3_MODEL))[0], CharTokenizer(), tmp_path / "start")
    start = str(tmp_path / "start")
    mp.spawn(_r3_worker, args=(2, _free_port(), start, str(tmp_path / "r3")), nprocs=2, join=True)
    got = [torch.load(f"{tmp_path / 'r3'}.{r}", weights_only=False) for r in (0, 1)]
    for case in R3_CASES:
        ref = _r3_values(load_policy(start, ModelConfig(**R3_MODEL))[0], case[0], start, [0, 1, 2], case[1])
        for call in range(2):
            assert got[0][case][call] == pytest.approx(ref[call][:6], abs=1e-5), (case, call)
            assert all(math.isnan(v) for v in got[1][case][call]) and all(math.isnan(v) for v in ref[call][6:])
    live, lagged = got[0]["live", 0], got[0]["lagged", 0]
    assert got[0]["live", 40] == [pytest.approx(v, abs=1e-5) for v in live]  # the budget changes no value
    # the live policy moved between the calls: the values changed; the lagged copy caught up at the second call
    assert max(abs(a - b) for a, b in zip(live[0], live[1], strict=True)) > 1e-4
    assert lagged[0] != pytest.approx(live[1], abs=1e-4)  # before: the start weights
    assert lagged[1] == pytest.approx(live[1], abs=1e-5)  # after the refresh: the live ones


# ---- torchrun end to end --------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
# arith with a dense user reward (the tiny warm start never answers right, so outcome rewards would all be 0 and no
# update would run); one verification worker less per rank
RUN = [*TINY, "reward.function=verify_helpers:length_reward", "reward.workers=0", "rl.lr=1e-3"]


def _credo_train(nproc: int, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N -m credo train configs/arith.toml …` (plain `python -m credo`
    for N = 1), one thread per process."""
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else []
    cmd = [sys.executable, *launch, "-m", "credo", "train", "configs/arith.toml", *RUN, f"run.out_dir={out}",
           "run.threads=1", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "final_model" / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """full: 3 steps on 2 processes; part: 2 steps on 2 processes, copied to part1, then both resumed to step 3,
    part with 2 processes and part1 with 1."""
    out = tmp_path_factory.mktemp("dp")
    _credo_train(2, out, "run.name=full", "rl.steps=3")
    _credo_train(2, out, "run.name=part", "rl.steps=2")
    shutil.copytree(out / "part", out / "part1")
    _credo_train(2, out, "run.name=part", "rl.steps=3")
    _credo_train(1, out, "run.name=part1", "rl.steps=3")
    return out


def test_torchrun_train_finishes_with_rank0_metrics_and_report(runs):
    run_dir = runs / "full"
    recs = _records(run_dir)
    rl = [r for r in recs if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2, 3]  # one record per step: rank 0's, with the ranks' metrics reduced
    assert [r["step"] for r in recs if r["phase"] == "eval"] == [0, 3]
    for r in rl:
        assert r["loss/optimizer_steps"] == 2.0 and math.isfinite(r["loss/policy"]), r
        assert r["rollout/response_len"] > 0 and "reward/mean" in r and "time/step" in r
    assert (run_dir / "report.html").is_file() and (run_dir / "checkpoint.pt").is_file()
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3 and len(state["ranks"]) == 2 and state["data_pos"] == 3 * 4
    final = _final(run_dir)  # a plain model directory with the whole (unsharded) weights
    assert all(torch.equal(final[k], v) for k, v in state["model"].items())
    start = load_file_start(run_dir)
    assert any(not torch.equal(final[k], start[k]) for k in final)  # RL moved the weights


def load_file_start(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "start_model" / "model.safetensors")


def test_resume_with_two_processes_is_bit_identical(runs):
    full, part = _records(runs / "full"), _records(runs / "part")
    assert [r for r in part if r["phase"] == "rl"][-1]["step"] == 3
    a, b = _final(runs / "full"), _final(runs / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
    last = [r for r in full if r["phase"] == "rl"][-1], [r for r in part if r["phase"] == "rl"][-1]
    assert all(last[0][k] == last[1][k] for k in last[0] if not k.startswith("time/"))


def test_resume_with_one_process_continues_from_the_checkpoint(runs):
    part1 = _records(runs / "part1")
    rl = [r for r in part1 if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2, 3]  # history of the two-process steps, then one-process step 3
    untimed = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rl]
    full = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in _records(runs / "full")]
    assert untimed[:2] == [r for r in full if r["phase"] == "rl"][:2]
    assert rl[2]["loss/optimizer_steps"] == 2.0 and math.isfinite(rl[2]["loss/policy"])
    state = torch.load(runs / "part1" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3 and state["data_pos"] == 3 * 4 and "ranks" not in state


def test_torchrun_lora_run_checkpoints_adapters_and_saves_a_merged_model(tmp_path):
    """`torchrun --nproc-per-node 2 -m credo train` with LoRA on a tiny Hugging Face Llama: the adapters replicated,
    their gradients summed; the KL reference is the base (adapters off); the checkpoint keeps the adapters only, as
    one process writes it, and final_model/ is a plain transformers directory."""
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from credo.models.tiny_hf import make_tiny_hf
    from credo.trainer import checkpoint as ckpt

    hf_dir = make_tiny_hf(tmp_path / "m", arch="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                          intermediate_size=128)
    _credo_train(2, tmp_path, f"model.path={hf_dir}", "model.lora.rank=4", "model.lora.alpha=8",
                 "env.name=toy_env:make", "sft.enabled=false", "rl.prompts_per_step=4", "rl.group_size=4",
                 "rl.max_new_tokens=8", "rl.lr=1e-2", "rl.kl_coef=0.05", "rl.steps=2", "run.checkpoint_every=1",
                 "eval.every=100", "eval.n_samples=0", "run.name=lora")
    run = tmp_path / "lora"
    state = ckpt.load(run / "checkpoint.pt")
    assert state["step"] == 2 and all(".lora_A." in k or ".lora_B." in k for k in state["model"])
    assert any(float(t.abs().max()) > 0 for k, t in state["model"].items() if ".lora_B." in k)  # it trained
    rl = [r for r in _records(run) if r["phase"] == "rl"]
    assert len(rl) == 2 and all(r.get("loss/optimizer_steps", 0) > 0 for r in rl)
    merged = AutoModelForCausalLM.from_pretrained(run / "final_model")
    assert not any("lora" in n for n, _ in merged.named_parameters())


@pytest.mark.parametrize("kind", ["live", "lagged"])
def test_torchrun_r3_run_finishes(tmp_path, kind):
    """`torchrun --nproc-per-node 2 -m credo train` with the R3 term scored by the live (sharded) policy or a
    lagged whole copy (r3.lag = 1: refreshed from the gathered shards at every reward call after the first), the
    update running on R3's dense values; a checkpoint saved at step 2 (the lagged copy's weights included)."""
    _credo_train(2, tmp_path, f"run.name=r3{kind}", "rl.steps=2", "reward.function=", "reward.outcome=0",
                 "reward.r3=1", f"r3.policy={kind}", "r3.lag=1", "run.checkpoint_every=2")
    rl = [r for r in _records(tmp_path / f"r3{kind}") if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2] and all(math.isfinite(r["r3/sigma_max"]) for r in rl)
    assert all(r["loss/optimizer_steps"] > 0 for r in rl)
    state = torch.load(tmp_path / f"r3{kind}" / "checkpoint.pt", weights_only=False)
    assert len(state["ranks"]) == 2


def test_torchrun_dapo_refill_finishes_with_global_counts(tmp_path):
    """DAPO dynamic sampling under torchrun with a sparse reward: extra rounds are rolled on both ranks, the run
    ends, and rank 0's record holds the global counts."""
    _credo_train(2, tmp_path, "run.name=dapo", "rl.steps=2", "rl.dynamic_sampling=true", "rl.dynamic_max_rounds=3",
                 "reward.function=verify_helpers:sparse_reward", "run.checkpoint_every=0")
    rl = [r for r in _records(tmp_path / "dapo") if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2]
    for r in rl:
        assert r["dapo/prompts"] == 4 * (1 + r["dapo/rounds"]) and 0 <= r["dapo/informative_groups"] <= 4
        assert r["dapo/short"] == float(r["dapo/informative_groups"] < 4)
    print("dapo records:", [{k: v for k, v in r.items() if k.startswith("dapo/")} for r in rl])
