"""Strategic grams (HICRA, arXiv 2509.03646, §3): mine planning phrases, mark planning tokens, measure them.

Pipeline, as the trainer uses it (`docs/algorithms.md`, HICRA rows):

1. **Words.** A completion is split on whitespace; a word's key is its lower-cased text without surrounding
   punctuation. A word holding a digit, or no letter at all (``7+0=7``, ``=``, ``<answer>65</answer>``), is
   execution content and gets the wildcard key ``#``: strategic grams are about the moves, not the numbers.
2. **Mining.** All word 3-, 4- and 5-grams of the *correct* solutions with at least one non-wildcard word are
   ranked by document frequency (how many solutions contain them); a gram is strategic when at least
   ``min_support`` of the solutions (and at least 2) contain it. The paper clusters grams by sentence embeddings
   first and ranks clusters; credo groups exact grams by default, and clusters only when an embedding model
   is given (``embedding_clusterer``: a local sentence-transformers directory, never a download).
3. **Planning tokens.** The non-wildcard words of every match of a strategic gram (or a seed phrase) in a
   completion are planning text; a token is a planning token when its characters overlap planning text.
   Token character offsets come from the sampled ids themselves (cumulative decoded lengths), not from
   re-tokenising the text, which can give other ids.

On arith's reference trace the mined grams are ``first # then``, ``# then #``, ``check done #``, ..., and the
planning words are ``first``, ``then``, ``check:`` and ``done``:

>>> sg = StrategicGrams(min_docs=2)
>>> sg.update(["first 7+0=7\\nthen 7*7=49\\ncheck: done\\n<answer>49</answer>"] * 2, step=0)
True
>>> sorted({w for g in sg.grams for w in g} - {WILDCARD})
['check', 'done', 'first', 'then']
"""

from __future__ import annotations

import math
import re
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from credo.core.stats import masked_mean
from credo.data import Sample
from credo.models.tokenizer import CharTokenizer

Gram = tuple[str, ...]
WILDCARD = "#"  # the key of an execution word (digits, operators, formulas)
STRIP = ".,;:!?\"'`()[]{}"  # punctuation dropped from both ends of a word before it becomes a key
_WORD = re.compile(r"\S+")

# Planning vocabulary of the sandboxes, matched from step 0 (before any correct rollout has been mined).
SEEDS: dict[str, tuple[str, ...]] = {"arith": ("first", "then", "check:")}


def word_key(word: str) -> str:
    """The key of one whitespace-delimited word: lower case, outer punctuation stripped, or ``#`` for execution
    content (a digit, or no letter).

    >>> [word_key(w) for w in ["Then", "check:", "7*7=49", "<answer>5</answer>", "=", "approach,"]]
    ['then', 'check', '#', '#', '#', 'approach']
    """
    core = word.lower().strip(STRIP)
    if not core or any(c.isdigit() for c in core) or not any(c.isalpha() for c in core):
        return WILDCARD
    return core


def words(text: str) -> list[tuple[str, int, int]]:
    """``(key, start, end)`` of every whitespace-delimited word of ``text`` (character offsets)."""
    return [(word_key(m.group()), m.start(), m.end()) for m in _WORD.finditer(text)]


def phrase_key(phrase: str) -> Gram:
    """A phrase (a seed such as ``"check:"`` or ``"let's try a"``) as a gram of word keys."""
    return tuple(k for k, _, _ in words(phrase))


def doc_grams(keys: Sequence[str], ngram: Iterable[int]) -> set[Gram]:
    """The distinct n-grams of one document's word keys, for every n in ``ngram``, that hold a real word."""
    out: set[Gram] = set()
    for n in ngram:
        for i in range(len(keys) - n + 1):
            gram = tuple(keys[i : i + n])
            if any(k != WILDCARD for k in gram):
                out.add(gram)
    return out


