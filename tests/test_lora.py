"""LoRA through peft (models/lora.py): only the adapters train, the merged weights are W + (α/r)·B A, the native
engine samples the adapted model after a sync, the KL reference is the base model, resume is exact, and the run
leaves peft adapters plus a merged plain transformers model. Tiny random Llama / Qwen2 models built offline."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from credo.data import Batch  # noqa: E402
from credo.models import load_policy  # noqa: E402
from credo.models.hf import load_hf  # noqa: E402
from credo.models.lora import LoraPolicy, apply_lora, lora_layers, merged_weights  # noqa: E402
from credo.models.tiny_hf import make_tiny_hf  # noqa: E402
from credo.rollout.backend import GenerationRequest, SamplingParams  # noqa: E402
from credo.rollout.native import NativeGenerator  # noqa: E402
from credo.trainer import checkpoint as ckpt  # noqa: E402
from credo.trainer.config import RLConfig, load_config  # noqa: E402
from credo.trainer.logprobs import sequence_logprobs  # noqa: E402
from credo.trainer.update import policy_update  # noqa: E402

RANK, ALPHA = 4, 8.0
LORA = SimpleNamespace(rank=RANK, alpha=ALPHA, dropout=0.0,
                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@pytest.fixture(scope="module", params=["llama", "qwen2"])  # qwen2: q/k/v biases pass through the merge
def hf_dir(request, tmp_path_factory):
    return make_tiny_hf(tmp_path_factory.mktemp(request.param), arch=request.param, hidden_size=64, num_layers=2,
                        num_heads=4, num_kv_heads=2, intermediate_size=128)


def _lora(hf_dir, dtype: str = "float32", native: bool = True) -> tuple[LoraPolicy, object]:
    policy, tok = load_hf(hf_dir, dtype=dtype, native=native)
    return apply_lora(policy, LORA, seed=0), tok


def _batch(vocab: int, B: int = 4, prompt: int = 5, seed: int = 1) -> Batch:
    """Right-padded rows (prompt + 4..10 completion tokens), advantages ±1 per row, on-policy-ish π_old."""
    g = torch.Generator().manual_seed(seed)
    lens = [prompt + int(n) for n in torch.randint(4, 11, (B,), generator=g)]
    T = max(lens)
    ids = torch.randint(1, vocab, (B, T), generator=g)
    attn = torch.zeros(B, T, dtype=torch.bool)
    loss_mask = torch.zeros(B, T)
    for i, n in enumerate(lens):
        attn[i, :n] = True
        loss_mask[i, prompt:n] = 1.0
        ids[i, n:] = 0
    adv = torch.where(torch.arange(B) % 2 == 0, 1.0, -1.0)[:, None] * loss_mask
    return Batch(input_ids=ids, attention_mask=attn, loss_mask=loss_mask, segment_ids=torch.zeros(B, T).long(),
                 old_logprobs=-6.0 * loss_mask, advantages=adv, group_ids=torch.arange(B) // 2, rewards=torch.zeros(B))


def _train_step(policy: LoraPolicy, kl_coef: float = 0.0, lr: float = 1e-2) -> dict[str, float]:
    """Two AdamW steps (two minibatches) on the trainable parameters, as the loop builds its optimizer."""
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr)
    cfg = RLConfig(lr=lr, warmup_steps=0, minibatches=2, kl_coef=kl_coef)
    ref = policy.reference() if kl_coef > 0 else None
    m = policy_update(policy, opt, _batch(policy.model.config.vocab_size), cfg, torch.Generator().manual_seed(0), ref)
    assert m["loss/optimizer_steps"] == 2.0
    return m


def test_only_adapter_parameters_train(hf_dir):
    policy, _ = _lora(hf_dir)
    names = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert len(lora_layers(policy.model)) == 2 * 7  # 2 layers × q, k, v, o, gate, up, down
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    m = _train_step(policy, kl_coef=0.05)  # the KL term runs through the adapters-off reference
    assert m["loss/kl"] >= 0
    for n, p in policy.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == (n in names), n  # every adapter tensor moved (A from the second step), no base tensor


def test_optimizer_holds_only_the_adapters(hf_dir):
    policy, _ = _lora(hf_dir)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    cfg = RLConfig(lr=1e-2, warmup_steps=0, minibatches=1)
    policy_update(policy, opt, _batch(policy.model.config.vocab_size), cfg, torch.Generator().manual_seed(0))
    adapter_numel = sum(p.numel() for p in trainable)
    state_numel = sum(v.numel() for s in opt.state.values() for k, v in s.items() if k != "step")
    assert state_numel == 2 * adapter_numel  # exp_avg + exp_avg_sq of the adapters only
    assert adapter_numel < 0.2 * sum(p.numel() for p in policy.parameters())


def test_merged_weights_equal_w_plus_scaled_ba(hf_dir):
    policy, _ = _lora(hf_dir)
    _train_step(policy)
    merged = merged_weights(policy.model)
    plain, _ = load_hf(hf_dir)
    assert set(merged) == {n for n, _ in plain.model.named_parameters()}  # plain transformers names
    for name, layer in lora_layers(policy.model).items():
        W = layer.base_layer.weight
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        expected = W + (ALPHA / RANK) * (B @ A)  # [out, in]
        assert B.abs().max() > 0  # the adapter is not the zero initialisation any more
        assert (merged[f"{name}.weight"] - expected).abs().max() <= 1e-6, name
    others = set(merged) - {f"{n}.weight" for n in lora_layers(policy.model)}
    for n in others:  # untouched tensors are the (frozen, unchanged) base model's
        torch.testing.assert_close(merged[n], dict(plain.model.named_parameters())[n], atol=0, rtol=0)


@pytest.mark.parametrize("native", [True, False])  # native engine with merged weights | the peft model itself
def test_engine_logprobs_match_trainer_after_step_and_sync(hf_dir, native):
    policy, tok = _lora(hf_dir, native=native)
    gen = NativeGenerator(policy, tok)
    assert (gen.engine is not None) == native
    prompt = tok.encode_prompt("12+7")
    _train_step(policy)
    gen.sync_weights(policy)
    outs = gen.generate([GenerationRequest(prompt, n=4)], SamplingParams(12, temperature=1.0),
                        torch.Generator().manual_seed(3))[0]
    ids = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(prompt + c.completion_ids.tolist()) for c in outs], batch_first=True)
    with torch.no_grad():
        trainer, _ = sequence_logprobs(policy, ids)  # [n, T]
        base, _ = sequence_logprobs(policy.reference(), ids)
    P = len(prompt)
    diffs, moved = [], []
    for i, c in enumerate(outs):
        C = len(c.completion_ids)
        diffs.append((trainer[i, P : P + C] - c.logprobs).abs().max())
        moved.append((trainer[i, P : P + C] - base[i, P : P + C]).abs().max())
    assert max(diffs) < 1e-4, diffs  # the engine samples the adapted model
    assert max(moved) > 1e-2, moved  # ... which is measurably not the base model


def test_engine_without_sync_keeps_the_old_weights_and_sync_checks(hf_dir):
    """The sync is what moves the engine (nothing implicit), and an adapted layer that cannot be placed raises
    instead of leaving the engine on the base weights."""
    policy, tok = _lora(hf_dir)
    gen = NativeGenerator(policy, tok)
    ids = torch.tensor([tok.encode_prompt("3*4")])

    def engine_logits():
        with torch.no_grad():
            return gen.decoder.step(ids, gen.decoder.new_cache(1, ids.shape[1]))[0, -1]

    before = engine_logits()
    _train_step(policy)
    with torch.no_grad():
        after = policy.forward(ids)[0, -1]
    torch.testing.assert_close(engine_logits(), before, atol=0, rtol=0)  # no implicit sync
    gen.sync_weights(policy)
    torch.testing.assert_close(engine_logits(), after, atol=1e-4, rtol=0)
    layer = next(iter(lora_layers(policy.model).values()))
    layer.base_layer.weight = None  # an adapted layer without a weight to merge into
    with pytest.raises(RuntimeError, match="LoRA merge|weight sync"):
        gen.sync_weights(policy)


def test_bf16_autocast_engine_holds_merged_weights(hf_dir):
    """Under a bfloat16 compute dtype the masters stay float32 and the engine holds the merged weights rounded to
    bfloat16; its log-probs agree with the trainer's autocast forward to bfloat16 precision."""
    policy, tok = _lora(hf_dir, dtype="bfloat16")
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    gen = NativeGenerator(policy, tok)
    _train_step(policy)
    gen.sync_weights(policy)
    merged = merged_weights(policy.model)
    q = next(n for n in lora_layers(policy.model) if n.endswith("q_proj"))
    i = q.split(".")[2]
    engine_q = gen.engine.blocks[int(i)].qkv.weight[: merged[f"{q}.weight"].shape[0]]
    assert engine_q.dtype == torch.bfloat16
    torch.testing.assert_close(engine_q, merged[f"{q}.weight"].to(torch.bfloat16), atol=0, rtol=0)
    prompt = tok.encode_prompt("5+5")
    out = gen.generate([GenerationRequest(prompt, n=2)], SamplingParams(8), torch.Generator().manual_seed(0))[0]
    ids = torch.tensor([prompt + out[0].completion_ids.tolist()])
    with torch.no_grad():
        trainer, _ = sequence_logprobs(policy, ids)
    C = len(out[0].completion_ids)
    assert (trainer[0, len(prompt) : len(prompt) + C] - out[0].logprobs).abs().max() < 0.1


