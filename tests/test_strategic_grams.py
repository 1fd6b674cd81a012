"""Strategic grams: mining from correct solutions, refresh, and the map from grams to planning tokens."""

import pytest
import torch

from credo.analysis.strategic_grams import (
    SEEDS,
    WILDCARD,
    StrategicGrams,
    apply_hicra,
    embedding_clusterer,
    mine_grams,
    planning_mask,
    token_char_ends,
    word_key,
)
from credo.data import SEGMENTS, Sample
from credo.envs.arith import ArithConfig, ArithEnv
from credo.models.tokenizer import CharTokenizer

TRACE = "first 7+0=7\nthen 7*7=49\nthen 49+7=56\ncheck: done\n<answer>56</answer>"


@pytest.fixture(scope="module")
def arith_traces():
    env = ArithEnv(ArithConfig(n_sft=200, n_train=16, n_test=4, direct_frac=0.0))
    return [env.reference_completion(e) for e in env.examples("sft")]


def _planning_chars(text: str, words: set[str]) -> set[int]:
    """Character positions of the whitespace-delimited words of `text` that are in `words`."""
    out, pos = set(), 0
    for w in text.split():
        start = text.index(w, pos)
        pos = start + len(w)
        if w in words:
            out |= set(range(start, pos))
    return out


def test_word_keys():
    assert [word_key(w) for w in ["First", "check:", "(then", "49+7=56", "approach,", "=", "<answer>5</answer>"]] == [
        "first", "check", "then", WILDCARD, "approach", WILDCARD, WILDCARD,
    ]


def test_miner_finds_arith_planning_vocabulary(arith_traces):
    grams = mine_grams(arith_traces)
    assert grams and set(grams.values()) == {len(arith_traces)}  # every kept gram is in every trace
    assert all(3 <= len(g) <= 5 for g in grams)
    words = {w for g in grams for w in g} - {WILDCARD}
    assert words == {"first", "then", "check", "done"}  # the seed vocabulary ("check:" → key "check") + "done"
    assert {word_key(s) for s in SEEDS["arith"]} <= words


def test_mined_grams_mark_only_planning_characters(arith_traces):
    sg = StrategicGrams(refresh=1)  # no seeds: everything comes from the mined grams
    assert sg.update(arith_traces, step=0)
    tok = CharTokenizer()
    for text in arith_traces[:20]:
        ids = tok.encode(text) + [tok.eos_id]
        mask = planning_mask(text, ids, tok, sg)
        assert mask.shape == (len(ids),) and not mask[-1]
        assert set(torch.nonzero(mask).flatten().tolist()) == _planning_chars(text, {"first", "then", "check:", "done"})


def test_mining_ranks_by_document_frequency_with_min_support():
    texts = [
        "let us try a different approach 1",
        "so let us try a different approach now",
        "let us try a different approach 7",
        "we can use the fact that 2",
        "we can use the fact here",
        "nothing shared at all",
    ]
    grams = mine_grams(texts, ngram=[3], min_support=0.5)  # need max(2, ⌈0.5 · 6⌉) = 3 solutions
    assert grams == {("let", "us", "try"): 3, ("try", "a", "different"): 3, ("a", "different", "approach"): 3,
                     ("us", "try", "a"): 3}
    low = mine_grams(texts, ngram=[3, 5], min_support=0.0)  # floor of 2 solutions
    assert low[("we", "can", "use")] == 2 and ("let", "us", "try", "a", "different") in low
    assert list(low.values()) == sorted(low.values(), reverse=True)
    assert low[("different", "approach", WILDCARD)] == 2  # "approach 1", "approach 7": numbers are wildcards
    assert ("nothing", "shared", "at") not in low  # in one solution only
    assert mine_grams(["7 + 8 = 15", "7 + 8 = 15"], ngram=[3], min_support=0.0) == {}  # all wildcards


def test_clustering_ranks_clusters_by_document_frequency():
    texts = ["try another way", "try another way", "attempt another route", "attempt another route"]
    assert mine_grams(texts, ngram=[3], min_support=0.75) == {}  # each exact gram is in 2 < 3 solutions
    one = mine_grams(texts, ngram=[3], min_support=0.75, cluster=lambda grams: [0] * len(grams))
    assert one == {("attempt", "another", "route"): 4, ("try", "another", "way"): 4}
    apart = mine_grams(texts, ngram=[3], min_support=0.75, cluster=lambda grams: list(range(len(grams))))
    assert apart == {}


def test_embedding_clusterer_falls_back_without_a_local_model(tmp_path):
    assert embedding_clusterer("") is None
    assert embedding_clusterer(tmp_path / "no-such-model") is None


def test_refresh_cadence_min_docs_and_state(arith_traces):
    sg = StrategicGrams(refresh=5, min_docs=8, max_docs=50, seeds=SEEDS["arith"])
    assert sg.seeds == (("first",), ("then",), ("check",))
    assert not sg.update(arith_traces[:3], step=0)  # too few correct solutions: keep the seeds only
    assert sg.grams == {} and sg.patterns == set(sg.seeds)
    assert not sg.update(arith_traces[3:10], step=3)  # not a refresh step
    assert sg.update(arith_traces[10:100], step=5)
    assert len(sg.docs) == 50 and sg.grams and set(sg.grams.values()) == {50}
    clone = StrategicGrams(refresh=5, seeds=SEEDS["arith"])
    clone.load_state_dict(sg.state_dict())
    assert clone.grams == sg.grams and list(clone.docs) == list(sg.docs) and clone.patterns == sg.patterns
    assert not StrategicGrams(refresh=0, min_docs=1).update(arith_traces, step=0)  # refresh 0: never mine


