"""LoRA (rank 16, through peft) vs full fine-tuning: peak RSS and seconds of an RL step on SmolLM2-135M-Instruct with
the `configs/smollm2.toml` settings (8 prompts × 8 samples, its `rl.max_new_tokens`, 2 minibatches, float32 masters),
each side in a subprocess of its own so that each peak RSS is that side's alone.

Step mode (default): `--steps` RL steps per side (the first is warm-up; the rest are averaged), from the base model
(the preset's warm start is skipped: the same full-weight SFT on both sides, not what is compared), the preset's
evaluation shrunk to a few prompts (it runs at step 0 and at the end, outside the timed steps), and a dense reward
(`distinct_chars_reward`, the share of distinct characters) so that no group has all-equal rewards and every step
runs its optimizer steps; the step's own timers come from the run's metrics (`time/rollout`, `time/update`,
`time/sync`: for LoRA the sync merges W + (α/r)·B A into the native engine).

Accuracy mode (`--accuracy`): the preset as it is (its reward, its `rl.steps`, its evaluations; one seed) on each
side, reporting greedy accuracy (format-required and format-free `@numeric`) at the start and the end as well.

LoRA learning rate: `--lora-lr` (default 1e-4 = 10 × the preset's `rl.lr`, the usual LoRA-to-full ratio; the same
as full fine-tuning with `--lora-lr 0`). Adapters on q, k, v, o, gate, up, down; α = `--alpha` (default 32 = 2r).

    python benchmarks/lora_vs_full.py                     # step mode, 3 steps per side
    python benchmarks/lora_vs_full.py --accuracy          # the whole preset per side (long)
    python benchmarks/lora_vs_full.py --tiny              # a tiny random Llama, 2 × 4 rows: checks the script runs

Last line: `full_step_s=… lora_step_s=… full_rss_gb=… lora_rss_gb=… rss_ratio=… step_ratio=…` (ratios LoRA / full),
plus `*_acc_start/end` in accuracy mode.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRESET = HERE.parent / "configs" / "smollm2.toml"


def distinct_chars_reward(completion: str, example: object = None) -> float:
    """The step mode's dense reward: distinct characters / 32 (credo's per-item `reward.function` signature)."""
    return len(set(completion)) / 32


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def tiny_model(tmp: str) -> str:
    from credo.models.tiny_hf import make_tiny_hf

    return str(make_tiny_hf(Path(tmp) / "tiny", arch="llama", hidden_size=64, num_layers=2, intermediate_size=128))


def overrides(a: argparse.Namespace, tmp: str, lora: bool) -> list[str]:
    """The side's `key=value` overrides on top of the preset."""
    from credo.trainer.config import load_config

    preset = load_config(PRESET)
    out = [f"run.out_dir={tmp}", f"run.name={'lora' if lora else 'full'}", f"run.threads={a.threads}",
           "run.progress=false", "run.resume=false"]
    if a.tiny:
        out += [f"model.path={tiny_model(tmp)}", "rl.prompts_per_step=2", "rl.group_size=4", "rl.max_new_tokens=8",
                "env.n_train=32", "env.n_test=4", "eval.n_samples=2", "eval.pass_k=[1]"]
    if not a.accuracy:
        out += [f"rl.steps={a.steps}", f"run.checkpoint_every={a.steps + 1}", f"eval.every={a.steps + 1}",
                "reward.function=lora_vs_full:distinct_chars_reward", "reward.workers=0", "sft.enabled=false"]
        if not a.tiny:
            out += ["env.n_test=8", "eval.n_samples=2", "eval.pass_k=[1]"]
    if lora:
        lr = a.lora_lr if a.lora_lr > 0 else preset.rl.lr
        out += [f"model.lora.rank={a.rank}", f"model.lora.alpha={a.alpha}", f"rl.lr={lr}"]
    return out


