"""The fast decode path (`TinyLM._decode` / `Block.decode`, a KV cache grown in blocks) against the full forward."""

import pytest
import torch

from credo.models.kv_cache import CACHE_BLOCK, _widen
from credo.models.tiny import TinyConfig, TinyLM, apply_rope
from credo.models.tokenizer import CharTokenizer
from credo.rollout.sampler import SamplingParams, generate
from credo.trainer.logprobs import sequence_logprobs

TOK = CharTokenizer()
VARIANTS = [{}, {"n_kv_heads": 2, "mlp": "swiglu", "qkv_bias": True}]  # TinyLM, and the Llama/Qwen2 mirror


def _model(**kw) -> TinyLM:
    torch.manual_seed(0)
    cfg = TinyConfig(vocab_size=TOK.vocab_size, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=160, **kw)
    return TinyLM(cfg).eval()


def test_rotation_matrices_equal_apply_rope():
    m = _model()
    pos = torch.tensor([0, 3, 17, 159])
    x = torch.randn(4, 5, 8)  # [B, heads, Dh]
    cos, sin = m._rope(pos[:, None])  # [B, 1, 1, Dh/2]
    ref = apply_rope(x, cos[:, 0], sin[:, 0])
    assert torch.allclose(x @ m.rotations(pos), ref, atol=1e-6)


@pytest.mark.parametrize("kw", VARIANTS)
def test_decoding_across_cache_growth_matches_full_forward_with_left_padding(kw):
    m = _model(**kw)
    B, P, n = 3, 9, 2 * CACHE_BLOCK + 5  # the storage grows twice while decoding
    ids = torch.randint(4, TOK.vocab_size, (B, P + n))
    lens = [9, 4, 1]  # left-padded prompts, one of a single token
    mask = torch.zeros(B, P, dtype=torch.bool)
    for b, k in enumerate(lens):
        mask[b, P - k :] = True
    with torch.no_grad():
        cache = m.new_cache(B, P + n)
        parts = [m.step(ids[:, :P], cache, mask)[:, -1:]]
        parts += [m.step(ids[:, t : t + 1], cache) for t in range(P, P + n - 1)]
        assert cache.k.shape[3] == P + n  # grown block by block up to the room asked for
        got = torch.cat(parts, 1)  # logits after the prompt and after each decoded token
        for b, k in enumerate(lens):
            ref = m(ids[b : b + 1, P - k : P + n - 1])[0, k - 1 :]
            assert torch.allclose(got[b], ref, atol=1e-5), (got[b] - ref).abs().max()


@pytest.mark.parametrize("S,cap,filled", [(0, 32, 0), (32, 64, 20), (128, 145, 128), (5, 6, 5), (64, 96, 64)])
def test_widen_moves_rows_in_place(S, cap, filled):
    L, B, H, Dh = 3, 5, 2, 4
    buf = torch.randn(L * B * H * cap * Dh)
    x = buf[: L * B * H * S * Dh].view(L, B, H, S, Dh)
    expected = torch.zeros(L, B, H, cap, Dh)
    expected[..., :filled, :] = x[..., :filled, :]
    got = _widen(x, buf, cap, filled)
    assert got.data_ptr() == buf.data_ptr() and torch.equal(got, expected)


def test_cache_refuses_to_grow_past_its_room():
    m = _model()
    with torch.no_grad():
        cache = m.new_cache(1, 3)
        m.step(torch.tensor([[5, 6, 7]]), cache)
        with pytest.raises(ValueError, match="KV cache full"):
            m.step(torch.tensor([[8]]), cache)


@pytest.mark.parametrize("kw", VARIANTS)
def test_sampler_logprobs_match_trainer_over_long_completions(kw):
    m = _model(**kw)
    prompts = [[TOK.bos_id, *TOK.encode(p)] for p in ("1+2\n", "13*4-5\n")]
    params = SamplingParams(max_new_tokens=2 * CACHE_BLOCK + 3)
    outs = generate(m, prompts, params, eos_id=-1, pad_id=TOK.pad_id, generator=torch.Generator().manual_seed(0))
    for c in outs:
        assert len(c.completion_ids) == params.max_new_tokens and c.finish_reason == "length"
        ids = torch.tensor(c.prompt_ids + c.completion_ids.tolist())[None]
        with torch.no_grad():
            lp, _ = sequence_logprobs(m, ids)
        assert torch.allclose(lp[0, len(c.prompt_ids) :], c.logprobs, atol=1e-5)


def test_eos_equal_to_pad_ends_each_row_at_its_first_eos():
    """Rows that are done keep emitting the pad id; when it is also an EOS, only the first EOS counts."""
    m = _model()
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    prompts = [[TOK.bos_id, *TOK.encode(p)] for p in ("1+2\n", "9\n")]
    ref = generate(m, prompts, greedy, eos_id=-1, pad_id=TOK.pad_id)
    eos = int(ref[0].completion_ids[1])
    out = generate(m, prompts, greedy, eos_id=[eos, TOK.eos_id], pad_id=eos)
    first = ref[0].completion_ids.tolist().index(eos) + 1
    assert out[0].finish_reason == "stop" and len(out[0].completion_ids) == first
    row1 = ref[1].completion_ids.tolist()
    n1 = next((i + 1 for i, x in enumerate(row1) if x in (eos, TOK.eos_id)), len(row1))
    assert len(out[1].completion_ids) == n1
    assert out[1].finish_reason == ("stop" if n1 < len(row1) or row1[-1] in (eos, TOK.eos_id) else "length")
