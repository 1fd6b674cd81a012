import torch

from credo.models import load_policy, save_policy
from credo.models.tiny import TinyConfig, TinyLM
from credo.models.tokenizer import CharTokenizer


def _model(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(TinyConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=64)).eval()


def test_cached_decoding_matches_full_forward():
    m = _model()
    ids = torch.randint(4, 100, (3, 20))
    with torch.no_grad():
        full = m(ids)  # [3, 20, V]
        cache = m.new_cache(3, 32)
        parts = [m.step(ids[:, :7], cache)] + [m.step(ids[:, t : t + 1], cache) for t in range(7, 20)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_left_padded_prompt_scores_like_unpadded():
    m = _model()
    short, long = torch.randint(4, 100, (5,)), torch.randint(4, 100, (9,))
    ids = torch.zeros(2, 9, dtype=torch.long)
    ids[0, 4:], ids[1] = short, long
    mask = ids != 0
    mask[1] = True
    with torch.no_grad():
        cache = m.new_cache(2, 12)
        out = m.step(ids, cache, mask)
        nxt = m.step(torch.tensor([[7], [8]]), cache)
        ref_short = m(torch.cat([short, torch.tensor([7])])[None])
        ref_long = m(torch.cat([long, torch.tensor([8])])[None])
    assert torch.allclose(out[0, 4:], ref_short[0, :5], atol=1e-5)
    assert torch.allclose(nxt[0, 0], ref_short[0, 5], atol=1e-5)
    assert torch.allclose(nxt[1, 0], ref_long[0, 9], atol=1e-5)
    assert torch.isfinite(out).all()  # fully padded query rows must not produce NaN


def test_save_and_load_roundtrip(tmp_path):
    m, tok = _model(), CharTokenizer()
    save_policy(m, tok, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    m2, tok2 = load_policy(tmp_path / "m")
    ids = torch.randint(4, 100, (2, 10))
    with torch.no_grad():
        assert torch.equal(m(ids), m2(ids))
    assert tok2.encode("1+2\n") == tok.encode("1+2\n")
    assert m2.embed.weight.data_ptr() != 0 and torch.equal(m2.embed.weight, m.embed.weight)


def test_char_tokenizer_roundtrip_and_specials():
    tok = CharTokenizer()
    text = "first 7+3=10\n<answer>10</answer>"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([tok.bos_id, *tok.encode("ab"), tok.eos_id]) == "ab"
    assert tok.encode("é") == [tok.unk_id]
