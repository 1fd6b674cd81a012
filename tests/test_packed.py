"""Decoding on packed weights (`models.packed`, `TinyLM.packed`; oneDNN's packing, and MKL's where this PyTorch has
it): the same products as the plain path, used only inside a generation call; the native engine keeps them between
calls until `sync_weights` or `sleep`, so a weight change between calls is never missed."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from credo.models import packed as packed_mod
from credo.models.packed import DENSE, DenseLinears, MklPackedLinears, PackedLinears, can_pack, pack, worth_packing
from credo.models.tiny import TinyConfig, TinyLM

needs_onednn = pytest.mark.skipif(not can_pack(torch.zeros(1)), reason="PyTorch without oneDNN float32 packing")
KERNELS = ["onednn", pytest.param("mkl", marks=pytest.mark.skipif(
    packed_mod._mkl_packer() is None, reason="PyTorch without a usable MKL packed GEMM"))]


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    """Each float32 packing in turn as the one `pack(kernel="auto")` picks on this CPU."""
    monkeypatch.setattr(packed_mod, "float32_kernel", lambda: request.param)
    return request.param


@needs_onednn
def test_packed_products_equal_the_plain_ones(kernel):
    g = torch.Generator().manual_seed(0)
    w, w_other = torch.randn(48, 32, generator=g), torch.randn(48, 32, generator=g)
    for rows in (5, 8):  # oneDNN's copies serve any row count; MKL's the count they were packed for, else plain
        b, x, res = torch.randn(48, generator=g), torch.randn(rows, 32, generator=g), torch.randn(rows, 48, generator=g)
        lin = pack([w], batch_hint=8)
        assert type(lin) is (MklPackedLinears if kernel == "mkl" else PackedLinears)
        torch.testing.assert_close(lin.linear(x, w, b), x @ w.T + b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lin.linear(x, w), x @ w.T, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lin.residual(res, x, w), res + x @ w.T, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lin.linear(x[:, None], w), (x @ w.T)[:, None], atol=1e-5, rtol=1e-5)  # [B, 1, in]
        torch.testing.assert_close(lin.linear(x, w_other), x @ w_other.T, atol=0, rtol=0)  # not packed: plain


@pytest.mark.skipif(packed_mod._mkl_packer() is None, reason="PyTorch without a usable MKL packed GEMM")
def test_mkl_copies_serve_their_row_count_and_are_repacked_for_a_new_one(monkeypatch):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 32, generator=g)
    lin = pack([w], batch_hint=16, kernel="mkl")
    assert isinstance(lin, MklPackedLinears) and lin.rows == 16 and lin.repacks == 1
    buffer = torch.ops.mkldnn.data_ptr(lin._get(w))
    calls = []
    mkl_linear = torch.ops.mkl._mkl_linear
    monkeypatch.setattr(torch.ops.mkl, "_mkl_linear", lambda *a: calls.append(a[-1]) or mkl_linear(*a))
    for rows, packed_rows, repacks in ((16, 16, 1), (12, 12, 2), (12, 12, 2), (packed_mod.MIN_ROWS - 1, 12, 2)):
        x = torch.randn(rows, 32, generator=g)
        assert lin.for_rows(rows) is lin and lin.rows == packed_rows and lin.repacks == repacks
        n = len(calls)
        torch.testing.assert_close(lin.linear(x, w), x @ w.T, atol=1e-5, rtol=1e-5)
        assert len(calls) - n == (rows == packed_rows)  # the packed product ran only at the packed row count
    assert torch.ops.mkldnn.data_ptr(lin._get(w)) == buffer  # repacked in place: no new memory
    with pytest.raises(ValueError, match="kernel="):
        pack([w], batch_hint=8, kernel="cublas")
    assert isinstance(pack([w], batch_hint=8, kernel="onednn"), PackedLinears)


def test_where_packing_applies():
    assert not can_pack(torch.zeros(4, 4, dtype=torch.float64))
    assert pack([], batch_hint=8) is None
    assert pack([torch.zeros(4, 4, dtype=torch.float64)], batch_hint=8) is None
    assert worth_packing(64, packed_mod.MIN_DECODE_STEPS) and not worth_packing(64, packed_mod.MIN_DECODE_STEPS - 1)
    assert worth_packing(packed_mod.MIN_ROWS, 64) and not worth_packing(packed_mod.MIN_ROWS - 1, 64)
    assert isinstance(DENSE, DenseLinears) and not isinstance(DENSE, PackedLinears)


@contextlib.contextmanager
def _packed_products(monkeypatch):
    """Counts the products that take a packed weight within the block (a list of one int) and fails on one that
    falls back to the plain path, so a test passes only if decoding really multiplies by packed copies."""
    hits = [0]
    get = PackedLinears._get

    def counted(self, weight):
        packed = get(self, weight)
        if packed is None:
            raise AssertionError("a decoding product fell back to the plain path")
        hits[0] += 1
        return packed

    with monkeypatch.context() as m:
        m.setattr(PackedLinears, "_get", counted)
        yield hits


def _decode_logits(model: TinyLM, prompt: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    cache = model.new_cache(prompt.shape[0], prompt.shape[1] + tokens.shape[1])
    out = [model.step(prompt, cache, last_only=True)[:, -1]]
    for t in range(tokens.shape[1]):
        out.append(model.step(tokens[:, t : t + 1], cache)[:, -1])
    return torch.stack(out, 1)  # [B, 1 + T, V]


@needs_onednn
@pytest.mark.parametrize("arch", ["gelu_tied", "swiglu_gqa_untied"])
def test_packed_decoding_equals_plain_decoding_and_is_undone_on_exit(arch, kernel, monkeypatch):
    cfg = (TinyConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=64) if arch == "gelu_tied" else
           TinyConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, mlp="swiglu",
                      qkv_bias=True, tie_embeddings=False))
    torch.manual_seed(0)
    model = TinyLM(cfg).eval()
    prompt, tokens = torch.randint(0, 50, (8, 5)), torch.randint(0, 50, (8, 20))
    with torch.inference_mode():
        plain = _decode_logits(model, prompt, tokens)
        with model.packed(rows=8, new_tokens=20):
            assert isinstance(model._linears, PackedLinears)
            outer = model._linears
            with model.packed(rows=8, new_tokens=20):
                assert model._linears is outer  # nested: the outer block's copies
            assert model._linears is outer
            with _packed_products(monkeypatch) as hits:  # the weight products on packed copies
                packed = _decode_logits(model, prompt, tokens)
            per_pass = 4 * cfg.n_layers + 1  # qkv, proj, up, down; the head
            # oneDNN: every product, the prefill's too; MKL: those of 8 rows (the decoding steps and the prefill's
            # head on the last positions), the prefill's 8 x 5 rows plain
            assert hits[0] == ((1 + tokens.shape[1]) * per_pass if kernel == "onednn" else
                               tokens.shape[1] * per_pass + 1)
        assert model._linears is DENSE
        with pytest.raises(KeyError), model.packed(rows=8, new_tokens=20):
            raise KeyError("a failing call")
        assert model._linears is DENSE  # restored on an exception too
        with model.packed(rows=8, new_tokens=packed_mod.MIN_DECODE_STEPS - 1):
            assert model._linears is DENSE  # too short to gain the packing back
        with model.packed(rows=packed_mod.MIN_ROWS - 1, new_tokens=64):
            assert model._linears is DENSE  # too few rows
        copied = copy.deepcopy(model)  # a deep copy (a reference model, a generation copy) packs as well
        with copied.packed(rows=8, new_tokens=20):
            assert isinstance(copied._linears, PackedLinears)
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)
    assert (plain[:, 1:] - plain[:, :1]).abs().max() > 1e-3  # the steps' logits differ: the comparison is not empty


@needs_onednn
def test_the_hf_engine_decodes_packed_and_sees_each_sync(tmp_path, kernel, monkeypatch):
    """A Hugging Face policy's native engine decodes on packed weights, kept between calls (the same copies, the same
    draws) until `sync_weights` or `sleep`: after an optimizer step and `sync_weights`, the next call's log-probs
    are those of the updated model, equal (tokens, log-probs within 1e-5) to a call that does not pack."""
    pytest.importorskip("transformers")
    from credo.models.hf import load_hf
    from credo.models.tiny_hf import make_tiny_hf
    from credo.rollout.backend import GenerationRequest, SamplingParams
    from credo.rollout.native import NativeGenerator

    d = make_tiny_hf(tmp_path, arch="qwen2", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=128)
    policy, tok = load_hf(d)
    gen = NativeGenerator(policy, tok)
    reqs = [GenerationRequest(tok.encode_prompt(t), n=8) for t in ("1+1", "what is 17+25?")]  # 16 rows
    params = SamplingParams(max_new_tokens=24, temperature=1.0)
    seen = []
    step = gen.engine.step
    monkeypatch.setattr(gen.engine, "step", lambda *a, **k: seen.append(type(gen.engine._linears)) or step(*a, **k))

    def run(packing: bool) -> list:
        gen.pack = packing
        with _packed_products(monkeypatch) as hits:
            out = [c for cs in gen.generate(reqs, params, torch.Generator().manual_seed(3)) for c in cs]
        assert (hits[0] > 0) == packing  # the packed products ran, and only when packing
        return out

    before = run(True)
    assert (MklPackedLinears if kernel == "mkl" else PackedLinears) in seen and gen.engine._linears is DENSE
    assert (PackedLinears in seen) == (kernel == "onednn")  # the kernel asked for, not the other one
    kept = gen.packed
    assert isinstance(kept, PackedLinears)  # kept for the next call
    assert [c.completion_ids.tolist() for c in run(True)] == [c.completion_ids.tolist() for c in before]
    assert gen.packed is kept  # the next call decoded on the same copies
    opt = torch.optim.SGD(policy.parameters(), lr=2.0)
    ids = torch.tensor([tok.encode_prompt("7*8")])
    policy.forward(ids).logsumexp(-1).mean().backward()
    opt.step()
    gen.sync_weights(policy)
    assert gen.packed is None  # copies of the old weights dropped
    after = run(True)
    assert gen.packed is not None and gen.packed is not kept  # packed anew from the synced weights
    gen.sleep()
    assert gen.packed is None  # freed with the weights
    gen.sync_weights(policy)
    plain = run(False)
    assert any(not torch.equal(a.logprobs, b.logprobs) for a, b in zip(after, before, strict=True))
    for a, p in zip(after, plain, strict=True):
        assert torch.equal(a.completion_ids, p.completion_ids)
        torch.testing.assert_close(a.logprobs, p.logprobs, atol=1e-5, rtol=0)


@needs_onednn
def test_kept_copies_serve_later_calls_until_packing_is_off(tmp_path, monkeypatch):
    """A call too short to gain a fresh packing back decodes plainly, but on copies a longer call made and kept; a
    call of fewer than MIN_ROWS rows decodes plainly; `pack=False` drops the kept copies; `keep_packed=False`
    packs for the call alone."""
    pytest.importorskip("transformers")
    from credo.models.hf import load_hf
    from credo.models.tiny_hf import make_tiny_hf
    from credo.rollout.backend import GenerationRequest, SamplingParams
    from credo.rollout.native import NativeGenerator

    d = make_tiny_hf(tmp_path, arch="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=128)
    policy, tok = load_hf(d)
    gen = NativeGenerator(policy, tok)
    packs = []
    pack_linears = gen.engine.pack_linears
    monkeypatch.setattr(gen.engine, "pack_linears", lambda *a: packs.append(a) or pack_linears(*a))
    rows16 = [GenerationRequest(tok.encode_prompt("what is 17+25?"), n=16)]
    rows4 = [GenerationRequest(tok.encode_prompt("1+1"), n=packed_mod.MIN_ROWS - 4)]
    short, long = SamplingParams(max_new_tokens=packed_mod.MIN_DECODE_STEPS - 1), SamplingParams(max_new_tokens=20)

    def products(requests: list, params: SamplingParams) -> int:
        with _packed_products(monkeypatch) as hits:
            gen.generate(requests, params, torch.Generator().manual_seed(0))
        return hits[0]

    assert products(rows16, short) == 0 and gen.packed is None and packs == [(16, short.max_new_tokens)]
    assert products(rows16, long) > 0 and isinstance(gen.packed, PackedLinears)
    kept = gen.packed
    assert products(rows16, short) > 0 and gen.packed is kept and len(packs) == 2  # the kept copies, no new ones
    assert products(rows4, long) == 0 and gen.packed is kept  # too few rows: plain, the copies still kept
    gen.pack = False
    assert products(rows16, long) == 0 and gen.packed is None
    once = NativeGenerator(policy, tok, keep_packed=False)
    with _packed_products(monkeypatch) as hits:
        once.generate(rows16, long, torch.Generator().manual_seed(0))
    assert hits[0] > 0 and once.packed is None


@needs_onednn
def test_a_call_decodes_the_same_on_kept_copies_as_on_fresh_ones(tmp_path, kernel, monkeypatch):
    """Kept copies serve a call exactly as fresh ones (`PackedLinears.for_call`), whatever calls came before: after
    a call of 8 rows (MKL's copies laid out for 8, oneDNN's for a hint of 8), a 16-row call draws the same tokens
    with bitwise the same log-probs as the same call on a generator that never decoded (a resumed run); a weight
    written in place since the packing is seen (the copies are made anew)."""
    pytest.importorskip("transformers")
    from credo.models.hf import load_hf
    from credo.models.tiny_hf import make_tiny_hf
    from credo.rollout.backend import GenerationRequest, SamplingParams
    from credo.rollout.native import NativeGenerator

    d = make_tiny_hf(tmp_path, arch="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=128)
    policy, tok = load_hf(d)
    params = SamplingParams(max_new_tokens=20)
    prompts = [tok.encode_prompt(f"what is {a}+{a + 17}?") for a in range(8)]  # prefilled once each (8 rows)
    rows8 = [GenerationRequest(p, n=1) for p in prompts]
    rows16 = [GenerationRequest(p, n=2) for p in prompts]

    def call(gen: NativeGenerator, requests: list, packed_products: int | None = None) -> list:
        with _packed_products(monkeypatch) as hits:
            out = [c for cs in gen.generate(requests, params, torch.Generator().manual_seed(5)) for c in cs]
        assert hits[0] > 0 and hits[0] == (packed_products or hits[0])
        counts.append(hits[0])
        return out

    counts: list[int] = []
    fresh = call(NativeGenerator(policy, tok), rows16)
    used = NativeGenerator(policy, tok)
    call(used, rows8)  # MKL's copies end laid out for the 8 rows of the next call's prefill
    kept = used.packed
    after_other = call(used, rows16, packed_products=counts[0])  # MKL: the prefill's head plain, as on fresh
    # MKL's copies laid out again in place; oneDNN's packed anew for the call's hint
    assert used.packed is not None and (used.packed is kept) == (kernel == "mkl")
    for a, b in zip(after_other, fresh, strict=True):  # bitwise where packed and plain products differ
        assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    kept = used.packed
    weight = used.engine.blocks[0].up.weight
    with torch.no_grad():
        weight.mul_(3.0)  # an in-place write the generator was not told of
    changed = call(used, rows16)
    assert used.packed is not None and used.packed is not kept  # packed anew from the written weight
    plain = NativeGenerator(policy, tok, pack=False)
    plain.engine.load_state_dict(used.engine.state_dict())
    expected = [c for cs in plain.generate(rows16, params, torch.Generator().manual_seed(5)) for c in cs]
    assert any(not torch.equal(a.logprobs, b.logprobs) for a, b in zip(expected, fresh, strict=True))
    for a, b in zip(changed, expected, strict=True):
        assert torch.equal(a.completion_ids, b.completion_ids)
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


def test_vlm_decoding_never_samples_the_image_placeholder():
    """TinyVLM pins the placeholder's logit in its head; the one-token decoding path (plain or packed) goes through
    that head too."""
    from credo.models.vlm import TinyVLM, VLMConfig

    torch.manual_seed(0)
    model = TinyVLM(VLMConfig(vocab_size=60, d_model=32, n_layers=2, n_heads=4, d_ff=64, image_token_id=59)).eval()
    pid = model.cfg.image_token_id
    prompt, tokens = torch.randint(0, pid, (8, 5)), torch.randint(0, pid, (8, 17))
    with torch.inference_mode():
        plain = _decode_logits(model, prompt, tokens)
        with model.packed(rows=8, new_tokens=17):
            packed = _decode_logits(model, prompt, tokens)
    assert (plain[..., pid] == -1e9).all() and (packed[..., pid] == -1e9).all()
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)


@pytest.fixture
def no_bf16_dot(monkeypatch):
    """This CPU as one without bfloat16 dot products (where `pack` emulates them on float32 packed weights)."""
    if not can_pack(torch.zeros(1)):
        pytest.skip("PyTorch without oneDNN float32 packing")
    monkeypatch.setattr(packed_mod, "bf16_dot_products", lambda: False)


def _bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest |a - b| in units of b's bfloat16 spacing (2^-7 relative: 8 significant bits)."""
    spacing = torch.exp2(torch.floor(torch.log2(b.float().abs().clamp_min(1e-30))) - 7)
    return float(((a.float() - b.float()).abs() / spacing).max())


