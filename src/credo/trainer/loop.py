"""The RL loop, top to bottom: sample → rollout → reward → advantages → credit → select → update → log → ckpt.

`train(cfg)` runs the warm start (SFT) when no model is given, evaluates the model RL starts from, runs
`cfg.rl.steps` RL steps with periodic evaluation and atomic checkpoints, and writes the run report.
Ctrl-C finishes the current step, saves a checkpoint and returns; `resume` continues from it exactly.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from credo.analysis.strategic_grams import SEEDS, StrategicGrams, apply_hicra, hicra_metrics
from credo.core.advantages import ADVANTAGES, to_tokens
from credo.core.credit import CREDIT, HicraParams
from credo.core.selection import SELECTION
from credo.data import Sample, collate
from credo.envs import make_env
from credo.envs.base import sample_metrics
from credo.envs.tools import TOOLS
from credo.models import build_policy, load_policy, save_policy
from credo.rewards import score_samples
from credo.rewards.curiosity import count_ops, curiosity_rewards
from credo.rewards.perception import add_perception_reward, make_reasoner, moca_params
from credo.envs.runner import VerifyRunner, make_runner
from credo.rewards.steps import first_error_params
from credo.rollout.engine import rollout
from credo.rollout.multiturn import multiturn_rollout, tool_use_metrics
from credo.rollout.rethink import forced_rethink, has_rethinking, rethink_nll_mask, rethink_reward_shaping
from credo.rollout.sampler import SamplingParams
from credo.rollout.segments import label_samples
from credo.trainer import checkpoint as ckpt
from credo.trainer.config import Config, to_dict
from credo.trainer.dapo import apply_overlong_penalty, dynamic_sampling_fill
from credo.trainer.evaluate import evaluate, tool_eval_from_config
from credo.trainer.metrics import JsonlSink, Timers, format_line, peak_rss_mb
from credo.trainer.replay import make_replay_buffer, ssr_select
from credo.trainer.sft import sft
from credo.trainer.update import policy_update

CONSOLE_KEYS = ("reward/mean", "eval/greedy_acc", "eval/pass@8", "rollout/response_len", "loss/policy", "time/step")
MAX_BAD_STEPS = 3  # consecutive steps with a non-finite loss/gradient before the run stops


class PromptStream:
    """Epoch-wise seeded permutations of the training prompts; `pos` is the data position saved in checkpoints."""

    def __init__(self, n: int, seed: int, pos: int = 0) -> None:
        self.n, self.seed, self.pos = n, seed, pos

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            epoch, i = divmod(self.pos, self.n)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            out.append(int(perm[i]))
            self.pos += 1
        return out


class _Interrupt:
    """First Ctrl-C sets a flag checked between steps; a second one aborts immediately."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> _Interrupt:
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._old)


def _eval(policy: Any, tok: Any, env: Any, cfg: Config, step: int, runner: VerifyRunner) -> dict[str, Any]:
    m = evaluate(
        policy, tok, env, env.examples("test"), cfg.rl.max_new_tokens, cfg.eval.n_samples, cfg.eval.pass_k,
        cfg.eval.temperature, seed=cfg.run.seed * 1_000_003 + step, runner=runner, tools=tool_eval_from_config(cfg),
    )
    return {"phase": "eval", "step": step, **m}


def _warm_start(cfg: Config, env: Any, run_dir: Path, sink: JsonlSink) -> tuple[Any, Any]:
    """The model RL starts from: `model.path`, else a fresh TinyLM trained by SFT (saved as start_model/)."""
    if cfg.model.path:
        policy, tok = load_policy(cfg.model.path, cfg.model)
        save_policy(policy, tok, run_dir / "start_model")
        return policy, tok
    torch.manual_seed(cfg.run.seed)
    policy, tok = build_policy(cfg.model)
    if cfg.sft.enabled:
        bar = tqdm(total=cfg.sft.steps, desc="sft", disable=not cfg.run.progress, dynamic_ncols=True)

        def on_step(step: int, m: dict[str, float]) -> None:
            sink.log({"phase": "sft", "step": step, **m})
            bar.update(1)
            bar.set_postfix(loss=f"{m['sft/loss']:.3f}")

        sft(policy, tok, env, cfg.sft, cfg.run.seed, on_step)
        bar.close()
    save_policy(policy, tok, run_dir / "start_model")
    return policy, tok


