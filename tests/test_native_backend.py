"""The native generation backend (`rollout.native.NativeGenerator`): the random stream of the sampler kept draw for
draw, per-request seeds, prompt log-probs and log-prob temperature in the trainer's convention, top-k, the
explicit, all-or-nothing weight sync of the Hugging Face native engine."""

from __future__ import annotations

import pytest
import torch

from credo.data import Sample, collate
from credo.models import build_policy
from credo.rollout.backend import Completion, GenerationRequest, SamplingParams, as_generator, cut_at_stop_text
from credo.rollout.native import NativeGenerator
from credo.rollout.sampler import generate
from credo.trainer.config import ModelConfig
from credo.trainer.logprobs import sequence_logprobs


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    policy, tok = build_policy(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=96))
    return policy.eval(), tok


def _prompts(tok):
    return [tok.encode_prompt("12+7="), tok.encode_prompt("3*4-1=")]


def test_requests_keep_the_samplers_random_stream(tiny):
    """n samples per request, decoded max_batch rows at a time on the shared rng, give exactly the rows of the
    sampler kernel called on the expanded prompts in the same chunks with the same seed."""
    policy, tok = tiny
    params = SamplingParams(20, temperature=1.0)
    gen = NativeGenerator(policy, tok, max_batch=3)
    outs = gen.generate([GenerationRequest(p, n=4) for p in _prompts(tok)], params, torch.Generator().manual_seed(7))
    rows = [p for p in _prompts(tok) for _ in range(4)]
    g = torch.Generator().manual_seed(7)
    ref = [d for i in range(0, 8, 3) for d in generate(policy, rows[i : i + 3], params, tok.eos_ids, tok.pad_id, [], g)]
    got = [c for per_request in outs for c in per_request]
    assert [len(o) for o in outs] == [4, 4]
    for c, d in zip(got, ref, strict=True):
        assert torch.equal(c.completion_ids, d.completion_ids) and torch.equal(c.logprobs, d.logprobs)
        assert c.finish_reason == d.finish_reason
    assert len({tuple(c.completion_ids.tolist()) for c in got}) > 2  # it really sampled


