"""Direct Reasoning Optimization's Reasoning Reflection Reward, R3 (arXiv 2506.13351 v3, §4.1.3), for answers
no verifier can check: the policy's own certainty about the *reference* answer given each sampled chain of thought.

    R3_i  = Σ_j w_Δ(σ_j) · [ log π(y*_j | q, ĉ_i, y*_<j) − log π(y*_j | q, c_masked, y*_<j) ]      (paper, §4.1.3)
    σ_j   = std_i log π(y*_j | q, ĉ_i, y*_<j)          over the G chains of thought of the group
    r_len = 1 − β · | |y*| − |ŷ_i| | / |y*|            (the outcome length term; `r3_length`)

ĉ_i is sample i's chain of thought: its completion up to the last `<answer>` tag (the env's answer tag,
`r3.answer_tag`); the reference y* is teacher-forced after `ĉ_i + "<answer>"`. The G rows of a group and the
masked row (`r3.masked_cot`, default the empty chain of thought), for every group of the call, are scored in
forwards of the reward policy of at most `rl.max_tokens_per_microbatch` padded tokens (one forward when 0)
through the trainer's log-prob function (`trainer.logprobs.sequence_logprobs`, handed over as
`TermContext.logprobs`: the rewards layer never imports the trainer).

Choices the paper leaves open (each a config key, listed in docs/algorithms.md):
- w_Δ (`r3.weighting`): "softmax" w = softmax_j(σ_j / τ) (default, τ = `r3.tau`), "linear" w_j = σ_j / Σ_k σ_k
  (uniform when every σ_j is 0), "uniform" w_j = 1/|y*|. Every form sums to 1 over the reference, so R3 is a
  weighted mean of per-token log-ratios and does not grow with the reference's length.
- σ_j is the population standard deviation (divisor G) of the log-probs.
- c_masked: the chain of thought replaced by `r3.masked_cot` (default "": the answer tag right after the prompt).
  Under group-relative advantages the masked term is a constant of the group (the same reference, the same masked
  row): it changes the reward's level, never the advantages (GRPO, Dr.GRPO, RLOO all centre within the group).
- The reward policy π_rwd (`r3.policy`): "live" (the trainer's policy, default), "initial" (the start model,
  frozen, loaded from the run's start_model/), "lagged" (a copy of the live policy refreshed every `r3.lag`
  reward calls; saved in checkpoints). The paper names the three without fixing one.
- Tokens: ĉ_i + "<answer>" and the reference are tokenized separately (the reference's ids are the same in every
  row, so σ_j compares like with like); the completion's own token ids are not reused.

The plain aggregate-certainty reward (`r3_aggregate`: mean_j log π(y*_j | q, ĉ_i, y*_<j), or the mean token
probability with `r3.aggregate = "prob"`) is the paper's collapse baseline. The variance-based prompt filter
(groups whose max_j σ_j is low carry no comparative signal) is a selection option, `trainer.stages.SigmaFilter`,
reading `Sample.reference_sigma` that the R3 terms set.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from credo.data import Example, Sample
from credo.rewards.terms import TermResult

# ---- the maths (pure functions on tensors) -------------------------------------------------------------------


def reference_sigma(logp: Tensor) -> Tensor:
    """σ_j [J]: the population standard deviation over the G chains of thought of each reference token's log-prob
    (`logp` [G, J]); 0 for G = 1. DRO's "reasoning-reflective" tokens are the ones with a large σ_j."""
    return logp.std(dim=0, correction=0)  # [J]


