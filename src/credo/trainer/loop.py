"""The RL loop, top to bottom: sample → rollout → reward → advantages → credit → select → update → log → ckpt.

`train(cfg)` runs the warm start (SFT) when no model is given, evaluates the model RL starts from, runs
`cfg.rl.steps` RL steps with periodic evaluation and atomic checkpoints, and writes the run report.
Ctrl-C finishes the current step, saves a checkpoint and returns; `resume` continues from it exactly.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from credo.core.advantages import ADVANTAGES, to_tokens
from credo.core.credit import CREDIT
from credo.core.selection import SELECTION
from credo.data import collate
from credo.envs import make_env
from credo.models import build_policy, load_policy, save_policy
from credo.rewards import score_samples
from credo.rewards.runner import make_runner
from credo.rollout.engine import rollout
from credo.rollout.sampler import SamplingParams
from credo.trainer import checkpoint as ckpt
from credo.trainer.config import Config, to_dict
from credo.trainer.evaluate import evaluate
from credo.trainer.metrics import JsonlSink, Timers, format_line, peak_rss_mb
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


def _eval(policy: Any, tok: Any, env: Any, cfg: Config, step: int) -> dict[str, Any]:
    m = evaluate(
        policy, tok, env, env.examples("test"), cfg.rl.max_new_tokens, cfg.eval.n_samples, cfg.eval.pass_k,
        cfg.eval.temperature, seed=cfg.run.seed * 1_000_003 + step,
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
    """Run SFT (if needed) + RL as configured; return the summary written at the end."""
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.run.threads)
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    env = make_env(cfg.env)
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
        sink.log(_eval(policy, tok, env, cfg, 0))
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

    def save(step: int) -> None:
        ckpt.save_atomic(
            {
                "model": policy.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "data_pos": stream.pos, "rng": ckpt.rng_state(g), "history": sink.records,
                "config": to_dict(cfg), "wall_s": wall_before + time.perf_counter() - t_start,
            },
            ckpt_path,
        )

    bad_steps = 0
    bar = tqdm(total=cfg.rl.steps, initial=start_step, desc="rl", disable=not cfg.run.progress, dynamic_ncols=True)
    step = start_step
    with _Interrupt() as interrupt, make_runner(env, cfg.reward) as runner:  # verifier workers, closed at the end
        while step < cfg.rl.steps:
            t_step = time.perf_counter()
            with timers("rollout"):
                examples = [train_examples[i] for i in stream.take(cfg.rl.prompts_per_step)]
                policy.eval()
                samples = rollout(policy, tok, env, examples, cfg.rl.group_size, params, g)
                policy.train()
            with timers("reward"):
                reward_metrics = score_samples(samples, by_id, env, {"outcome": cfg.reward.outcome,
                                                                     "format": cfg.reward.format}, runner)
            with timers("advantage"):
                batch = collate(samples, tok.pad_id)
                adv = ADVANTAGES[cfg.rl.advantage](batch.rewards, batch.group_ids)  # [B]
                batch.advantages = CREDIT[cfg.rl.credit](to_tokens(adv, batch.loss_mask), batch.segment_ids)
                keep = SELECTION[cfg.rl.selection](adv, batch.group_ids, g)
                batch = batch.select(keep)
            with timers("update"):
                loss_metrics = policy_update(policy, opt, batch, cfg.rl, g, ref_policy)
            step += 1
            record = {
                "phase": "rl", "step": step, **reward_metrics, **loss_metrics,
                **rollout_metrics(samples, adv, len(keep)),
                **timers.pop(), "time/step": time.perf_counter() - t_step,
            }
            sink.log(record)
            bad_steps = bad_steps + 1 if loss_metrics["loss/optimizer_steps"] == 0 else 0
            if bad_steps >= MAX_BAD_STEPS:
                save(step)
                raise RuntimeError(f"{MAX_BAD_STEPS} consecutive steps with a non-finite loss or gradient "
                                   f"(last at step {step}); checkpoint saved to {ckpt_path}")
            if step % cfg.eval.every == 0 or step == cfg.rl.steps:
                sink.log(_eval(policy, tok, env, cfg, step))
                tqdm.write(format_line(sink.records[-1], CONSOLE_KEYS))
            bar.update(1)
            bar.set_postfix(reward=f"{record['reward/mean']:.2f}", len=f"{record['rollout/response_len']:.0f}")
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
