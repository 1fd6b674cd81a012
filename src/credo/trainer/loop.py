"""The RL loop, top to bottom: rollout → rewards → advantages → credit → selection → update → sync → log →
evaluate → checkpoint (the stages are in `trainer/stages.py`).

`train(cfg)` runs the warm start (SFT) when no model is given, evaluates the model RL starts from, runs
`cfg.rl.steps` RL steps with periodic evaluation and atomic checkpoints, and writes the run report.
Ctrl-C finishes the current step, saves a checkpoint and returns; `resume` continues from it exactly.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from credo.envs import make_env
from credo.envs.filters import filter_overlong
from credo.envs.functions import is_batched_function, make_runner
from credo.envs.runner import VerifyRunner
from credo.models import build_policy, load_policy, save_policy
from credo.models.lora import LoraPolicy, apply_lora
from credo.rewards.perception import make_reasoner
from credo.rewards.terms import RewardModel, TermContext, term_weights
from credo.rollout.backend import make_generator, resolve_backend
from credo.trainer import checkpoint as ckpt
from credo.trainer import distributed as dist
from credo.trainer import stages
from credo.trainer.config import Config, ConfigError, resume_changes, to_dict
from credo.trainer.evaluate import evaluate, tool_eval_from_config
from credo.trainer.logprobs import sequence_logprobs
from credo.trainer.metrics import MultiSink, Timers, format_line, make_sink, peak_rss_mb
from credo.trainer.sft import sft
from credo.trainer.update import adamw, empty_batch, policy_update

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


def _eval(ctx: stages.StepContext, step: int, run_dir: Path) -> dict[str, Any]:
    """Held-out evaluation record at `step` (the environment's own verdicts, `eval_runner`); the per-problem
    results go to `run_dir/evals/step_<step>.jsonl` (`evaluate`'s `problems`)."""
    cfg = ctx.cfg
    problems: list[dict[str, Any]] = []
    start = time.perf_counter()
    m = evaluate(
        ctx.gen, ctx.tokenizer, ctx.env, ctx.test_examples, cfg.rl.max_new_tokens, cfg.eval.n_samples,
        cfg.eval.pass_k, cfg.eval.temperature, seed=cfg.run.seed * 1_000_003 + step, runner=ctx.eval_runner,
        tools=tool_eval_from_config(cfg), extra_verifiers=tuple(cfg.eval.extra_verifiers), problems=problems,
        sample_problems=cfg.eval.sample_problems,
    )
    ckpt.write_jsonl_atomic(run_dir / "evals" / f"step_{step:06d}.jsonl", problems)
    return {"phase": "eval", "step": step, **m, "time/eval": time.perf_counter() - start}


def _warm_start(cfg: Config, env: Any, run_dir: Path, sink: MultiSink) -> tuple[Any, Any]:
    """The model RL starts from, saved as start_model/: `model.path`, else a fresh TinyLM; trained by SFT on the
    env's "sft" split when `sft.enabled` (for a model from `model.path` only with `sft.on_model_path`). Data
    parallel: every rank loads the model and runs the SFT on its share of each batch (`trainer.sft.sft`); rank 0
    saves start_model/ and the other ranks load it (so every rank starts RL from rank 0's bytes)."""
    warm = cfg.sft.enabled and (cfg.sft.on_model_path or not cfg.model.path)
    if not dist.is_main() and not warm:
        dist.barrier()
        return load_policy(run_dir / "start_model", cfg.model)
    torch.manual_seed(cfg.run.seed)
    policy, tok = load_policy(cfg.model.path, cfg.model) if cfg.model.path else build_policy(cfg.model)
    if warm:
        bar = tqdm(total=cfg.sft.steps, desc="sft", disable=not (cfg.run.progress and dist.is_main()),
                   dynamic_ncols=True)

        def on_step(step: int, m: dict[str, float]) -> None:
            sink.log({"phase": "sft", "step": step, **m})
            bar.update(1)
            bar.set_postfix(loss=f"{m['sft/loss']:.3f}")

        sft(policy, tok, env, cfg.sft, cfg.run.seed, on_step)
        bar.close()
    if dist.is_main():
        save_policy(policy, tok, run_dir / "start_model")
    dist.barrier()
    if not dist.is_main():
        del policy
        return load_policy(run_dir / "start_model", cfg.model)
    return policy, tok


def train(cfg: Config) -> dict[str, float]:
    """Run SFT (if needed) + RL as configured; return the summary written at the end.

    Verification runs in `reward.workers` worker processes with a per-item timeout, started once for the run:
    one runner for rewards (the env's verifier or a per-item `reward.function`) and, when a reward function
    replaces the verifier, a second one for evaluation (accuracy is always the environment's own verdict)."""
    env = make_env(cfg.env)
    with contextlib.ExitStack() as stack:
        runner = stack.enter_context(make_runner(env, cfg.reward))
        eval_runner = runner
        if cfg.reward.function and not is_batched_function(cfg.reward.function):
            eval_runner = stack.enter_context(
                VerifyRunner(env.verify, workers=cfg.reward.workers, timeout_s=cfg.reward.timeout_s))
        joined = dist.init_from_env(cfg.model.device)  # under torchrun: one rank of a data-parallel run
        stack.callback(dist.close if joined else lambda: None)
        if cfg.rollout.sleep and cfg.rollout.backend == "native":
            raise ValueError("rollout.sleep is vLLM's sleep mode: it needs rollout.backend = 'vllm'")
        run = build_run(cfg, env, runner, eval_runner)
        return run_loop(run)


@dataclass
class Run:
    """One run's live objects: the stage context, the optimizer, the reference policy, the sink and the state
    saved in checkpoints (`methods`: every `stages.Stateful` by name)."""

    cfg: Config
    ctx: stages.StepContext
    opt: torch.optim.Optimizer
    ref_policy: Any
    sink: MultiSink
    run_dir: Path
    start_step: int
    wall_before: float
    t_start: float
    methods: dict[str, Any]
    gen_policy: Any = None  # what ctx.gen decodes with: the policy, or its full-weight copy (trainer.distributed)


def _check_resume(state: dict[str, Any], cfg: Config, path: Path) -> None:
    """Stop (ConfigError) before resuming `path` with another model or environment than the one it trained; name
    the other settings that changed since it was written (`config.resume_changes`), and say when the run is
    already past `rl.steps`."""
    blocking, other = resume_changes(state["config"], cfg)
    if blocking:
        raise ConfigError(f"{path} belongs to a run with another model or environment ({'; '.join(blocking)}): "
                          "give this run its own run.name, or run.resume=false to start it afresh here")
    if not dist.is_main():
        return
    if other:
        print(f"resuming {path} at step {state['step']}; changed since it was written: {'; '.join(other)}")
    if state["step"] >= cfg.rl.steps:
        print(f"nothing to train: {path} is at step {state['step']} >= rl.steps={cfg.rl.steps}")


PREVIOUS_RUN = ("checkpoint.pt", "evals", "adapter", "final_model")  # what a later step or script would read


def _clear_previous_run(run_dir: Path) -> None:
    """A fresh start in a folder that holds an earlier run (`run.resume=false`): remove what this run would not
    overwrite before its own (the checkpoint, per-step eval files, the adapters, the final model), so that nothing
    of the earlier run is later read as this one's (`scripts/paired_gain.py` reads the last evals/ file). Rank 0."""
    if not dist.is_main():
        return
    for name in PREVIOUS_RUN:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def build_run(cfg: Config, env: Any, runner: VerifyRunner, eval_runner: VerifyRunner) -> Run:
    """Load or warm-start the policy, restore a checkpoint when one exists (`run.resume`), build the reward model,
    the credit-input providers and the selector."""
    t_start = time.perf_counter()
    torch.set_num_threads(max(1, cfg.run.threads // dist.local_world_size()))  # run.threads per node
    raw_train, raw_test = env.examples("train"), env.examples("test")  # a bad data row stops before any write
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    g = torch.Generator().manual_seed(dist.rank_seed(cfg.run.seed))
    loggers = cfg.run.loggers if dist.is_main() else []  # rank 0 writes the metrics
    state = ckpt.load(ckpt_path) if cfg.run.resume and ckpt_path.exists() else None
    if state is not None:  # exact resume: model, optimizer, RNG, data position, step, metrics so far
        _check_resume(state, cfg, ckpt_path)
        sink = make_sink(run_dir, loggers, state["history"], name=cfg.run.name, config=to_dict(cfg))
        policy, tok = load_policy(run_dir / "start_model", cfg.model)
        policy = apply_lora(policy, cfg.model.lora, cfg.run.seed)  # the same adapters, then the saved tensors
        ckpt.load_model_state(policy, state["model"])
    else:
        _clear_previous_run(run_dir)
        sink = make_sink(run_dir, loggers, name=cfg.run.name, config=to_dict(cfg))
        policy, tok = _warm_start(cfg, env, run_dir, sink)
        policy = apply_lora(policy, cfg.model.lora, cfg.run.seed)  # model.lora.rank > 0: peft adapters
    train_examples, n_long = filter_overlong(raw_train, env, tok, cfg.env.max_prompt_tokens)
    test_examples, n_long_test = filter_overlong(raw_test, env, tok, cfg.env.max_prompt_tokens)
    if (n_long or n_long_test) and state is None:  # verl's filter_overlong_prompts, on both splits
        print(f"env.max_prompt_tokens={cfg.env.max_prompt_tokens}: dropped {n_long} training and {n_long_test} test "
              "prompts")
        sink.log({"phase": "data", "step": 0, "data/dropped_overlong": n_long,
                  "data/train_prompts": len(train_examples), "data/dropped_overlong_test": n_long_test,
                  "data/test_prompts": len(test_examples)})
    stream = PromptStream(len(train_examples), cfg.run.seed, state["data_pos"] if state is not None else 0)
    ref_policy = None
    if cfg.rl.kl_coef > 0 and isinstance(policy, LoraPolicy):  # the base model = the adapters off, no copy
        ref_policy = policy.reference()
    elif cfg.rl.kl_coef > 0:
        ref_policy = load_policy(run_dir / "start_model", cfg.model)[0].eval().requires_grad_(False)
    gen_policy, gen, policy = _generation_and_shards(cfg, policy, tok)
    opt = adamw(  # the trainable parameters only (LoRA: the adapters)
        [p for p in policy.parameters() if p.requires_grad], lr=cfg.rl.lr, weight_decay=cfg.rl.weight_decay,
        betas=(0.9, 0.99), eps=cfg.rl.adam_eps,
    )
    ctx = stages.StepContext(
        cfg=cfg, env=env, policy=policy, tokenizer=tok, gen=gen, generator=g, stream=stream,
        train_examples=train_examples, test_examples=test_examples, by_id={e.id: e for e in train_examples},
        runner=runner, eval_runner=eval_runner,
        reward_model=_reward_model(cfg, env, gen, tok, policy, run_dir), timers=Timers(),
    )
    ctx.providers = stages.make_providers(ctx)
    ctx.selector = stages.make_selector(ctx)
    terms = {f"reward/{name}": term for name, term in ctx.reward_model.terms.items()}  # R3, Memory-R+ state
    methods = {**ctx.providers, "selector": ctx.selector, **terms}
    methods = {k: v for k, v in methods.items() if hasattr(v, "state_dict")}
    run = Run(cfg, ctx, opt, ref_policy, sink, run_dir, 0, 0.0, t_start, methods, gen_policy)
    if state is not None:
        dist.load_optimizer_state(opt, state["optimizer"])  # opt.load_state_dict in one process
        if (rng := dist.rank_part(state, "rng")) is not None:  # per rank; rank 0's at the top level
            ckpt.set_rng_state(rng, g)
        saved_methods = dist.rank_part(state, "methods") or {}
        for name, obj in methods.items():  # method state lives in the checkpoint too, so resume stays exact
            if name in saved_methods:
                obj.load_state_dict(saved_methods[name])
        run.start_step, run.wall_before = state["step"], state["wall_s"]
    elif dist.is_main():
        sink.log(_eval(ctx, 0, run_dir))
        print(format_line(sink.records[-1], CONSOLE_KEYS))
    return run


def _generation_and_shards(cfg: Config, policy: Any, tok: Any) -> tuple[Any, Any, Any]:
    """(what the generation backend decodes with, the backend, the policy to train). One process: the policy, its
    backend, the policy. Under torchrun: a full-weight copy for TinyLM (`dist.generation_copy`) or the native
    engine's own copy for Hugging Face models, built before the policy is FSDP-sharded (`dist.shard_policy`)."""
    if dist.world_size() > cfg.rl.prompts_per_step:
        raise ValueError(f"rl.prompts_per_step={cfg.rl.prompts_per_step} < {dist.world_size()} processes")
    gen_policy = dist.generation_copy(policy)
    options: dict[str, Any] = {"max_batch": cfg.rollout.max_batch}
    if resolve_backend(cfg.rollout.backend, gen_policy) == "native":
        options["pack"] = cfg.rollout.pack_weights
        gb = cfg.rollout.kv_cache_gb
        options["kv_cache_bytes"] = None if gb is None else int(gb * 2**30)
    if cfg.rollout.sleep:
        if resolve_backend(cfg.rollout.backend, gen_policy) != "vllm":
            raise ValueError("rollout.sleep is vLLM's sleep mode: it needs rollout.backend = 'vllm'")
        options["sleep"] = True
    gen = make_generator(cfg.rollout.backend, gen_policy, tok, **options)
    if dist.is_distributed() and getattr(gen, "decoder", None) is policy and not hasattr(policy, "blocks"):
        raise ValueError("under torchrun a Hugging Face model must decode on the native engine (a Llama-family "
                         "model with model.native_decode = true)")
    if isinstance(policy, LoraPolicy):  # replicated, its gradients summed (trainer.distributed module docstring)
        return gen_policy, gen, policy
    return gen_policy, gen, dist.shard_policy(policy, getattr(policy, "compute_dtype", None))


def _reward_model(cfg: Config, env: Any, gen: Any, tok: Any, policy: Any, run_dir: Path) -> RewardModel:
    """The enabled reward terms (`rewards.terms.term_weights`), with MoCA's blindfolded reasoner when PV is on and
    the policy, its log-prob function and the start model for the terms that score with it (R3)."""
    reasoner = None
    if cfg.reward.perception > 0:
        reasoner = make_reasoner(cfg.reward.perception_reasoner, env, gen, tok, cfg.model,
                                 cfg.reward.perception_reasoner_tokens)
        if cfg.reward.perception_reasoner == "policy":
            print("perception verification: the blindfolded reasoner is the live policy itself (the paper uses a "
                  "separate 14B text model): R_P is not faithful to MoCA")
    trl = bool(cfg.reward.function) and is_batched_function(cfg.reward.function)
    return RewardModel(term_weights(cfg, trl), TermContext(cfg=cfg, env=env, tokenizer=tok, reasoner=reasoner,
                                                           policy=policy, logprobs=sequence_logprobs,
                                                           start_model=str(run_dir / "start_model")))


def rl_step(run: Run, step: int) -> dict[str, Any]:
    """One RL step as named stage calls; returns its metrics record."""
    ctx, cfg = run.ctx, run.cfg
    t_step = time.perf_counter()
    record: dict[str, Any] = {}
    samples, adv = stages.collect(ctx, record)  # rollout → verdicts → rewards → advantages (DAPO refill)
    with ctx.timers("advantage"):
        stages.credit_stage(ctx, samples, adv, step, record)  # token advantages, credit-assigned
        batch = stages.selection_stage(ctx, samples, adv, record)
    with ctx.timers("update"):
        if callable(sleep := getattr(ctx.gen, "sleep", None)):  # the engine's weight copy is stale after the update
            sleep()  # and its memory is the update's until `sync_weights` below
        if dist.any_true(batch is not None):  # data parallel: a rank with no rows still joins the update
            loss_metrics = policy_update(ctx.policy, run.opt, batch if batch is not None else empty_batch(), cfg.rl,
                                         ctx.generator, run.ref_policy, cfg.rethink.nll_coef)
        else:  # nothing survived selection: no update this step (not a failure)
            loss_metrics = {"loss/optimizer_steps": 0.0, "loss/skipped": 0.0, "loss/empty_batch": 1.0}
    with ctx.timers("sync"):  # the engine decodes with the updated weights from the next rollout on
        dist.copy_full_weights(ctx.policy, run.gen_policy)  # a rank's full-weight copy (nothing in one process)
        ctx.gen.sync_weights(run.gen_policy)
    n_used = len(batch) if batch is not None else 0
    record.update(stages.rollout_metrics(samples, adv, n_used) if samples else {})
    record = dist.reduce_metrics(record, len(samples), sums=("verify/",))  # over ranks (dapo/: global already)
    return {
        "phase": "rl", "step": step + 1, **record, **loss_metrics,
        **ctx.timers.pop(), "time/step": time.perf_counter() - t_step,
    }


def save(run: Run, step: int) -> None:
    """Atomic checkpoint: model, optimizer, step, data position, RNG, metrics so far, method state. Data parallel
    (collective): whole tensors gathered onto rank 0, which writes; every rank's RNG and method state in `ranks`."""
    ctx = run.ctx
    sharded = dist.is_distributed() and dist.is_sharded_module(ctx.policy)
    model = dist.full_model_state(ctx.policy) if sharded else ckpt.model_state(ctx.policy)  # replicas: rank 0's
    optimizer = dist.full_optimizer_state(run.opt)
    methods = {name: obj.state_dict() for name, obj in run.methods.items()}
    ranks = dist.all_gather_object({"rng": ckpt.rng_state(ctx.generator), "methods": methods})
    if not dist.is_main():
        return
    ckpt.save_atomic(
        {
            "model": model, "optimizer": optimizer, "step": step,
            "data_pos": ctx.stream.pos, "rng": ranks[0]["rng"], "history": run.sink.records,
            "config": to_dict(run.cfg), "wall_s": run.wall_before + time.perf_counter() - run.t_start,
            "methods": methods, **({"ranks": ranks} if dist.is_distributed() else {}),
        },
        run.run_dir / "checkpoint.pt",
    )
    if isinstance(ctx.policy, LoraPolicy):  # the adapters in peft's own format too, beside the run
        ctx.policy.save_adapter(run.run_dir / "adapter")


def run_loop(run: Run) -> dict[str, float]:
    """RL steps with logging, periodic evaluation and checkpoints until `rl.steps` or Ctrl-C."""
    cfg, ctx = run.cfg, run.ctx
    bad_steps, step = 0, run.start_step
    bar = tqdm(total=cfg.rl.steps, initial=step, desc="rl", disable=not (cfg.run.progress and dist.is_main()),
               dynamic_ncols=True)
    with _Interrupt() as interrupt:
        while step < cfg.rl.steps:
            record = rl_step(run, step)
            step += 1
            run.sink.log(record)
            failed = record["loss/optimizer_steps"] == 0 and record["loss/skipped"] > 0
            bad_steps = bad_steps + 1 if failed else 0
            if bad_steps >= MAX_BAD_STEPS:
                save(run, step)
                raise RuntimeError(f"{MAX_BAD_STEPS} consecutive steps with a non-finite loss or gradient "
                                   f"(last at step {step}); checkpoint saved to {run.run_dir / 'checkpoint.pt'}")
            if (step % cfg.eval.every == 0 or step == cfg.rl.steps) and dist.is_main():  # rank 0 evaluates
                run.sink.log(_eval(ctx, step, run.run_dir))
                tqdm.write(format_line(run.sink.records[-1], CONSOLE_KEYS))
            bar.update(1)
            bar.set_postfix(reward=f"{record.get('reward/mean', math.nan):.2f}",
                            len=f"{record.get('rollout/response_len', math.nan):.0f}")
            if (cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0) or step == cfg.rl.steps:
                save(run, step)
            if dist.any_true(interrupt.requested):
                save(run, step)
                tqdm.write(f"interrupted: checkpoint saved at step {step} to {run.run_dir / 'checkpoint.pt'}")
                break
    bar.close()
    run.sink.close()
    if step < cfg.rl.steps:
        return {"interrupted_at": float(step)}
    if callable(sleep := getattr(ctx.gen, "sleep", None)):  # the engine is done: its weights' memory is the save's
        sleep()
    _save_final(run)
    if not dist.is_main():
        return {}
    return finish(run.run_dir, run.sink.records, cfg, run.wall_before + time.perf_counter() - run.t_start)


def _save_final(run: Run) -> None:
    """`final_model/`: the policy saved as a plain model directory. Data parallel: the whole weights gathered onto
    rank 0, loaded into an unsharded copy of start_model/ and saved from it."""
    path = run.run_dir / "final_model"
    if not dist.is_distributed():
        save_policy(run.ctx.policy, run.ctx.tokenizer, path)
        return
    if not dist.is_sharded_module(run.ctx.policy):  # replicated (LoRA): rank 0 saves its own (merged) copy
        if dist.is_main():
            save_policy(run.ctx.policy, run.ctx.tokenizer, path)
        dist.barrier()
        return
    state = dist.full_model_state(run.ctx.policy)
    if dist.is_main():
        plain = load_policy(run.run_dir / "start_model", run.cfg.model)[0]
        plain.load_state_dict(state)
        save_policy(plain, run.ctx.tokenizer, path)
    dist.barrier()


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
