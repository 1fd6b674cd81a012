import pytest
import torch

from credo.models.tiny import TinyConfig, TinyLM
from credo.models.tokenizer import CharTokenizer
from credo.rollout.sampler import SamplingParams, _top_p_filter, generate
from credo.trainer.logprobs import sequence_logprobs

TOK = CharTokenizer()


def _model() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(TinyConfig(vocab_size=TOK.vocab_size, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=96)).eval()


def _prompts() -> list[list[int]]:
    return [[TOK.bos_id, *TOK.encode(p)] for p in ("1+2\n", "13*4-5\n", "9\n")]


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_sampler_logprobs_equal_trainer_recomputed(temperature, top_p):
    m = _model()
    params = SamplingParams(max_new_tokens=20, temperature=temperature, top_p=top_p)
    outs = generate(m, _prompts(), params, TOK.eos_id, TOK.pad_id, generator=torch.Generator().manual_seed(1))
    for c in outs:
        ids = torch.tensor(c.prompt_ids + c.completion_ids.tolist())[None]
        with torch.no_grad():
            lp, _ = sequence_logprobs(m, ids, temperature if temperature > 0 else 1.0)
        recomputed = lp[0, len(c.prompt_ids) :]
        assert torch.allclose(recomputed, c.logprobs, atol=1e-5), (recomputed - c.logprobs).abs().max()


def test_length_finish_reason_and_seeded_determinism():
    m = _model()
    params = SamplingParams(max_new_tokens=12)
    a = generate(m, _prompts(), params, eos_id=-1, pad_id=TOK.pad_id, generator=torch.Generator().manual_seed(3))
    b = generate(m, _prompts(), params, eos_id=-1, pad_id=TOK.pad_id, generator=torch.Generator().manual_seed(3))
    for x, y in zip(a, b, strict=True):
        assert x.finish_reason == "length" and len(x.completion_ids) == 12
        assert torch.equal(x.completion_ids, y.completion_ids)


def test_eos_and_stop_strings_end_rows_independently():
    m = _model()
    greedy = SamplingParams(max_new_tokens=10, temperature=0.0)
    ref = generate(m, _prompts(), greedy, eos_id=-1, pad_id=TOK.pad_id)
    # Make the 3rd greedy token of row 0 the EOS: row 0 stops after 3 tokens, others run to the cap.
    eos = int(ref[0].completion_ids[2])
    out = generate(m, _prompts(), greedy, eos_id=eos, pad_id=TOK.pad_id)
    assert out[0].finish_reason == "stop" and len(out[0].completion_ids) <= 3
    assert int(out[0].completion_ids[-1]) == eos
    # A stop string equal to tokens 4..5 of row 1's greedy output ends row 1 right after it.
    stop = TOK.decode(ref[1].completion_ids[3:5].tolist())
    out = generate(m, _prompts(), greedy, eos_id=-1, pad_id=TOK.pad_id, stop_ids=[TOK.encode(stop)])
    assert out[1].finish_reason == "stop"
    assert TOK.decode(out[1].completion_ids.tolist()).endswith(stop)
    assert len(out[1].completion_ids) <= 5
    assert out[2].completion_ids.tolist() == ref[2].completion_ids[: len(out[2].completion_ids)].tolist()


