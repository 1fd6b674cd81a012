"""Build tiny random-initialised Hugging Face models offline, for tests and benchmarks.

`make_tiny_hf(dir, arch)` writes a `save_pretrained` directory (config, safetensors weights, generation
config) and a small byte-level BPE tokenizer trained on the spot with `tokenizers`, with Qwen-style chat
special tokens and a chat template. `make_tiny_qwen2_vl(dir, arch)` does the same for a Qwen2-VL / Qwen2.5-VL
vision-language model (a tiny vision tower, the vision special tokens, and the PIL image processor's
`preprocessor_config.json`). Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VISION_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL's template shape: a message's content is a string, or a list of {"type": "image"} / {"type": "text"}
VL_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    import random

    rng = random.Random(0)
    lines = []
    words = "first then check done answer the of is what sum total count red blue green circle square".split()
    for _ in range(2000):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        lines.append(f"{a}+{b}={a + b} {' '.join(rng.choices(words, k=4))} <answer>{a - b}</answer>")
    return lines


def make_tokenizer(vocab_size: int = 512, vision: bool = False):
    """A byte-level BPE `PreTrainedTokenizerFast` with chat specials (and, with `vision`, Qwen2-VL's vision
    specials); any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = SPECIALS + (VISION_SPECIALS if vision else [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    fast.chat_template = VL_CHAT_TEMPLATE if vision else CHAT_TEMPLATE
    return fast


def make_tiny_hf(
    path: str | Path,
    arch: str = "qwen2",
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 512,
    vocab_size: int = 512,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a random-initialised `arch` ("qwen2" or "llama") causal LM and its tokenizer into `path`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, Qwen2Config

    tok = make_tokenizer(vocab_size)
    common = dict(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    configs = {"qwen2": Qwen2Config, "llama": LlamaConfig}
    if arch not in configs:
        raise ValueError(f"arch {arch!r}: choose one of {sorted(configs)}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(configs[arch](**common))
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(path)
    return path


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL's split of the rotary frequencies (head_dim / 2) into temporal, height and width parts, in the
    released models' proportions (16, 24, 24 of 64)."""
    half = head_dim // 2
    t = max(1, half // 4)
    h = (half - t) // 2
    return [t, h, half - t - h]


def make_tiny_qwen2_vl(
    path: str | Path,
    arch: str = "qwen2_vl",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vision_depth: int = 2,
    vision_dim: int = 32,
    vision_heads: int = 2,
    patch_size: int = 8,
    merge_size: int = 2,
    vocab_size: int = 512,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a random-initialised `arch` ("qwen2_vl" or "qwen2_5_vl") vision-language model into `path`: the
    model (`save_pretrained`), a BPE tokenizer with the vision specials and a chat template, the generation
    config and the PIL image processor's config (`patch_size` × `merge_size` pixels per image token side)."""
    import torch
    from transformers import GenerationConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = make_tokenizer(vocab_size, vision=True)
    ids = {t: tok.convert_tokens_to_ids(t) for t in VISION_SPECIALS}
    head_dim = hidden_size // num_heads
    text = dict(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(head_dim)},
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    vision = dict(depth=vision_depth, num_heads=vision_heads, patch_size=patch_size, spatial_merge_size=merge_size,
                  temporal_patch_size=2, in_channels=3)
    if arch == "qwen2_vl":
        from transformers import Qwen2VLConfig as Config
        from transformers import Qwen2VLForConditionalGeneration as Model

        vision.update(embed_dim=vision_dim, hidden_size=hidden_size, mlp_ratio=2)
    elif arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config
        from transformers import Qwen2_5_VLForConditionalGeneration as Model

        vision.update(hidden_size=vision_dim, out_hidden_size=hidden_size, intermediate_size=2 * vision_dim,
                      window_size=2 * patch_size * merge_size, fullatt_block_indexes=[vision_depth - 1])
    else:
        raise ValueError(f"arch {arch!r}: choose one of ['qwen2_5_vl', 'qwen2_vl']")
    config = Config(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Model(config)
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(path)
    Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=merge_size, temporal_patch_size=2).save_pretrained(path)
    return path
