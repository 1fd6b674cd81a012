"""Hugging Face Qwen2-VL / Qwen2.5-VL vision-language models as credo policies: `HFVLMPolicy`, `HFVLMTokenizer`.

`load_hf_vlm(path)` loads a local `save_pretrained` directory (model, tokenizer, `preprocessor_config.json`):
`...ForConditionalGeneration`, the tokenizer, and the image processor's PIL/numpy backend. The full
`AutoProcessor` is not used: in transformers 5.x it also builds the video processor, which needs torchvision.

Images travel as in TinyVLM (`Example.images` → `Sample.images` → `Batch.images`, per row a list of uint8
arrays [H, W, 3] or PIL images) into `forward(input_ids, images=...)` and the prefill `step`:

- Every image is resized to `side` × `side` pixels (`model.image_size` rounded to a multiple of the vision
  tower's patch × merge size), so each image is (side / patch / merge)² image tokens (`n_patches`).
- `HFVLMTokenizer.with_images` puts `<|vision_start|><|image_pad|>×n_patches<|vision_end|>` per image at the
  start of the user turn (where Qwen2-VL's chat template puts an image), so prompts stay token lists.
- M-RoPE position ids are computed here (`mrope_positions`), not by the model: text tokens advance one
  position on all three axes; an image's tokens sit at (s, s + row, s + col) from its start s, and the text
  after it resumes at s + max(rows, cols). This is the rule of the model's own `get_rope_index` (a test holds
  them equal), but stateless: the model caches `rope_deltas` between calls, the policy keeps each row's next
  position in its cache instead, so cached decoding and the trainer's full forward see the same positions.
- Decoding goes through the model's forward and `DynamicCache` (images only at the prefill).
- The placeholder ids (`<|image_pad|>`, `<|video_pad|>`) are input only: their logits are pinned to -1e9, in
  the sampler and the trainer alike, so a sampled completion never contains a placeholder without an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from credo.data import InputError
from credo.models.hf import DTYPES, HFPolicy, HFTokenizer, cache_kwargs, output_cache

VLM_TYPES = ("qwen2_vl", "qwen2_5_vl")  # the config.json model_types this module loads (`load_policy`)


@dataclass
class VLMInfo:
    """What the rollout and SFT code read from `policy.cfg`: the image side tools resample to."""

    image_size: int
    max_len: int | None = None


@dataclass
class HFVLMCache:
    """The model's cache, the attention mask so far, and each row's next M-RoPE position."""

    past: Any  # transformers DynamicCache
    mask: torch.Tensor  # [B, S] bool
    next_pos: torch.Tensor  # [B] long


def mrope_positions(
    input_ids: torch.Tensor, mask: torch.Tensor, image_token_id: int, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE positions [3, B, T] (temporal, height, width) and each row's next position [B].

    `grid` is (rows, cols) of one image's tokens after the spatial merge; every run of `rows × cols`
    consecutive placeholders is one image. Masked (pad) positions get 0, as in transformers.
    """
    gh, gw = grid
    n = gh * gw
    mask = mask.bool()
    img = (input_ids == image_token_id) & mask
    k = img.long().cumsum(-1) - 1  # index of an image token among the row's image tokens
    r = k.remainder(n)  # index within its image
    last = img & (r == n - 1)  # an image's last token moves the next start past the image
    advance = torch.where(img, last.long() * max(gh, gw), mask.long())
    total = advance.cumsum(-1)
    start = total - advance  # a text token's own position; an image token's image start
    pos = start.unsqueeze(0).repeat(3, 1, 1)
    pos[1] = torch.where(img, start + r // gw, start)
    pos[2] = torch.where(img, start + r % gw, start)
    pos = pos.masked_fill(~mask.unsqueeze(0), 0)
    return pos, total[:, -1] if total.shape[1] else torch.zeros_like(total[:, 0])


def to_rgb_array(image: Any, side: int) -> np.ndarray:
    """An image (PIL, or an (H, W, C) uint8 / [0, 1] float array) as uint8 [side, side, 3], resized bicubically
    when its size differs."""
    from PIL import Image

    if not (hasattr(image, "resize") and hasattr(image, "mode")):
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            arr = np.asarray(arr, dtype=np.float32)
            arr = (arr * 255.0 if arr.max(initial=0.0) <= 1.0 else arr).clip(0, 255).round().astype(np.uint8)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        if arr.shape[:2] == (side, side):
            return np.ascontiguousarray(arr[..., :3])
        image = Image.fromarray(np.ascontiguousarray(arr[..., :3]))
    img = image.convert("RGB")
    if img.size != (side, side):
        img = img.resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


class HFVLMPolicy(HFPolicy):
    """A transformers Qwen2-VL-family model behind the `Policy` protocol, with images (module docstring)."""

    def __init__(self, model: Any, image_processor: Any, image_size: int = 48) -> None:
        super().__init__(model, native=False)
        self.image_processor = image_processor
        vc = model.config.vision_config
        if image_processor.patch_size != vc.patch_size or image_processor.merge_size != vc.spatial_merge_size:
            raise ValueError(f"image processor patch/merge {image_processor.patch_size}/{image_processor.merge_size}"
                             f" differ from the vision tower's {vc.patch_size}/{vc.spatial_merge_size}")
        factor = vc.patch_size * vc.spatial_merge_size
        self.side = factor * max(1, int(image_size / factor + 0.5))  # nearest multiple, halves up
        self.grid = (self.side // factor, self.side // factor)  # image tokens per side after the merge
        self.image_token_id = int(model.config.image_token_id)
        self.input_only = [self.image_token_id, int(model.config.video_token_id)]
        text = getattr(model.config, "text_config", model.config)
        self.cfg = VLMInfo(image_size=self.side, max_len=getattr(text, "max_position_embeddings", None))

    @property
    def n_patches(self) -> int:
        """Image tokens per image."""
        return self.grid[0] * self.grid[1]

    def pixel_inputs(self, images: list | None) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
        """`pixel_values`, `image_grid_thw` of the rows' images flattened in row order (None, None when there
        are none), and their number."""
        flat = [img for row in (images or []) for img in (row or [])]
        if not flat:
            return None, None, 0
        arrays = [to_rgb_array(img, self.side) for img in flat]
        out = self.image_processor(images=arrays, do_resize=False, return_tensors="pt")
        p = next(self.model.parameters())
        return out["pixel_values"].to(p.device, p.dtype), out["image_grid_thw"].to(p.device), len(flat)

    def _check_slots(self, input_ids: torch.Tensor, n_images: int) -> None:
        n_slots = int((input_ids == self.image_token_id).sum())
        if n_slots != n_images * self.n_patches:
            raise ValueError(f"{n_slots} image placeholders for {n_images} images of {self.n_patches} tokens")

    def _mask_input_only(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.index_fill(-1, torch.tensor(self.input_only, device=logits.device), -1e9)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, images: list | None = None
    ) -> torch.Tensor:
        """Logits [B, T, V] of right-padded sequences; `images`: per row, the row's images (or None)."""
        pixels, grid_thw, n = self.pixel_inputs(images)
        self._check_slots(input_ids, n)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        pos, _ = mrope_positions(input_ids, mask, self.image_token_id, self.grid)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, pixel_values=pixels,
                         image_grid_thw=grid_thw, use_cache=False)
        return self._mask_input_only(out.logits)

    def new_cache(self, batch_size: int, max_len: int) -> HFVLMCache:
        from transformers import DynamicCache

        return HFVLMCache(
            past=DynamicCache(config=self.model.config.get_text_config()),
            mask=torch.zeros(batch_size, 0, dtype=torch.bool, device=self.device),
            next_pos=torch.zeros(batch_size, dtype=torch.long, device=self.device),
        )

    def step(
        self,
        input_ids: torch.Tensor,
        cache: HFVLMCache,
        attention_mask: torch.Tensor | None = None,
        images: list | None = None,
    ) -> torch.Tensor:
        """Append `input_ids` [B, t] (the prefill may hold image placeholders, filled from `images`) and return
        the logits of the last position, [B, 1, V]."""
        B, t = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(B, t, dtype=torch.bool, device=input_ids.device)
        attention_mask = attention_mask.bool()
        pixels, grid_thw, n = self.pixel_inputs(images)
        if cache.mask.shape[1] and (n or bool((input_ids == self.image_token_id).any())):
            raise ValueError("images are read at the prefill only: a later step holds image placeholders")
        self._check_slots(input_ids, n)
        pos, advance = mrope_positions(input_ids, attention_mask, self.image_token_id, self.grid)
        pos = (pos + cache.next_pos.view(1, B, 1)).masked_fill(~attention_mask.unsqueeze(0), 0)
        cache.next_pos = cache.next_pos + advance
        cache.mask = torch.cat([cache.mask, attention_mask], dim=1)
        out = self.model(
            input_ids=input_ids,
            attention_mask=cache.mask.long(),
            position_ids=pos,
            pixel_values=pixels,
            image_grid_thw=grid_thw,
            use_cache=True,
            logits_to_keep=1,
            **cache_kwargs(self.model, cache.past),
        )
        cache.past = output_cache(out)
        return self._mask_input_only(out.logits)


class HFVLMTokenizer(HFTokenizer):
    """`HFTokenizer` plus image placeholders: `with_images` inserts `<|vision_start|><|image_pad|>×n_patches
    <|vision_end|>` per image at the start of the user turn (after BOS without a chat template); `save` also
    writes the image processor's config, so that a saved directory loads again."""

    def __init__(
        self,
        tokenizer: Any,
        image_processor: Any,
        n_patches: int,
        chat: bool = True,
        extra_eos: list[int] | None = None,
    ) -> None:
        super().__init__(tokenizer, chat=chat, extra_eos=extra_eos)
        self.image_processor = image_processor
        self.n_patches = n_patches
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")}
        missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ValueError(f"the tokenizer lacks the vision tokens {missing}")
        self.vision_start_id, self.image_token_id, self.vision_end_id = ids.values()
        self.user_prefix = self._user_prefix()

    def _user_prefix(self) -> list[int]:
        """The prompt's tokens before the user's text (system turn, `<|im_start|>user\\n`), where an image goes."""
        if not self.chat:
            return [self.bos_id] if self.bos_id is not None else []
        mark = "\x00credo-user-text\x00"
        text = self.tk.apply_chat_template([{"role": "user", "content": mark}], add_generation_prompt=True,
                                           tokenize=False)
        return self.tk.encode(text[: text.index(mark)], add_special_tokens=False)

    def image_block(self, n_images: int) -> list[int]:
        """The ids of `n_images` images: vision start, `n_patches` placeholders, vision end, per image."""
        return [self.vision_start_id, *[self.image_token_id] * self.n_patches, self.vision_end_id] * n_images

    def with_images(self, ids: list[int], n_images: int) -> list[int]:
        """`ids` (a prompt from `encode_prompt`) with the placeholders of `n_images` images where the chat
        template puts images: right after the user-turn prefix (at the start when `ids` does not begin with
        it)."""
        k = len(self.user_prefix) if ids[: len(self.user_prefix)] == self.user_prefix else 0
        return ids[:k] + self.image_block(n_images) + ids[k:]

    def save(self, path: str | Path) -> None:
        self.tk.save_pretrained(path)
        self.image_processor.save_pretrained(path)


def load_image_processor(path: str | Path) -> Any:
    """The directory's Qwen2-VL image processor, PIL/numpy backend (the default one needs torchvision)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=True)


def load_hf_vlm(
    path: str | Path,
    dtype: str = "float32",
    device: str = "cpu",
    gradient_checkpointing: bool = False,
    chat: bool = True,
    image_size: int = 48,
) -> tuple[HFVLMPolicy, HFVLMTokenizer]:
    """Load a Qwen2-VL-family model, its tokenizer and image processor from a local directory (no download);
    images are resized to `image_size` rounded to a multiple of the vision tower's patch × merge size."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    if dtype not in DTYPES:
        raise InputError(f"model.dtype {dtype!r}: choose one of {sorted(DTYPES)}")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[dtype], local_files_only=True).to(device)
    if gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
        enable()
        model.config.use_cache = False
    image_processor = load_image_processor(path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    extra: list[int] = []
    try:
        gen = GenerationConfig.from_pretrained(path, local_files_only=True)
        eos = gen.eos_token_id
        extra = [eos] if isinstance(eos, int) else list(eos or [])
    except OSError:
        pass
    policy = HFVLMPolicy(model, image_processor, image_size=image_size)
    return policy, HFVLMTokenizer(tokenizer, image_processor, policy.n_patches, chat=chat, extra_eos=extra)