def test_bf16_products_on_float32_units_round_like_bf16_matmuls(no_bf16_dot):
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(48, 32, generator=g).bfloat16(), torch.randn(48, generator=g).bfloat16()
    x, res = torch.randn(5, 32, generator=g).bfloat16(), torch.randn(5, 48, generator=g).bfloat16()
    lin = pack([w], batch_hint=64)
    assert isinstance(lin, packed_mod.Bf16OnFp32Linears)
    exact = (x.float() @ w.float().T + b.float()).double()  # bf16 inputs: every product exact in float32
    for got, want in ((lin.linear(x, w, b), exact), (lin.residual(res, x, w), res.double() + exact - b.double()),
                      (lin.bmm(x[None], w.T[None])[0], exact - b.double()),
                      (lin.baddbmm(res[None], x[None], w.T[None], 0.5)[0], res.double() + 0.5 * (exact - b.double()))):
        assert got.dtype == torch.bfloat16
        assert _bf16_ulps(got, want) <= 1.0  # the float32 sum rounded once to bfloat16 (round-to-nearest: ≤ ½
        # spacing, plus float32 summation error)
    plain = torch.nn.functional.linear(x, w, b)  # PyTorch's own bfloat16 product: the same up to summation order
    assert _bf16_ulps(lin.linear(x, w, b), plain) <= 1.0
    assert pack([w, torch.zeros(4, 4)], batch_hint=8) is None  # mixed dtypes: no packing