def test_kl_reference_is_the_base_model(hf_dir):
    policy, _ = _lora(hf_dir)
    _train_step(policy)
    plain, _ = load_hf(hf_dir)
    ids = _batch(policy.model.config.vocab_size, seed=5).input_ids
    ref = policy.reference()
    assert {id(p) for p in ref.parameters()} == {id(p) for p in policy.parameters()}  # no second copy
    policy.train()
    with torch.no_grad():
        lp_ref, _ = sequence_logprobs(ref, ids)
        lp_base, _ = sequence_logprobs(plain, ids)
        lp_policy, _ = sequence_logprobs(policy, ids)
    assert policy.model.training  # the reference's eval mode is undone
    torch.testing.assert_close(lp_ref, lp_base, atol=1e-6, rtol=0)
    assert (lp_policy - lp_base).abs().max() > 1e-2


def _run(tmp_path, hf_dir, name: str, steps: int) -> list[str]:
    return [f"model.path={hf_dir}", "model.lora.rank=4", "model.lora.alpha=8", "env.name=toy_env:make",
            "sft.enabled=false", "rl.prompts_per_step=2", "rl.group_size=4", "rl.max_new_tokens=8", "rl.lr=1e-2",
            "rl.kl_coef=0.05", "rl.warmup_steps=0", "eval.n_samples=2", "eval.pass_k=[1]", "eval.every=100",
            "run.progress=false", "run.checkpoint_every=1", "reward.workers=0", f"run.out_dir={tmp_path}",
            f"run.name={name}", f"rl.steps={steps}"]


