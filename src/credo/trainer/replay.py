"""Selective Sample Replay (VL-Rethinker, arXiv 2504.08837): the persistent replay buffer and the per-step selection.

The maths (filter, |A|^α draw, replay-fill probabilities) is in ``core/selection.py``; this file holds the state
that persists across steps (a FIFO history of effective samples) and ``ssr_select``, the one call the loop makes.
Replayed samples are off-policy: they keep the sampler log-probs of the step that generated them as their old
log-probs, so the PPO ratio π_θ / π_old and its clip account for the staleness, as in the released code.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any

import torch
from torch import Tensor

from credo.core.selection import nonzero_samples, replay_fill, ssr_sample
from credo.data import Sample
from credo.trainer import distributed as dist
from credo.trainer.config import RLConfig


class ReplayBuffer:
    """FIFO history of past effective samples (|A| > 0) with their sequence advantages.

    ``add`` appends and evicts the oldest beyond ``capacity`` (the released code's ``keep_items`` deque);
    ``draw`` returns ``n`` of them chosen by ``core.selection.replay_fill``: full passes while n exceeds the
    history, then P(j) = (|A_j| + eps) / Σ_k (|A_k| + eps) with replacement. All randomness comes from the
    caller's generator, so a buffer restored by ``load_state_dict`` and the same generator state give the same draws.
    """

    def __init__(self, capacity: int, eps: float = 1e-4) -> None:
        if capacity < 1:
            raise ValueError(f"ReplayBuffer capacity must be >= 1, got {capacity}")
        self.capacity, self.eps = capacity, eps
        self._items: deque[tuple[Sample, float]] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, samples: list[Sample], advantages: Tensor) -> None:
        """Append ``samples`` (in order) with their sequence advantages [n]; the oldest are evicted past capacity."""
        if len(samples) != advantages.numel():
            raise ValueError(f"ReplayBuffer.add: {len(samples)} samples but {advantages.numel()} advantages")
        self._items.extend(zip(samples, advantages.detach().cpu().tolist(), strict=True))

    def advantages(self) -> Tensor:
        """The stored sequence advantages, oldest first [N] (float64, CPU)."""
        return torch.tensor([a for _, a in self._items], dtype=torch.float64)

    def draw(self, n: int, generator: torch.Generator | None = None) -> tuple[list[Sample], Tensor]:
        """``n`` samples (fewer only when the buffer is empty) and their advantages [n] float32, CPU."""
        return self.take(replay_fill(self.advantages(), n, self.eps, generator).tolist())

    def take(self, idx: list[int]) -> tuple[list[Sample], Tensor]:
        """The stored samples at positions ``idx`` (oldest = 0) and their advantages [len(idx)] float32, CPU."""
        return [self._items[i][0] for i in idx], torch.tensor([self._items[i][1] for i in idx], dtype=torch.float32)

    def state_dict(self) -> dict[str, Any]:
        """Capacity, eps and the samples (as field dicts of tensors and plain values) with their advantages."""
        return {
            "capacity": self.capacity,
            "eps": self.eps,
            "samples": [{f.name: getattr(s, f.name) for f in dataclasses.fields(Sample)} for s, _ in self._items],
            "advantages": [a for _, a in self._items],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the contents (and capacity, eps) with a ``state_dict``'s, order kept."""
        self.capacity, self.eps = int(state["capacity"]), float(state["eps"])
        items = [(Sample(**d), float(a)) for d, a in zip(state["samples"], state["advantages"], strict=True)]
        self._items = deque(items, maxlen=self.capacity)


def make_replay_buffer(cfg: RLConfig) -> ReplayBuffer:
    """The buffer ``cfg`` asks for: ``ssr_buffer`` samples, or half the rollout batch when 0 (released code).
    Data parallel: each rank holds its own effective samples, ⌈capacity / N⌉ of them (the history is their union)."""
    capacity = cfg.ssr_buffer or max(1, cfg.prompts_per_step * cfg.group_size // 2)
    return ReplayBuffer(-(-capacity // dist.world_size()), cfg.ssr_eps)


def ssr_select(
    batch_samples: list[Sample],
    adv: Tensor,
    buffer: ReplayBuffer,
    cfg: RLConfig,
    generator: torch.Generator | None = None,
) -> tuple[list[Sample], Tensor, dict[str, float]]:
    """One step of SSR: the samples to train on, their sequence advantages [B_ssr], and ``ssr/`` metrics.

    Follows the released ``NaiveReplayBuffer.active_sampling`` (SSR mode), with B = len(batch_samples):
      1. effective = samples with |A| > 0 (``core.selection.nonzero_samples``);
      2. the effective samples are appended to the FIFO history ``buffer`` first, so the fill can draw them too;
      3. size = max(1, ⌊cfg.ssr_batch_frac · B⌋) (code: B // 2); draw min(size, #effective) samples of this batch
         with P(j) ∝ |A_j|^α (``core.selection.ssr_sample``, α = cfg.ssr_alpha, with replacement unless
         cfg.ssr_replacement is false);
      4. top up to ``size`` from the history with P(j) ∝ |A_j| + ε (``ReplayBuffer.draw``).
    Replayed samples are off-policy: they keep their original ``sampler_logprobs``, which ``collate`` turns into
    the batch's old log-probs, so the PPO ratio and clip handle the staleness (the released code does the same).
    The result is empty only when this batch has no effective sample and the buffer is empty: skip the update.
    Departure: the released code pads its candidate list with up to 10% all-correct zero-advantage samples that
    then have probability 0, which only raises its draw count from this batch; credo draws min(size, #effective).
    Data parallel (torchrun): the counts and draws are global. B is the global batch; the ranks' advantages and
    histories are gathered (scalars only: the samples stay on their rank), rank 0 draws the global indices with
    its generator (``dist.from_main``), and each rank trains on the drawn samples that live on it, so the draw is
    that of one process over the union (ranks' shares of it differ; the update takes uneven shares).
    Metrics (global): ``ssr/effective_share_before`` (share of groups with a non-zero advantage),
    ``ssr/effective_share_after`` (share of the returned samples with a non-zero advantage), ``ssr/replayed``
    (count drawn from the buffer), ``ssr/buffer_size`` (after this step's additions), ``ssr/batch_size``.
    """
    adv = adv.detach().cpu()  # [B]; the generator is a CPU one
    gid = torch.tensor([s.group_id for s in batch_samples], dtype=torch.long)  # [B]
    eff = nonzero_samples(adv, gid)  # [B_eff]
    buffer.add([batch_samples[i] for i in eff.tolist()], adv[eff])
    g_adv, g_gid, g_hist, (b_off, h_off) = _global_view(adv, gid, buffer.advantages())
    size = max(1, int(cfg.ssr_batch_frac * g_adv.numel()))
    n_current = min(size, nonzero_samples(g_adv, g_gid).numel())

    def draw() -> tuple[Tensor, Tensor]:  # global indices of this batch's draws, then of the history's
        cur = ssr_sample(g_adv, n_current, cfg.ssr_alpha, cfg.ssr_replacement, generator, group_ids=g_gid)
        return cur, replay_fill(g_hist, size - n_current, buffer.eps, generator)

    cur, rep = dist.from_main(draw)  # [n_current], [≤ size − n_current]; rank 0 draws, every rank reads
    mine = [int(i) - b_off for i in cur if b_off <= i < b_off + adv.numel()]
    replayed, replay_adv = buffer.take([int(j) - h_off for j in rep if h_off <= j < h_off + len(buffer)])
    kept = [batch_samples[i] for i in mine] + replayed
    kept_adv = torch.cat([adv[mine].to(torch.float32), replay_adv])  # [B_ssr]
    drawn = torch.cat([g_adv[cur].to(torch.float32), g_hist[rep].to(torch.float32)])  # [global B_ssr]
    metrics = {
        "ssr/effective_share_before": torch.unique(g_gid[nonzero_samples(g_adv, g_gid)]).numel()
        / max(1, torch.unique(g_gid).numel()),
        "ssr/effective_share_after": nonzero_samples(drawn).numel() / max(1, drawn.numel()),
        "ssr/replayed": float(rep.numel()),
        "ssr/buffer_size": float(g_hist.numel()),
        "ssr/batch_size": float(drawn.numel()),
    }
    return kept, kept_adv, metrics


def _global_view(adv: Tensor, gid: Tensor, history: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
    """Every rank's batch advantages [B_all], group ids [B_all] (offset per rank, so ranks' groups stay apart) and
    history advantages [N_all], concatenated in rank order, and this rank's (batch, history) offsets in them.
    One process: the arguments themselves and (0, 0)."""
    views = dist.all_gather_object((adv, gid, history))
    advs, gids, hists, b_off, h_off, g_off = [], [], [], 0, 0, 0
    for r, (a, g, h) in enumerate(views):
        if r == dist.rank():
            b_off, h_off = sum(x.numel() for x in advs), sum(x.numel() for x in hists)
        advs.append(a)
        gids.append(g + g_off)
        hists.append(h)
        g_off += int(g.max()) + 1 if g.numel() else 0
    return torch.cat(advs), torch.cat(gids), torch.cat(hists), (b_off, h_off)
