"""REER (`trainer.reer`, `trainer.reer_io`, `credo reer`) with a scripted generator and a fixed log-prob table.

The scorer's table gives every character of the scored answer a log-prob that depends only on a keyword in the
trajectory, so each score is a hand-computed mean of clipped log-probs. The answer "Plan.\\n\\nAB" is scored on
"\\n\\nAB" (its first segment "Plan." is context):

    table      "\\n"  "\\n"   "A"           "B"     score = −mean clip(·, −2, 0)
    default    −0.5  −0.5   −3.0 → −2.0   −1.0    (0.5 + 0.5 + 2.0 + 1.0) / 4 = 1.0    (unclipped: 1.25)
    "worse"    −1.0  −1.0   −5.0 → −2.0   −2.5 → −2.0                        = 1.5
    "partial"  −0.3  −0.3   −1.0          −0.6    2.2 / 4                    = 0.55
    "key"      −0.1  −0.1   −0.2          −0.3    0.7 / 4                    = 0.175  (< 0.25: the threshold)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from credo.envs.dataset import DatasetError
from credo.models.tiny import TinyConfig, TinyLM
from credo.models.tokenizer import CharTokenizer
from credo.rollout.backend import Completion
from credo.trainer.reer import (
    INITIAL_THINKING,
    PolicyScorer,
    ReerConfig,
    ReerJob,
    answer_parts,
    clipped_score,
    refinement,
    scoring_row,
    search,
    search_batch,
    segment,
    trajectory_scores,
)
from credo.trainer.reer_io import done_rows, read_items, run_reer, skipped_path

TOK = CharTokenizer()
ANSWER = "Plan.\n\nAB"
TABLES = [  # (keyword in the trajectory, log-prob per scored character); the first match wins
    ("key", {"\n": -0.1, "A": -0.2, "B": -0.3}),
    ("worse", {"\n": -1.0, "A": -5.0, "B": -2.5}),
    ("partial", {"\n": -0.3, "A": -1.0, "B": -0.6}),
    ("", {"\n": -0.5, "A": -3.0, "B": -1.0}),
]
CFG = ReerConfig(min_init_tokens=0, pre_triggers=(("", 1.0),))


class TableScorer:
    """The scripted scorer: a fixed log-prob per scored character, the table chosen by the trajectory's text."""

    tokenizer = TOK

    def __init__(self) -> None:
        self.calls = 0

    def logprobs(self, rows: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
        self.calls += 1
        out = []
        for ctx, target in rows:
            think = TOK.decode(ctx).split("<think>", 1)[1]
            table = next(t for key, t in TABLES if key in think)
            out.append(torch.tensor([table[TOK.itos[i]] for i in target]))
        return out


class ScriptedGenerator:
    """A `Generator` that answers the initial-thinking prompt with `init` and a segment-edit prompt with the
    completions `edits[segment]`; it records the segments it was asked to rewrite."""

    tokenizer = TOK
    max_len = None
    image_size = 48

    def __init__(self, init: str, edits: dict[str, list[str]] | None = None) -> None:
        self.init, self.edits = init, edits or {}
        self.asked: list[str] = []
        self.n_init = 0

    def generate(self, requests, params, rng=None):
        out = []
        for r in requests:
            prompt = TOK.decode(r.prompt_ids)
            if "## Segment to rewrite\n" in prompt:
                seg = prompt.split("## Segment to rewrite\n", 1)[1].split("\n\n## Thinking after", 1)[0]
                self.asked.append(seg)
                texts = self.edits[seg][: r.n]
            else:
                self.n_init += 1
                texts = [self.init] * r.n
            out.append([Completion(torch.tensor(TOK.encode(t)), torch.zeros(len(t)), "stop") for t in texts])
        return out

    def sync_weights(self, policy) -> None:
        pass


def _search(gen: ScriptedGenerator, cfg: ReerConfig = CFG):
    return search(gen, TableScorer(), "Q?", ANSWER, cfg, torch.Generator().manual_seed(0), random.Random(0))


# ---- text and score -------------------------------------------------------------------------------------------


def test_segments_answer_parts_and_refinement():
    assert segment("Okay, one.\n\ntwo\n\n\n\n three ") == ["Okay, one.", "two", "three"]
    assert segment("a\n\n\\[x\n\ny\\]\n\nb") == ["a", "\\[x\n\ny\\]", "b"]  # a LaTeX block is never cut
    assert segment("one line\nnext line") == ["one line", "next line"]  # fallback to single lines
    assert answer_parts(ANSWER) == ("Plan.", "\n\nAB")
    assert answer_parts("AB") == ("", "AB")  # one segment: scored whole (documented departure)
    assert refinement("<analyze>x</analyze><refine>old</refine> <refine> new </refine>") == "new"
    assert refinement("<refine>cut short") == "cut short"
    assert refinement("no tag") is None and refinement("<refine> </refine>") is None


def test_score_of_a_trajectory_is_the_clipped_mean_over_the_answer_after_its_first_segment():
    ctx, target = scoring_row(TOK, "Q?", "seg one\n\nseg two", ANSWER)
    assert TOK.decode(ctx) == "Q?<think>\nseg one\n\nseg two\n</think>\n<answer>\nPlan."
    assert ctx[0] == TOK.bos_id and TOK.decode(target) == "\n\nAB"
    [score] = trajectory_scores(TableScorer(), "Q?", ANSWER, ["seg one\n\nseg two"], CFG)
    assert score == pytest.approx(1.0)  # (0.5 + 0.5 + 2 + 1) / 4: A's −3.0 clipped to −2.0
    assert clipped_score(torch.tensor([-0.5, -0.5, -3.0, -1.0]), -100.0) == pytest.approx(1.25)  # unclipped
    assert clipped_score(torch.tensor([0.3, -0.3])) == pytest.approx(0.15)  # the upper clip at 0
    [one] = trajectory_scores(TableScorer(), "Q?", "AB", ["seg"], CFG)
    assert one == pytest.approx((2.0 + 1.0) / 2)
    with pytest.raises(ValueError, match="no answer tokens"):
        clipped_score(torch.zeros(0))


def test_policy_scorer_matches_a_direct_forward():
    torch.manual_seed(0)
    model = TinyLM(TinyConfig(vocab_size=TOK.vocab_size, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=64))
    rows = [(TOK.encode_prompt("Q? ab"), TOK.encode("cd")), (TOK.encode_prompt("Q?"), TOK.encode("efgh")),
            (TOK.encode_prompt("Q? abcdefg"), TOK.encode("xyz"))]  # batched by length: [1, 0], [2]; order kept
    got = PolicyScorer(model, TOK, batch=2).logprobs(rows)
    assert [len(lp) for lp in got] == [2, 4, 3]
    for (ctx, target), lp in zip(rows, got, strict=True):
        ids = torch.tensor([ctx + target])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).float(), -1)[0]  # [T, V]
        want = torch.stack([logp[len(ctx) + k - 1, t] for k, t in enumerate(target)])
        torch.testing.assert_close(lp, want, atol=1e-5, rtol=1e-5)


