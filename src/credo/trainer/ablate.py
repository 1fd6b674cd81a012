"""`credo ablate`: the same task and seeds under several methods, one report.

    credo ablate configs/ablate-arith.toml --variants grpo,dr_grpo,dapo,ssr,rethink,hicra --seeds 3

For each seed the warm start is trained once (`<root>/warm-s<seed>`) and every variant starts RL from that
same model, so variants differ only in the RL method. Runs go sequentially (2 cores) into
`<root>/<variant>-s<seed>/`; a run that already finished is read back, not re-run, so an interrupted ablation
resumes where it stopped. At the end `<root>/report.html`, `<root>/plots/*.png` and `<root>/summary.json`
(per variant: mean and std over seeds of every column) are written.

A variant is a name in `VARIANTS` (a list of config overrides applied on top of the preset), or an inline
definition `name:key=value;key=value`.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from credo.trainer.config import ConfigError

# variant -> overrides on top of the preset; each reproduces its paper's setting where the sandbox allows
VARIANTS: dict[str, list[str]] = {
    "grpo": [],  # GRPO (std-normalised group advantage), PPO-clip 0.2, token-mean
    "dr_grpo": ["rl.advantage=dr_grpo", "rl.aggregation=seq_mean_token_sum_norm"],  # Dr.GRPO
    "dapo": [  # DAPO: clip-higher 0.28, dynamic sampling, token-mean, overlong shaping
        "rl.eps_high=0.28", "rl.aggregation=token_mean", "rl.dynamic_sampling=true", "rl.overlong_cache=32",
    ],
    "gspo": ["rl.loss=gspo", "rl.eps_low=3e-4", "rl.eps_high=4e-4", "rl.aggregation=seq_mean_token_mean"],
    "rloo": ["rl.advantage=rloo"],
    "ssr": ["rl.ssr=true"],  # VL-Rethinker Selective Sample Replay (released-code batch: half the rollout)
    "rethink": [  # VL-Rethinker Forced Rethinking with the release's rethink-aware reward and auxiliary NLL
        "rethink.enabled=true", "rethink.reward_shaping=true", "rethink.nll_coef=0.05",
    ],
    "hicra": ["rl.credit=hicra"],  # HICRA: A + alpha|A| on planning tokens
    "first_error": ["rl.credit=first_error"],  # credo: blame of a failed sequence on its first wrong step only
    # MoCA (scenes): R = R_O + 0.5·R_P summed naively, or with R_P also routing failed rollouts' perception credit
    "grpo+pv": ["reward.perception=0.5", "rl.credit=none"],
    "moca": ["reward.perception=0.5", "rl.credit=moca"],
}

COLUMNS = ("final_acc", "best_acc", "steps_to_target", "informative_groups", "effective_share", "rethink_rate",
           "semantic_entropy", "perception_acc", "reasoning_given_perception", "bad_seeing_share",
           "bad_thinking_share", "pv_agreement", "tool_call_rate", "final_tool_call_rate", "wall_s")
# final-evaluation columns read from `eval/attribution/*` (environments with `sample_metrics`, e.g. scenes)
ATTRIBUTION_COLUMNS = ("perception_acc", "reasoning_given_perception", "bad_seeing_share", "bad_thinking_share")


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """`"ssr"` -> its registered overrides; `"mine:rl.lr=1e-4;rl.group_size=16"` -> ("mine", [...])."""
    if ":" in spec:
        name, body = spec.split(":", 1)
        return name, [x for x in body.split(";") if x]
    if spec not in VARIANTS:
        raise ConfigError(f"unknown variant {spec!r}; known: {', '.join(VARIANTS)} (or 'name:key=value;...')")
    return spec, list(VARIANTS[spec])


def _records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def run_columns(records: list[dict[str, Any]], target: float | None, wall_s: float, gain: float = 0.05
                ) -> dict[str, float]:
    """The table's columns for one run, from its metrics records.

    `steps_to_target` is the first evaluated RL step whose greedy accuracy reaches `target`, or, when `target`
    is None, the run's own start accuracy + `gain` (seeds' warm starts differ by many points, so a shared
    absolute target mostly measures the seed); NaN if never reached;
    `informative_groups` is the mean share of rollout groups with a non-zero advantage (before any selection);
    `effective_share` the mean share of trained samples with a non-zero advantage when SSR logs it, else the
    same as `informative_groups` (every sample of an informative group is trained);
    `perception_acc`, `reasoning_given_perception`, `bad_seeing_share`, `bad_thinking_share` are the final
    evaluation's ground-truth attribution (greedy, held-out; scenes); `pv_agreement` the mean over RL steps of
    Perception Verification's agreement with the truth (`pv/agreement`); `tool_call_rate` the mean over RL steps
    of the rollouts' share with ≥ 1 valid tool call (`tools/call_rate`, multi-turn) and `final_tool_call_rate`
    the final evaluation's (`eval/tool_call_rate`, greedy). Columns a run does not log are NaN, and
    the tables leave out a column no variant has."""
    evals = [r for r in records if r.get("phase") == "eval"]
    rl = [r for r in records if r.get("phase") == "rl"]
    acc = [r["eval/greedy_acc"] for r in evals]

    def mean_of(*keys: str) -> float:
        for k in keys:
            xs = [r[k] for r in rl if k in r]
            if xs:
                return sum(xs) / len(xs)
        return math.nan

    goal = target if target is not None else (acc[0] + gain if acc else math.inf)
    hit = [r["step"] for r in evals if r["eval/greedy_acc"] >= goal - 1e-9]
    return {
        "final_acc": acc[-1] if acc else math.nan,
        "best_acc": max(acc) if acc else math.nan,
        "steps_to_target": float(hit[0]) if hit else math.nan,
        "informative_groups": mean_of("adv/nonzero_groups"),
        "effective_share": mean_of("ssr/effective_share_after", "adv/nonzero_groups"),
        "rethink_rate": mean_of("rethink/rate"),
        "semantic_entropy": mean_of("hicra/semantic_entropy"),
        **{c: evals[-1].get(f"eval/attribution/{c}", math.nan) if evals else math.nan for c in ATTRIBUTION_COLUMNS},
        "pv_agreement": mean_of("pv/agreement"),
        "tool_call_rate": mean_of("tools/call_rate"),
        "final_tool_call_rate": evals[-1].get("eval/tool_call_rate", math.nan) if evals else math.nan,
        "wall_s": wall_s,
    }


def _mean_std(xs: list[float]) -> dict[str, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def ablate(
    config: str | None,
    overrides: list[str],
    variants: list[str],
    seeds: int,
    target: float | None = None,
    root: str | None = None,
    gain: float = 0.05,
) -> Path:
    """Run every variant at seeds 0..seeds-1 and write the report; returns the report's path."""
    from credo.models import save_policy
    from credo.trainer.config import load_config
    from credo.trainer.loop import train
    from credo.trainer.sft import warm_start_model

    specs = [parse_variant(v) for v in variants]
    base = load_config(config, overrides)  # validates the preset and shared overrides once
    out = Path(root or Path(base.run.out_dir) / f"{base.run.name}-ablate")
    out.mkdir(parents=True, exist_ok=True)
    for _name, extra in specs:  # fail fast on a bad variant, before hours of runs
        load_config(config, [*overrides, *extra])
    runs: dict[str, list[tuple[list[dict[str, Any]], float]]] = {name: [] for name, _ in specs}
    for seed in range(seeds):
        warm = out / f"warm-s{seed}"
        if not (warm / "config.json").exists():
            cfg = load_config(config, [*overrides, f"run.seed={seed}"])
            if cfg.model.path:  # the preset starts from a given model: no warm start of ours
                warm = Path(cfg.model.path)
            else:
                t0 = time.perf_counter()
                policy, tok, _ = warm_start_model(cfg)
                save_policy(policy, tok, warm)
                print(f"[ablate] warm start seed {seed}: {time.perf_counter() - t0:.0f}s -> {warm}")
        for name, extra in specs:
            run_dir = out / f"{name}-s{seed}"
            done = run_dir / "summary.json"
            if not done.exists():
                cfg = load_config(config, [
                    *overrides, *extra, f"run.seed={seed}", f"run.name={name}-s{seed}", f"run.out_dir={out}",
                    f"model.path={warm}",
                ])
                t0 = time.perf_counter()
                summary = train(cfg)
                if "interrupted_at" in summary:
                    raise KeyboardInterrupt
                summary["wall_s"] = time.perf_counter() - t0
                done.write_text(json.dumps(summary))
                print(f"[ablate] {name} seed {seed}: acc {summary['eval_acc_start']:.3f} -> "
                      f"{summary['eval_acc_end']:.3f} in {summary['wall_s']:.0f}s")
            runs[name].append((_records(run_dir), json.loads(done.read_text())["wall_s"]))
    columns = {name: [run_columns(recs, target, wall, gain) for recs, wall in rs] for name, rs in runs.items()}
    summary = {
        "target_acc": target,
        "target_gain": None if target is not None else gain,
        "seeds": seeds,
        "variants": {name: {c: _mean_std([r[c] for r in cols]) for c in COLUMNS} for name, cols in columns.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return write_ablation_report(out, runs, summary)


def _curve(runs: list[tuple[list[dict[str, Any]], float]], phase: str, key: str) -> tuple[list[int], list[float],
                                                                                         list[float]]:
    """Mean and std over seeds of `key` at each step present in every seed's records."""
    per_seed = [{r["step"]: r[key] for r in recs if r.get("phase") == phase and key in r} for recs, _ in runs]
    steps = sorted(set.intersection(*(set(d) for d in per_seed))) if per_seed else []
    means = [statistics.fmean(d[s] for d in per_seed) for s in steps]
    stds = [statistics.pstdev([d[s] for d in per_seed]) for s in steps]
    return steps, means, stds


def write_ablation_report(out: Path, runs: dict[str, list[tuple[list[dict[str, Any]], float]]],
                          summary: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from credo.trainer.report import table, write_page

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    figures = []
    for file, phase, key, title in [
        ("ablate_acc.png", "eval", "eval/greedy_acc", "held-out greedy accuracy (mean ± std over seeds)"),
        ("ablate_effective.png", "rl", "adv/nonzero_groups", "share of groups with a non-zero advantage"),
        ("ablate_reward.png", "rl", "reward/mean", "mean reward of the rollout batch"),
        ("ablate_perception.png", "eval", "eval/attribution/perception_acc",
         "held-out perception accuracy (claims exactly right)"),
        ("ablate_bad_seeing.png", "rl", "attribution/bad_seeing_share",
         "rollouts: share of failures that are bad seeing"),
        ("ablate_tool_call_rate.png", "rl", "tools/call_rate",
         "rollouts: share with >= 1 valid tool call (multi-turn)"),
        ("ablate_eval_tool_call_rate.png", "eval", "eval/tool_call_rate",
         "held-out greedy: share with >= 1 valid tool call"),
    ]:
        fig, ax = plt.subplots(figsize=(7, 4))
        drawn = False
        for name, rs in runs.items():
            steps, means, stds = _curve(rs, phase, key)
            if steps:
                drawn = True
                ax.plot(steps, means, label=name)
                ax.fill_between(steps, [m - s for m, s in zip(means, stds, strict=True)],
                                [m + s for m, s in zip(means, stds, strict=True)], alpha=0.15)
        if drawn:
            ax.set_xlabel("RL step")
            ax.set_title(title)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(plots / file, dpi=110)
            figures.append((file, title))
        plt.close(fig)

    def cell(v: dict[str, float], digits: int = 3) -> str:
        if v["n"] == 0:
            return "–"
        return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}" + (f" ({v['n']})" if v["n"] < summary["seeds"] else "")

    shown = present_columns(summary)
    rows = [[name, *(cell(cols[c], 0 if c in ("wall_s", "steps_to_target") else 3) for c in shown)]
            for name, cols in summary["variants"].items()]
    parts = [
        f"<h1>Ablation: {len(runs)} variants × {summary['seeds']} seeds</h1>",
        "<p>mean ± std over seeds; steps_to_target: first evaluated step with greedy accuracy ≥ "
        + (f"{summary['target_acc']:.3f}" if summary["target_acc"] is not None else
           f"the run's start accuracy + {summary['target_gain']:.2f}")
        + " (in brackets: how many seeds have a value, when not all).</p>",
        table(["variant", *shown], rows),
    ]
    for file, title in figures:
        parts.append(f'<figure><img src="plots/{file}" alt="{title}"><figcaption>{title}</figcaption></figure>')
    return write_page(out / "report.html", out.name, parts)


def present_columns(summary: dict[str, Any]) -> list[str]:
    """The columns at least one variant has a value for (arith runs have no perception columns, and so on)."""
    return [c for c in COLUMNS if any(cols.get(c, {}).get("n", 0) > 0 for cols in summary["variants"].values())]


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (for notes and the console)."""
    shown = present_columns(summary)
    head = "| variant | " + " | ".join(shown) + " |\n|---|" + "---|" * len(shown) + "\n"
    lines = []
    for name, cols in summary["variants"].items():
        cells = []
        for c in shown:
            v = cols[c]
            d = 0 if c in ("wall_s", "steps_to_target") else 3
            n = f" ({v['n']})" if 0 < v["n"] < summary.get("seeds", v["n"]) else ""
            cells.append("–" if v["n"] == 0 else f"{v['mean']:.{d}f} ± {v['std']:.{d}f}{n}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines)
