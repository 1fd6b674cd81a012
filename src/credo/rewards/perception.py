"""MoCA Perception Verification: the perception reward R_P from a blindfolded reasoner, the perception-length
penalty, and the reward combination ("Bad Seeing or Bad Thinking? Rewarding Perception for Multimodal
Reasoning", arXiv 2605.14054).

    R_P(τ) = 1[ reasoner(Q, concat of τ's <perception> blocks) answers correctly ]     # the image is withheld
    R(τ)   = R_O(τ) + λ·R_P(τ) − c·1[len(perception of τ) > L]                          # λ = reward.perception

The reasoner sees the question text and the trajectory's perception, never the image: a right answer means the
perception carried what the question needs ("bad thinking" when the outcome still failed), a wrong one means it
did not ("bad seeing"). `core.credit.moca` routes the advantage of failed trajectories by that verdict.

Reasoners (`reward.perception_reasoner`):
- `program`: the environment solves the question from the perception text itself. An environment that supports
  it implements the optional method `blind_answer(perception: str, example: Example) -> str | None`: the answer
  that follows from the perception alone (parsed by the env's own rules, e.g. a scene description), or None when
  the perception does not determine one. Exact and cheap; only synthetic environments can offer it.
- `policy`: the current policy, greedy and text-only (question + perception, image withheld).
- `model:<path>`: a separate local model directory (`credo.models.load_policy`), prompted the same way.

An environment may also implement `perception_correct(perception: str, example: Example) -> bool`, whether the
perception is right by ground truth; `pv/agreement` then measures how often R_P agrees with it.

Departures (no public code; values from a secondary note, methods.md §4): the paper's tag is `<recognition>`,
credo's is `<perception>` (the segment name in `data.SEGMENTS`); the paper's reasoner is a 14B text LLM,
credo's default is the environment's program, `policy` is the paper's fallback (not faithful: the policy judges
its own perception); the length penalty is a step −c·1[len > L] with L = 800 tokens, c = 0.1 (inferred); a
trajectory without any perception gets R_P = 0 (nothing to verify, and no free λ for skipping perception).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from credo.data import Example, Sample
from credo.envs.base import Environment
from credo.envs.blocks import PV_TEMPLATE as TEMPLATE  # the blindfolded prompt, shared with the scenes env
from credo.envs.blocks import extract_perception
from credo.envs.verifiers.answer_tag import extract_answer
from credo.rollout.backend import GenerationRequest, Generator, SamplingParams, as_generator, make_generator


def question_text(example: Example) -> str:
    """The question without the image: `example.prompt`, or the text parts of its user messages."""
    if isinstance(example.prompt, str):
        return example.prompt
    parts = []
    for msg in example.prompt:
        if msg.get("role", "user") != "user":
            continue
        content = msg.get("content", "")
        if isinstance(content, str):
            parts.append(content)
        else:  # [{"type": "text", "text": ...}, {"type": "image", ...}]
            parts += [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return "\n".join(p for p in parts if p)


class BlindReasoner(Protocol):
    """Answers `question` from the `perception` text alone (the image withheld); None when it cannot."""

    def answer(self, question: str, perception: str, example: Example) -> str | None: ...


class ProgramReasoner:
    """The environment's own solver: `env.blind_answer(perception, example)` (see the module docstring)."""

    def __init__(self, env: Environment) -> None:
        if not callable(getattr(env, "blind_answer", None)):
            raise ValueError(f"reward.perception_reasoner='program': environment {getattr(env, 'name', env)!r} has "
                             "no blind_answer(perception, example); use 'policy' or 'model:<path>'")
        self.env = env

    def answer(self, question: str, perception: str, example: Example) -> str | None:
        out = self.env.blind_answer(perception, example)  # type: ignore[attr-defined]
        return None if out is None else str(out)