def leader_clusters(emb: Tensor, threshold: float) -> list[int]:
    """Greedy leader clustering of row vectors ``emb`` [N, D] (in rank order): a row joins the first earlier
    leader with cosine similarity ≥ ``threshold``, else it leads a new cluster. Returns a label per row.

    >>> leader_clusters(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), 0.9)
    [0, 0, 1]
    """
    unit = torch.nn.functional.normalize(emb.float(), dim=-1)  # [N, D]
    leaders: list[int] = []
    labels: list[int] = []
    for i in range(unit.shape[0]):
        sims = unit[leaders] @ unit[i] if leaders else unit.new_zeros(0)  # [n_leaders]
        if sims.numel() and float(sims.max()) >= threshold:
            labels.append(labels[leaders[int(sims.argmax())]])
        else:
            labels.append(len(leaders))
            leaders.append(i)
    return labels


def embedding_clusterer(path: str | Path, threshold: float = 0.85) -> Callable[[list[str]], list[int]] | None:
    """A gram clusterer from a sentence-transformers model saved at the local directory ``path``, or None when
    the directory or the package is missing (then mining groups exact grams). Nothing is downloaded."""
    if not path or not Path(path).is_dir():
        return None
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    model = SentenceTransformer(str(path), local_files_only=True)

    def cluster(texts: list[str]) -> list[int]:
        return leader_clusters(torch.as_tensor(model.encode(texts)), threshold)

    return cluster


def mine_grams(
    texts: Iterable[str],
    ngram: Iterable[int] = (3, 4, 5),
    min_support: float = 0.2,
    min_count: int = 2,
    cluster: Callable[[list[str]], list[int]] | None = None,
) -> dict[Gram, int]:
    """Strategic grams of the (correct) solutions ``texts`` and their document frequency, most frequent first.

    A gram (exact grouping) or a cluster of grams (``cluster``: gram strings → labels) is kept when at least
    ``max(min_count, ⌈min_support · N⌉)`` of the N solutions contain it; every gram of a kept cluster is returned
    with the cluster's document frequency. Only grams in ≥ ``min_count`` solutions are clustered.
    """
    docs = [doc_grams([k for k, _, _ in words(t)], ngram) for t in texts]
    need = max(min_count, math.ceil(min_support * len(docs)))
    df = Counter(g for d in docs for g in d)
    cand = sorted((g for g, c in df.items() if c >= min_count), key=lambda g: (-df[g], g))
    if cluster is None or not cand:
        return {g: df[g] for g in cand if df[g] >= need}
    labels = cluster([" ".join(g) for g in cand])
    members: dict[int, set[Gram]] = {}
    for g, lab in zip(cand, labels, strict=True):
        members.setdefault(lab, set()).add(g)
    cdf = {lab: sum(1 for d in docs if not d.isdisjoint(m)) for lab, m in members.items()}
    kept = {g: cdf[lab] for g, lab in zip(cand, labels, strict=True) if cdf[lab] >= need}
    return dict(sorted(kept.items(), key=lambda kv: (-kv[1], kv[0])))


