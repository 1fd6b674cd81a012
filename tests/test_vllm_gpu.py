"""The vLLM backend on a CUDA device (the `vllm` extra): the checks of `test_vllm_backend.py` that matter on GPUs,
log-probs in credo's convention with top_p < 1 (fp32 and bf16 engines) and greedy equal to the trainer's argmax
after an optimizer step and a sync. Skipped without CUDA or without vLLM."""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
pytest.importorskip("vllm", reason="vLLM is not installed: pip install -e '.[vllm]'")

from credo.models.hf import load_hf  # noqa: E402
from credo.models.tiny_hf import make_tiny_hf  # noqa: E402
from credo.rollout.backend import GenerationRequest, SamplingParams  # noqa: E402
from credo.rollout.vllm import VLLMGenerator  # noqa: E402
from credo.trainer.logprobs import sequence_logprobs  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_tiny_hf(tmp_path_factory.mktemp("qwen2"), arch="qwen2", hidden_size=128, num_layers=2, num_heads=2,
                        num_kv_heads=1, intermediate_size=256, max_position_embeddings=256)


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def engine(request, hf_dir):
    policy, tok = load_hf(hf_dir, dtype=request.param, device="cuda", gradient_checkpointing=False)
    gen = VLLMGenerator(policy, tok, max_batch=64, gpu_memory_utilization=0.2)
    yield request.param, policy.eval(), tok, gen
    del gen
    torch.cuda.empty_cache()


def test_gpu_logprobs_top_p_and_greedy_after_a_sync(engine):
    dtype, policy, tok, gen = engine
    prompts = [tok.encode_prompt(t) for t in ("What is 12 + 7?", "Name a colour.", "Count to three.")]
    outs = gen.generate([GenerationRequest(p, n=4) for p in prompts], SamplingParams(24, 1.0, 0.9),
                        torch.Generator().manual_seed(0))
    diffs = []
    with torch.no_grad():
        for p, cs in zip(prompts, outs, strict=True):
            for c in cs:
                ids = torch.tensor(p + c.completion_ids.tolist(), device="cuda")[None]
                lp, _ = sequence_logprobs(policy, ids, 1.0)
                diffs.append((c.logprobs - lp[0, len(p):].float().cpu()).abs())
    d = torch.cat(diffs)
    print(f"\n{dtype} engine on CUDA, top_p 0.9: |Δ log p| max {d.max():.2e} mean {d.mean():.2e}")
    assert float(d.mean()) < (1e-3 if dtype == "float32" else 0.05)
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    ids = torch.tensor(tok.encode("the answer is 19, the answer is 19."), device="cuda")[None]
    lp, _ = sequence_logprobs(policy, ids, 1.0, True)
    (-lp.mean()).backward()
    opt.step()
    policy.eval()
    gen.sync_weights(policy)
    got = [c.completion_ids.tolist() for (c,) in gen.generate([GenerationRequest(p) for p in prompts],
                                                               SamplingParams(32, temperature=0.0))]
    with torch.no_grad():
        want = []
        for p in prompts:
            x = list(p)
            for _ in range(32):
                x.append(int(policy(torch.tensor(x, device="cuda")[None])[0, -1].argmax()))
            want.append(x[len(p):])
    if dtype == "float32":
        assert got == want
    else:
        agree = sum(a == b for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=False))
        print(f"bf16 engine on CUDA: {agree}/{32 * len(prompts)} greedy tokens agree with the trainer")
        assert all(g[0] == w[0] for g, w in zip(got, want, strict=True))


def test_gpu_sleep_mode_frees_memory_and_keeps_outputs(hf_dir):
    """`rollout.sleep`: after a rollout the engine sleeps (weights to host memory, KV cache dropped), so free GPU
    memory rises; a sync and the next rollout wake it, and greedy outputs equal an engine that never sleeps."""
    policy, tok = load_hf(hf_dir, device="cuda", gradient_checkpointing=False)
    prompts = [GenerationRequest(tok.encode_prompt(t)) for t in ("What is 12 + 7?", "Name a colour.")]
    greedy = SamplingParams(16, temperature=0.0)
    awake = VLLMGenerator(policy.eval(), tok, max_batch=8, gpu_memory_utilization=0.2)
    want = [c[0].completion_ids.tolist() for c in awake.generate(prompts, greedy)]
    del awake
    torch.cuda.empty_cache()
    gen = VLLMGenerator(policy, tok, max_batch=8, gpu_memory_utilization=0.2, sleep=True)
    free_awake = torch.cuda.mem_get_info()[0]
    first = gen.generate(prompts, greedy)  # sleeps at its end
    free_asleep = torch.cuda.mem_get_info()[0]
    print(f"\nfree GPU memory: engine awake {free_awake / 2**30:.2f} GiB, asleep {free_asleep / 2**30:.2f} GiB")
    assert free_asleep > free_awake
    gen.sync_weights(policy)  # wakes the weights
    again = gen.generate(prompts, greedy)
    assert [c[0].completion_ids.tolist() for c in first] == want == [c[0].completion_ids.tolist() for c in again]