def train(cfg: Config) -> dict[str, float]:
    """Run SFT (if needed) + RL as configured; return the summary written at the end.

    Verification runs in `reward.workers` worker processes with a per-item timeout, started once for the run:
    one runner for rewards (the env's verifier or `reward.function`) and, when a reward function replaces the
    verifier, a second one for evaluation (accuracy is always the environment's own verdict)."""
    env = make_env(cfg.env)
    with contextlib.ExitStack() as stack:
        runner = stack.enter_context(make_runner(env, cfg.reward))
        eval_runner = runner
        if cfg.reward.function:
            eval_runner = stack.enter_context(
                VerifyRunner(env.verify, workers=cfg.reward.workers, timeout_s=cfg.reward.timeout_s))
        return _train(cfg, env, runner, eval_runner)


def _train(cfg: Config, env: Any, runner: VerifyRunner, eval_runner: VerifyRunner) -> dict[str, float]:
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.run.threads)
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    train_examples = env.examples("train")
    by_id = {e.id: e for e in train_examples}
    g = torch.Generator().manual_seed(cfg.run.seed)

    state = ckpt.load(ckpt_path) if cfg.run.resume and ckpt_path.exists() else None
    if state is not None:  # exact resume: model, optimizer, RNG, data position, step, metrics so far
        sink = JsonlSink(run_dir / "metrics.jsonl", state["history"])
        policy, tok = load_policy(run_dir / "start_model", cfg.model)
        policy.load_state_dict(state["model"])
        start_step, stream = state["step"], PromptStream(len(train_examples), cfg.run.seed, state["data_pos"])
        wall_before = state["wall_s"]
    else:
        sink = JsonlSink(run_dir / "metrics.jsonl")
        policy, tok = _warm_start(cfg, env, run_dir, sink)
        start_step, stream, wall_before = 0, PromptStream(len(train_examples), cfg.run.seed), 0.0
        sink.log(_eval(policy, tok, env, cfg, 0, eval_runner))
        print(format_line(sink.records[-1], CONSOLE_KEYS))
    ref_policy = None
    if cfg.rl.kl_coef > 0:
        ref_policy = load_policy(run_dir / "start_model", cfg.model)[0].eval().requires_grad_(False)
    opt = torch.optim.AdamW(
        policy.parameters(), lr=cfg.rl.lr, weight_decay=cfg.rl.weight_decay, betas=(0.9, 0.99), eps=cfg.rl.adam_eps
    )
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"], g)
    params = SamplingParams(cfg.rl.max_new_tokens, cfg.rl.temperature, cfg.rl.top_p)
    timers = Timers()
    replay = make_replay_buffer(cfg.rl) if cfg.rl.ssr else None
    reasoner = None  # MoCA's blindfolded reasoner for Perception Verification
    if cfg.reward.perception > 0:
        reasoner = make_reasoner(cfg.reward.perception_reasoner, env, policy, tok, cfg.model,
                                 cfg.reward.perception_reasoner_tokens)
        if cfg.reward.perception_reasoner == "policy":
            print("perception verification: the blindfolded reasoner is the live policy itself (the paper uses a "
                  "separate 14B text model): R_P is not faithful to MoCA")
    grams = None
    if cfg.rl.credit == "hicra" or cfg.rl.planning_metrics:
        grams = StrategicGrams(cfg.rl.hicra_ngram, cfg.rl.hicra_min_support, cfg.rl.hicra_refresh,
                               seeds=SEEDS.get(env.name, ()))
    if state is not None:  # method state lives in the checkpoint too, so resume stays exact
        if replay is not None:
            replay.load_state_dict(state["replay"])
        if grams is not None:
            grams.load_state_dict(state["grams"])

    def save(step: int) -> None:
        ckpt.save_atomic(
            {
                "model": policy.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "data_pos": stream.pos, "rng": ckpt.rng_state(g), "history": sink.records,
                "config": to_dict(cfg), "wall_s": wall_before + time.perf_counter() - t_start,
                "replay": replay.state_dict() if replay is not None else None,
                "grams": grams.state_dict() if grams is not None else None,
            },
            ckpt_path,
        )

    bad_steps = 0
    bar = tqdm(total=cfg.rl.steps, initial=start_step, desc="rl", disable=not cfg.run.progress, dynamic_ncols=True)
    step = start_step
    weights = {"outcome": cfg.reward.outcome, "format": cfg.reward.format}
    with _Interrupt() as interrupt:
        while step < cfg.rl.steps:
            t_step = time.perf_counter()
            record: dict[str, Any] = {}

            def roll(n_prompts: int, first_group: int, record: dict = record) -> tuple[list[Sample], torch.Tensor]:
                """Rollout (+ forced rethinking) and rewards for `n_prompts` fresh prompts -> samples, A [B]."""
                with timers("rollout"):
                    examples = [train_examples[i] for i in stream.take(n_prompts)]
                    policy.eval()
                    if cfg.rl.multiturn:  # tool calls executed between turns; observations get loss_mask 0
                        tools = {name: TOOLS[name] for name in cfg.rl.tools}
                        samples, m = multiturn_rollout(policy, tok, env, examples, cfg.rl.group_size, params, g,
                                                       cfg.rl.max_turns, cfg.rl.max_images, tools, first_group)
                        _merge(record, m)
                    else:
                        samples = rollout(policy, tok, env, examples, cfg.rl.group_size, params, g, first_group)
                    if cfg.rethink.enabled:
                        samples, m = forced_rethink(policy, tok, env, samples, by_id, cfg.rethink, params, g,
                                                    runner=eval_runner)
                        _merge(record, m)
                    if cfg.rl.segments:  # perception / reasoning / answer labels from the completion's tags
                        _merge(record, label_samples(samples, tok))
                    policy.train()
                with timers("reward"):
                    m = score_samples(samples, by_id, env, weights, runner)
                    if reasoner is not None:  # MoCA: R = R_O + λ·R_P − length penalty
                        m.update(add_perception_reward(samples, by_id, env, reasoner, cfg.reward, tok))
                    if cfg.rethink.enabled and cfg.rethink.reward_shaping:
                        m.update(rethink_reward_shaping(samples))
                    if cfg.curiosity.variant:  # Pixel Reasoner: keep tool use alive
                        m.update(_add_curiosity(samples, cfg))
                    if cfg.rl.multiturn:
                        m.update(tool_use_metrics(samples))
                    m.update(sample_metrics(env, [s.text for s in samples], [by_id[s.example_id] for s in samples]))
                    if cfg.rl.overlong_cache:
                        m.update(apply_overlong_penalty(samples, cfg.rl.max_new_tokens, cfg.rl.overlong_cache))
                    _merge(record, m)
                return samples, _group_advantages(samples, cfg.rl.advantage)

            if cfg.rl.dynamic_sampling:  # DAPO: re-roll until prompts_per_step groups carry a learning signal
                samples, m = dynamic_sampling_fill(roll, cfg.rl.prompts_per_step, cfg.rl.dynamic_max_rounds)
                record.update(m)
                adv = _group_advantages(samples, cfg.rl.advantage) if samples else torch.zeros(0)
            else:
                samples, adv = roll(cfg.rl.prompts_per_step, 0)
            with timers("advantage"):
                if replay is not None:  # VL-Rethinker SSR: drop zero-advantage samples, draw ∝ |A|^α, replay
                    used, used_adv, m = ssr_select(samples, adv, replay, cfg.rl, g)
                    record.update(m)
                else:
                    keep = SELECTION[cfg.rl.selection](adv, torch.tensor([x.group_id for x in samples]), g)
                    used, used_adv = [samples[i] for i in keep.tolist()], adv[keep]
                batch = None
                if used:
                    batch = collate(used, tok.pad_id)
                    credit_params = None
                    if grams is not None:  # strategic grams: HICRA credit and/or its diagnostics
                        grams.update([x.text for x in samples if x.reward_parts.get("outcome", 0.0) > 0.5], step)
                        planning = apply_hicra(used, grams, tok)  # [B, T]
                        batch.token_masks["planning"] = planning
                        record.update(hicra_metrics(used, grams, planning))
                        if cfg.rl.credit == "hicra":
                            credit_params = HicraParams(planning, cfg.rl.hicra_alpha)
                    if cfg.rl.credit == "moca":  # route failed trajectories' perception credit by R_P
                        credit_params = moca_params(used, cfg.rl.moca_alpha_protect, cfg.rl.moca_alpha_punish)
                    if cfg.rl.credit == "first_error":  # blame only the first wrong step (env's step checker)
                        credit_params, m = first_error_params(used, batch, by_id, env, tok)
                        record.update(m)
                    token_adv = to_tokens(used_adv, batch.loss_mask)
                    batch.advantages = CREDIT[cfg.rl.credit](token_adv, batch.segment_ids, credit_params)
                    if cfg.rethink.enabled and cfg.rethink.nll_coef > 0:
                        batch.token_masks["nll"] = rethink_nll_mask(batch.loss_mask, used_adv, has_rethinking(used))
            with timers("update"):
                if batch is not None:
                    loss_metrics = policy_update(policy, opt, batch, cfg.rl, g, ref_policy, cfg.rethink.nll_coef)
                else:  # nothing survived selection: no update this step (not a failure)
                    loss_metrics = {"loss/optimizer_steps": 0.0, "loss/skipped": 0.0, "loss/empty_batch": 1.0}
            step += 1
            record = {
                "phase": "rl", "step": step, **record, **loss_metrics,
                **(rollout_metrics(samples, adv, len(used)) if samples else {}),
                **timers.pop(), "time/step": time.perf_counter() - t_step,
            }
            sink.log(record)
            failed = loss_metrics["loss/optimizer_steps"] == 0 and loss_metrics["loss/skipped"] > 0
            bad_steps = bad_steps + 1 if failed else 0
            if bad_steps >= MAX_BAD_STEPS:
                save(step)
                raise RuntimeError(f"{MAX_BAD_STEPS} consecutive steps with a non-finite loss or gradient "
                                   f"(last at step {step}); checkpoint saved to {ckpt_path}")
            if step % cfg.eval.every == 0 or step == cfg.rl.steps:
                sink.log(_eval(policy, tok, env, cfg, step, eval_runner))
                tqdm.write(format_line(sink.records[-1], CONSOLE_KEYS))
            bar.update(1)
            bar.set_postfix(reward=f"{record.get('reward/mean', math.nan):.2f}",
                            len=f"{record.get('rollout/response_len', math.nan):.0f}")
            if (cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0) or step == cfg.rl.steps:
                save(step)
            if interrupt.requested:
                save(step)
                tqdm.write(f"interrupted: checkpoint saved at step {step} to {ckpt_path}")
                break
    bar.close()
    sink.close()
    if step < cfg.rl.steps:
        return {"interrupted_at": float(step)}
    save_policy(policy, tok, run_dir / "final_model")
    return finish(run_dir, sink.records, cfg, wall_before + time.perf_counter() - t_start)