class StrategicGrams:
    """The current strategic grams: seed phrases plus grams mined from a rolling buffer of correct solutions.

    The trainer calls ``update(correct_texts, step)`` once per step; every ``refresh`` steps (step 0 included)
    the grams are re-mined from the last ``max_docs`` correct solutions, provided there are ``min_docs`` of
    them (else the previous grams stay). ``refresh = 0`` never mines: only the seeds mark planning tokens.
    """

    def __init__(
        self,
        ngram: Iterable[int] = (3, 4, 5),
        min_support: float = 0.2,
        refresh: int = 10,
        seeds: Iterable[str] = (),
        max_docs: int = 512,
        min_docs: int = 8,
        cluster: Callable[[list[str]], list[int]] | None = None,
    ) -> None:
        self.ngram = tuple(ngram)
        self.min_support, self.refresh_every, self.min_docs = min_support, refresh, min_docs
        self.seeds: tuple[Gram, ...] = tuple(k for k in (phrase_key(s) for s in seeds) if k)
        self.cluster = cluster
        self.docs: deque[str] = deque(maxlen=max_docs)
        self.grams: dict[Gram, int] = {}  # mined gram → document frequency at the last refresh
        self._index()

    def _index(self) -> None:
        self.patterns: set[Gram] = {*self.seeds, *self.grams}
        self._lengths = sorted({len(p) for p in self.patterns})

    def update(self, correct_texts: Iterable[str], step: int) -> bool:
        """Add correct solutions to the buffer; re-mine when ``step`` is a multiple of ``refresh``.
        Returns whether the grams were re-mined."""
        self.docs.extend(correct_texts)
        if self.refresh_every > 0 and step % self.refresh_every == 0:
            return self.refresh()
        return False

    def refresh(self) -> bool:
        """Re-mine the grams from the buffer (when it holds ``min_docs`` solutions)."""
        if len(self.docs) < self.min_docs:
            return False
        self.grams = mine_grams(self.docs, self.ngram, self.min_support, cluster=self.cluster)
        self._index()
        return True

    def matches(self, text: str) -> list[tuple[Gram, int, int]]:
        """Every occurrence of a pattern (seed or mined gram) in ``text`` as ``(gram, first word, end word)``."""
        return self._matches([k for k, _, _ in words(text)])

    def _matches(self, keys: list[str]) -> list[tuple[Gram, int, int]]:
        return [
            (gram, i, i + n)
            for n in self._lengths
            for i in range(len(keys) - n + 1)
            if (gram := tuple(keys[i : i + n])) in self.patterns
        ]

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the planning words of ``text``: the non-wildcard words of every match."""
        ws = words(text)
        hits = self._matches([k for k, _, _ in ws])
        marked = {j for gram, i, _ in hits for j, k in enumerate(gram, start=i) if k != WILDCARD}
        return [(ws[j][1], ws[j][2]) for j in sorted(marked)]

    def state_dict(self) -> dict[str, Any]:
        return {"grams": [[list(g), c] for g, c in self.grams.items()], "docs": list(self.docs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grams = {tuple(g): int(c) for g, c in state["grams"]}
        self.docs.clear()
        self.docs.extend(state["docs"])
        self._index()


# ---- planning tokens --------------------------------------------------------------------------------------


def _decode_many(tokenizer: Any, seqs: list[list[int]]) -> list[str]:
    """``tokenizer.decode`` of each sequence. HFTokenizer: one batched call into the Rust tokenizer (transformers'
    own ``batch_decode`` loops in Python, about 3× slower), unless the tokenizer post-processes spaces."""
    tk = getattr(tokenizer, "tk", None)
    backend = getattr(tk, "backend_tokenizer", None)
    if backend is not None and not getattr(tk, "clean_up_tokenization_spaces", False):
        return backend.decode_batch(seqs, skip_special_tokens=True)
    if tk is not None and hasattr(tk, "batch_decode"):
        return tk.batch_decode(seqs, skip_special_tokens=True)
    return [tokenizer.decode(s) for s in seqs]


def token_char_ends(ids: Sequence[int], tokenizer: Any, window: int = 6) -> list[int]:
    """End offset of each token in the decoded completion: token k covers ``text[ends[k-1]:ends[k]]``.

    CharTokenizer: one character per non-special id. Otherwise token k's length is
    ``len(decode(ids[p:k+1])) − len(decode(ids[p:k]))`` with ``p = k − window``: a left context of a few tokens
    keeps SentencePiece's leading space and BPE byte merges right, and trailing U+FFFD (a character whose bytes are
    not all decoded yet) is not counted, so the character goes to the token that completes it.
    """
    ids = [int(i) for i in ids]
    if isinstance(tokenizer, CharTokenizer):
        n_special = len(tokenizer.itos) - len(tokenizer.chars)
        lens = [len(tokenizer.itos[i]) if n_special <= i < len(tokenizer.itos) else 0 for i in ids]
    else:
        seqs = [ids[max(0, k - window) : k + e] for k in range(len(ids)) for e in (0, 1)]
        dec = [s.rstrip("\ufffd") for s in _decode_many(tokenizer, seqs)]
        lens = [max(0, len(dec[2 * k + 1]) - len(dec[2 * k])) for k in range(len(ids))]
    ends, total = [], 0
    for n in lens:
        total += n
        ends.append(total)
    return ends


def planning_mask(text: str, completion_ids: Tensor | Sequence[int], tokenizer: Any, grams: StrategicGrams) -> Tensor:
    """Planning tokens of one completion: BoolTensor [C], true where a token overlaps a planning word of ``text``
    (``text`` = the decoded ``completion_ids``, as in ``Sample.text``)."""
    ids = completion_ids.tolist() if isinstance(completion_ids, Tensor) else list(completion_ids)
    if not ids:
        return torch.zeros(0, dtype=torch.bool)
    ends = torch.tensor(token_char_ends(ids, tokenizer)).clamp(max=len(text))  # [C]
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])  # [C]
    chars = torch.zeros(len(text), dtype=torch.long)  # [L]
    for s, e in grams.spans(text):
        chars[s:e] = 1
    cum = torch.cat([chars.new_zeros(1), chars.cumsum(0)])  # [L + 1]: planning characters before each offset
    return (cum[ends] - cum[starts]) > 0  # [C]


def apply_hicra(samples: Sequence[Sample], grams: StrategicGrams, tokenizer: Any) -> Tensor:
    """Planning masks of a rollout batch, BoolTensor [B, T] laid out as ``collate(samples)`` lays out its tensors
    (prompt first, right padding), restricted to ``loss_mask`` tokens: the ``planning_mask`` of ``HicraParams``."""
    T = max((len(s.prompt_ids) + len(s.completion_ids) for s in samples), default=0)
    out = torch.zeros(len(samples), T, dtype=torch.bool)  # [B, T]
    for i, s in enumerate(samples):
        P, C = len(s.prompt_ids), len(s.completion_ids)
        text = s.text or tokenizer.decode(s.completion_ids.tolist())
        out[i, P : P + C] = planning_mask(text, s.completion_ids, tokenizer, grams) & (s.loss_mask > 0)
    return out


# ---- metrics ---------------------------------------------------------------------------------------------


def entropy_split(entropy: Tensor, planning: Tensor, loss_mask: Tensor) -> dict[str, float]:
    """Mean token entropy [B, T] over planning tokens and over execution tokens (the other ``loss_mask`` tokens);
    0 when a set is empty. HICRA's point: the overall mean is dominated by execution tokens."""
    m = loss_mask.to(entropy.dtype)  # [B, T]
    p = planning.to(entropy.dtype) * m  # [B, T]
    return {
        "hicra/entropy_planning": float(masked_mean(entropy, p)),
        "hicra/entropy_execution": float(masked_mean(entropy, m - p)),
    }


def semantic_entropy(occurrences: Iterable[Iterable[Hashable]]) -> float:
    """HICRA's semantic entropy H = −Σ_k p_k log p_k, p_k = count(SG_k) / Σ_j count(SG_j), counting strategic-gram
    occurrences over all responses (``occurrences``: the grams found in each response). 0 when none occur."""
    counts = Counter(g for occ in occurrences for g in occ)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


def hicra_metrics(samples: Sequence[Sample], grams: StrategicGrams, planning: Tensor) -> dict[str, float]:
    """Batch diagnostics: semantic entropy over all responses, the share of trained completion tokens that are
    planning tokens, and the number of mined grams."""
    n_tokens = sum(float(s.loss_mask.sum()) for s in samples)
    return {
        "hicra/semantic_entropy": semantic_entropy([g for g, _, _ in grams.matches(s.text)] for s in samples),
        "hicra/planning_frac": float(planning.sum()) / max(1.0, n_tokens),
        "hicra/n_grams": float(len(grams.grams)),
    }
