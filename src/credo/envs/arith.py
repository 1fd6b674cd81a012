"""The `arith` sandbox: chains of integer operations evaluated left to right.

A problem of depth d is `a0 op1 b1 … opd bd`, evaluated left to right (no precedence), with every intermediate
value kept in [0, value_max]. Every chain is padded with identity operations `+0`, at random places, to the same
`width`, so prompts and traces have the same shape at every depth and a deeper chain is a new composition of
known steps (more real operations, fewer `+0`), not a longer input than any seen before:

    7+0*7+7+0+9        (depth 3, width 5)

Why: with unpadded chains, a TinyLM warm-started on depths 1-3 wrote exactly 3 operation lines on 1569 of
1600 depth-4 samples (the few "correct" ones were mostly lucky coincidences), so RL at depth 4 had no signal.

The reference trace applies one operation per line, with a small vocabulary of planning phrases ("first",
"then", "check:") so that planning tokens exist for HICRA:

    first 7+0=7
    then 7*7=49
    then 49+7=56
    then 56+0=56
    then 56+9=65
    check: done
    <answer>65</answer>

Option `direct_frac` (`env.options.direct_frac`): that fraction of the warm-start traces give the answer at once,
`<answer>65</answer>`, without working. The warm start then knows two ways to reply and no rule for choosing
between them. At the RL depth answering at once is almost always wrong (4% right for the default warm start,
against about half when it works the chain out), so the first token is a planning decision whose credit RL must
find (default 0.5; 0 gives pure step-by-step traces, the sandbox of docs/arith-rl-log.md §1-4).

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
    width: int = 5  # every chain is padded with `+0` operations to this many (0: no padding)
    seed: int = 0  # seeds the problem generator (independent of the run seed)
    direct_frac: float = 0.5  # share of warm-start traces that answer at once, without working


OPTIONS = {"direct_frac"}  # arith settings passed as env.options (the rest are EnvConfig fields)


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
    """The prompt text, e.g. `7*7+0+7`."""
    return "".join(f"{op}{b}" for op, b in steps)


def pad_to_width(rng: random.Random, steps: list[tuple[str, int]], width: int) -> list[tuple[str, int]]:
    """Insert `+0` (identity) operations at random places until the chain has `width` operations."""
    steps = list(steps)
    while len(steps) - 1 < width:
        steps.insert(rng.randint(1, len(steps)), ("+", 0))
    return steps


def trace(steps: list[tuple[str, int]]) -> str:
    """The step-by-step reference completion (without the EOS token): one operation per line."""
    values = evaluate(steps)
    lines = []
    for i, (op, b) in enumerate(steps[1:]):
        word = "first" if i == 0 else "then"
        lines.append(f"{word} {values[i]}{op}{b}={values[i + 1]}")
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
        coin = random.Random(f"arith/{c.seed}/{tag}/direct")  # own stream: problems do not depend on direct_frac
        out: list[Example] = []
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 50 * n:
                raise ValueError(f"arith: cannot draw {n} {tag} problems at depths {depths} outside the test set")
            depth = depths[len(out) % len(depths)]
            steps = pad_to_width(rng, make_problem(rng, depth, c.operand_max, c.value_max), c.width)
            expr = expression(steps)
            if expr in exclude:  # repeats within a split are allowed; test prompts never leak
                continue
            out.append(
                Example(
                    id=f"arith-{tag}-{len(out)}",
                    prompt=expr,
                    reference=evaluate(steps)[-1],
                    meta={"depth": depth, "steps": steps, "direct": tag == "sft" and coin.random() < c.direct_frac},
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
        steps = example.meta["steps"]
        return f"<answer>{evaluate(steps)[-1]}</answer>" if example.meta.get("direct") else trace(steps)

    def verify(self, completion: str, example: Example) -> Score:
        return verify_integer(completion, example.reference)

    def first_error(self, completion: str, example: Example) -> tuple[int, int] | None:
        """The step checker behind `rl.credit = "first_error"`: the character span [start, end) of the first line
        of `completion` that differs from the reference trace's line at the same place (a wrong operand, a slip
        in the arithmetic, a skipped or extra step, a malformed line, an early or direct answer), or None when
        every line up to the answer matches. Lines after the reference's last line are not checked; a completion
        that ends early, every line right, is wrong at its end: the span (len, len), the token that ended it.

        >>> env = ArithEnv()
        >>> ex = Example(id="x", prompt="7*7", reference=49, meta={"steps": [("", 7), ("*", 7)]})
        >>> env.first_error("first 7*7=48\\ncheck: done\\n<answer>48</answer>", ex)
        (0, 13)
        >>> env.first_error("first 7*7=49\\ncheck: done\\n<answer>49</answer>", ex) is None
        True
        """
        reference = trace(example.meta["steps"]).split("\n")  # the worked trace, whatever the warm start saw
        pos = 0
        for want, line in zip(reference, completion.split("\n"), strict=False):
            if line != want:
                return pos, min(pos + len(line) + 1, len(completion))  # the line with its newline
            pos += len(line) + 1
        return None if completion.count("\n") + 1 >= len(reference) else (len(completion), len(completion))


def from_config(cfg) -> ArithEnv:  # cfg: trainer.config.EnvConfig
    options = dict(getattr(cfg, "options", None) or {})
    unknown = set(options) - OPTIONS
    if unknown:
        raise ValueError(f"arith: unknown env.options {sorted(unknown)}; available: {', '.join(sorted(OPTIONS))}")
    direct_frac = float(options.get("direct_frac", ArithConfig.direct_frac))
    if not 0.0 <= direct_frac <= 1.0:
        raise ValueError(f"arith: env.options.direct_frac must be in [0, 1], got {options['direct_frac']!r}")
    return ArithEnv(
        ArithConfig(
            sft_depths=tuple(cfg.sft_depths),
            rl_depths=tuple(cfg.rl_depths),
            operand_max=cfg.operand_max,
            value_max=cfg.value_max,
            width=cfg.width,
            n_sft=cfg.n_sft,
            n_train=cfg.n_train,
            n_test=cfg.n_test,
            seed=cfg.seed,
            direct_frac=direct_frac,
        )
    )
