"""PARROT (Preference-Anchored Rationalization; RationalRewards, arXiv 2604.11626, methods.md §7.3): SFT data that
teaches a judge to critique then score, made from preference pairs without rationale labels.

    1. anchored generation: a teacher sees the task, both responses (chosen and rejected, in a random A/B order) and
       the label ("Response A is preferred"), and writes a critique with per-dimension scores for each response;
    2. consistency filter: keep a pair only when both parts parse (`rewards.judgement.parse_judgement`) and the scores
       reproduce the known winner: reward(chosen) − reward(rejected) > margin (default 0: a tie is dropped); a
       part that names the other response or the label ("Response B", "preferred", "label") is dropped too, since
       the student sees one response and no label;
    3. distillation rows: per kept pair, two pointwise rows (chosen and rejected) in the format `credo sft` reads
       from a dataset env (`prompt`: the judge's label-free pointwise prompt, `rewards.judgement.judge_prompt`, without
       a reference; `solution`: "# Detailed Judgement" + the teacher's critique of that response).

    python scripts/parrot.py --pairs pairs.jsonl --out parrot_sft.jsonl [configs/smollm2_judge.toml] [overrides]
    credo sft env.name=dataset 'env.sft_files=["parrot_sft.jsonl"]' 'env.prompt_template={prompt}' \\
        model.path=smollm2-135m-instruct sft.steps=100 sft.batch_size=4 sft.lr=1e-5 --out runs/parrot_judge

The teacher is the `[judge]` model (`judge.model`, or `--teacher`), greedy, with 2 × `judge.max_new_tokens` tokens
(it writes two critiques). Pairs JSONL rows: {"prompt": str, "chosen": str, "rejected": str} (extra keys kept in the
stats only). Choices the README leaves open (each listed in docs/algorithms.md): the winner test on the judge's
reward formula, the strict margin, the leak words, the random A/B order.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from credo.rewards.judgement import Judgement, Rubric, judge_prompt, parse_judgement

ANCHOR = (
    "You are an expert grader writing reference critiques. Two responses to the same task follow, and human "
    "annotators preferred Response {winner}. For EACH response, write a critique of every dimension and a score "
    "from {lo:g} (worst) to {hi:g} (best), consistent with that preference."
)
_BLOCK = re.compile(r"^\s*#\s*Response\s+([AB])\b.*$", re.IGNORECASE | re.MULTILINE)
LEAK = re.compile(r"response\s+[ab]\b|prefer|label|annotator|the other response", re.IGNORECASE)


def anchored_prompt(rubric: Rubric, question: str, resp_a: str, resp_b: str, winner: str) -> str:
    """The teacher's prompt: the label-anchored instructions, the task, both responses and the two-part format."""
    fmt = "".join(f"{i}. {d}:\n## Justification: ...\n## Score: ...\n" for i, d in enumerate(rubric.dimensions, 1))
    return "\n\n".join([
        ANCHOR.format(winner=winner, lo=rubric.lo, hi=rubric.hi), f"# Task\n{question.strip()}",
        f"# Response A\n{resp_a.strip()}", f"# Response B\n{resp_b.strip()}",
        f"Answer in exactly this format:\n# Response A\n{fmt}# Summary: ...\n# Response B\n{fmt}# Summary: ...",
    ]) + "\n"


def split_parts(text: str) -> dict[str, str]:
    """{"A": text of the `# Response A` part, "B": ...}: each from its header to the next part header; a letter
    that appears twice keeps its first part. Missing letters are absent."""
    heads = list(_BLOCK.finditer(text))
    out: dict[str, str] = {}
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        out.setdefault(m.group(1).upper(), text[m.end() : end].strip())
    return out


def check_pair(text: str, chosen_is_a: bool, rubric: Rubric, formula: str = "mean",
               margin: float = 0.0) -> tuple[str, dict[str, Judgement]]:
    """(verdict, judgements by "chosen"/"rejected"): verdict "kept", or why the pair is dropped: "missing part",
    "unparsable", "leaks the label", "inconsistent" (the scores do not reproduce the winner by more than `margin`).
    """
    parts = split_parts(text)
    if "A" not in parts or "B" not in parts:
        return "missing part", {}
    c, r = (parts["A"], parts["B"]) if chosen_is_a else (parts["B"], parts["A"])
    js = {"chosen": parse_judgement(c, rubric), "rejected": parse_judgement(r, rubric)}
    if not all(j.ok for j in js.values()):
        return "unparsable", js
    if LEAK.search(c) or LEAK.search(r):
        return "leaks the label", js
    rc, rr = js["chosen"].reward(rubric, formula), js["rejected"].reward(rubric, formula)
    return ("kept" if rc - rr > margin else "inconsistent"), js


def sft_row(rubric: Rubric, question: str, response: str, part: str) -> dict[str, str]:
    """One distillation row: the label-free pointwise judge prompt and the critique as its solution."""
    return {"prompt": judge_prompt(rubric, question, response), "solution": "# Detailed Judgement\n" + part.strip()}