def _group_advantages(samples: list[Sample], name: str) -> torch.Tensor:
    """Sequence advantages [B] of the samples' rewards within their groups (`core.advantages` by name)."""
    rewards = torch.tensor([s.reward for s in samples], dtype=torch.float)
    return ADVANTAGES[name](rewards, torch.tensor([s.group_id for s in samples], dtype=torch.long))


def _add_curiosity(samples: list[Sample], cfg: Config) -> dict[str, float]:
    """Add the curiosity bonus to every sample's reward (part `curiosity`); returns its batch mean."""
    c = cfg.curiosity
    rewards = torch.tensor([s.reward for s in samples], dtype=torch.float)
    n_ops = count_ops([s.n_tool_calls for s in samples], [s.n_tool_errors for s in samples], c.variant)
    gids = torch.tensor([s.group_id for s in samples], dtype=torch.long)
    new = curiosity_rewards(rewards, n_ops > 0, n_ops, gids, variant=c.variant, alpha=c.alpha, beta=c.beta,
                            H=c.H, N=c.N)
    for s, r_old, r_new in zip(samples, rewards.tolist(), new.tolist(), strict=True):
        s.reward_parts["curiosity"] = r_new - r_old
        s.reward = r_new
    return {"reward/curiosity": float((new - rewards).mean()), "reward/mean": float(new.mean())}