class PolicyReasoner:
    """A causal LM answering greedily from a text prompt (`TEMPLATE`: question + perception, no image), through a
    generation backend (`rollout.backend.Generator`; a bare model is wrapped by `as_generator`).

    Prompts are batched; one longer than `max_prompt_tokens` (default: the generator's `max_len` minus
    `max_new_tokens`, no limit for models without one) keeps its first and last halves, so the question and
    the answer instruction survive. The answer is the last `<answer>` block of the output, else the whole
    stripped output, None when empty.
    """

    def __init__(self, generator: Any, tokenizer: Any = None, max_new_tokens: int = 64, template: str = TEMPLATE,
                 max_prompt_tokens: int | None = None) -> None:
        self.generator: Generator = as_generator(generator, tokenizer)
        self.tokenizer = tokenizer if tokenizer is not None else self.generator.tokenizer
        self.template = template
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=("</answer>",))
        if max_prompt_tokens is None and (max_len := self.generator.max_len):
            max_prompt_tokens = max_len - max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens

    def _encode(self, question: str, perception: str) -> list[int]:
        ids = self.tokenizer.encode_prompt(self.template.format(question=question, perception=perception))
        cap = self.max_prompt_tokens
        if cap is not None and len(ids) > cap:
            ids = ids[: cap - cap // 2] + ids[len(ids) - cap // 2 :]
        return ids

    def answers(self, questions: Sequence[str], perceptions: Sequence[str]) -> list[str | None]:
        """One answer per (question, perception), decoded in one greedy batch."""
        if not questions:
            return []
        requests = [GenerationRequest(self._encode(q, p)) for q, p in zip(questions, perceptions, strict=True)]
        result: list[str | None] = []
        for (c,) in self.generator.generate(requests, self.params):
            text = self.tokenizer.decode(c.completion_ids.tolist())
            ans = extract_answer(text)
            ans = (ans if ans is not None else text.replace("<answer>", "").replace("</answer>", "")).strip()
            result.append(ans or None)
        return result

    def answer(self, question: str, perception: str, example: Example) -> str | None:
        return self.answers([question], [perception])[0]


def make_reasoner(spec: str, env: Environment, generator: Any = None, tokenizer: Any = None, model_cfg: Any = None,
                  max_new_tokens: int = 64) -> BlindReasoner:
    """The blindfolded reasoner named by `reward.perception_reasoner`: program | policy | model:<path>.

    `generator` is the run's generation backend on the live policy (for `policy`; a bare policy is wrapped with
    `tokenizer`); `model_cfg` is the run's `ModelConfig` (dtype / device / chat template of a `model:` reasoner,
    which gets a native backend of its own).
    """
    if spec == "program":
        return ProgramReasoner(env)
    if spec == "policy":
        if generator is None:
            raise ValueError("reward.perception_reasoner='policy' needs the run's generator (or the policy and its "
                             "tokenizer)")
        return PolicyReasoner(generator, tokenizer, max_new_tokens)
    if spec.startswith("model:") and spec[len("model:"):]:
        from credo.models import load_policy

        model, tok = load_policy(spec[len("model:"):], model_cfg)
        model.eval().requires_grad_(False)  # on `model_cfg.device` (Hugging Face) or the CPU (TinyLM), as the policy
        # never put to sleep by the loop: packed weight copies only for the length of a call
        return PolicyReasoner(make_generator("native", model, tok, keep_packed=False), tok, max_new_tokens)
    raise ValueError(f"reward.perception_reasoner: unknown value {spec!r}; choose program, policy or model:<path>")


def _answer_all(reasoner: BlindReasoner, questions: list[str], perceptions: list[str],
                examples: list[Example]) -> tuple[list[str | None], int]:
    """The reasoner's answers (batched when it can) and the number of calls that raised (answered None)."""
    batched = getattr(reasoner, "answers", None)
    if callable(batched):
        try:
            return list(batched(questions, perceptions)), 0
        except Exception:  # a failed reasoner costs R_P, never the run; counted in pv/errors
            pass  # fall back to one call per item, so one bad item does not zero the batch
    out: list[str | None] = []
    errors = 0
    for q, p, ex in zip(questions, perceptions, examples, strict=True):
        try:
            out.append(reasoner.answer(q, p, ex))
        except Exception:  # as above
            out.append(None)
            errors += 1
    return out, errors


def _verifies(env: Environment, answer: str | None, example: Example) -> bool:
    """Whether `<answer>{answer}</answer>` passes the env's verifier (a verifier that raises: no)."""
    if answer is None:
        return False
    try:
        return bool(env.verify(f"<answer>{answer}</answer>", example).correct)
    except Exception:  # verifiers are total; a broken one must not stop training
        return False


def perception_length(perception: str, tokenizer: Any = None) -> int:
    """Length of the perception text: tokens with a tokenizer (the paper's unit), else characters."""
    return len(tokenizer.encode(perception)) if tokenizer is not None else len(perception)


def length_penalty(lengths: torch.Tensor, max_len: int, penalty: float) -> torch.Tensor:
    """c·1[len > L] per sample [B]: the MoCA minimality penalty on over-long perception (inferred: L = 800, c = 0.1)."""
    return (lengths > max_len).float() * penalty  # [B]


def combine_rewards(r_outcome: torch.Tensor, r_perception: torch.Tensor, penalty: torch.Tensor,
                    lam: float) -> torch.Tensor:
    """R = R_O + λ·R_P − penalty, elementwise over [B] (MoCA's reward; λ = reward.perception, inferred 0.5)."""
    return r_outcome + lam * r_perception - penalty  # [B]


def perception_rewards(
    samples: list[Sample], examples_by_id: dict[str, Example], env: Environment, reasoner: BlindReasoner, cfg: Any,
    tokenizer: Any = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """R_P per sample [B] (1.0 / 0.0) and metrics under `pv/`; `cfg` is a `RewardConfig`.

    R_P = 1 when the reasoner's answer to the question, given only the sample's perception, passes the env's
    verifier as `<answer>{answer}</answer>`; 0 without perception, without an answer, or when the reasoner or
    the verifier raised. Metrics: `pv/rate` (mean R_P), `pv/agreement` (share with R_P equal to the env's
    `perception_correct`, only when the env has it), `pv/agreement_sufficient` (the same against the env's
    `perception_sufficient`: the perception determines the right answer), `pv/length_penalized` (share over
    `perception_max_len`), `pv/perception_len` (mean length), `pv/empty` (share without perception),
    `pv/errors` (reasoner calls that raised).
    """
    examples = [examples_by_id[s.example_id] for s in samples]
    perceptions = [extract_perception(s.text) for s in samples]
    has = [i for i, p in enumerate(perceptions) if p]
    answers, errors = _answer_all(reasoner, [question_text(examples[i]) for i in has], [perceptions[i] for i in has],
                                  [examples[i] for i in has])
    r_p = torch.zeros(len(samples))
    for i, ans in zip(has, answers, strict=True):
        r_p[i] = float(_verifies(env, ans, examples[i]))
    lengths = torch.tensor([perception_length(p, tokenizer) for p in perceptions], dtype=torch.float)
    n = max(1, len(samples))
    metrics = {
        "pv/rate": float(r_p.sum()) / n,
        "pv/length_penalized": float((lengths > cfg.perception_max_len).sum()) / n,
        "pv/perception_len": float(lengths.sum()) / n,
        "pv/empty": (len(samples) - len(has)) / n,
        "pv/errors": float(errors),
    }
    for key, method in (("pv/agreement", "perception_correct"), ("pv/agreement_sufficient", "perception_sufficient")):
        truth = getattr(env, method, None)
        if callable(truth):
            agree = 0
            for i, (p, ex) in enumerate(zip(perceptions, examples, strict=True)):
                try:
                    agree += bool(truth(p, ex)) == bool(r_p[i])
                except Exception:  # a diagnostic only; a failure counts as disagreement
                    pass
            metrics[key] = agree / n
    return r_p, metrics