# ---- the search -----------------------------------------------------------------------------------------------


def test_one_accepted_and_one_rejected_edit():
    gen = ScriptedGenerator("seg one\n\nseg two</think>", {
        "seg one": ["<analyze>..</analyze>\n<refine>worse one</refine>", "<refine>partial one</refine>"],
        "seg two": ["<refine>worse two</refine>", "the model forgot the tags"],
    })
    res = _search(gen)
    assert res.status == "done" and res.n_segments == 2
    assert res.score_before == pytest.approx(1.0)
    assert res.history[0] == {"segment": 0, "scores": [1.5, 0.55], "accepted": True}  # the better of K=2 kept
    assert res.history[1] == {"segment": 1, "scores": [1.5], "accepted": False}  # worse than 0.55: rejected
    assert res.trajectory == "partial one\n\nseg two"
    assert res.score_after == pytest.approx(0.55) and not res.reached_threshold
    assert (res.steps, res.accepted, res.invalid) == (2, 1, 1)  # steps capped by the 2 segments


def test_stop_rule_threshold_and_step_cap():
    three = "seg one\n\nseg two\n\nseg three</think>"
    edits = {s: ["<refine>worse</refine>", "<refine>worse too</refine>"] for s in ("seg one", "seg two", "seg three")}
    # the threshold: the first rewrite brings the score to 0.175 < 0.25, so segments 2 and 3 are never asked
    gen = ScriptedGenerator(three, edits | {"seg one": ["<refine>key one</refine>", "<refine>worse</refine>"]})
    res = _search(gen)
    assert res.reached_threshold and res.score_after == pytest.approx(0.175)
    assert gen.asked == ["seg one"] and res.steps == 1 and res.trajectory == "key one\n\nseg two\n\nseg three"
    # already below the threshold: no step at all
    res = _search(ScriptedGenerator("key a\n\nkey b"))
    assert (res.steps, res.reached_threshold, res.trajectory) == (0, True, "key a\n\nkey b")
    # the step cap: max_steps=2 of 3 segments, nothing accepted
    gen = ScriptedGenerator(three, edits)
    res = _search(gen, ReerConfig(max_steps=2, min_init_tokens=0, pre_triggers=(("", 1.0),)))
    assert gen.asked == ["seg one", "seg two"] and res.steps == 2 and res.accepted == 0
    assert res.score_after == res.score_before == pytest.approx(1.0) and not res.reached_threshold


