"""The update's memory and work rules: token-budget micro-batches, the zero-advantage skip, π_old recomputation
and the sampler/trainer mismatch metric (trainer.update, core.stats.logprob_diff)."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch

from credo.core.stats import logprob_diff
from credo.data import Batch
from credo.models.tiny import TinyConfig, TinyLM
from credo.trainer.config import RLConfig
from credo.trainer.host_memory import return_freed_memory
from credo.trainer.logprobs import sequence_logprobs
from credo.trainer.update import n_microbatches, policy_update, recompute_old_logprobs

V = 40


def _policy() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(TinyConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=64))


def _batch(B: int = 6, prompt: int = 4, seed: int = 1) -> Batch:
    """Rows of different lengths (prompt + 3..12 completion tokens), right-padded; advantages ±1 per row."""
    g = torch.Generator().manual_seed(seed)
    lens = [prompt + int(n) for n in torch.randint(3, 13, (B,), generator=g)]
    T = max(lens)
    ids = torch.randint(1, V, (B, T), generator=g)
    attn = torch.zeros(B, T, dtype=torch.bool)
    loss_mask = torch.zeros(B, T)
    for i, n in enumerate(lens):
        attn[i, :n] = True
        loss_mask[i, prompt:n] = 1.0
        ids[i, n:] = 0
    adv = torch.where(torch.arange(B) % 2 == 0, 1.0, -1.0)[:, None] * loss_mask
    old = (torch.randn(B, T, generator=g) * 0.1 - 3.0) * loss_mask  # off-policy enough for some clipping
    return Batch(input_ids=ids, attention_mask=attn, loss_mask=loss_mask, segment_ids=torch.zeros(B, T).long(),
                 old_logprobs=old, advantages=adv, group_ids=torch.arange(B) // 2, rewards=torch.zeros(B))


def _sgd_delta(batch: Batch, cfg: RLConfig, ref: bool = False, nll_coef: float = 0.0) -> dict[str, torch.Tensor]:
    """Parameter change of one SGD step at lr 1 (= −gradient; `cfg.lr` = 1, clipping and warm-up off)."""
    policy = _policy()
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    ref_policy = copy.deepcopy(policy).requires_grad_(False) if ref else None
    if ref:  # a reference that differs from the policy, so the KL term has a gradient
        with torch.no_grad():
            for p in ref_policy.parameters():
                p.add_(0.01)
    m = policy_update(policy, opt, batch, cfg, torch.Generator().manual_seed(0), ref_policy, nll_coef)
    assert m["loss/optimizer_steps"] == 1.0
    return {n: p.detach() - before[n] for n, p in policy.named_parameters()}


def test_n_microbatches_is_a_function_of_the_shape():
    assert n_microbatches(8, 10, 0) == 1  # no budget
    assert n_microbatches(8, 10, 80) == 1  # fits
    assert n_microbatches(8, 10, 25) == 4  # 2 rows of 10 tokens per micro-batch
    assert n_microbatches(8, 10, 79) == 2  # 7 rows per micro-batch
    assert n_microbatches(3, 50, 20) == 3  # a row longer than the budget goes alone


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
@pytest.mark.parametrize("extra", ["none", "kl_nll"])
def test_microbatches_give_the_one_batch_gradient(aggregation, extra):
    batch = _batch()
    if extra == "kl_nll":
        batch.token_masks["nll"] = batch.loss_mask * (torch.arange(6) < 2).float()[:, None]
    base = dict(aggregation=aggregation, minibatches=1, ppo_epochs=1, lr=1.0, warmup_steps=0, max_grad_norm=1e9,
                max_new_tokens=12, kl_coef=0.1 if extra == "kl_nll" else 0.0)
    nll = 0.5 if extra == "kl_nll" else 0.0
    T = batch.input_ids.shape[1]
    one = _sgd_delta(batch, RLConfig(**base), extra == "kl_nll", nll)
    micro = _sgd_delta(batch, RLConfig(**base, max_tokens_per_microbatch=2 * T), extra == "kl_nll", nll)  # 3 micro
    assert n_microbatches(6, T, 2 * T) == 3
    assert max(float(d.abs().max()) for d in one.values()) > 1e-2  # a real gradient
    for n in one:
        torch.testing.assert_close(micro[n], one[n], atol=1e-5, rtol=0, msg=n)


def test_zero_advantage_step_leaves_parameters_and_optimizer_untouched():
    policy = _policy()
    cfg = RLConfig(minibatches=2, ppo_epochs=2, warmup_steps=0)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    policy_update(policy, opt, _batch(), cfg, torch.Generator().manual_seed(0))  # optimizer state exists
    params = {n: p.detach().clone() for n, p in policy.named_parameters()}
    state = copy.deepcopy(opt.state_dict())
    zero = _batch()
    zero.advantages = torch.zeros_like(zero.advantages)
    m = policy_update(policy, opt, zero, cfg, torch.Generator().manual_seed(0))
    assert m["loss/skipped_zero_adv"] == 4.0 and m["loss/optimizer_steps"] == 0.0 and m["loss/skipped"] == 0.0
    for n, p in policy.named_parameters():
        assert torch.equal(p, params[n]), n
        assert p.grad is None
    after = opt.state_dict()
    assert after["param_groups"] == state["param_groups"]
    for k, s in state["state"].items():
        assert all(torch.equal(s[key], after["state"][k][key]) for key in s), k


def test_zero_advantage_with_a_kl_term_still_trains():
    policy = _policy()
    ref = copy.deepcopy(policy).requires_grad_(False)
    zero = _batch()
    zero.advantages = torch.zeros_like(zero.advantages)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    m = policy_update(policy, opt, zero, RLConfig(minibatches=1, kl_coef=0.1), torch.Generator(), ref)
    assert m["loss/skipped_zero_adv"] == 0.0 and m["loss/optimizer_steps"] == 1.0


def test_recompute_old_logprobs_is_the_trainer_forward_on_trained_tokens():
    policy, batch = _policy(), _batch()
    cfg = RLConfig(max_tokens_per_microbatch=20)
    out = recompute_old_logprobs(policy, batch, cfg)
    with torch.no_grad():
        lp, _ = sequence_logprobs(policy, batch.input_ids)
    torch.testing.assert_close(out.old_logprobs, lp * batch.loss_mask, atol=1e-6, rtol=0)
    torch.testing.assert_close(batch.old_logprobs, _batch().old_logprobs)  # the input batch is not modified


def test_recomputed_pi_old_makes_the_first_ratio_one_and_logs_the_mismatch():
    policy, batch = _policy(), _batch()
    cfg = RLConfig(minibatches=1, recompute_old_logprobs=True, warmup_steps=0)
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)
    with torch.no_grad():
        lp, _ = sequence_logprobs(policy, batch.input_ids)
    m = policy_update(policy, opt, batch, cfg, torch.Generator())
    assert m["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-6) and m["loss/clip_frac"] == 0.0
    mask = batch.loss_mask
    expected = float(((lp - batch.old_logprobs).abs() * mask).sum() / mask.sum())
    assert m["rollout/logprob_diff"] == pytest.approx(expected, rel=1e-5)
    assert m["rollout/logprob_kl"] > 0


def test_mismatch_without_recompute_is_measured_before_the_first_optimizer_step():
    policy, batch = _policy(), _batch()
    with torch.no_grad():
        lp, _ = sequence_logprobs(policy, batch.input_ids)
    batch.old_logprobs = lp * batch.loss_mask  # the sampler agreed with the trainer exactly
    m = policy_update(policy, torch.optim.SGD(policy.parameters(), lr=0.1), batch, RLConfig(minibatches=2),
                      torch.Generator())
    assert m["rollout/logprob_diff"] == pytest.approx(0.0, abs=1e-6)
    assert m["rollout/logprob_kl"] == pytest.approx(0.0, abs=1e-6)


def test_logprob_diff_hand_computed():
    lp = torch.tensor([[-1.0, -2.0, -9.0]])
    sampler = torch.tensor([[-1.5, -2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is not trained
    abs_diff, k3 = logprob_diff(lp, sampler, mask)
    assert float(abs_diff) == pytest.approx(0.25)
    assert float(k3) == pytest.approx((math.exp(0.5) - 1.0 - 0.5) / 2)  # r = e^{0.5}, then r = 1
    empty = logprob_diff(lp, sampler, torch.zeros(1, 3))
    assert float(empty[0]) == 0.0 and float(empty[1]) == 0.0


def test_return_freed_memory_applies_on_glibc_once():
    applied = return_freed_memory()
    assert applied == sys.platform.startswith("linux")  # mallopt returns 1 on success
    assert return_freed_memory() is applied  # cached: set once per process


_THP_PROBE = """
import resource, sys
from credo.cli import huge_page_allocations
acts = huge_page_allocations()
import os, torch
from credo.trainer.host_memory import return_freed_memory
return_freed_memory()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(4 * 2**20).fill_(1.0)  # 16 MiB, mmapped and unmapped each time
print(acts, os.environ["THP_MEM_ALLOC_ENABLE"], resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _thp_probe(env_value: str | None) -> tuple[str, str, int]:
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    out = subprocess.run([sys.executable, "-c", _THP_PROBE], capture_output=True, text=True, env=env, check=True)
    acts, value, faults = out.stdout.split()
    return acts, value, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages and mallopt are Linux's")
def test_huge_page_allocations_cut_the_page_faults_of_fresh_buffers():
    """`credo`'s entry point turns PyTorch's huge-page allocations on before torch is imported (an explicit value
    in the environment wins); where the kernel lends huge pages on request (THP mode 'madvise'), a 16 MiB buffer
    taken fresh from the system 20 times faults ~8x less than on 4 KiB pages (measured here: 10465 vs 81985
    faults; the rest are the 4 KiB pages around each 2 MiB-aligned block)."""
    on, off = _thp_probe(None), _thp_probe("0")
    assert on[:2] == ("True", "1") and off[:2] == ("True", "0")
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not mode.exists() or "[madvise]" not in mode.read_text():
        pytest.skip("THP mode is not 'madvise' here: huge pages are never lent ('never') or always ('always'), "
                    "whatever PyTorch asks; the setting is harmless there")
    assert off[2] >= 20 * 4096 * 0.9  # 4 KiB pages: every page of every buffer faults
    assert on[2] < off[2] / 4


def test_adamw_takes_the_fused_kernel_for_plain_parameters_with_the_loop_s_step():
    from credo.trainer.update import adamw

    g = torch.Generator().manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3, generator=g)), torch.nn.Parameter(torch.randn(7, generator=g))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    kw = dict(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8)
    fused, loop = adamw(a, **kw), torch.optim.AdamW(b, foreach=False, **kw)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in a]
        for p, q, gr in zip(a, b, grads, strict=True):
            p.grad, q.grad = gr.clone(), gr.clone()
        fused.step(), loop.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
    assert adamw([torch.nn.Parameter(torch.zeros(2, dtype=torch.long), requires_grad=False)], lr=1.0).defaults[
        "fused"] is None  # not a floating tensor: PyTorch's default
