"""A self-contained HTML run report (with PNG plots) built from the records of a run's `metrics.jsonl`."""

from __future__ import annotations

import html
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

_PASS_RE = re.compile(r"^eval/pass@(\d+)$")
_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}"
    "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
    "figure{margin:1em 0}figcaption{color:#555;font-size:90%}img{max-width:100%}"
    "pre{background:#f6f6f6;padding:1em;overflow-x:auto}"
    "td.text{text-align:left;white-space:pre-wrap;font-family:monospace;font-size:85%;max-width:420px}"
    "td.ok{color:#176317}td.bad{color:#a11}summary{cursor:pointer;margin:.5em 0}"
)


def read_metrics(path: str | Path) -> list[dict]:
    """Parse a JSONL file into a list of dicts, skipping blank lines; a bad line raises `ValueError`."""
    path = Path(path)
    records: list[dict] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: malformed JSON on line {lineno}: {e.msg}") from e
            if not isinstance(rec, dict):
                raise ValueError(f"{path}: line {lineno} is not a JSON object")
            records.append(rec)
    return records


def _num(v: Any) -> float | None:
    """The value as a finite float, or None for non-numeric (bools, strings, NaN, inf...)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _phase(records: list[dict], phase: str) -> list[dict]:
    recs = [r for r in records if isinstance(r, dict) and r.get("phase") == phase and _num(r.get("step")) is not None]
    return sorted(recs, key=lambda r: _num(r["step"]) or 0.0)


def _series(recs: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(float(r["step"]), y) for r in recs if (y := _num(r.get(key))) is not None]
    return [x for x, _ in pts], [y for _, y in pts]


def _smooth(ys: list[float]) -> list[float]:
    """Trailing moving average over a window of ~10% of the points (2..20)."""
    w = min(20, max(2, len(ys) // 10))
    return [sum(ys[max(0, i - w + 1) : i + 1]) / (i + 1 - max(0, i - w + 1)) for i in range(len(ys))]


def _keys(recs: list[dict], prefix: str) -> list[str]:
    seen = {k: None for r in recs for k, v in r.items() if k.startswith(prefix) and _num(v) is not None}
    return list(seen)


def _eval_keys(recs: list[dict]) -> list[str]:
    def order(k: str) -> tuple[int, int, str]:
        m = _PASS_RE.match(k)
        return (0, 0, k) if k == "eval/greedy_acc" else (1, int(m.group(1)), k) if m else (2, 0, k)

    return sorted(_keys(recs, "eval/"), key=order)


def _fmt(v: Any) -> str:
    f = _num(v)
    return f"{f:.4g}" if f is not None else ("" if v is None else str(v))


def _plots(plot_dir: Path, sft: list[dict], rl: list[dict], ev: list[dict]) -> list[tuple[str, str]]:
    """Draw every plot whose data exists; returns (file name, caption) pairs, removing stale PNGs of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[tuple[str, str]] = []

    def save(name: str, caption: str, draw: Any) -> None:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        try:
            draw(ax)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(plot_dir / name)
        finally:
            plt.close(fig)
        made.append((name, caption))

    rewards = [(k, *_series(rl, k)) for k in ("reward/mean", "reward/correct")]
    rewards = [(k, xs, ys) for k, xs, ys in rewards if xs]
    evals = [(k, *_series(ev, k)) for k in _eval_keys(ev) if k == "eval/greedy_acc" or _PASS_RE.match(k)]
    evals = [(k, xs, ys) for k, xs, ys in evals if xs]
    lengths = [("rollout", *_series(rl, "rollout/response_len")), ("eval", *_series(ev, "eval/response_len"))]
    lengths = [(k, xs, ys) for k, xs, ys in lengths if xs]
    stages = [k for k in _keys(rl, "time/") if k != "time/step"]
    sft_x, sft_y = _series(sft, "sft/loss")

    def draw_reward(ax: Any) -> None:
        for k, xs, ys in rewards:
            line = ax.plot(xs, ys, alpha=0.3, lw=1)[0]
            ax.plot(xs, _smooth(ys), color=line.get_color(), lw=2, label=k)
        ax.set(xlabel="step", ylabel="reward", title="Reward")

    def draw_acc(ax: Any) -> None:
        for k, xs, ys in evals:
            ax.plot(xs, ys, marker="o", ms=4, label=k.removeprefix("eval/"))
        ax.set(xlabel="step", ylabel="accuracy", title="Eval accuracy")

    def draw_len(ax: Any) -> None:
        for k, xs, ys in lengths:
            ax.plot(xs, ys, marker="o" if k == "eval" else None, ms=4, label=f"{k} response length")
        ax.set(xlabel="step", ylabel="tokens", title="Response length")

    def draw_timing(ax: Any) -> None:
        ys = [[_num(r.get(k)) or 0.0 for r in rl] for k in stages]
        ax.stackplot([float(r["step"]) for r in rl], *ys, labels=[k.removeprefix("time/") for k in stages], alpha=0.8)
        ax.set(xlabel="step", ylabel="seconds", title="Time per step by stage")

    def draw_sft(ax: Any) -> None:
        ax.plot(sft_x, sft_y, lw=1.5, label="sft/loss")
        if all(y > 0 for y in sft_y):
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel="loss", title="SFT loss")

    todo = [
        ("reward.png", "Reward vs step (faint: raw, solid: moving average)", draw_reward, bool(rewards)),
        ("accuracy.png", "Eval greedy accuracy and pass@k vs step", draw_acc, bool(evals)),
        ("length.png", "Mean response length (tokens) vs step", draw_len, bool(lengths)),
        ("timing.png", "Seconds per RL step, stacked by stage", draw_timing, bool(stages)),
        ("sft_loss.png", "SFT loss vs step", draw_sft, bool(sft_x)),
    ]
    for name, caption, draw, has_data in todo:
        if has_data:
            save(name, caption, draw)
        else:
            (plot_dir / name).unlink(missing_ok=True)
    return made


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def write_report(
    run_dir: str | Path, records: list[dict], summary: dict[str, float], config: dict | None = None
) -> Path:
    """Write `run_dir/plots/*.png` and `run_dir/report.html` (atomically); returns the path of the HTML."""
    run_dir = Path(run_dir)
    plot_dir = run_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    sft, rl, ev = (_phase(records, p) for p in ("sft", "rl", "eval"))
    name = run_dir.resolve().name
    parts = [f"<h1>Run report: {html.escape(name)}</h1>", "<h2>Summary</h2>"]
    parts.append(_table(["metric", "value"], [[str(k), _fmt(v)] for k, v in summary.items()]))
    plots = _plots(plot_dir, sft, rl, ev)
    parts += ["<h2>Plots</h2>"] if plots else []
    for file, caption in plots:
        src, cap = html.escape(f"plots/{file}"), html.escape(caption)
        parts.append(f'<figure><img src="{src}" alt="{cap}"><figcaption>{cap}</figcaption></figure>')
    eval_keys = _eval_keys(ev)
    if ev and eval_keys:
        rows = [[_fmt(r["step"]), *(_fmt(r.get(k)) for k in eval_keys)] for r in ev]
        parts += ["<h2>Evaluations</h2>", _table(["step", *eval_keys], rows)]
    parts += _samples_section(ev)
    parts += _judge_section(rl)
    parts += _mismatch_section(rl)
    timing = [k for k in _keys(rl, "time/") if k != "time/step"]
    if timing:
        step_mean = _mean(_series(rl, "time/step")[1])
        rows = []
        for k in [*timing, "time/step"] if step_mean is not None else timing:
            m = _mean(_series(rl, k)[1])
            share = f"{100 * m / step_mean:.1f}%" if m is not None and step_mean else ""
            rows.append([k, _fmt(m), share])
        parts += ["<h2>Time per RL step</h2>", _table(["stage", "mean seconds", "share of time/step"], rows)]
    if config is not None:
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        parts.append(f"<h2>Config</h2><pre>{html.escape(text)}</pre>")
    return write_page(run_dir / "report.html", name, parts)