def test_pre_trigger_and_skip_rules():
    cfg = ReerConfig(min_init_tokens=0, pre_triggers=(("Okay, I am given", 1.0),))
    res = _search(ScriptedGenerator(" a question.\n\nkey step</think>"), cfg)
    assert res.pre_trigger == "Okay, I am given" and res.trajectory == "Okay, I am given a question.\n\nkey step"
    res = _search(ScriptedGenerator("one segment only"))
    assert res.status == "skipped" and "1 segment" in res.reason
    res = _search(ScriptedGenerator("a\n\nb"), ReerConfig(pre_triggers=(("", 1.0),)))  # < 100 tokens
    assert res.status == "skipped" and "4 tokens" in res.reason


class PerQuestionGenerator(ScriptedGenerator):
    """`ScriptedGenerator` whose initial trajectory depends on the question (`inits`); records each call's size."""

    def __init__(self, inits: dict[str, str], edits: dict[str, list[str]], max_len: int | None = None) -> None:
        super().__init__("", edits)
        self.inits, self.max_len, self.calls = inits, max_len, []

    def generate(self, requests, params, rng=None):
        self.calls.append(len(requests))
        out = []
        for r in requests:
            prompt = TOK.decode(r.prompt_ids)
            q = next((q for q in self.inits if f"## Request\n{q}\n" in prompt), None)
            if "## Segment to rewrite\n" in prompt or q is None:
                out += super().generate([r], params)
            else:
                out.append([Completion(torch.tensor(TOK.encode(self.inits[q])), torch.zeros(1), "stop")] * r.n)
        return out


def test_batched_search_is_each_items_own_search():
    """Four items searched in lockstep: A takes two steps, B is skipped (one segment), C is already below the
    threshold, D's prompt is too long for the generator (skipped with the reason). Each result equals the item's
    search alone; the batch makes one generation call per stage (z0 of all, then each step), not per item."""
    long_q = "Q" + "x" * 300
    inits = {"QA?": "seg one\n\nseg two", "QB?": "one segment only", "QC?": "key a\n\nkey b", long_q: "a\n\nb"}
    edits = {"seg one": ["<refine>partial one</refine>", "<refine>worse</refine>"],
             "seg two": ["<refine>worse</refine>"]}
    limit = len(TOK.encode_prompt(INITIAL_THINKING.format(question="QA?", answer=ANSWER))) + 200

    def jobs():
        return [ReerJob(q, ANSWER, torch.Generator().manual_seed(k), random.Random(k)) for k, q in enumerate(inits)]

    gen, scorer = PerQuestionGenerator(inits, edits, limit), TableScorer()
    together = search_batch(gen, scorer, jobs(), CFG)
    assert gen.calls == [3, 1, 1] and scorer.calls == 3  # z0 of A, B, C (D too long); step 0 of A; step 1 of A
    alone = [search_batch(PerQuestionGenerator(inits, edits, limit), TableScorer(), [j], CFG)[0] for j in jobs()]
    assert together == alone
    a, b, c, d = together
    assert [h["accepted"] for h in a.history] == [True, False] and a.trajectory == "partial one\n\nseg two"
    assert b.status == "skipped" and "1 segment" in b.reason
    assert (c.status, c.steps, c.reached_threshold) == ("done", 0, True)
    assert d.status == "skipped" and "leaves no room" in d.reason