def _merge(record: dict[str, Any], metrics: dict[str, float]) -> None:
    """Add a rollout round's metrics to the step record: counts (`verify/*`) add up over DAPO's extra rounds;
    other values keep the first round's (the policy's own batch, before re-rolling)."""
    for k, v in metrics.items():
        if k.startswith("verify/") and k in record:
            record[k] += v
        else:
            record.setdefault(k, v)


def rollout_metrics(samples: list, adv: torch.Tensor, n_kept: int) -> dict[str, float]:
    """Response length, finish reasons and the share of groups with a non-zero advantage (learning signal)."""
    n = len(samples)
    gid = torch.tensor([s.group_id for s in samples])
    nonzero = {int(x) for x in gid[adv.abs() > 1e-8].tolist()}
    return {
        "rollout/response_len": sum(len(s.completion_ids) for s in samples) / n,
        "rollout/finish_stop": sum(s.finish_reason == "stop" for s in samples) / n,
        "adv/nonzero_groups": len(nonzero) / max(1, len(set(gid.tolist()))),
        "adv/selected": n_kept / n,
    }


def finish(run_dir: Path, records: list[dict[str, Any]], cfg: Config, wall_s: float) -> dict[str, float]:
    """Write the report and return the summary (start = model RL began from, end = final model)."""
    from credo.trainer.report import write_report  # matplotlib only at the end

    evals = [r for r in records if r.get("phase") == "eval"]
    summary = {
        "eval_acc_start": evals[0]["eval/greedy_acc"] if evals else math.nan,
        "eval_acc_end": evals[-1]["eval/greedy_acc"] if evals else math.nan,
        "wall_s": wall_s,
        "peak_rss_mb": peak_rss_mb(),
    }
    for k in cfg.eval.pass_k:
        if evals and f"eval/pass@{k}" in evals[-1]:
            summary[f"pass@{k}_start"] = evals[0][f"eval/pass@{k}"]
            summary[f"pass@{k}_end"] = evals[-1][f"eval/pass@{k}"]
    report = write_report(run_dir, records, summary, to_dict(cfg))
    print(f"report: {report}")
    return summary