def _mismatch_section(rl: list[dict]) -> list[str]:
    """The sampler/trainer mismatch per RL step (`rollout/logprob_diff`: mean |Δ log p|, `rollout/logprob_kl`: k3 KL
    on the trained tokens; truncated importance sampling's weights when on), mean and max over the steps."""
    keys = [k for k in _keys(rl, "rollout/") if k.startswith(("rollout/logprob_", "rollout/tis_"))]
    rows = []
    for k in keys:
        ys = _series(rl, k)[1]
        rows.append([k, _fmt(_mean(ys)), _fmt(max(ys) if ys else None)])
    if not rows:
        return []
    return ["<h2>Sampler vs trainer log-probs</h2>", _table(["metric", "mean over steps", "max"], rows)]


def _samples_section(ev: list[dict]) -> list[str]:
    """"Sample completions": per evaluation with `eval/samples` (prompt, completion, reward, correct dicts), a
    collapsible table, the first and last evaluations open. All text is HTML-escaped."""
    shown = [r for r in ev if isinstance(r.get("eval/samples"), list) and r["eval/samples"]]
    if not shown:
        return []
    parts = ["<h2>Sample completions</h2>", "<p>Greedy completions of the first held-out problems at each "
             "evaluation, with the verifier's reward.</p>"]
    for i, r in enumerate(shown):
        rows = []
        for smp in r["eval/samples"]:
            smp = smp if isinstance(smp, dict) else {}
            reward = _num(smp.get("reward"))
            verdict = "correct" if smp.get("correct") else "wrong"
            rows.append(
                f'<tr><td class="text">{html.escape(str(smp.get("prompt", "")))}</td>'
                f'<td class="text">{html.escape(str(smp.get("completion", "")))}</td>'
                f"<td>{'unscorable' if reward is None else f'{reward:.3g}'}</td>"
                f'<td class="{"ok" if smp.get("correct") else "bad"}">{verdict}</td></tr>'
            )
        is_open = " open" if i in (0, len(shown) - 1) else ""
        parts.append(f"<details{is_open}><summary>step {html.escape(_fmt(r.get('step')))}</summary><table>"
                     "<tr><th>prompt</th><th>completion</th><th>reward</th><th>correct</th></tr>"
                     + "".join(rows) + "</table></details>")
    return parts


