"""`ScenesEnv`: rendered scenes with questions that need seeing and thinking, scored with typed answers and
checkable perception claims.

An `Example` holds the question text as `prompt`, the rendered scene as `images=[uint8 numpy array [H, W, 3]]`
(what TinyVLM's `image_tensor` takes; `render.to_pil` turns it into a PIL image), the typed answer as
`reference` (int, "yes"/"no", a colour word or a frozenset of words) and, in `meta`: `objects` (the ground truth,
a tuple of `SceneObject` in reading order), `question` (the `Question` record), `family`, `grid`. The policy
answers in MoCA's format (methods.md §4.1, with `<perception>` for the paper's `<recognition>`):

    <perception>large red circle r1c2; small blue square r2c3</perception>
    <think>circles r1c2 = 1; squares r2c3 = 1; 1 > 1 no</think>
    <answer>no</answer>

`verify` scores the answer with Structured Verbal Verification (`verifiers/typed.py`) and the claims against the
ground truth. Score parts: `correct`; `format` (an answer of the right type and at least one perception block);
`perception_precision`, `perception_recall` (`claims.claim_scores`); `perception_exact` (claims = ground truth);
`perception_solves` (the program solver, reading only the claims, answers correctly: Perception Verification
with the sandbox's exact blindfolded reasoner).

For MoCA (`rewards/perception.py`) the env offers `blind_answer(perception, example)` (the `program` reasoner)
and `perception_correct(perception, example)` (exact claims: the ground truth `pv/agreement` is measured
against); `perception_sufficient` is the looser truth (the claims determine the right answer).

`blind=True` makes the data of a separate text-only blindfolded reasoner (`reward.perception_reasoner =
"model:<dir>"`, trained with `credo sft env.name=scenes env.options.blind=true model.kind=tinylm`): no image;
the prompt is Perception Verification's own `TEMPLATE` (question + claims), the claims those of the scene or,
for a `perturb` share, of the scene with one error; the reference is what the claims imply (`solver.solve`,
"unknown" when they determine nothing), so the reasoner learns to answer from what it is told, right or wrong.

Splits are seeded (`seed` and the split name) and disjoint: a (scene, question) pair of the test split never
occurs in the train or sft split; test pairs are distinct. Families cycle in order; yes/no families are balanced
(half "yes") unless `balance=False`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from credo.data import Example
from credo.envs.base import Score
from credo.envs.blocks import PV_TEMPLATE as TEMPLATE
from credo.envs.scenes.attribution import attribute, attribution_metrics, judge_perception
from credo.envs.scenes.claims import claim_scores, format_claims, parse_claims, perception_text
from credo.envs.scenes.questions import FAMILIES, make_question
from credo.envs.scenes.render import render
from credo.envs.scenes.scene import make_scene, perturb
from credo.envs.scenes.solver import explain, format_answer, solve
from credo.envs.verifiers.answer_tag import extract_answer
from credo.envs.verifiers.typed import typed_key, verify_typed

YESNO_FAMILIES = ("compare", "spatial", "exists")
DEFAULT_INSTRUCTION = ("List the objects in <perception></perception>, reason in <think></think>, "
                       "answer in <answer></answer>.")
MAX_TRIES = 200  # scene draws per example before giving up on balance


@dataclass
class ScenesConfig:
    n_sft: int = 4000  # warm-start examples
    n_train: int = 2000  # RL training prompts
    n_test: int = 200  # held-out prompts (distinct scene-question pairs)
    seed: int = 0  # seeds the generator (independent of the run seed)
    image_size: int = 48  # pixels per side (divisible by the VLM's patch size: 6, 8, 12, 16, 24)
    grid: int = 3  # cells per side
    min_objects: int = 2  # objects per scene, at least
    max_objects: int = 5  # objects per scene, at most (<= grid * grid)
    families: tuple[str, ...] = FAMILIES  # question families, cycled in order
    jitter: int = 1  # pixels an object may move off its cell centre
    noise: int = 0  # uniform pixel noise amplitude (0 = clean images)
    balance: bool = True  # yes/no families: half the references "yes"
    instruction: str = DEFAULT_INSTRUCTION  # format instruction after the question ("" = none)
    blind: bool = False  # text-only examples for a blindfolded reasoner (`model:` PV reasoner), see below
    perturb: float = 0.5  # blind: share of examples whose claims carry one error (`scene.perturb`)


class ScenesEnv:
    """Environment over rendered scenes; see the module docstring."""

    name = "scenes"

    def __init__(self, cfg: ScenesConfig | None = None) -> None:
        self.cfg = cfg or ScenesConfig()
        unknown = set(self.cfg.families) - set(FAMILIES)
        if unknown or not self.cfg.families:
            raise ValueError(f"scenes: unknown question families {sorted(unknown)}; available: {', '.join(FAMILIES)}")
        self._splits: dict[str, list[Example]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # verifier workers get the env pickled: the splits (thousands of images) are rebuilt on demand, not shipped
        return {"cfg": self.cfg, "_splits": {}}

    def _one(self, rng: random.Random, family: str):
        c = self.cfg
        want = rng.random() < 0.5 if c.balance and family in YESNO_FAMILIES else None
        for _ in range(MAX_TRIES):
            scene = make_scene(rng, c.grid, c.min_objects, c.max_objects)
            q = make_question(rng, family, scene)
            if q is None:
                continue
            ref = solve(q, scene)
            if want is None or (ref == "yes") == want:
                return scene, q, ref
        raise ValueError(f"scenes: no {family!r} question found in {MAX_TRIES} scenes (max_objects too small?)")

    def _generate(self, tag: str, n: int, exclude: set, distinct: bool) -> list[Example]:
        c = self.cfg
        rng = random.Random(f"scenes/{c.seed}/{tag}")
        out: list[Example] = []
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 50 * n + 100:
                raise ValueError(f"scenes: cannot draw {n} {tag} examples outside the test set")
            family = c.families[len(out) % len(c.families)]
            scene, q, ref = self._one(rng, family)
            key = (scene, q.text)
            if key in exclude:
                continue
            if distinct:
                exclude.add(key)
            if c.blind:
                out.append(self._blind(rng, tag, len(out), scene, q, family))
                continue
            image = render(scene, c.image_size, c.grid, c.jitter, c.noise, rng)
            out.append(Example(
                id=f"scenes-{tag}-{len(out)}",
                prompt=q.text,
                reference=ref,
                images=[image],
                meta={"objects": scene, "question": q, "family": family, "grid": c.grid},
                env=self.name,
            ))
        return out

    def _blind(self, rng: random.Random, tag: str, i: int, scene, q, family: str) -> Example:
        claims = perturb(rng, scene, self.cfg.grid) if rng.random() < self.cfg.perturb else scene
        answer = solve(q, claims)
        return Example(id=f"scenes-blind-{tag}-{i}", prompt=q.text,
                       reference=format_answer(answer) if answer is None else answer, images=[],
                       meta={"objects": scene, "claims": claims, "question": q, "family": family,
                             "grid": self.cfg.grid},
                       env=self.name)

    def examples(self, split: str) -> list[Example]:
        if split not in ("sft", "train", "test"):
            raise ValueError(f"scenes: unknown split {split!r} (expected sft, train or test)")
        if not self._splits:
            c = self.cfg
            seen: set = set()
            test = self._generate("test", c.n_test, seen, distinct=True)
            held = {(e.meta["objects"], e.prompt) for e in test}
            self._splits = {
                "test": test,
                "train": self._generate("train", c.n_train, held, distinct=False),
                "sft": self._generate("sft", c.n_sft, held, distinct=False),
            }
        return self._splits[split]

    def render_prompt(self, example: Example) -> str:
        if "claims" in example.meta:  # blind: exactly what PolicyReasoner sends a `model:` reasoner
            return TEMPLATE.format(question=example.prompt, perception=format_claims(example.meta["claims"]))
        instruction = f"\n{self.cfg.instruction}" if self.cfg.instruction else ""
        return f"{example.prompt}{instruction}\n"

    def reference_completion(self, example: Example) -> str:
        objects, q = example.meta["objects"], example.meta["question"]
        if "claims" in example.meta:  # blind: reason from the claims given, then answer
            think = explain(q, example.meta["claims"])
            return f"<think>{think}</think><answer>{format_answer(example.reference)}</answer>"
        return (f"<perception>{format_claims(objects)}</perception>"
                f"<think>{explain(q, objects)}</think>"
                f"<answer>{format_answer(example.reference)}</answer>")

    def verify(self, completion: str, example: Example) -> Score:
        """Typed answer check plus claim checks; never raises.

        >>> env = ScenesEnv(ScenesConfig(n_sft=1, n_train=1, n_test=1))
        >>> ex = env.examples("test")[0]
        >>> env.verify(env.reference_completion(ex), ex).parts["perception_recall"]
        1.0
        >>> env.verify("<answer>banana</answer>", ex).value
        0.0
        """
        parts = dict.fromkeys(("correct", "format", "perception_precision", "perception_recall",
                               "perception_exact", "perception_solves"), 0.0)
        try:
            typed = verify_typed(completion, example.reference)
            parts["correct"] = typed.parts["correct"]
            text = perception_text(completion)
            if text is not None:
                truth = example.meta["objects"]
                claimed, bad = parse_claims(text, example.meta.get("grid", 3))
                parts["format"] = typed.parts["format"]
                parts["perception_precision"], parts["perception_recall"] = claim_scores(claimed, bad, truth)
                exact, sufficient = judge_perception(text, example)
                parts["perception_exact"], parts["perception_solves"] = float(exact), float(sufficient)
        except Exception:  # total: a verifier never raises
            pass
        return Score(parts["correct"], parts)

    def blind_answer(self, perception: str, example: Example) -> str | None:
        """MoCA's `program` blindfolded reasoner (`rewards/perception.py`): the answer the exact solver reads off
        the claims in `perception` (the text of the perception blocks), never the image; None when the claims do
        not determine one or there are none."""
        if not perception or not perception.strip():
            return None
        answer = solve(example.meta["question"], parse_claims(perception, example.meta.get("grid", 3))[0])
        return None if answer is None else format_answer(answer)

    def perception_correct(self, perception: str, example: Example) -> bool:
        """Ground truth for `pv/agreement`: the claims in `perception` are exactly the scene's objects."""
        return judge_perception(perception, example)[0]

    def perception_sufficient(self, perception: str, example: Example) -> bool:
        """The claims in `perception` let the exact solver reach the reference (the ideal PV verdict)."""
        return judge_perception(perception, example)[1]

    def sample_metrics(self, texts: list[str], examples: list[Example]) -> dict[str, float]:
        """Ground-truth attribution of a batch of completions (`attribution.attribution_metrics`): bad-seeing and
        bad-thinking shares of the failures, perception accuracy, reasoning accuracy given sufficient perception.
        The loop logs these per RL step (rollouts) and per evaluation (greedy, under `eval/`). None for `blind`
        data (there is no perception to attribute)."""
        if self.cfg.blind:
            return {}
        return attribution_metrics([attribute(t, ex) for t, ex in zip(texts, examples, strict=True)])

    def answer_key(self, completion: str) -> str | None:
        """The typed canonical answer (majority votes group "3" with "three")."""
        return typed_key(extract_answer(completion))


__all__ = ["DEFAULT_INSTRUCTION", "ScenesConfig", "ScenesEnv"]