def test_seed_matches_and_spans():
    sg = StrategicGrams(seeds=["check:", "let us try"], refresh=0)
    text = "Let us try 3 then check: 5. let us go"
    assert [g for g, _, _ in sg.matches(text)] == [("check",), ("let", "us", "try")]
    assert [text[s:e] for s, e in sg.spans(text)] == ["Let", "us", "try", "check:"]


def test_char_tokenizer_offsets_skip_specials():
    tok = CharTokenizer()
    ids = [tok.bos_id, *tok.encode("ab"), tok.eos_id, tok.pad_id]
    assert token_char_ends(ids, tok) == [0, 1, 2, 2, 2]


@pytest.fixture(scope="module")
def bpe():
    pytest.importorskip("transformers")
    from credo.models.hf import HFTokenizer
    from credo.models.tiny_hf import make_tokenizer

    return HFTokenizer(make_tokenizer(), chat=False)


def _check_prefix_property(ids, tok):
    """text[:ends[k]] is the decoded prefix ids[:k+1], for every k, and ends[-1] is the whole text."""
    text = tok.decode(ids)
    ends = token_char_ends(ids, tok)
    assert ends[-1] == len(text)
    assert all(text[: ends[k]] == tok.decode(ids[: k + 1]) for k in range(len(ids)))
    return text


def test_hf_offsets_follow_the_sampled_ids_not_a_retokenisation(bpe):
    canonical = bpe.encode(TRACE)
    sampled = [i for c in TRACE for i in bpe.encode(c)] + [bpe.eos_id]  # one token per character, then EOS
    assert sampled[:-1] != canonical and bpe.decode(sampled) == TRACE
    sg = StrategicGrams(seeds=SEEDS["arith"], refresh=0)
    for ids in (canonical, sampled):
        _check_prefix_property(ids, bpe)
        mask = planning_mask(TRACE, torch.tensor(ids), bpe, sg)
        marked = "".join(bpe.decode([i]) if m else "|" for i, m in zip(ids, mask.tolist(), strict=True))
        assert [w for w in marked.split("|") if w] == ["first", "then", "then", "check:"]


def test_hf_offsets_give_a_multibyte_character_to_the_token_that_completes_it(bpe):
    text = "then é ✓ first"
    ids = bpe.encode(text)
    ends = token_char_ends(ids, bpe)
    assert ends[-1] == len(text)
    pieces = [text[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    assert "".join(pieces) == text and "é" in pieces and "✓" in pieces and "" in pieces  # partial bytes: empty
    mask = planning_mask(text, ids, bpe, StrategicGrams(seeds=["then", "first"], refresh=0))
    assert "".join(p for p, m in zip(pieces, mask.tolist(), strict=True) if m).split() == ["then", "first"]


def test_hf_offsets_with_sentencepiece_style_spaces():
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from credo.models.hf import HFTokenizer

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()  # "▁word", leading space dropped
    tk.train_from_iterator(["first we add then we check: done", "let us try another approach"] * 20,
                           trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>"]))
    tok = HFTokenizer(PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", unk_token="<unk>"), chat=False)
    ids = tok.encode("first we add and then we try another approach then check: done") + [tok.eos_id]
    text = _check_prefix_property(ids, tok)
    mask = planning_mask(text, ids, tok, StrategicGrams(seeds=["then"], refresh=0))
    assert [tok.decode([i]) for i, m in zip(ids, mask.tolist(), strict=True) if m] == ["then", "then"]


def test_apply_hicra_layout_and_loss_mask():
    tok = CharTokenizer()
    texts = ["first 1\nobs then", "then"]
    samples = []
    for gid, t in enumerate(texts):
        ids = torch.tensor(tok.encode(t))
        loss_mask = torch.ones(len(ids))
        if gid == 0:
            loss_mask[8:12] = 0  # "obs " came from a tool: never a planning token
        samples.append(Sample(
            example_id=str(gid), group_id=gid, prompt_ids=torch.tensor(tok.encode_prompt("p" * (gid + 2))),
            completion_ids=ids, loss_mask=loss_mask, segment_ids=torch.full((len(ids),), SEGMENTS["reasoning"]),
            sampler_logprobs=torch.zeros(len(ids)), finish_reason="stop", text=t,
        ))
    sg = StrategicGrams(seeds=["first", "then", "obs"], refresh=0)
    planning = apply_hicra(samples, sg, tok)
    assert planning.shape == (2, max(len(s.prompt_ids) + len(s.completion_ids) for s in samples))
    row0 = "".join(c if m else "." for c, m in zip(texts[0], planning[0, 3:].tolist(), strict=False))
    assert row0 == "first.......then"
    assert planning[1].nonzero().flatten().tolist() == [4, 5, 6, 7]  # BOS + "pp", then "then"