def side(a: argparse.Namespace, lora: bool) -> dict:
    """One side's run: per RL step after the first, seconds (and the stage timers); peak RSS; accuracies."""
    import torch

    from credo.trainer.config import load_config
    from credo.trainer.loop import train

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(PRESET, overrides(a, tmp, lora))
        summary = train(cfg)
        recs = [json.loads(x) for x in (Path(tmp) / cfg.run.name / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in recs if r.get("phase") == "rl"]
    evals = [r for r in recs if r.get("phase") == "eval"]
    keep = rl[1:] or rl  # the first step is warm-up
    out = {"steps": len(rl), "timed_steps": len(keep), "peak_rss_gb": peak_rss_gb(),
           "optimizer_steps": sum(r.get("loss/optimizer_steps", 0.0) for r in rl),
           "lr": cfg.rl.lr, "lora_rank": cfg.model.lora.rank}
    for key in ("time/step", "time/rollout", "time/update", "time/sync", "rollout/response_len"):
        out[key] = statistics.mean(r.get(key, 0.0) for r in keep) if keep else float("nan")
    for key in ("eval/greedy_acc", "eval/greedy_acc@numeric"):
        if evals and key in evals[0]:
            out[f"{key}_start"], out[f"{key}_end"] = evals[0][key], evals[-1][key]
    out["eval_acc_start"], out["eval_acc_end"] = summary.get("eval_acc_start"), summary.get("eval_acc_end")
    return out


def run_side(a: argparse.Namespace, lora: bool) -> dict:
    """This script as `--side full|lora` in a subprocess; its last line is `RESULT <json>`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", "lora" if lora else "full",
           "--steps", str(a.steps), "--threads", str(a.threads), "--rank", str(a.rank), "--alpha", str(a.alpha),
           "--lora-lr", str(a.lora_lr)] + (["--tiny"] if a.tiny else []) + (["--accuracy"] if a.accuracy else [])
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        return {"error": f"{' '.join(cmd[2:])} exited {out.returncode}: {(out.stdout + out.stderr)[-3000:]}"}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="RL steps per side in step mode (the first is warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--lora-lr", type=float, default=1e-4, help="LoRA's rl.lr (0: the preset's, as full FT)")
    ap.add_argument("--accuracy", action="store_true", help="the whole preset per side, with its reward and evals")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama and 2 x 4 rows: a check that it runs")
    ap.add_argument("--side", choices=["full", "lora"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side is not None:  # a child: one side, printed as JSON
        print("RESULT " + json.dumps(side(a, a.side == "lora")), flush=True)
        return
    res = {name: run_side(a, name == "lora") for name in ("full", "lora")}
    for name, r in res.items():
        if "error" in r:
            print(f"{name:5s} {r['error']}")
            continue
        acc = "".join(f"  {k.removeprefix('eval/')} {r[k + '_start']:.3f} -> {r[k + '_end']:.3f}"
                      for k in ("eval/greedy_acc", "eval/greedy_acc@numeric") if k + "_start" in r)
        print(f"{name:5s} rank {r['lora_rank']:2d} lr {r['lr']:.0e}: {r['time/step']:7.2f} s/step over "
              f"{r['timed_steps']} timed of {r['steps']} steps (rollout {r['time/rollout']:.2f} s, update "
              f"{r['time/update']:.2f} s, sync {r['time/sync']:.3f} s, response {r['rollout/response_len']:.1f} "
              f"tokens, {r['optimizer_steps']:.0f} optimizer steps)  peak RSS {r['peak_rss_gb']:.2f} GB{acc}")
    full, lora = res["full"], res["lora"]
    nan = float("nan")
    fields = {"full_step_s": full.get("time/step", nan), "lora_step_s": lora.get("time/step", nan),
              "full_rss_gb": full.get("peak_rss_gb", nan), "lora_rss_gb": lora.get("peak_rss_gb", nan)}
    fields["rss_ratio"] = fields["lora_rss_gb"] / fields["full_rss_gb"]
    fields["step_ratio"] = fields["lora_step_s"] / fields["full_step_s"]
    if a.accuracy:
        for name, r in res.items():
            fields[f"{name}_acc_start"] = r.get("eval_acc_start") or nan
            fields[f"{name}_acc_end"] = r.get("eval_acc_end") or nan
    print(" ".join(f"{k}={v:.3f}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