def r3_weights(sigma: Tensor, weighting: str = "softmax", tau: float = 1.0) -> Tensor:
    """w_Δ(σ) [J], summing to 1: "softmax" softmax_j(σ_j/τ), "linear" σ_j/Σσ (uniform when Σσ = 0), "uniform"
    1/J. The paper gives no exact form (arXiv 2506.13351 v3, §4.1.3: w_Δ up-weights high-σ tokens).
    Raises ValueError for an unknown weighting or τ <= 0.

    >>> r3_weights(torch.tensor([0.0, 1.0]), "linear").tolist()
    [0.0, 1.0]
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"r3.weighting: unknown {weighting!r}; choose one of {WEIGHTINGS}")
    J = sigma.shape[0]
    if weighting == "uniform" or (weighting == "linear" and float(sigma.sum()) <= 0):
        return torch.full_like(sigma, 1.0 / J)  # [J]
    if weighting == "linear":
        return sigma / sigma.sum()  # [J]
    if tau <= 0:
        raise ValueError(f"r3.tau must be > 0, got {tau}")
    return torch.softmax(sigma / tau, dim=0)  # [J]


WEIGHTINGS = ("softmax", "linear", "uniform")


def r3_reward(logp: Tensor, weights: Tensor, logp_masked: Tensor | None = None) -> Tensor:
    """R3_i [G] = Σ_j w_j · (logp[i, j] − logp_masked[j]) (arXiv 2506.13351 v3, §4.1.3); `logp` [G, J] the
    reference's token log-probs under each chain of thought, `weights` [J], `logp_masked` [J] the same tokens with
    the chain of thought masked out (None: no subtraction). Units: nats."""
    delta = logp if logp_masked is None else logp - logp_masked[None, :]  # [G, J]
    return delta @ weights  # [G]


def aggregate_certainty(logp: Tensor, mode: str = "logprob") -> Tensor:
    """The plain aggregate-certainty reward [G]: mean_j log π(y*_j | ...) ("logprob") or mean_j π(y*_j | ...)
    ("prob") of `logp` [G, J] — the reward the paper reports collapsing the chain of thought. Raises ValueError
    for another mode."""
    if mode == "logprob":
        return logp.mean(dim=1)  # [G]
    if mode == "prob":
        return logp.exp().mean(dim=1)  # [G]
    raise ValueError(f"r3.aggregate: unknown {mode!r}; choose logprob or prob")


def length_reward(ref_len: Tensor, answer_len: Tensor, beta: float = 1.0) -> Tensor:
    """r_len = 1 − β·| |y*| − |ŷ| | / |y*| (arXiv 2506.13351 v3, outcome length term), elementwise on token counts;
    `ref_len` must be >= 1 (ValueError otherwise). Not clipped: an answer far longer than the reference goes
    below 0, as in the formula.

    >>> length_reward(torch.tensor([4.0]), torch.tensor([6.0]), beta=0.5).tolist()
    [0.75]
    """
    if bool((ref_len < 1).any()):
        raise ValueError("r_len needs a reference of at least one token")
    return 1.0 - beta * (ref_len - answer_len).abs() / ref_len


# ---- text: chain of thought and answer -------------------------------------------------------------------------


def split_cot(text: str, tag: str = "answer") -> tuple[str, str | None]:
    """(chain of thought, answer) of a completion: the text before the last `<tag>` and the content of that block
    (to `</tag>` or the end); (whole text, None) when there is no `<tag>`.

    >>> split_cot("a b <answer>7</answer>")
    ('a b ', '7')
    >>> split_cot("no tag")
    ('no tag', None)
    """
    open_, close = f"<{tag}>", f"</{tag}>"
    at = text.rfind(open_)
    if at < 0:
        return text, None
    rest = text[at + len(open_) :]
    end = rest.find(close)
    return text[:at], (rest if end < 0 else rest[:end]).strip()


# ---- scoring rows ---------------------------------------------------------------------------------------------

Scorer = Callable[[Tensor, Tensor], Tensor]
"""(input_ids [N, T] long, right-padded; positions [N, T] bool) → log π(x_t | x_<t) [N, T] at the positions."""


def group_rows(prefixes: list[list[int]], refs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded rows `prefixes[r] + refs[r]` [N, T] and the positions of the reference tokens [N, T] bool."""
    T = max(len(p) + len(ref) for p, ref in zip(prefixes, refs, strict=True))
    ids = torch.full((len(prefixes), T), pad_id, dtype=torch.long)
    pos = torch.zeros(len(prefixes), T, dtype=torch.bool)
    for r, (p, ref) in enumerate(zip(prefixes, refs, strict=True)):
        ids[r, : len(p)] = torch.tensor(p, dtype=torch.long)
        ids[r, len(p) : len(p) + len(ref)] = torch.tensor(ref, dtype=torch.long)
        pos[r, len(p) : len(p) + len(ref)] = True
    return ids, pos