def test_resume_continues_exactly_and_saves_adapters_and_merged_model(hf_dir, tmp_path):
    """k = 1 step, a checkpoint, a resumed step: the adapters equal an uninterrupted 2-step run's exactly."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from credo.trainer.loop import train

    train(load_config(None, _run(tmp_path, hf_dir, "full", 2)))
    train(load_config(None, _run(tmp_path, hf_dir, "part", 1)))  # stops after step 1 (checkpoint)
    train(load_config(None, _run(tmp_path, hf_dir, "part", 2)))  # resumes: step 2
    full, part = ckpt.load(tmp_path / "full" / "checkpoint.pt"), ckpt.load(tmp_path / "part" / "checkpoint.pt")
    assert part["step"] == 2 and set(full["model"]) == set(part["model"])
    assert all(".lora_A." in k or ".lora_B." in k for k in full["model"])  # the checkpoint keeps the adapters only
    for k in full["model"]:
        assert torch.equal(full["model"][k], part["model"][k]), k
    assert any(full["model"][k].abs().max() > 0 for k in full["model"] if ".lora_B." in k)  # it trained
    rl = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("loss/optimizer_steps", 0) > 0 for r in rl if r["phase"] == "rl")
    # final_model/: a plain transformers directory holding the merged weights
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "final_model")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    # adapter/: peft's format; on start_model/ it reproduces the merged weights
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "start_model")
    peft_model = PeftModel.from_pretrained(base, tmp_path / "full" / "adapter")
    again = merged_weights(peft_model)
    for n, p in merged.named_parameters():
        assert (p - again[n]).abs().max() <= 1e-6, n
    policy, _ = load_policy(tmp_path / "full" / "final_model")
    assert type(policy).__name__ == "HFPolicy"  # loads back with no adapters
    from credo.cli import main

    assert main(["eval", str(tmp_path / "full" / "checkpoint.pt")]) == 0  # start_model + the checkpoint's adapters
