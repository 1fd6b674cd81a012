"""Hugging Face policies: tiny random-initialised Qwen2 and Llama built offline with `save_pretrained`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from credo.data import collate  # noqa: E402
from credo.models import load_policy, save_policy  # noqa: E402
from credo.models.hf import HFPolicy, HFTokenizer, load_hf  # noqa: E402
from credo.models.tiny_hf import make_tiny_hf  # noqa: E402
from credo.rollout.backend import GenerationRequest, SamplingParams  # noqa: E402
from credo.rollout.native import NativeGenerator  # noqa: E402
from credo.trainer.logprobs import sequence_logprobs  # noqa: E402

ARCHS = ["qwen2", "llama"]


@pytest.fixture(scope="module", params=ARCHS)
def hf_dir(request, tmp_path_factory):
    return make_tiny_hf(tmp_path_factory.mktemp(request.param), arch=request.param, hidden_size=64, num_layers=2,
                        num_heads=4, num_kv_heads=2, intermediate_size=128)


def test_load_gives_hf_policy_and_chat_prompt(hf_dir):
    policy, tok = load_policy(hf_dir)
    assert isinstance(policy, HFPolicy) and isinstance(tok, HFTokenizer)
    ids = tok.encode_prompt("2+3")
    text = tok.decode(ids, skip_special=False)
    assert text == "<|im_start|>user\n2+3<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_ids == [tok.tk.convert_tokens_to_ids("<|im_end|>")]


@pytest.mark.parametrize("native", [True, False])
def test_cached_step_matches_full_forward_with_left_padding(hf_dir, native):
    policy, tok = load_hf(hf_dir, native=native)
    gen = NativeGenerator(policy, tok)
    assert (gen.engine is not None) == native  # both tiny archs are Llama-family
    decoder = gen.decoder
    policy.eval()
    a, b = tok.encode_prompt("12+7=19 then"), tok.encode_prompt("3")
    P = max(len(a), len(b))
    ids = torch.full((2, P), tok.pad_id)
    mask = torch.zeros(2, P, dtype=torch.bool)
    for i, p in enumerate((a, b)):
        ids[i, P - len(p):] = torch.tensor(p)
        mask[i, P - len(p):] = True
    nxt = torch.tensor([[5], [9]])
    with torch.no_grad():
        cache = decoder.new_cache(2, P + 1)
        first = decoder.step(ids, cache, mask)[:, -1]
        second = decoder.step(nxt, cache)[:, -1]
        for i, p in enumerate((a, b)):
            full = policy.forward(torch.tensor([p + [int(nxt[i])]]))[0]
            torch.testing.assert_close(first[i], full[-2], atol=1e-5, rtol=0)
            torch.testing.assert_close(second[i], full[-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_sampler_logprobs_equal_trainer_logprobs(hf_dir, temperature, top_p, native):
    from credo.data import Sample

    policy, tok = load_hf(hf_dir, native=native)
    policy.eval()
    prompts = [tok.encode_prompt(t) for t in ("1+1", "what is 17+25?", "first 3*4")] * 2
    g = torch.Generator().manual_seed(0)
    params = SamplingParams(max_new_tokens=24, temperature=temperature, top_p=top_p)
    comps = [c for (c,) in NativeGenerator(policy, tok).generate([GenerationRequest(p) for p in prompts], params, g)]
    samples = [
        Sample(example_id=str(i), group_id=i, prompt_ids=torch.tensor(prompts[i]), completion_ids=c.completion_ids,
               loss_mask=torch.ones(len(c.completion_ids)), segment_ids=torch.zeros(len(c.completion_ids)).long(),
               sampler_logprobs=c.logprobs, finish_reason=c.finish_reason, text="")
        for i, c in enumerate(comps)
    ]
    batch = collate(samples, tok.pad_id)
    with torch.no_grad():
        lp, _ = sequence_logprobs(policy, batch.input_ids, temperature if temperature > 0 else 1.0)
    m = batch.loss_mask.bool()
    assert m.sum() > 20
    assert (lp[m] - batch.old_logprobs[m]).abs().max() < 1e-4


def test_save_and_reload_roundtrip(hf_dir, tmp_path):
    policy, tok = load_policy(hf_dir)
    with torch.no_grad():
        next(policy.parameters()).add_(0.5)
    save_policy(policy, tok, tmp_path / "m")
    again, tok2 = load_policy(tmp_path / "m")
    for (n1, p1), (n2, p2) in zip(policy.state_dict().items(), again.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    assert tok2.encode_prompt("x") == tok.encode_prompt("x")


def test_dtype_and_gradient_checkpointing_options(hf_dir):
    from credo.trainer.config import ModelConfig

    policy, _ = load_policy(hf_dir, ModelConfig(dtype="bfloat16", gradient_checkpointing=True))
    assert next(policy.parameters()).dtype == torch.float32  # fp32 master weights, bf16 compute (issue 15)
    assert policy.compute_dtype == torch.bfloat16
    m = policy.model
    assert getattr(m, "is_activation_checkpointing", None) or m.is_gradient_checkpointing
    with pytest.raises(ValueError, match="model.dtype"):
        load_policy(hf_dir, ModelConfig(dtype="float8"))


def test_native_engine_follows_trainer_updates_after_sync(hf_dir):
    """After an optimizer step on the Hugging Face model, the engine decodes with the old weights until the loop's
    explicit `sync_weights`, then with the new ones."""
    policy, tok = load_hf(hf_dir)
    gen = NativeGenerator(policy, tok)
    ids = torch.tensor([tok.encode_prompt("7*8")])

    def engine_logits():
        with torch.no_grad():
            return gen.decoder.step(ids, gen.decoder.new_cache(1, ids.shape[1]))[0, -1]

    with torch.no_grad():
        before = policy.forward(ids)[0, -1]
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    policy.forward(ids).logsumexp(-1).mean().backward()
    opt.step()
    with torch.no_grad():
        after = policy.forward(ids)[0, -1]
    assert (after - before).abs().max() > 1e-2
    torch.testing.assert_close(engine_logits(), before, atol=1e-5, rtol=0)  # no implicit sync
    gen.sync_weights(policy)
    torch.testing.assert_close(engine_logits(), after, atol=1e-5, rtol=0)


def test_unsupported_features_fall_back_to_generic_decoding(hf_dir):
    from transformers import AutoConfig

    from credo.models.hf import native_config

    cfg = AutoConfig.from_pretrained(hf_dir)
    assert native_config(cfg) is not None
    cfg.hidden_act = "gelu"
    assert native_config(cfg) is None


def test_hf_model_trains_on_reasoning_gym_through_the_cli(tmp_path):
    """Issue 3, criterion 1: a random tiny Qwen2 in a temp dir, warm-started with `credo sft` (so it writes
    answer tags and some answers are right), then 2 RL steps of `credo train` on a reasoning-gym task, reward =
    the task's score_answer + 0.5 x the format part (so groups have reward variance even when no answer is
    right): every parameter changes and the loss is finite."""
    pytest.importorskip("reasoning_gym")
    import json

    from credo.cli import main

    src = make_tiny_hf(tmp_path / "qwen2", arch="qwen2", hidden_size=64, num_layers=2, intermediate_size=128)
    task = ["env.name=reasoning_gym:chain_sum", "env.options.max_terms=2", "env.options.max_digits=1",
            "env.n_sft=256", "env.n_train=64", "env.n_test=8", "run.progress=false"]
    assert main(["sft", *task, f"model.path={src}", "sft.steps=100", "sft.batch_size=32", "sft.warmup=5", "--out",
                 str(tmp_path / "warm")]) == 0
    assert main(["train", *task, f"model.path={tmp_path / 'warm'}", f"run.out_dir={tmp_path}", "run.name=r",
                 "rl.steps=2", "rl.prompts_per_step=4", "rl.group_size=8", "rl.max_new_tokens=16", "rl.lr=1e-3",
                 "reward.format=0.5", "eval.n_samples=2", "eval.pass_k=[1]"]) == 0
    rl = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rl if r["phase"] == "rl"]
    assert len(rl) == 2 and all(np.isfinite(r["loss/policy"]) for r in rl)
    assert all(r["loss/grad_norm"] > 0 for r in rl), rl
    assert sum(r["reward/correct"] for r in rl) > 0  # the task's own scorer paid out
    start, _ = load_policy(tmp_path / "r" / "start_model")
    end, _ = load_policy(tmp_path / "r" / "final_model")
    assert isinstance(end, HFPolicy) and end.model.config.model_type == "qwen2"
    before, after = start.state_dict(), end.state_dict()
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters that did not change: {unchanged}"


def test_train_warm_starts_a_model_path_only_when_asked(tmp_path):
    """`sft.on_model_path`: `credo train` runs the warm start on the loaded model before RL (one command for a
    pretrained model that must learn the answer format first); without it the start model is the loaded one."""
    pytest.importorskip("reasoning_gym")
    import json

    from safetensors.torch import load_file

    from credo.cli import main

    src = make_tiny_hf(tmp_path / "src", arch="llama", hidden_size=64, num_layers=2, intermediate_size=128)
    args = ["env.name=reasoning_gym:chain_sum", "env.options.max_terms=2", "env.options.max_digits=1",
            "env.n_sft=32", "env.n_train=16", "env.n_test=4", "run.progress=false", f"model.path={src}",
            f"run.out_dir={tmp_path}", "rl.steps=1", "rl.prompts_per_step=2", "rl.group_size=2",
            "rl.max_new_tokens=4", "eval.n_samples=0", "sft.steps=3", "sft.batch_size=8", "sft.lr=1e-3",
            "sft.warmup=1"]
    assert main(["train", *args, "run.name=plain"]) == 0
    assert main(["train", *args, "run.name=warm", "sft.on_model_path=true"]) == 0
    base = load_file(src / "model.safetensors")
    plain = load_file(tmp_path / "plain" / "start_model" / "model.safetensors")
    warm = load_file(tmp_path / "warm" / "start_model" / "model.safetensors")
    assert all(torch.equal(base[n], plain[n]) for n in base)
    assert sum(not torch.equal(base[n], warm[n]) for n in base) == len(base)
    phases = [json.loads(x)["phase"] for x in (tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()]
    assert phases.count("sft") == 3 and "sft" not in [
        json.loads(x)["phase"] for x in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]


def test_credo_eval_on_a_model_directory_writes_json(hf_dir, tmp_path, capsys):
    import json

    from credo.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", str(hf_dir), "env.n_test=6", "env.n_train=8", "env.n_sft=8", "eval.n_samples=4",
                 "eval.pass_k=[1,2,4]", "rl.max_new_tokens=8", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n_problems"] == 6 and result["env"] == "arith"
    for k in (1, 2, 4):
        assert 0 <= result[f"eval/maj@{k}"] <= result[f"eval/pass@{k}"] <= 1
    assert result["eval/maj@1"] == pytest.approx(result["eval/pass@1"])  # a vote of one is one sample
    assert len(result["problems"]) == 6  # per problem, in the file only
    assert sum(p["correct"] for p in result["problems"]) / 6 == result["eval/greedy_acc"]
    assert "eval/greedy_acc" in capsys.readouterr().out
