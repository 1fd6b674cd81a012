"""Any reasoning-gym task as an environment: `env.name = "reasoning_gym:<task>"`, `env.options` its config.

    credo train env.name=reasoning_gym:chain_sum env.options.min_terms=2 env.options.max_terms=3

Problems come from `reasoning_gym.create_dataset(task, size=..., seed=..., **env.options)`; the seeds of the
three splits are derived from `env.seed`, the task name and the split, so the splits are deterministic and
drawn from different streams. The test split holds `n_test` distinct questions; a question that is in the test
split is never used for "train" or "sft" (tasks with small question spaces repeat questions, so these are
dropped and more are drawn). Repeats within "train" or "sft" are allowed.

The prompt is `env.prompt_template` over `{question}` (the task's question) and the task's own metadata,
`{metadata[KEY]}` (e.g. number_sorting's `{metadata[direction]}` and `{metadata[original_numbers]}`, to ask the
question without the instructions reasoning-gym appends to it). Some metadata hold the answer (number_sorting's
`sorted_numbers`): a template must not show those.

Scoring is the task's own `score_answer(answer, entry)` applied to the content of the last
`<answer>…</answer>` block (found from the end of the completion, however long). The verdict: `value` is the
task's score (some tasks give partial credit, e.g. 0.5); `correct` is `value == 1.0` (full credit; partial credit
stays in the reward, never counts as correct); parts `correct` (the value) and `format`: 1 for a non-empty answer
that reads as the expected type (one number when `entry["answer"]` is one number, else any text), or for a
full-credit answer. An empty `<answer></answer>` earns no format credit: a policy rewarded for it learns to
write empty tags. The verifier is total: a `score_answer` that raises or returns None/NaN makes the sample
unscorable (`Score.unscorable`, with the reason), never a 0. Setting `env.verifier` (e.g. "integer") scores with
that credo verifier against `entry["answer"]` instead.

Reasoning-gym has no reasoning traces: the warm-start completion is just `<answer>{entry["answer"]}</answer>`,
so SFT teaches the format and (for easy tasks) the answer, not a method. A few tasks have no single oracle
answer (`entry["answer"] is None`: e.g. boxnet, rush_hour); they work for RL, but the warm start needs
`sft.enabled=false` or a saved model.
"""

from __future__ import annotations

import difflib
import math
import random
from typing import Any

from credo.data import Example
from credo.envs.base import Score
from credo.envs.verifiers.answer_tag import extract_answer
from credo.envs.verifiers.typed import answer_type, typed_key

DEFAULT_TEMPLATE = "{question}\nGive your final answer in <answer></answer> tags.\n"
MAX_ROUNDS = 10  # draws of fresh problems before giving up on filling a split (tiny question spaces)


def _registry() -> dict[str, Any]:
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError as e:  # an optional dependency
        raise ImportError("the reasoning_gym environment needs `pip install reasoning-gym` "
                          "(or `pip install credo[tasks]`)") from e
    return DATASETS