def row_chunks(lengths: list[int], max_tokens: int = 0) -> list[list[int]]:
    """Consecutive row indices in chunks of at most `max_tokens` padded tokens (rows × longest row; a longer row
    alone); 0: one chunk of all rows. No rows: no chunk."""
    chunks: list[list[int]] = []
    longest = 0
    for i, n in enumerate(lengths):
        if chunks and (max_tokens <= 0 or (len(chunks[-1]) + 1) * max(longest, n) <= max_tokens):
            chunks[-1].append(i)
            longest = max(longest, n)
        else:
            chunks.append([i])
            longest = n
    return chunks


def _global_max(n: int) -> int:
    """The largest `n` over the ranks of the default process group (an all-reduce)."""
    import torch.distributed as tdist

    dev = "cuda" if tdist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([n], device=dev)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return int(t.item())


def reference_logprobs(scorer: Scorer, prefixes: list[list[int]], refs: list[list[int]], pad_id: int,
                       max_tokens: int = 0, collective: bool = False) -> list[Tensor]:
    """log π(y*_j | prefix_r, y*_<j) [J_r] for every row r (reference `refs[r]`, J_r = len(refs[r])): the rows
    right-padded, in scorer calls (forwards) of at most `max_tokens` padded tokens (`row_chunks`; 0: one call).
    `collective`: the scorer runs an FSDP2-sharded policy, a collective, so every rank makes the same number of
    calls: the largest over the ranks, a rank with fewer adding one-token rows (its result unused)."""
    chunks = row_chunks([len(p) + len(ref) for p, ref in zip(prefixes, refs, strict=True)], max_tokens)
    n_calls = _global_max(len(chunks)) if collective else len(chunks)  # agreed before any forward
    out: list[Tensor] = []
    for idx in chunks:
        ids, pos = group_rows([prefixes[i] for i in idx], [refs[i] for i in idx], pad_id)
        lp = scorer(ids, pos)  # [n, T]
        out += lp[pos.to(lp.device)].float().cpu().split([len(refs[i]) for i in idx])
    for _ in range(n_calls - len(chunks)):
        scorer(torch.full((1, 1), pad_id, dtype=torch.long), torch.zeros(1, 1, dtype=torch.bool))
    return out


# ---- the reward policy ------------------------------------------------------------------------------------------


def _device(policy: Any) -> torch.device:
    try:
        return next(policy.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _is_sharded(policy: Any) -> bool:
    """Whether `policy` holds FSDP2-sharded (DTensor) parameters: its forward is then a collective."""
    params = policy.parameters() if hasattr(policy, "parameters") else ()
    return any(hasattr(p, "full_tensor") for p in params)


class RewardPolicy:
    """π_rwd and its scorer: "live" (the trainer's policy), "initial" (`start_model` loaded frozen), "lagged" (a
    frozen copy of the live policy, refreshed from it every `lag` calls of `tick`). `state_dict` holds the call count
    and, for "lagged", the copy's weights, so a resumed run scores with the same weights.

    Under data parallelism (an FSDP2-sharded live policy, `trainer.distributed`): "live" scores through the sharded
    policy, one forward per reward call on every rank (`collective`); "lagged" keeps a whole frozen copy on every
    rank, loaded from `start_model` (the live policy's weights when RL starts) and refreshed one gathered tensor at
    a time (every rank ticks at the same reward calls); "initial" is a whole copy as in one process."""

    def __init__(self, kind: str, policy: Any, logprobs: Callable[..., Any] | None, start_model: str = "",
                 model_cfg: Any = None, lag: int = 10, chunk: int = 512) -> None:
        if kind not in ("live", "initial", "lagged"):
            raise ValueError(f"r3.policy: unknown {kind!r}; choose live, initial or lagged")
        if policy is None or logprobs is None:
            raise ValueError("R3 needs the trainer's policy and log-prob function (TermContext.policy / .logprobs)")
        if kind == "lagged" and lag < 1:
            raise ValueError(f"r3.lag must be >= 1, got {lag}")
        self.kind, self.live, self.logprobs, self.lag, self.chunk, self.calls = kind, policy, logprobs, lag, chunk, 0
        self.frozen = None
        if kind == "initial":
            if not start_model:
                raise ValueError("r3.policy = \"initial\" needs the run's start model (TermContext.start_model)")
            from credo.models import load_policy

            self.frozen = load_policy(start_model, model_cfg)[0].eval().requires_grad_(False)
        elif kind == "lagged" and _is_sharded(policy):  # a whole copy, not a second sharded module
            if not start_model:
                raise ValueError("r3.policy = \"lagged\" on a sharded policy needs the run's start model")
            from credo.models import load_policy

            self.frozen = load_policy(start_model, model_cfg)[0].eval().requires_grad_(False)
        elif kind == "lagged":
            self.frozen = copy.deepcopy(policy).eval().requires_grad_(False)

    @property
    def collective(self) -> bool:
        """Whether scoring runs the sharded live policy (a collective: one scorer call per reward call per rank)."""
        return self.frozen is None and _is_sharded(self.live)

    @torch.no_grad()
    def tick(self) -> None:
        """One reward call: a lagged copy is refreshed from the live policy every `lag` calls (sharded tensors
        gathered one at a time)."""
        if self.kind == "lagged" and self.calls > 0 and self.calls % self.lag == 0:
            target = self.frozen.state_dict()
            for k, v in self.live.state_dict().items():
                target[k].copy_(v.full_tensor() if hasattr(v, "full_tensor") else v)
        self.calls += 1

    def scorer(self) -> Scorer:
        policy = self.live if self.frozen is None else self.frozen

        def score(ids: Tensor, pos: Tensor) -> Tensor:
            was_training = policy.training
            policy.eval()
            try:
                with torch.no_grad():
                    dev = _device(policy)
                    return self.logprobs(policy, ids.to(dev), positions=pos.to(dev), chunk=self.chunk)[0]
            finally:
                policy.train(was_training)

        return score

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"calls": self.calls}
        if self.kind == "lagged":
            state["weights"] = {k: v.detach().cpu().clone() for k, v in self.frozen.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state["calls"])
        if self.kind == "lagged":
            self.frozen.load_state_dict(state["weights"])