def _judge_section(rl: list[dict]) -> list[str]:
    """"Judge critiques": per RL record with `judge/samples` (the judge term's rows: prompt, completion, critique,
    scores, reward, error, correct), a collapsible table, the first and last open. All text is HTML-escaped."""
    shown = [r for r in rl if isinstance(r.get("judge/samples"), list) and r["judge/samples"]]
    if not shown:
        return []
    parts = ["<h2>Judge critiques</h2>", "<p>The judge's critique and per-dimension scores of the first rollouts "
             "of a step (the first and every eval.every-th), beside the verifier's verdict.</p>"]
    for i, r in enumerate(shown):
        rows = []
        for smp in r["judge/samples"]:
            smp = smp if isinstance(smp, dict) else {}
            reward = _num(smp.get("reward"))
            scores = smp.get("scores") if isinstance(smp.get("scores"), dict) else {}
            score_text = ", ".join(f"{k}: {'N/A' if v is None else _fmt(v)}" for k, v in scores.items())
            verdict = f"unscorable ({smp.get('error', '')})" if reward is None else f"{reward:.3g}"
            rows.append(
                f'<tr><td class="text">{html.escape(str(smp.get("prompt", "")))}</td>'
                f'<td class="text">{html.escape(str(smp.get("completion", "")))}</td>'
                f'<td class="text">{html.escape(str(smp.get("critique", "")))}</td>'
                f"<td>{html.escape(score_text)}</td><td>{html.escape(verdict)}</td>"
                f'<td class="{"ok" if smp.get("correct") else "bad"}">{"correct" if smp.get("correct") else "wrong"}'
                "</td></tr>"
            )
        is_open = " open" if i in (0, len(shown) - 1) else ""
        parts.append(f"<details{is_open}><summary>step {html.escape(_fmt(r.get('step')))}</summary><table>"
                     "<tr><th>prompt</th><th>completion</th><th>critique</th><th>scores</th><th>judge reward</th>"
                     "<th>verifier</th></tr>" + "".join(rows) + "</table></details>")
    return parts


def table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table (cells escaped)."""
    return _table(header, rows)


def write_page(out: Path, title: str, parts: list[str]) -> Path:
    """Write an HTML page made of `parts` (HTML fragments) atomically to `out`; returns `out`."""
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".report-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
