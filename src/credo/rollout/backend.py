"""The generation seam: one protocol, `Generator`, behind which every caller that samples from a model works
(single-turn rollouts, multi-turn tool loops, Forced Rethinking, blindfolded reasoners, evaluation), and the table
of backends that implement it.

    gen = make_generator("native", policy, tokenizer)           # once, after the model is built or loaded
    outs = gen.generate([GenerationRequest(prompt_ids, n=8)], SamplingParams(128), rng)   # outs[0]: 8 Completions
    ...                                                         # an optimizer step changes the policy
    gen.sync_weights(policy)                                    # the engine decodes with the new weights

The contract every backend keeps (the tests in `tests/test_generator_seam.py` hold a scripted backend to it):

- Token-in/token-out: a request's `prompt_ids` are used exactly as given (never re-tokenised text); images ride on
  the request, their placeholders already in `prompt_ids`. A completion's ids are the sampled ids.
- Cutting happens here, in one place: a completion ends at the first EOS id (`tokenizer.eos_ids`) or stop string
  (`SamplingParams.stop`, matched on the decoded text too, since a BPE tokenizer may spell it with other tokens),
  which it includes, with `finish_reason = "stop"`; otherwise it ends at `max_new_tokens` with `"length"`.
- Log-probs follow credo's convention, which is what `trainer.logprobs.sequence_logprobs` recomputes: per token,
  log softmax(logits / T) of the token, with T = `logprob_temperature` (default: the sampling temperature, 1 when
  greedy), taken BEFORE top-k / top-p truncation. `GenerationRequest.prompt_logprobs = k` also returns the
  log-probs of the prompt's last k tokens (vLLM's `prompt_logprobs`; Forced Rethinking scores its trigger so).
- Randomness: a request with a `seed` draws from its own stream; the others share the `rng` passed to `generate`
  (the native backend draws it in request order, one uniform per row per decode step), so a run is reproducible
  from its seed.
- `sync_weights(policy)` makes the engine decode with the policy's current weights, completely or not at all: a
  tensor that cannot be matched raises before any rollout uses the engine. The loop calls it once after each update
  stage (`time/sync`).
- Optional `sleep()`: the backend may free its own copy of the weights while the trainer updates (verl's rollout
  sleep mode), to be restored by the next `sync_weights`; the loop calls it, where present, before each update
  stage, and never generates in between.

`BACKENDS` maps a name (`rollout.backend`) to a `"module:Class"` string imported only when chosen, so `import credo`
never imports a heavy engine. A backend class is built as `Class(policy, tokenizer, **options)`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from credo.models.tokenizer import Tokenizer


@dataclass
class SamplingParams:
    """How to sample. Positional order is kept for callers: (max_new_tokens, temperature, top_p, stop, ...)."""

    max_new_tokens: int = 128  # hard cap on generated tokens per completion
    temperature: float = 1.0  # 0 means greedy (argmax); log-probs are then those of the raw logits
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens with mass >= top_p
    stop: tuple[str, ...] = ()  # stop strings; a completion ends after the string's last token
    top_k: int = 0  # keep the k most likely tokens (0: off); applied before top_p, as vLLM does
    logprob_temperature: float | None = None  # temperature of the returned log-probs (None: the sampling one)


@dataclass
class GenerationRequest:
    """One prompt and how many completions share it."""

    prompt_ids: list[int]  # the prompt's token ids, used as given
    images: list[Any] | None = None  # the prompt's images, in placeholder order (vision models)
    n: int = 1  # completions sampled from this prompt
    seed: int | None = None  # own random stream for this request (None: the `rng` of the `generate` call)
    prompt_logprobs: int = 0  # also return the log-probs of the prompt's last k tokens (k < len(prompt_ids))


@dataclass
class Completion:
    """One sampled continuation, already cut at EOS / a stop string (see the module docstring)."""

    completion_ids: torch.Tensor  # [C] long, including the EOS / stop string that ended it
    logprobs: torch.Tensor  # [C] float32, log-probs of the completion's tokens (credo's convention)
    finish_reason: str  # "stop" (EOS or stop string) | "length" (max_new_tokens)
    prompt_logprobs: torch.Tensor | None = None  # [k] float32 when the request asked for k > 0


class Generator(Protocol):
    """A generation backend (see the module docstring for the contract).

    `tokenizer` gives the EOS ids, the pad id and the stop strings' spelling; `max_len` is the longest
    prompt + completion the engine's model takes (None: no limit), `image_size` the side images are resampled to
    (tools resample their observation images to it).
    """

    tokenizer: Tokenizer
    max_len: int | None
    image_size: int

    def generate(
        self, requests: list[GenerationRequest], params: SamplingParams, rng: torch.Generator | None = None
    ) -> list[list[Completion]]:
        """`result[i]` holds `requests[i].n` completions, in order. Raises ValueError for a request the engine
        cannot serve (`prompt_logprobs` outside 0 <= k < len(prompt_ids), a prompt longer than `max_len`) and
        RuntimeError when called while asleep (`sleep` without a `sync_weights` since)."""
        ...

    def sync_weights(self, policy: Any) -> None:
        """Make the engine decode with `policy`'s current weights, completely or not at all: a tensor that cannot be
        matched raises (RuntimeError or ValueError, naming it) before any rollout uses the engine."""
        ...


BACKENDS: dict[str, str] = {
    "native": "credo.rollout.native:NativeGenerator",
    "vllm": "credo.rollout.vllm:VLLMGenerator",
}


def resolve_backend(name: str, policy: Any) -> str:
    """The backend `rollout.backend` names; "auto" is a fixed rule, no probing: "vllm" when the policy is a Hugging
    Face text model on a CUDA device and vLLM is installed (`importlib.util.find_spec`, nothing imported), else
    "native". On 2 CPU cores (SmolLM2-135M, 64 × 128 tokens, `benchmarks/rollout_engines.py`) the two engines'
    fp32 speeds are within 1.3× of each other, one or the other ahead depending on the machine and session (README),
    and vLLM's CPU build adds ≈ 20 s of import + engine start, so the CPU stays native; on GPUs vLLM is the engine
    every peer uses."""
    if name != "auto":
        return name
    model = getattr(policy, "model", None)
    text_hf = model is not None and hasattr(model, "config") and getattr(model.config, "vision_config", None) is None
    on_cuda = text_hf and next(model.parameters()).is_cuda
    return "vllm" if on_cuda and importlib.util.find_spec("vllm") is not None else "native"


def make_generator(name: str, policy: Any, tokenizer: Tokenizer, **options: Any) -> Generator:
    """The backend `name` (a `BACKENDS` key) built on `policy` and `tokenizer`; `options` go to its constructor
    (native: `max_batch`, `native`). `name` "auto" picks one by `resolve_backend`. Raises ValueError for an unknown
    name, ImportError (one line naming what to install) when the backend's module cannot be imported."""
    name = resolve_backend(name, policy)
    if name not in BACKENDS:
        raise ValueError(f"rollout.backend: unknown value {name!r}; choose one of {sorted(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    try:
        backend = getattr(importlib.import_module(module), cls)
    except ImportError as e:  # the backend's own message when it names the install command
        msg = str(e) if str(e).startswith("rollout.backend=") else f"rollout.backend={name!r} needs {module}: {e}"
        raise ImportError(msg) from e
    return backend(policy, tokenizer, **options)


def is_generator(obj: Any) -> bool:
    """Whether `obj` implements the `Generator` protocol (as opposed to a bare model)."""
    return callable(getattr(obj, "generate", None)) and callable(getattr(obj, "sync_weights", None))


def as_generator(obj: Any, tokenizer: Tokenizer | None = None) -> Generator:
    """`obj` itself when it is a `Generator`; a model with `new_cache` / `step` (a `models.policy.Decoder`, e.g. a
    TinyLM in a test or a script) wrapped in a fresh native backend otherwise. The trainer builds one generator with
    `make_generator` and passes it: wrapping an HF Llama-family model here builds its native engine each call."""
    if is_generator(obj):
        return obj
    if tokenizer is None:
        raise ValueError("a model passed instead of a Generator needs its tokenizer")
    return make_generator("native", obj, tokenizer)


def cut_at_stop_text(c: Completion, decode: Callable[[list[int]], str], stops: tuple[str, ...]) -> Completion:
    """End `c` at the first token whose text completes a stop string (finish reason "stop").

    A sampler stops on the stop strings' token sequences, which is exact for a character tokenizer; a BPE
    tokenizer can spell the same text with other tokens (`"\\n\\n"` as one token or two), so the decoded text
    is checked too and the completion cut after the shortest prefix that contains a stop string.
    """
    ids = c.completion_ids.tolist()
    if not stops or not any(s in decode(ids) for s in stops):
        return c
    n = next(k for k in range(1, len(ids) + 1) if any(s in decode(ids[:k]) for s in stops))
    return Completion(c.completion_ids[:n].clone(), c.logprobs[:n].clone(), "stop", c.prompt_logprobs)


__all__ = ["BACKENDS", "Completion", "GenerationRequest", "Generator", "SamplingParams", "as_generator",
           "cut_at_stop_text", "is_generator", "make_generator", "resolve_backend"]