# ---- the reward terms -------------------------------------------------------------------------------------------


def _groups(samples: list[Sample]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        out.setdefault(s.group_id, []).append(i)
    return out


class R3Scores:
    """Per group: the reference's token log-probs under each chain of thought and under the masked one.

    `__call__(samples, examples, scorer)` → (logp: {group: [G, J]}, masked: {group: [J]}, ref_ids: {group: ids});
    a group whose example has no reference (None or empty text) is left out (its samples get NaN)."""

    def __init__(self, tokenizer: Any, answer_tag: str = "answer", masked_cot: str = "", masked: bool = True) -> None:
        self.tok, self.tag, self.masked_cot, self.masked = tokenizer, answer_tag, masked_cot, masked

    def __call__(self, samples: list[Sample], examples: list[Example], scorer: Scorer, max_tokens: int = 0,
                 collective: bool = False) -> tuple[dict, dict, dict]:
        """All groups' rows in scorer calls of at most `max_tokens` padded tokens (`reference_logprobs`)."""
        by_id = {e.id: e for e in examples}
        prefixes: list[list[int]] = []
        row_refs: list[list[int]] = []
        refs: dict[int, list[int]] = {}
        open_tag = f"<{self.tag}>"
        groups = _groups(samples)
        for idx in groups.values():
            ref = by_id[samples[idx[0]].example_id].reference
            ref_ids = self.tok.encode(str(ref)) if ref is not None else []
            if not ref_ids:
                continue
            prompt = samples[idx[0]].prompt_ids.tolist()
            rows = [prompt + self.tok.encode(split_cot(samples[i].scored_text, self.tag)[0] + open_tag) for i in idx]
            if self.masked:
                rows.append(prompt + self.tok.encode(self.masked_cot + open_tag))
            refs[samples[idx[0]].group_id] = ref_ids
            prefixes += rows
            row_refs += [ref_ids] * len(rows)
        lps = iter(reference_logprobs(scorer, prefixes, row_refs, self.tok.pad_id, max_tokens, collective))
        logp, masked = {}, {}
        for g, idx in groups.items():
            if g in refs:
                logp[g] = torch.stack([next(lps) for _ in idx])  # [G, J]
                masked[g] = next(lps) if self.masked else None  # [J]
        return logp, masked, refs


class R3:
    """The `r3` reward term: R3_i of each sample against its group (module docstring); sets
    `Sample.reference_sigma` = max_j σ_j of the group, read by the variance filter (`trainer.stages.SigmaFilter`).
    Metrics: `r3/sigma_max` (mean over groups), `r3/masked` (mean masked-row log-prob per token), `r3/cot_tokens`.
    Built from a `TermContext` with `policy`, `logprobs` (the trainer's `sequence_logprobs`), `tokenizer`, and
    `start_model` for `r3.policy = "initial"`; raises ValueError when they are missing or a setting is unknown."""

    aggregate: str | None = None  # the `r3_aggregate` subclass sets the plain aggregate-certainty mode

    def __init__(self, ctx: Any) -> None:
        c = ctx.cfg.r3
        r3_weights(torch.ones(1), c.weighting, c.tau)  # fail at build time on a bad setting
        self.c = c
        masked = c.masked and self.aggregate is None
        self.scores = R3Scores(ctx.tokenizer, c.answer_tag, c.masked_cot, masked)
        self.rpolicy = RewardPolicy(c.policy, ctx.policy, ctx.logprobs, ctx.start_model, ctx.cfg.model, c.lag,
                                    ctx.cfg.rl.logprob_chunk)
        self.max_tokens = ctx.cfg.rl.max_tokens_per_microbatch  # the update's token budget per forward (0: none)

    def __call__(self, samples: list[Sample], examples: list[Example]) -> TermResult:
        self.rpolicy.tick()
        logp, masked, _ = self.scores(samples, examples, self.rpolicy.scorer(), self.max_tokens,
                                      self.rpolicy.collective)
        out = torch.full((len(samples),), math.nan)
        sig_max, masked_mean = [], []
        for g, idx in _groups(samples).items():
            if g not in logp:
                continue
            sigma = reference_sigma(logp[g])  # [J]
            if self.aggregate is not None:
                values = aggregate_certainty(logp[g], self.aggregate)
            else:
                values = r3_reward(logp[g], r3_weights(sigma, self.c.weighting, self.c.tau), masked[g])
                if masked[g] is not None:
                    masked_mean.append(float(masked[g].mean()))
            out[idx] = values
            sig_max.append(float(sigma.max()))
            for i in idx:
                samples[i].reference_sigma = sig_max[-1]
        metrics = {"r3/sigma_max": sum(sig_max) / max(1, len(sig_max)),
                   "r3/cot_tokens": sum(len(s.completion_ids) for s in samples) / max(1, len(samples))}
        if masked_mean:
            metrics["r3/masked"] = sum(masked_mean) / len(masked_mean)
        return TermResult(out, metrics)

    def state_dict(self) -> dict[str, Any]:
        return self.rpolicy.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rpolicy.load_state_dict(state)


class R3Aggregate(R3):
    """The `r3_aggregate` term: the plain aggregate certainty mean_j log π(y*_j | q, ĉ_i, y*_<j) (or the mean
    token probability, `r3.aggregate = "prob"`), no σ weights, no masked row: the collapse baseline."""

    def __init__(self, ctx: Any) -> None:
        aggregate_certainty(torch.zeros(1, 1), ctx.cfg.r3.aggregate)  # fail at build time on a bad mode
        self.aggregate = ctx.cfg.r3.aggregate
        super().__init__(ctx)


class R3Length:
    """The `r3_length` term: r_len = 1 − β·| |y*| − |ŷ| | / |y*| in policy tokens (β = `r3.len_beta`); ŷ is the
    content of the sample's last answer block (empty when it has none); NaN when the example has no reference."""

    def __init__(self, ctx: Any) -> None:
        self.tok, self.tag, self.beta = ctx.tokenizer, ctx.cfg.r3.answer_tag, ctx.cfg.r3.len_beta

    def __call__(self, samples: list[Sample], examples: list[Example]) -> TermResult:
        by_id = {e.id: e for e in examples}
        out = []
        for s in samples:
            ref = by_id[s.example_id].reference
            n_ref = len(self.tok.encode(str(ref))) if ref is not None else 0
            answer = split_cot(s.scored_text, self.tag)[1] or ""
            n_ans = len(self.tok.encode(answer)) if answer else 0
            out.append(float(length_reward(torch.tensor([float(n_ref)]), torch.tensor([float(n_ans)]), self.beta))
                       if n_ref else math.nan)
        return TermResult(torch.tensor(out, dtype=torch.float))


__all__ = ["R3", "WEIGHTINGS", "R3Aggregate", "R3Length", "R3Scores", "RewardPolicy", "aggregate_certainty",
           "group_rows", "length_reward", "r3_reward", "r3_weights", "reference_logprobs", "reference_sigma",
           "row_chunks", "split_cot"]