def parrot(pairs: Sequence[dict[str, Any]], teacher: Callable[[list[str]], list[str]], rubric: Rubric,
           formula: str = "mean", margin: float = 0.0, seed: int = 0) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """SFT rows and stats from preference `pairs` ({prompt, chosen, rejected}); `teacher(prompts) -> texts` is
    called once with every anchored prompt (batch it inside). Stats: pairs, kept, kept_share, the count of each
    drop reason."""
    rng = random.Random(seed)
    order = [rng.random() < 0.5 for _ in pairs]  # chosen shown as Response A?
    prompts = [anchored_prompt(rubric, p["prompt"], *((p["chosen"], p["rejected"]) if a else
                                                      (p["rejected"], p["chosen"])), "A" if a else "B")
               for p, a in zip(pairs, order, strict=True)]
    texts = teacher(prompts) if prompts else []
    rows: list[dict[str, str]] = []
    reasons: dict[str, int] = {}
    for p, a, text in zip(pairs, order, texts, strict=True):
        verdict, _ = check_pair(text, a, rubric, formula, margin)
        reasons[verdict] = reasons.get(verdict, 0) + 1
        if verdict == "kept":
            parts = split_parts(text)
            pc, pr = (parts["A"], parts["B"]) if a else (parts["B"], parts["A"])
            rows += [sft_row(rubric, p["prompt"], p["chosen"], pc), sft_row(rubric, p["prompt"], p["rejected"], pr)]
    kept = reasons.get("kept", 0)
    return rows, {"pairs": len(pairs), "kept": kept, "kept_share": kept / max(1, len(pairs)), "reasons": reasons}


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a pairs JSONL file; a row without a string prompt, chosen or rejected raises ValueError naming the
    file and line."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        bad = [k for k in ("prompt", "chosen", "rejected") if not isinstance(row.get(k), str)]
        if bad:
            raise ValueError(f"{path}:{n}: field(s) {bad} missing or not a string")
        out.append(row)
    return out


def teacher_slots(rubric: Rubric) -> list[Any]:
    """The anchored two-part format as a forced template (`judge.readout = "probs"`, rewards/forced.py): per
    response, every dimension's justification line and read-out score."""
    from credo.rewards.forced import Slot, judgement_slots

    dims = judgement_slots(rubric.dimensions)[1:]  # without "# Detailed Judgement"
    return [Slot("# Response A\n"), *dims, Slot("# Response B\n"), *dims]


def model_teacher(cfg: Any, teacher: str = "") -> Callable[[list[str]], list[str]]:
    """The `[judge]` model (or `teacher`) as a batched greedy text generator; with `judge.readout = "probs"` the
    two-part format is forced and the scores read out (rewards/forced.py) instead of generated."""
    import copy

    from credo.rewards.forced import fill
    from credo.rewards.judge import load_judge
    from credo.rollout.backend import GenerationRequest, SamplingParams

    jc = copy.deepcopy(cfg.judge)
    jc.model = teacher or jc.model
    judge = load_judge(jc, cfg.model)
    params = SamplingParams(2 * jc.max_new_tokens, temperature=0.0)

    def run(prompts: list[str]) -> list[str]:
        texts = []
        for i in range(0, len(prompts), jc.batch_size):
            ids = [judge.tok.encode_prompt(p) for p in prompts[i : i + jc.batch_size]]
            if judge.readout is not None:
                texts += fill(judge.gen, judge.tok, ids, teacher_slots(judge.rubric), judge.readout, jc.line_tokens,
                              0.0, jc.min_score_mass)
            else:
                outs = judge.gen.generate([GenerationRequest(x) for x in ids], params)
                texts += [judge.tok.decode(o[0].completion_ids.tolist()) for o in outs]
            print(f"parrot: {len(texts)}/{len(prompts)} anchored rationales", file=sys.stderr)
        return texts

    return run


def main(argv: list[str] | None = None) -> int:
    from credo.rewards.judge import rubric_from_config
    from credo.trainer.config import load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--pairs", required=True, help="preference pairs JSONL: prompt, chosen, rejected")
    p.add_argument("--out", required=True, help="SFT rows JSONL (prompt, solution)")
    p.add_argument("--teacher", default="", help="teacher model (default: judge.model)")
    p.add_argument("--margin", type=float, default=0.0)
    p.add_argument("--limit", type=int, default=0, help="use the first N pairs (0: all)")
    args = p.parse_args(argv)
    if args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None
    cfg = load_config(args.config, args.overrides)
    pairs = read_pairs(args.pairs)
    pairs = pairs[: args.limit] if args.limit else pairs
    rows, stats = parrot(pairs, model_teacher(cfg, args.teacher), rubric_from_config(cfg.judge), cfg.judge.reward,
                         args.margin, cfg.run.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out.with_suffix(".stats.json").write_text(json.dumps(stats, indent=1))
    print(json.dumps(stats))
    print(f"parrot: {len(rows)} SFT rows from {stats['kept']}/{stats['pairs']} pairs -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
