"""The `arith` sandbox: chains of integer operations evaluated left to right.

A problem of depth d is `a0 op1 b1 … opd bd`, e.g. `7+3*2-5`, evaluated left to right (no precedence), with
every intermediate value kept in [0, value_max]. The reference trace computes one operation per line and uses a
small vocabulary of planning phrases ("first", "then", "check:") so that planning tokens exist for HICRA:

    first 7+3=10 |*2-5
    then 10*2=20 |-5
    then 20-5=15 |
    check: done
    <answer>15</answer>

The warm start sees depths `sft_depths`; RL trains and is evaluated on `rl_depths` (by default one step
deeper: the edge of competence). Splits are seeded and disjoint: no test prompt appears in a training split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from credo.data import Example
from credo.envs.base import Score
from credo.envs.verifiers.answer_tag import verify_integer

OPS = "+-*"


@dataclass
class ArithConfig:
    sft_depths: tuple[int, ...] = (1, 2, 3)  # depths in the warm-start data
    rl_depths: tuple[int, ...] = (4,)  # depths RL trains and is evaluated on
    operand_max: int = 9  # operands b are drawn from 1..operand_max (a0 from 0..operand_max)
    value_max: int = 99  # every intermediate value stays in [0, value_max]
    n_sft: int = 6000  # warm-start examples
    n_train: int = 4000  # RL training prompts
    n_test: int = 200  # held-out prompts (RL depths)
    seed: int = 0  # seeds the problem generator (independent of the run seed)


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def make_problem(rng: random.Random, depth: int, operand_max: int, value_max: int) -> list[tuple[str, int]]:
    """A start value and `depth` (op, operand) pairs whose running values stay in [0, value_max]."""
    value = rng.randint(0, operand_max)
    steps: list[tuple[str, int]] = [("", value)]
    for _ in range(depth):
        while True:
            op, b = rng.choice(OPS), rng.randint(1, operand_max)
            nxt = _apply(value, op, b)
            if 0 <= nxt <= value_max and not (op == "*" and b == 1):
                break
        steps.append((op, b))
        value = nxt
    return steps


def evaluate(steps: list[tuple[str, int]]) -> list[int]:
    """Running values: [a0, a0 op1 b1, ...]."""
    values = [steps[0][1]]
    for op, b in steps[1:]:
        values.append(_apply(values[-1], op, b))
    return values


def expression(steps: list[tuple[str, int]]) -> str:
    return "".join(f"{op}{b}" for op, b in steps)


def trace(steps: list[tuple[str, int]]) -> str:
    """The step-by-step reference completion (without the EOS token).

    Each line applies the first remaining operation and restates the operations still to do after `|`,
    so the next operation and the stopping point are always readable on the previous line.
    """
    values = evaluate(steps)
    lines = []
    for i, (op, b) in enumerate(steps[1:]):
        word = "first" if i == 0 else "then"
        rest = "".join(f"{o}{x}" for o, x in steps[i + 2 :])
        lines.append(f"{word} {values[i]}{op}{b}={values[i + 1]} |{rest}")
    lines.append("check: done")
    lines.append(f"<answer>{values[-1]}</answer>")
    return "\n".join(lines)


class ArithEnv:
    """Environment over arith problems; see the module docstring."""

    name = "arith"

    def __init__(self, cfg: ArithConfig | None = None) -> None:
        self.cfg = cfg or ArithConfig()
        self._splits: dict[str, list[Example]] = {}

    def _generate(self, tag: str, depths: tuple[int, ...], n: int, exclude: set[str]) -> list[Example]:
        c = self.cfg
        rng = random.Random(f"arith/{c.seed}/{tag}")
        out: list[Example] = []
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 50 * n:
                raise ValueError(f"arith: cannot draw {n} {tag} problems at depths {depths} outside the test set")
            depth = depths[len(out) % len(depths)]
            steps = make_problem(rng, depth, c.operand_max, c.value_max)
            expr = expression(steps)
            if expr in exclude:  # repeats within a split are allowed; test prompts never leak
                continue
            out.append(
                Example(
                    id=f"arith-{tag}-{len(out)}",
                    prompt=expr,
                    reference=evaluate(steps)[-1],
                    meta={"depth": depth, "steps": steps},
                    env=self.name,
                )
            )
        return out

    @staticmethod
    def _dedup(examples: list[Example], n: int) -> list[Example]:
        """The first `n` examples with distinct prompts (a held-out set counts each problem once)."""
        seen: dict[str, Example] = {}
        for e in examples:
            seen.setdefault(e.prompt, e)
        if len(seen) < n:
            raise ValueError(f"arith: only {len(seen)} distinct test problems, {n} requested")
        return list(seen.values())[:n]

    def examples(self, split: str) -> list[Example]:
        if split not in ("sft", "train", "test"):
            raise ValueError(f"arith: unknown split {split!r} (expected sft, train or test)")
        if not self._splits:
            c = self.cfg
            test = self._dedup(self._generate("test", c.rl_depths, 4 * c.n_test, set()), c.n_test)
            held = {e.prompt for e in test}
            self._splits = {
                "test": test,
                "train": self._generate("train", c.rl_depths, c.n_train, held),
                "sft": self._generate("sft", c.sft_depths, c.n_sft, held),
            }
        return self._splits[split]

    def render_prompt(self, example: Example) -> str:
        return f"{example.prompt}\n"

    def reference_completion(self, example: Example) -> str:
        return trace(example.meta["steps"])

    def verify(self, completion: str, example: Example) -> Score:
        return verify_integer(completion, example.reference)


def from_config(cfg) -> ArithEnv:  # cfg: trainer.config.EnvConfig
    return ArithEnv(
        ArithConfig(
            sft_depths=tuple(cfg.sft_depths),
            rl_depths=tuple(cfg.rl_depths),
            operand_max=cfg.operand_max,
            value_max=cfg.value_max,
            n_sft=cfg.n_sft,
            n_train=cfg.n_train,
            n_test=cfg.n_test,
            seed=cfg.seed,
        )
    )