def test_top_p_keeps_the_nucleus():
    # probs 0.5, 0.3, 0.15, 0.05: top_p=0.7 keeps the first two (mass before the 3rd is 0.8 >= 0.7)
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = torch.isfinite(_top_p_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(_top_p_filter(logits, 0.1)).tolist() == [[True, False, False, False]]


def test_two_level_sampling_draws_the_distribution_and_never_a_zero_weight_token(monkeypatch):
    from credo.rollout import sampler

    g = torch.Generator().manual_seed(0)
    V, B = 300, 40000  # two blocks of SAMPLE_BLOCK = 256, the second padded
    w = torch.rand(V, generator=g) ** 4
    w[::7] = 0.0  # zero-weight tokens, some at block edges
    w[255] = w[256] = 0.0
    w[V - 1] = 0.5  # the last token: a weight the largest uniform surely reaches
    tok, total = sampler._sample(w.expand(B, V), g)
    assert torch.allclose(total, w.sum().expand(B))
    counts = torch.bincount(tok, minlength=V).double()
    assert counts[w == 0].sum() == 0
    p = (w / w.sum()).double()
    sd = (B * p * (1 - p)).sqrt()
    assert ((counts - B * p).abs() <= 5 * sd + 1).all()  # every token's count within 5 standard deviations
    # the extreme uniforms land on the first and last tokens of positive weight
    for u, want in ((0.0, int((w > 0).nonzero()[0])), (1.0 - 2**-24, int((w > 0).nonzero()[-1]))):
        monkeypatch.setattr(sampler, "_uniforms", lambda n, gen, dev, u=u: torch.full((n, 1), u))
        assert sampler._sample(w[None], None)[0].item() == want


def test_sampled_logprobs_equal_the_log_softmax():
    from credo.rollout.sampler import _sample_logits

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 1000, generator=g) * 4
    for T in (1.0, 0.7):
        tok, lp = _sample_logits(logits, T, g)
        want = (logits / T).log_softmax(-1).gather(-1, tok[:, None])[:, 0]
        torch.testing.assert_close(lp, want, atol=1e-5, rtol=0)


def test_kv_cache_keep_rows_in_place_equals_select_rows():
    """`KVCache.keep_rows` (in place, inside the same buffers) holds what `select_rows` copies out, and decoding
    continues on it with the same logits."""
    m = _model()
    prompts = [[TOK.bos_id, *TOK.encode(p)] for p in ("1+2\n", "13*4-5\n", "9\n", "77+1\n", "3\n")]
    ids = torch.full((5, 8), TOK.pad_id)
    mask = torch.zeros(5, 8, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, 8 - len(p) :], mask[i, 8 - len(p) :] = torch.tensor(p), True
    keep = torch.tensor([1, 3, 4])
    with torch.no_grad():
        a, b = m.new_cache(5, 40), m.new_cache(5, 40)
        m.step(ids, a, mask), m.step(ids, b, mask)
        nxt = torch.tensor([[5], [6], [7], [8], [9]])
        m.step(nxt, a), m.step(nxt, b)
        want = a.select_rows(keep)
        b.keep_rows(keep)
        for x, y in ((want.k, b.k), (want.v, b.v), (want.key_valid, b.key_valid), (want.next_pos, b.next_pos)):
            assert torch.equal(x, y)
        step = torch.tensor([[3], [4], [5]])
        torch.testing.assert_close(m.step(step, b), m.step(step, want), atol=0, rtol=0)


@pytest.mark.parametrize("per_row", [False, True])
def test_dropping_finished_rows_gives_the_same_completions(monkeypatch, per_row):
    """Rows that end early (a third of the vocabulary ends a row) leave the batch (`keep_rows` is called), and
    every row's tokens, log-probs and finish reasons equal those of a run that keeps all rows."""
    from credo.models.kv_cache import KVCache
    from credo.rollout import sampler

    m = _model()
    prompts = _prompts() * 4  # 12 rows
    eos = list(range(3, TOK.vocab_size, 3))
    params = SamplingParams(max_new_tokens=24, temperature=1.0)

    def run(fraction):
        monkeypatch.setattr(sampler, "DROP_FINISHED", fraction)
        gen = [torch.Generator().manual_seed(i) for i in range(12)] if per_row else torch.Generator().manual_seed(5)
        return generate(m, prompts, params, eos_id=eos, pad_id=TOK.pad_id, generator=gen)

    calls = []
    keep_rows = KVCache.keep_rows
    monkeypatch.setattr(KVCache, "keep_rows", lambda self, index: calls.append(len(index)) or keep_rows(self, index))
    kept = run(2.0)  # never: a share above 1
    assert not calls
    dropped = run(1 / 8)
    assert calls and any(d.finish_reason == "stop" for d in dropped)
    for x, y in zip(dropped, kept, strict=True):
        assert x.finish_reason == y.finish_reason
        assert torch.equal(x.completion_ids, y.completion_ids)
        torch.testing.assert_close(x.logprobs, y.logprobs, atol=1e-5, rtol=1e-5)