def _check_task(task: str) -> None:
    names = sorted(_registry())
    if task in names:
        return
    close = difflib.get_close_matches(task, names, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    examples = ", ".join(n for n in ("basic_arithmetic", "chain_sum", "leg_counting", "gsm_symbolic") if n in names)
    raise ValueError(f"unknown reasoning-gym task {task!r}; {hint}{len(names)} tasks, e.g. {examples} "
                     "(reasoning_gym.factory.DATASETS lists them all)")


class ReasoningGymEnv:
    """Environment over one reasoning-gym task; see the module docstring."""

    def __init__(self, task: str, options: dict[str, Any] | None = None, n_sft: int = 6000, n_train: int = 4000,
                 n_test: int = 200, seed: int = 0, prompt_template: str = "", verifier: str = "") -> None:
        _check_task(task)
        self.task = task
        self.name = f"reasoning_gym:{task}"
        self.options = dict(options or {})
        reserved = {"seed", "size"} & set(self.options)
        if reserved:
            raise ValueError(f"{self.name}: env.options may not set {', '.join(sorted(reserved))}; "
                             "use env.seed and env.n_sft / env.n_train / env.n_test")
        self.sizes = {"sft": n_sft, "train": n_train, "test": n_test}
        self.seed = seed
        self.template = prompt_template or DEFAULT_TEMPLATE
        self._scorer = self._dataset(size=1, seed=0)  # score_answer depends on the config, not on seed/size
        try:  # checked on one item of the task: a metadata key it lacks fails here, not mid-run
            self.template.format(question="", metadata=self._scorer[0].get("metadata", {}))
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ValueError(f"{self.name}: env.prompt_template {self.template!r} may use only {{question}} and "
                             f"the task's {{metadata[KEY]}} fields (literal braces doubled): {e!r}") from e
        self._verifier = None
        self._verifier_name = verifier
        if verifier:  # a credo verifier instead of the task's score_answer
            from credo.envs.verifiers import get_verifier

            self._verifier = get_verifier(verifier)
        self._splits: dict[str, list[Example]] = {}

    def _dataset(self, size: int, seed: int) -> Any:
        import reasoning_gym

        try:
            return reasoning_gym.create_dataset(self.task, size=size, seed=seed, **self.options)
        except TypeError as e:  # an option the task's config does not have
            cfg_cls = _registry()[self.task][1]
            valid = sorted(getattr(cfg_cls, "__dataclass_fields__", {}).keys() - {"seed", "size"})
            raise ValueError(f"{self.name}: bad env.options {self.options}: {e}; the task's options: "
                             f"{', '.join(valid)}") from e
        except (AssertionError, ValueError) as e:  # the config's own validate()
            raise ValueError(f"{self.name}: invalid env.options {self.options}: {e}") from e

    def _seed(self, tag: str, rnd: int) -> int:
        # far-apart seeds: many tasks seed item i with `seed + i`, so nearby seeds would share items
        return random.Random(f"reasoning_gym/{self.task}/{self.seed}/{tag}/{rnd}").randrange(2**30)

    def _draw(self, tag: str, n: int, exclude: set[str], distinct: bool) -> list[Example]:
        out: list[Example] = []
        seen: set[str] = set()
        for rnd in range(MAX_ROUNDS):
            missing = n - len(out)
            if missing <= 0:
                break
            size = missing if rnd == 0 else max(2 * missing, 8)
            ds = self._dataset(size, self._seed(tag, rnd))
            for i in range(size):
                entry = ds[i]
                q = entry["question"]
                if q in exclude or (distinct and q in seen):
                    continue
                seen.add(q)
                out.append(Example(id=f"{self.task}-{tag}-{len(out)}", prompt=q, reference=entry["answer"],
                                   meta={"entry": entry}, env=self.name))
                if len(out) == n:
                    break
        if len(out) < n:
            what = "distinct questions" if distinct else "questions outside the test split"
            raise ValueError(f"{self.name}: found only {len(out)} {what} for the {tag} split, {n} requested; "
                             f"lower env.n_{tag} or widen the task with env.options")
        return out

    def examples(self, split: str) -> list[Example]:
        if split not in self.sizes:
            raise ValueError(f"{self.name}: unknown split {split!r} (expected sft, train or test)")
        if "test" not in self._splits:
            self._splits["test"] = self._draw("test", self.sizes["test"], set(), distinct=True)
        if split not in self._splits:
            held = {e.prompt for e in self._splits["test"]}
            self._splits[split] = self._draw(split, self.sizes[split], held, distinct=False)
        return self._splits[split]

    def render_prompt(self, example: Example) -> str:
        return self.template.format(question=example.prompt, metadata=example.meta["entry"].get("metadata", {}))

    def reference_completion(self, example: Example) -> str:
        answer = example.meta["entry"]["answer"]
        if answer is None:
            raise ValueError(f"{self.name}: the task has no reference answer for {example.id} (no single oracle "
                             "answer); run without the warm start (sft.enabled=false) or from a saved model")
        return f"<answer>{answer}</answer>"

    def verify(self, completion: str, example: Example) -> Score:
        """The task's verdict on the last answer tag (module docstring); never raises."""
        if self._verifier is not None:
            from credo.envs.verifiers import call_verifier

            return call_verifier(self._verifier, completion, example.reference, self._verifier_name)
        try:
            answer = extract_answer(completion)
        except Exception:  # total, whatever the completion
            answer = None
        if answer is None:
            return Score(0.0, {"correct": 0.0, "format": 0.0}, correct=False)
        fmt = answer_format(answer, example.reference)
        try:
            raw = self._scorer.score_answer(answer, example.meta["entry"])
            value = float(raw)
        except Exception as e:  # total: a task's scorer that raises (or returns None) gives no verdict
            reason = f"{self.name}: score_answer failed: {type(e).__name__}: {e}"
            return Score.unscorable(reason, {"correct": 0.0, "format": fmt})
        if not math.isfinite(value):
            return Score.unscorable(f"{self.name}: score_answer returned {raw!r}", {"correct": 0.0, "format": fmt})
        fmt = float(fmt or value == 1.0)
        return Score(value, {"correct": value, "format": fmt}, correct=value == 1.0)


def answer_format(answer: str, reference: Any) -> float:
    """1.0 when `answer` is non-empty and reads as the reference's type: one number for a numeric reference.

    >>> answer_format("", "7"), answer_format("seven", "7"), answer_format("2 or 3", 3), answer_format("-7", "7")
    (0.0, 1.0, 0.0, 1.0)
    >>> answer_format("7 apples", "7"), answer_format("abc", "7"), answer_format("ab", "a b"), answer_format(" ", None)
    (1.0, 0.0, 1.0, 0.0)
    """
    if not answer.strip():
        return 0.0
    if reference is not None and answer_type(reference) == "number":
        return float(typed_key(answer, "number") is not None)
    return 1.0


def from_config(cfg) -> ReasoningGymEnv:  # cfg: trainer.config.EnvConfig, cfg.name = "reasoning_gym:<task>"
    _, _, task = cfg.name.partition(":")
    if not task:
        raise ValueError("name a reasoning-gym task after a colon: env.name = \"reasoning_gym:<task>\", "
                         "e.g. reasoning_gym:chain_sum")
    return ReasoningGymEnv(task, cfg.options, n_sft=cfg.n_sft, n_train=cfg.n_train, n_test=cfg.n_test,
                           seed=cfg.seed, prompt_template=cfg.prompt_template, verifier=cfg.verifier)