# ---- files --------------------------------------------------------------------------------------------------


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_resume_skips_done_rows_and_drops_a_cut_line(tmp_path):
    src = _write(tmp_path / "in.jsonl", [{"id": i, "question": f"Q{i}?", "solution": ANSWER, "answer": 7}
                                         for i in "abc"])
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "b", "prompt": "Q b?", "solution": "x", "reer": {}}) + '\n{"id": "c", "pro')
    gen = ScriptedGenerator("seg one\n\nseg two", {"seg one": ["<refine>key</refine>"] * 2})
    run_reer(src, out, gen, TableScorer(), CFG, progress=False)
    rows = done_rows(out)
    assert [r["id"] for r in rows] == ["b", "a", "c"] and gen.n_init == 2  # "b" was done; the cut "c" redone
    a = rows[1]
    assert a["prompt"] == "Qa?" and a["answer"] == 7
    assert a["solution"] == "<think>\nkey\n\nseg two\n</think>\n<answer>\nPlan.\n\nAB\n</answer>"
    assert a["reer"]["score_before"] == pytest.approx(1.0) and a["reer"]["score_after"] == pytest.approx(0.175)
    assert a["reer"]["reached_threshold"] and a["reer"]["steps"] == 1
    run_reer(src, out, gen, TableScorer(), CFG, progress=False)  # everything done: nothing generated
    assert gen.n_init == 2 and len(done_rows(out)) == 3


def test_skipped_items_are_recorded_apart_and_not_redone(tmp_path):
    src = _write(tmp_path / "in.jsonl", [{"question": "Q?", "solution": "<think>old</think>\n" + ANSWER}])
    assert read_items(src)[0].answer == ANSWER and read_items(src)[0].id == "line-1"
    out = tmp_path / "out.jsonl"
    gen = ScriptedGenerator("one segment")
    summary = run_reer(src, out, gen, TableScorer(), CFG, progress=False)
    assert summary == {"n": 0.0} and not out.exists()
    assert done_rows(skipped_path(out))[0]["reer"]["status"] == "skipped"
    run_reer(src, out, gen, TableScorer(), CFG, progress=False)
    assert gen.n_init == 1


def test_output_is_what_credo_sft_reads(tmp_path):
    from credo.envs.dataset import DatasetEnv

    src = _write(tmp_path / "in.jsonl", [{"question": "Q?", "solution": ANSWER, "answer": "7"}])
    out = tmp_path / "out.jsonl"
    run_reer(src, out, ScriptedGenerator("a\n\nb", {"a": ["<refine>key</refine>"] * 2}), TableScorer(), CFG,
             progress=False)
    env = DatasetEnv(sft_files=[str(out)], test_files=[str(src)], fields={"prompt": "prompt"})
    [ex] = env.examples("sft")
    assert env.reference_completion(ex) == "<think>\nkey\n\nb\n</think>\n<answer>\nPlan.\n\nAB\n</answer>"


@pytest.mark.parametrize(("line", "field"), [
    ('{"question": "Q?"}', "field 'solution': missing"),
    ('{"solution": "y"}', "field 'question': missing"),
    ('{"question": "  ", "solution": "y"}', "field 'question': expected a non-empty string"),
    ('{"question": "Q?", "solution": 3}', "field 'solution': expected a non-empty string"),
    ('{"question": "Q?", "solution": "y", "id": [1]}', "field 'id': expected a string or an integer"),
    ('{"question": "Q?", "solution": "y", "id": "line-1"}', "field 'id': 'line-1' repeats line 1"),
    ('{"question": "Q?", "solution": "<think>z</think>  "}', "field 'solution': empty after"),
    ('{"question": "Q?", ', "malformed JSON"),
    ('["Q?", "y"]', "expected a JSON object"),
])
def test_bad_row_names_file_line_and_field(tmp_path, line, field):
    src = _write(tmp_path / "in.jsonl", [{"question": "Q?", "solution": "y"}, line])
    with pytest.raises(DatasetError, match=f"in.jsonl: line 2: {field}".replace("[", r"\[").replace("(", r"\(")):
        read_items(src)
    with pytest.raises(DatasetError, match="line 2"):  # before any model runs
        run_reer(src, tmp_path / "out.jsonl", ScriptedGenerator("x"), TableScorer(), CFG, progress=False)