def test_bf16_decoding_on_float32_units_matches_plain_bf16_decoding(no_bf16_dot, monkeypatch):
    cfg = TinyConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, mlp="swiglu",
                     qkv_bias=True, tie_embeddings=False)
    torch.manual_seed(0)
    model = TinyLM(cfg).eval()
    prompt, tokens = torch.randint(0, 50, (3, 5)), torch.randint(0, 50, (3, 20))
    with torch.inference_mode():
        exact = _decode_logits(model, prompt, tokens)  # float32
        model = model.bfloat16()
        plain = _decode_logits(model, prompt, tokens).float()
        with model.packed(rows=8, new_tokens=20):
            assert isinstance(model._linears, packed_mod.Bf16OnFp32Linears)
            with _packed_products(monkeypatch) as hits:
                emulated = _decode_logits(model, prompt, tokens).float()
            assert hits[0] == (1 + tokens.shape[1]) * (4 * cfg.n_layers + 1)
    err_plain, err_emulated = (plain - exact).abs().max(), (emulated - exact).abs().max()
    assert err_emulated > 0  # bfloat16 arithmetic, not float32 on the side
    assert err_emulated <= 2 * err_plain  # as close to float32 as PyTorch's own bfloat16 decoding
    torch.testing.assert_close(emulated, plain, atol=4 * float(err_plain), rtol=0)


@pytest.mark.skipif(packed_mod._mkl_packer() is None, reason="PyTorch without a usable MKL packed GEMM")
def test_mkl_self_check_fails_when_a_repack_writes_nothing(monkeypatch):
    """`_mkl_packer`'s trial repacks another weight into the first one's buffer: a repack that reports success but
    writes nothing leaves the first weight's products, and the packer is refused (the engine then uses oneDNN)."""
    monkeypatch.setattr(packed_mod._MklPacker, "repack", lambda self, weight, packed, rows: True)
    packed_mod._mkl_packer.cache_clear()
    try:
        assert packed_mod._mkl_packer() is None and packed_mod.float32_kernel() == "onednn"
    finally:
        monkeypatch.undo()
        packed_mod._mkl_packer.cache_clear()
    assert packed_mod._mkl_packer() is not None