def test_the_kv_cache_budget_sets_the_rows_per_decode_batch(tiny):
    """`kv_cache_bytes` decodes as many rows at once as their KV cache (prompt + max_new_tokens slots each) fits: a
    budget of 3 rows' cache gives exactly the rows of `max_batch=3`; None is 1 GiB on a CPU; 0 is no limit."""
    policy, tok = tiny
    params = SamplingParams(20, temperature=1.0)
    reqs = [GenerationRequest(p, n=4) for p in _prompts(tok)]
    per_row = policy.kv_bytes_per_token() * (max(len(p) for p in _prompts(tok)) + params.max_new_tokens)
    c = policy.cfg
    assert policy.kv_bytes_per_token() == 2 * c.n_layers * c.kv_heads * (c.d_model // c.n_heads) * 4  # float32
    budget = NativeGenerator(policy, tok, kv_cache_bytes=3 * per_row + per_row // 2)
    assert budget.rows_per_batch(per_row // policy.kv_bytes_per_token()) == 3
    assert NativeGenerator(policy, tok).rows_per_batch(10**6) == 2**30 // (policy.kv_bytes_per_token() * 10**6)
    assert NativeGenerator(policy, tok, kv_cache_bytes=0).rows_per_batch(10**9) == 512
    assert NativeGenerator(policy, tok, kv_cache_bytes=1).rows_per_batch(10) == 1  # at least one row
    got = budget.generate(reqs, params, torch.Generator().manual_seed(7))
    ref = NativeGenerator(policy, tok, max_batch=3).generate(reqs, params, torch.Generator().manual_seed(7))
    whole = NativeGenerator(policy, tok).generate(reqs, params, torch.Generator().manual_seed(7))
    flat = [[c.completion_ids.tolist() for c in cs] for cs in got]
    assert flat == [[c.completion_ids.tolist() for c in cs] for cs in ref]
    assert flat != [[c.completion_ids.tolist() for c in cs] for cs in whole]  # 8 rows at once draw otherwise


def test_a_seeded_request_draws_from_its_own_stream(tiny):
    policy, tok = tiny
    gen, params = NativeGenerator(policy, tok), SamplingParams(16, temperature=1.0)
    a, b = _prompts(tok)
    alone = gen.generate([GenerationRequest(a, n=2, seed=3)], params)[0]
    mixed = gen.generate([GenerationRequest(b, n=3), GenerationRequest(a, n=2, seed=3)], params,
                         torch.Generator().manual_seed(0))[1]
    other = gen.generate([GenerationRequest(a, n=2, seed=4)], params)[0]
    assert [c.completion_ids.tolist() for c in alone] == [c.completion_ids.tolist() for c in mixed]
    assert [c.completion_ids.tolist() for c in alone] != [c.completion_ids.tolist() for c in other]


def test_seeded_requests_decode_together_with_their_solo_draws(tiny, monkeypatch):
    """Seeded requests share decode batches (whole requests, up to max_batch rows; a larger one alone), each row on
    its request's stream: every request's completions equal those it gets decoded alone (tokens exactly, log-probs
    within float rounding of the batch's padding)."""
    policy, tok = tiny
    params = SamplingParams(16, temperature=1.0, top_p=0.9)
    prompts = [tok.encode_prompt(q) for q in ("12+7=", "3*4-1=", "9-2=", "5*5+1=")]
    sizes_n = zip(prompts, (2, 1, 3, 6), strict=True)
    requests = [GenerationRequest(p, n=n, seed=10 + i) for i, (p, n) in enumerate(sizes_n)]
    gen = NativeGenerator(policy, tok, max_batch=4)
    sizes: list[int] = []
    real = gen._decode
    monkeypatch.setattr(gen, "_decode", lambda rows, prm, g: sizes.append(len(rows)) or real(rows, prm, g))
    together = gen.generate(requests, params)
    assert sizes == [3, 3, 6]  # [2 + 1], [3], [6]: whole requests, the 6-row one alone
    for r, got in zip(requests, together, strict=True):
        alone = NativeGenerator(policy, tok).generate([r], params)[0]
        assert [c.completion_ids.tolist() for c in got] == [c.completion_ids.tolist() for c in alone]
        for c, d in zip(got, alone, strict=True):
            assert torch.allclose(c.logprobs, d.logprobs, atol=1e-5)
    assert len({tuple(c.completion_ids.tolist()) for cs in together for c in cs}) > 4  # it really sampled


def test_prompt_logprobs_and_logprob_temperature_are_the_trainers(tiny):
    """Sampled at 1.0, returned at 0.7: completion and the prompts' last k tokens' log-probs equal the trainer's
    recomputation at 0.7 (rows of different k in one batch)."""
    policy, tok = tiny
    params = SamplingParams(12, temperature=1.0, logprob_temperature=0.7)
    prompts, ks = _prompts(tok), [3, 5]
    requests = [GenerationRequest(p, prompt_logprobs=k) for p, k in zip(prompts, ks, strict=True)]
    outs = NativeGenerator(policy, tok).generate(requests, params, torch.Generator().manual_seed(1))
    samples = [Sample("x", 0, torch.tensor(p), c.completion_ids, torch.ones(len(c.completion_ids)),
                      torch.ones(len(c.completion_ids)).long(), c.logprobs, c.finish_reason)
               for p, (c,) in zip(prompts, outs, strict=True)]
    batch = collate(samples, tok.pad_id)
    with torch.no_grad():
        lp, _ = sequence_logprobs(policy, batch.input_ids, 0.7)
    for i, ((c,), p, k) in enumerate(zip(outs, prompts, ks, strict=True)):
        P, C = len(p), len(c.completion_ids)
        assert c.prompt_logprobs.shape == (k,)
        torch.testing.assert_close(c.prompt_logprobs, lp[i, P - k : P], atol=1e-5, rtol=0)
        torch.testing.assert_close(c.logprobs, lp[i, P : P + C], atol=1e-5, rtol=0)


def test_top_k_one_is_greedy_with_untruncated_logprobs(tiny):
    policy, tok = tiny
    gen = NativeGenerator(policy, tok)
    req = [GenerationRequest(p) for p in _prompts(tok)]
    greedy = gen.generate(req, SamplingParams(10, temperature=0.0))
    top1 = gen.generate(req, SamplingParams(10, temperature=1.0, top_k=1), torch.Generator().manual_seed(0))
    for (g,), (t,) in zip(greedy, top1, strict=True):
        assert torch.equal(g.completion_ids, t.completion_ids)
        torch.testing.assert_close(g.logprobs, t.logprobs)  # log softmax(logits / 1), before truncation
        assert (t.logprobs < 0).all()


def test_as_generator_wraps_a_model_and_passes_a_generator_through(tiny):
    policy, tok = tiny
    gen = as_generator(policy, tok)
    assert isinstance(gen, NativeGenerator) and gen.decoder is policy and gen.max_len == 96
    assert as_generator(gen) is gen
    with pytest.raises(ValueError, match="tokenizer"):
        as_generator(policy)
    with pytest.raises(ValueError, match="another policy"):
        gen.sync_weights(build_policy(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64))[0])


def test_text_level_stop_cut_for_bpe_spellings():
    """A BPE tokenizer can spell a stop string with other tokens than the stop's own: the decoded text decides."""
    vocab = {0: "a", 1: "\n", 2: "\n\n", 3: "b"}
    c = Completion(torch.tensor([0, 1, 1, 3, 3]), torch.tensor([-1.0, -2, -3, -4, -5]), "length")
    cut = cut_at_stop_text(c, lambda ids: "".join(vocab[i] for i in ids), ("\n\n",))
    assert cut.completion_ids.tolist() == [0, 1, 1] and cut.logprobs.tolist() == [-1, -2, -3]
    assert cut.finish_reason == "stop"


# ---- the Hugging Face native engine: explicit, complete sync ----------------------------------------------


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from credo.models.tiny_hf import make_tiny_hf

    return make_tiny_hf(tmp_path_factory.mktemp("qwen2"), arch="qwen2", hidden_size=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, intermediate_size=128)


def test_sync_that_would_miss_a_tensor_raises_and_writes_nothing(hf_dir):
    from credo.models.hf import load_hf

    policy, tok = load_hf(hf_dir)
    gen = NativeGenerator(policy, tok)
    before = {k: v.clone() for k, v in gen.engine.state_dict().items()}
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    policy.model.model.extra = torch.nn.Parameter(torch.zeros(3))  # a trainer tensor the engine has no place for
    with pytest.raises(RuntimeError, match=r"not copied \['model.extra'\]"):
        gen.sync_weights(policy)
    assert all(torch.equal(before[k], v) for k, v in gen.engine.state_dict().items())  # nothing half-written
    del policy.model.model.extra
    gen.engine.register_parameter("stray", torch.nn.Parameter(torch.zeros(2)))  # an engine tensor nothing fills
    with pytest.raises(RuntimeError, match=r"engine tensors not written \['stray'\]"):
        gen.sync_weights(policy)
    del gen.engine.stray
    gen.sync_weights(policy)
    assert torch.equal(gen.engine.embed.weight, policy.model.model.embed_tokens.weight)


def test_sleep_frees_the_engine_copy_and_sync_brings_back_the_same_decoding(hf_dir):
    from credo.models.hf import load_hf

    policy, tok = load_hf(hf_dir)
    gen = NativeGenerator(policy, tok)
    req = [GenerationRequest(p, n=2) for p in _prompts(tok)]
    params = SamplingParams(6, temperature=1.0)
    before = gen.generate(req, params, torch.Generator().manual_seed(3))
    n_weights = sum(p.numel() for p in gen.engine.parameters())
    gen.sleep()
    gen.sleep()  # idempotent
    assert gen.asleep and sum(p.numel() for p in gen.engine.parameters()) == 0
    with pytest.raises(RuntimeError, match="asleep"):
        gen.generate(req, params)
    policy.model.model.extra = torch.nn.Parameter(torch.zeros(3))  # a failed sync leaves it asleep
    with pytest.raises(RuntimeError, match="not copied"):
        gen.sync_weights(policy)
    assert gen.asleep
    del policy.model.model.extra
    gen.sync_weights(policy)
    assert not gen.asleep and sum(p.numel() for p in gen.engine.parameters()) == n_weights
    after = gen.generate(req, params, torch.Generator().manual_seed(3))
    for (a0, a1), (b0, b1) in zip(before, after, strict=True):
        assert torch.equal(a0.completion_ids, b0.completion_ids) and torch.equal(a1.completion_ids, b1.completion_ids)
        torch.testing.assert_close(a0.logprobs, b0.logprobs, atol=0, rtol=0)


def test_resume_on_packed_decoding_with_an_eval_every_step_equals_the_uninterrupted_run(hf_dir, tmp_path,
                                                                                       monkeypatch):
    """An HF policy decoding on packed weights (8 rows × 16 tokens per rollout: packing applies), an evaluation
    after every step (it leaves packed copies of another row count behind, which the next rollout is offered): one
    step, a checkpoint and a resumed step end on the same weights, bit for bit, as two uninterrupted steps."""
    from credo.models import packed as packed_mod
    from credo.trainer import checkpoint as ckpt
    from credo.trainer.config import load_config
    from credo.trainer.loop import train

    if not packed_mod.can_pack(torch.zeros(1)):
        pytest.skip("PyTorch without oneDNN float32 packing")
    offered = []
    for cls in (packed_mod.PackedLinears, packed_mod.MklPackedLinears):
        for_call = cls.for_call
        monkeypatch.setattr(cls, "for_call", lambda self, rows, f=for_call: offered.append(rows) or f(self, rows))

    def run(name: str, steps: int) -> None:
        train(load_config(None, [
            f"model.path={hf_dir}", "env.name=toy_env:make", "sft.enabled=false", "rl.prompts_per_step=2",
            "rl.group_size=4", "rl.max_new_tokens=16", "rl.lr=1e-3", "rl.warmup_steps=0", "eval.every=1",
            "eval.n_samples=2", "eval.pass_k=[1]", "env.n_test=6", "run.progress=false", "run.checkpoint_every=1",
            "reward.workers=0", f"run.out_dir={tmp_path}", f"run.name={name}", f"rl.steps={steps}"]))

    run("full", 2)
    assert offered  # kept copies were offered to a later call (an eval's to the next rollout among them)
    run("part", 1)
    run("part", 2)
    full, part = ckpt.load(tmp_path / "full" / "checkpoint.pt"), ckpt.load(tmp_path / "part" / "checkpoint.pt")
    assert part["step"] == 2 and set(full["model"]) == set(part["model"])
    for k, v in full["model"].items():
        assert torch.equal(v, part["model"][k]), k
    assert sum(r.get("loss/optimizer_steps", 0) for r in full["history"] if r["phase"] == "rl") > 0  # it trained
