"""`credo train|sft|eval|ablate|refine|reer|models`: the command line over `trainer`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from credo.trainer.config import ConfigError, apply_overrides, load_config


def huge_page_allocations() -> bool:
    """Have PyTorch back its CPU buffers of 2 MiB and more with transparent huge pages (`THP_MEM_ALLOC_ENABLE=1`,
    which c10's CPU allocator reads at its first allocation: so before torch is imported, as `main` does), unless
    the environment already sets it. Outside the forward and backward passes large freed buffers go back to the
    system (`trainer.host_memory.return_freed_memory`, which keeps peak RSS low), so large buffers taken there are
    fresh memory, and on 4 KiB pages their page faults cost time: an update of SmolLM2-135M on 2 cores (64 rows,
    ~3.8k tokens, gradient checkpointing), before its passes reused heap memory (`reuse_freed_memory`), took 54.3 /
    54.9 s without, 47.1-50.0 s with, peak RSS unchanged. It matters where the
    kernel's THP mode is `madvise` (under `always` huge pages come anyway, under `never` not at all); returns
    whether torch was still unimported (the setting can act)."""
    import os

    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return "torch" not in sys.modules


def _summary_line(summary: dict[str, float]) -> str:
    """Accuracies to 4 decimals, seconds to 0.1 (summed over a resumed run's sessions), MB whole (this process's
    peak)."""
    digits = {"eval_acc_start": 4, "eval_acc_end": 4, "wall_s": 1, "peak_rss_mb": 0}
    return "summary: " + " ".join(f"{k}={summary[k]:.{n}f}" for k, n in digits.items())


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The command line that runs `credo train` data-parallel on `nproc` processes of this node: `torchrun
    --standalone --nproc-per-node N -m credo train …` (`argv`: the train arguments without `--nproc`)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "credo",
            "train", *argv]


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc > 1:  # the same command on N processes under torchrun (trainer.distributed)
        import os

        load_config(args.config, args.overrides)  # a bad key stops here in one line, not once per rank
        argv = ([args.config] if args.config else []) + args.overrides
        cmd = torchrun_command(args.nproc, argv)
        print("credo: " + " ".join(cmd[1:]), file=sys.stderr)
        os.execv(sys.executable, cmd)
    from credo.trainer.loop import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg)
    if not summary:  # a data-parallel rank other than 0: rank 0 prints the summary
        return 0
    if "interrupted_at" in summary:
        print(f"stopped at step {int(summary['interrupted_at'])}; run the same command again to resume")
        return 130
    print(_summary_line(summary))
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from credo.models import save_policy
    from credo.trainer.sft import warm_start_model

    cfg = load_config(args.config, args.overrides)
    policy, tok, history = warm_start_model(cfg)
    out = Path(args.out or Path(cfg.run.out_dir) / cfg.run.name / "sft_model")
    save_policy(policy, tok, out)
    print(f"sft: final loss {history[-1]['sft/loss']:.4f}; model saved to {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from credo.data import InputError
    from credo.envs import make_env
    from credo.models import load_policy
    from credo.models.lora import apply_lora
    from credo.trainer import checkpoint as ckpt
    from credo.trainer.config import from_dict
    from credo.trainer.evaluate import evaluate, tool_eval_from_config

    target = Path(args.checkpoint)
    if target.is_file():  # a checkpoint.pt: the run's config and start_model/ + weights
        if args.config:
            raise InputError(f"--config {args.config}: a checkpoint carries its run's config; change it with "
                             "key=value overrides (--config is for model directories)")
        state = ckpt.load(target)
        if not isinstance(state, dict) or not {"model", "config"} <= state.keys():
            raise InputError(f"{target}: not a credo checkpoint (no 'model' and 'config' entries)")
        cfg = apply_overrides(from_dict(state["config"]), args.overrides)
        policy, tok = load_policy(target.parent / "start_model", cfg.model)
        policy = apply_lora(policy, cfg.model.lora, cfg.run.seed)  # a LoRA run's checkpoint holds the adapters
        ckpt.load_model_state(policy, state["model"])
    else:  # a model directory (credo TinyLM or Hugging Face) and the environment from --config / overrides
        cfg = load_config(args.config, args.overrides)
        policy, tok = load_policy(target, cfg.model)
    torch.set_num_threads(cfg.run.threads)
    env = make_env(cfg.env)
    m = evaluate(policy, tok, env, env.examples("test"), cfg.rl.max_new_tokens, cfg.eval.n_samples,
                 cfg.eval.pass_k, cfg.eval.temperature, seed=cfg.run.seed, workers=cfg.reward.workers,
                 timeout_s=cfg.reward.timeout_s, tools=tool_eval_from_config(cfg, enabled=not args.no_tools),
                 extra_verifiers=tuple(cfg.eval.extra_verifiers), problems=(problems := []),
                 sample_problems=cfg.eval.sample_problems)
    result = {"target": str(target), "env": cfg.env.name, "n_problems": len(env.examples("test")),
              "n_samples": cfg.eval.n_samples, "temperature": cfg.eval.temperature,
              "multiturn": cfg.rl.multiturn, "tools": "off" if args.no_tools else "on", **m}
    print(f"{'metric':24s} value")
    for k, v in m.items():
        if isinstance(v, int | float):  # eval/samples (prompts and completions) only in the JSON
            print(f"{k:24s} {v:.4f}")
    out = Path(args.out) if args.out else (target.parent / "eval.json" if target.is_file() else None)
    if out is not None:
        out.write_text(json.dumps({**result, "problems": problems}, indent=1))  # per problem: the file only
        print(f"eval: written to {out}")
    print(json.dumps(result))
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    import json

    from credo.trainer.ablate import ablate, markdown_table

    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: at least 1")
    report = ablate(args.config, args.overrides, [v for v in args.variants.split(",") if v], args.seeds,
                    args.target, args.out, args.target_gain)
    print(markdown_table(json.loads((report.parent / "summary.json").read_text())))
    print(f"report: {report}")
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    from credo.trainer.refine import refine_from_config, write_outputs

    cfg = load_config(args.config, args.overrides)
    result = refine_from_config(cfg, args.model or "", args.n, args.rounds)
    out = Path(args.out or Path(cfg.run.out_dir) / cfg.run.name / "refine.json")
    json_path, md_path = write_outputs(result, out)
    for r in result["rounds"]:
        print(f"round {r['round']}: accuracy={r['accuracy']:.4f} judge_score={r['judge_score']:.4f} "
              f"judge_unscorable={r['judge_unscorable']:.3f}")
    print(f"refine: written to {json_path} and {md_path}")
    return 0


def cmd_reer(args: argparse.Namespace) -> int:
    from credo.trainer.reer_io import reer_from_files
    from credo.trainer.reer_parts import ReerConfig

    cfg = ReerConfig(candidates=args.candidates, max_steps=args.max_steps, stop_threshold=args.threshold,
                     max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     min_init_tokens=args.min_init_tokens, seed=args.seed,
                     direct_refine=args.direct_refine, edit=args.edit)
    summary = reer_from_files(args.input, args.out, args.generator, args.scorer or "", cfg, args.limit,
                              args.dtype, args.device, args.backend, args.threads, not args.no_progress,
                              args.batch)  # a bad input row: DatasetError, an InputError `main` prints in one line
    print("reer: " + " ".join(f"{k}={v:.4f}" for k, v in summary.items()))
    print(f"reer: written to {args.out} (skipped items: {args.out}.skipped.jsonl)")
    return 0


def _reer_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("reer", help="REER: search the reasoning trace that makes a known-good answer most likely "
                       "(trainer.reer); writes rows `credo sft` reads, resumable")
    r.add_argument("input", help="JSONL of {question, solution[, id, answer]} (solution: the good answer)")
    r.add_argument("--out", required=True, help="output JSONL (appended; rows already there are skipped)")
    r.add_argument("--generator", default="smollm2-135m-instruct", help="generator model directory or known name")
    r.add_argument("--scorer", help="scorer (PPL) model directory or known name (default: the generator's model)")
    r.add_argument("--candidates", type=int, default=2, help="K rewrites per segment step (released: 2)")
    r.add_argument("--max-steps", type=int, default=10, help="segment steps at most (released: 10)")
    r.add_argument("--threshold", type=float, default=0.25, help="stop when the clipped log-PPL is below this")
    r.add_argument("--max-new-tokens", type=int, default=8000, help="generator tokens per rollout (released: 8000)")
    r.add_argument("--temperature", type=float, default=0.8, help="generator temperature (top-p 0.85, top-k 40)")
    r.add_argument("--min-init-tokens", type=int, default=100, help="skip an item whose first trajectory is shorter")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--limit", type=int, default=0, help="items to process in this call (0: all pending)")
    r.add_argument("--batch", type=int, default=8, help="items searched in lockstep (one generation batch per "
                   "stage); an item's result does not depend on it")
    r.add_argument("--dtype", default="float32", help="compute dtype of both models: float32 | bfloat16")
    r.add_argument("--device", default="cpu")
    r.add_argument("--backend", default="native", help="generation backend (rollout.backend: native | vllm | auto)")
    r.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    r.add_argument("--direct-refine", action="store_true", help="not released: the rewrite prompt is prefilled up "
                   "to <refine> (SmolLM2-135M never writes the <refine> block itself)")
    r.add_argument("--edit", choices=["rewrite", "resample"], default="rewrite", help="rewrite: the released "
                   "segment-edit prompt; resample (not released): a segment's candidates are fresh samples of it from "
                   "the trajectory before it")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(overrides=[])


def cmd_models(args: argparse.Namespace) -> int:
    from credo.models import hub

    if args.action == "list":
        for row in hub.list_models():
            print(f"{row['name']:24s} {row['status']:26s} {row['path']}\n{'':24s} {row['about']}")
        return 0
    if args.name not in hub.MODELS:
        print(f"credo: unknown model {args.name!r}; known: {', '.join(hub.MODELS)}", file=sys.stderr)
        return 2
    print(hub.convert(args.name, force=args.force))
    return 0


def main(argv: list[str] | None = None) -> int:
    huge_page_allocations()
    p = argparse.ArgumentParser(prog="credo", description="RL for reasoning, with credit to the real cause.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="warm start (SFT) + RL on an environment, then a report")
    t.add_argument("config", nargs="?", help="TOML preset (default: built-in arith sandbox)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rl.steps=10")
    t.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this node: runs the same "
                   "command under torchrun --nproc-per-node N (FSDP2; README 'More than one process')")
    s = sub.add_parser("sft", help="only the supervised warm start (of a fresh TinyLM, or of model.path)")
    s.add_argument("config", nargs="?")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--out", help="where to save the model (default runs/<name>/sft_model)")
    e = sub.add_parser("eval", help="greedy accuracy, pass@k and maj@k of a checkpoint.pt or model directory")
    e.add_argument("checkpoint")
    e.add_argument("overrides", nargs="*")
    e.add_argument("--config", help="TOML preset for the environment when evaluating a model directory")
    e.add_argument("--out", help="write the results as JSON here (default: eval.json beside a checkpoint)")
    e.add_argument("--no-tools", action="store_true", help="with rl.multiturn: tools forbidden (a call is not "
                   "executed; the observation says 'tools are disabled' and the model continues)")
    a = sub.add_parser("ablate", help="several RL methods x seeds from the same warm start, one report")
    a.add_argument("config", nargs="?")
    a.add_argument("overrides", nargs="*")
    a.add_argument("--variants", default="grpo,dr_grpo,dapo,ssr,rethink,hicra",
                   help="comma-separated names from credo.trainer.ablate.VARIANTS, or 'name:key=value;key=value'")
    a.add_argument("--seeds", type=int, default=3)
    a.add_argument("--target", type=float, help="absolute accuracy for the steps-to-target column (default: "
                   "each run's start accuracy + --target-gain)")
    a.add_argument("--target-gain", type=float, default=0.05, help="gain over the start for steps-to-target")
    a.add_argument("--out", help="ablation folder (default runs/<run.name>-ablate)")
    rf = sub.add_parser("refine", help="Generate-Critique-Refine: the policy answers, the judge critiques and "
                        "rewrites the request, K rounds; accuracy and judge score per round")
    rf.add_argument("config", nargs="?")
    rf.add_argument("overrides", nargs="*")
    rf.add_argument("--model", help="policy model directory or known name (default: model.path)")
    rf.add_argument("--n", type=int, default=50, help="test examples (the first n)")
    rf.add_argument("--rounds", type=int, help="refinement rounds (default: judge.refine_rounds)")
    rf.add_argument("--out", help="output JSON (default runs/<run.name>/refine.json; the .md report beside it)")
    _reer_parser(sub)
    mo = sub.add_parser("models", help="pretrained models by name: list them, convert an installed GGUF once")
    mo.add_argument("action", choices=["list", "convert"])
    mo.add_argument("name", nargs="?", default="smollm2-135m-instruct", help="model to convert (credo models list)")
    mo.add_argument("--force", action="store_true", help="convert again even when the cache is current")
    mo.set_defaults(overrides=[])
    args, extra = p.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x]
    if stray:
        p.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides += extra  # `credo eval M --config F rl.steps=1`: overrides may also follow the options
    if args.command in ("train", "sft", "ablate", "refine") and args.config and "=" in args.config:
        args.overrides.insert(0, args.config)  # `credo train rl.steps=5`: no preset, only overrides
        args.config = None
    try:
        commands = {"train": cmd_train, "sft": cmd_sft, "eval": cmd_eval, "ablate": cmd_ablate, "refine": cmd_refine,
                    "reer": cmd_reer, "models": cmd_models}
        return commands[args.command](args)
    except ConfigError as err:
        print(f"credo: config error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:  # e.g. models.hub.ModelNotInstalled: one line naming the install commands
        print(f"credo: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # RL steps finish and checkpoint on the first Ctrl-C; this is any other moment
        print("credo: interrupted; the last saved checkpoint (if any) is intact", file=sys.stderr)
        return 130
    except Exception as err:
        from credo.data import InputError  # imports torch: only once a command has (this module must not)

        if not isinstance(err, InputError):
            raise
        print(f"credo: {err}", file=sys.stderr)  # a dataset row, an unknown name, not a checkpoint: one line
        return 2


if __name__ == "__main__":
    sys.exit(main())
