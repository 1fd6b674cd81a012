"""The reasoning-gym adapter: any task by name, seeded disjoint splits, the task's own scoring, options."""

import json
import pickle

import pytest

pytest.importorskip("reasoning_gym")

from credo.cli import main  # noqa: E402
from credo.envs import make_env  # noqa: E402
from credo.envs.reasoning_gym import ReasoningGymEnv  # noqa: E402
from credo.trainer.config import EnvConfig  # noqa: E402

TASKS = ["chain_sum", "basic_arithmetic", "leg_counting"]


def small(task, **kw):
    kw = {"n_sft": 12, "n_train": 20, "n_test": 10, **kw}
    return make_env(EnvConfig(name=f"reasoning_gym:{task}", **kw))


@pytest.mark.parametrize("task", TASKS)
def test_splits_disjoint_deterministic_and_scored(task):
    env = small(task)
    assert env.name == f"reasoning_gym:{task}"
    splits = {s: env.examples(s) for s in ("sft", "train", "test")}
    assert {s: len(x) for s, x in splits.items()} == {"sft": 12, "train": 20, "test": 10}
    test_q = {e.prompt for e in splits["test"]}
    assert len(test_q) == 10  # distinct held-out questions
    assert not test_q & {e.prompt for e in splits["train"] + splits["sft"]}
    again = small(task)
    assert [e.prompt for e in again.examples("train")] == [e.prompt for e in splits["train"]]
    assert [e.prompt for e in small(task, seed=1).examples("test")] != [e.prompt for e in splits["test"]]
    for ex in splits["test"][:3]:
        assert env.render_prompt(ex).startswith(ex.prompt) and "<answer></answer>" in env.render_prompt(ex)
        ref = env.reference_completion(ex)
        assert ref == f"<answer>{ex.meta['entry']['answer']}</answer>"
        assert env.verify("let me think\n" + ref, ex).parts == {"correct": 1.0, "format": 1.0}
        assert env.verify("<answer>not the answer</answer>", ex).value == 0.0
        assert env.verify(str(ex.reference), ex).parts == {"correct": 0.0, "format": 0.0}  # no tag, no credit
    ex = pickle.loads(pickle.dumps(splits["train"][0]))  # verifiers may run in worker processes
    assert env.verify(env.reference_completion(ex), ex).value == 1.0


def test_options_pass_through_to_the_task():
    short = small("chain_sum", options={"min_terms": 2, "max_terms": 2})
    long = small("chain_sum", options={"min_terms": 5, "max_terms": 5})
    assert all(e.meta["entry"]["metadata"]["num_terms"] == 2 for e in short.examples("test"))
    assert all(e.meta["entry"]["metadata"]["num_terms"] == 5 for e in long.examples("test"))
    assert {e.prompt for e in short.examples("test")} != {e.prompt for e in long.examples("test")}


def test_small_question_space_still_disjoint():
    # 1-digit, 2-term sums: ~200 questions, so the generators repeat; test questions never reach train
    env = small("chain_sum", options={"min_terms": 2, "max_terms": 2, "max_digits": 1}, n_test=60, n_train=100)
    held = {e.prompt for e in env.examples("test")}
    assert len(held) == 60 and not held & {e.prompt for e in env.examples("train")}
    with pytest.raises(ValueError, match="only .* distinct questions"):
        small("chain_sum", options={"min_terms": 2, "max_terms": 2, "max_digits": 1}, n_test=1000).examples("test")


def test_prompt_template_and_total_verifier():
    env = small("chain_sum", prompt_template="Q: {question}\nA:")
    ex = env.examples("test")[0]
    assert env.render_prompt(ex) == f"Q: {ex.prompt}\nA:"

    class Raises:
        def score_answer(self, answer, entry):
            raise RuntimeError("broken scorer")

    env._scorer = Raises()
    s = env.verify("<answer>1</answer>", ex)  # no verdict: unscorable, never trained as a 0
    assert (s.status, s.correct, s.parts) == ("unscorable", False, {"correct": 0.0, "format": 1.0})
    assert "broken scorer" in s.reason


def test_prompt_template_reads_the_task_metadata():
    # number_sorting appends formatting instructions to its question; a template can ask without them
    env = small("number_sorting", options={"min_numbers": 3, "max_numbers": 3, "max_decimals": 0},
                prompt_template="Sort in {metadata[direction]} order: {metadata[original_numbers]}")
    ex = env.examples("test")[0]
    meta = ex.meta["entry"]["metadata"]
    assert env.render_prompt(ex) == f"Sort in {meta['direction']} order: {meta['original_numbers']}"
    assert meta["direction"] in ("ascending", "descending") and "Please follow" not in env.render_prompt(ex)
    with pytest.raises(ValueError, match="metadata"):  # a key the task does not have fails at construction
        small("number_sorting", prompt_template="{metadata[no_such_key]}")


def test_credo_verifier_override():
    env = small("chain_sum", verifier="integer")
    ex = env.examples("test")[0]
    assert env.verify(f"<answer>{ex.reference}</answer>", ex).value == 1.0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown reasoning-gym task 'chain_sums'; did you mean chain_sum"):
        small("chain_sums")
    with pytest.raises(ValueError, match="basic_arithmetic, chain_sum"):
        small("no_such_task")
    with pytest.raises(ValueError, match="after a colon"):
        make_env(EnvConfig(name="reasoning_gym"))
    with pytest.raises(ValueError, match="the task's options: allow_negation"):
        small("chain_sum", options={"terms": 3})
    with pytest.raises(ValueError, match="may not set seed"):
        ReasoningGymEnv("chain_sum", {"seed": 3})
    with pytest.raises(ValueError, match="prompt_template"):
        small("chain_sum", prompt_template="{problem}")


def test_train_end_to_end(tmp_path):
    rc = main(["train", f"run.out_dir={tmp_path}", "run.name=rg", "env.name=reasoning_gym:chain_sum",
               "env.options.max_terms=2", "env.options.max_digits=1", "env.n_train=16", "env.n_test=4",
               "env.n_sft=16", "sft.steps=2", "sft.batch_size=4", "sft.warmup=1", "rl.steps=1",
               "rl.prompts_per_step=2", "rl.group_size=2", "rl.max_new_tokens=8", "eval.n_samples=1",
               "eval.pass_k=[1]", "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.d_ff=64",
               "model.max_len=160", "run.progress=false", "run.threads=2"])
    assert rc == 0
    recs = [json.loads(x) for x in (tmp_path / "rg" / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in recs if r["phase"] == "rl"]
    assert len(rl) == 1 and rl[0]["verify/errors"] == 0 and "reward/correct" in rl[0]