def test_cli_reports_a_bad_row_before_loading_a_model(tmp_path, capsys):
    from credo.cli import main

    src = _write(tmp_path / "in.jsonl", ['{"question": "Q?", "answer": 3}'])
    code = main(["reer", str(src), "--out", str(tmp_path / "out.jsonl"), "--generator", str(tmp_path / "none")])
    assert code == 2 and "in.jsonl: line 1: field 'solution': missing" in capsys.readouterr().err


def test_direct_refine_prefills_the_refine_block():
    gen = ScriptedGenerator("seg one\n\nseg two", {"seg one": ["key one</refine>", "worse"]})
    res = _search(gen, ReerConfig(min_init_tokens=0, pre_triggers=(("", 1.0),), direct_refine=True))
    assert res.history[0] == {"segment": 0, "scores": [0.175, 1.5], "accepted": True}  # both parse as rewrites
    assert res.trajectory == "key one\n\nseg two" and res.invalid == 0
    edits = {"seg one": ["key one</refine>", "worse"], "seg two": ["key two</refine>", "worse"]}
    res = _search(ScriptedGenerator("seg one\n\nseg two", edits))
    assert res.invalid == 4 and res.accepted == 0  # released prefill: no <refine> in either completion


class ResampleGenerator(ScriptedGenerator):
    """Answers the initial-thinking prompt with `init` when nothing is prefilled after "<think>\\n", and with
    `again[k]` (k = segments already prefilled) otherwise; records the prefills it saw."""

    def __init__(self, init: str, again: dict[int, list[str]]) -> None:
        super().__init__(init)
        self.again, self.prefills = again, []

    def generate(self, requests, params, rng=None):
        out = []
        for r in requests:
            after = TOK.decode(r.prompt_ids).rsplit("<think>\n", 1)[1]
            self.prefills.append(after)
            k = after.count("\n\n")
            texts = self.again[k][: r.n] if r.n > 1 else [self.init]
            out.append([Completion(torch.tensor(TOK.encode(t)), torch.zeros(len(t)), "stop") for t in texts])
        return out


def test_resample_edit_proposes_fresh_segments():
    """edit="resample": segment 0's candidates continue "<think>\\n" alone, cut at the first blank line ("key one"
    from "key one\\n\\nmore": the score 0.175 < 1.0 is accepted and then under the threshold, so the search stops);
    an empty resample is invalid."""
    cfg = ReerConfig(min_init_tokens=0, pre_triggers=(("", 1.0),), edit="resample")
    gen = ResampleGenerator("seg one\n\nseg two", {0: ["key one\n\nmore", "  "]})
    res = _search(gen, cfg)
    assert res.history == [{"segment": 0, "scores": [0.175], "accepted": True}]
    assert res.trajectory == "key one\n\nseg two" and res.invalid == 1 and res.reached_threshold
    assert gen.prefills[1] == ""  # segment 0 is resampled from an empty thinking
    # a rejected resample of segment 0, then segment 1 resampled after the kept segment 0
    gen = ResampleGenerator("seg one\n\nseg two", {0: ["worse one", "worse two"], 1: ["partial two</think>", "x"]})
    res = _search(gen, cfg)
    assert [h["accepted"] for h in res.history] == [False, True]
    assert res.history[0]["scores"] == [1.5, 1.5] and res.history[1]["scores"] == [0.55, 1.0]
    assert res.trajectory == "seg one\n\npartial two" and gen.prefills[-1] == "seg one\n\n"
    with pytest.raises(ValueError, match="reer edit"):
        ReerConfig(edit="paraphrase")
