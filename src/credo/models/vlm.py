"""TinyVLM: TinyLM plus a linear patch embedding of the image(s), prepended as tokens (LLaVA-style placeholders).

The tokenizer puts `n_patches` placeholder ids (`image_token_id`) per image right after BOS; the model replaces
the embeddings at those positions, in order, by the patch embeddings of the row's images:

    [BOS] [IMG]×n_patches·k  prompt text …   →   x[IMG positions] = W_patch · patches(image) + e_pos(patch)

so prompts stay ordinary token lists: left padding, the KV cache, the sampler and the trainer's log-probs work
unchanged, and images travel as data (`Example.images` → `Sample.images` → `Batch.images`) into `forward` /
`step` (prefill only). Images are PIL images or uint8/float arrays (H, W, C); `image_tensor` converts them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from credo.models.packed import DENSE, DenseLinears
from credo.models.tiny import TinyConfig, TinyLM
from credo.models.tokenizer import CharTokenizer


@dataclass
class VLMConfig(TinyConfig):
    image_size: int = 48  # images are resized to image_size × image_size
    patch_size: int = 8  # square patches; n_patches = (image_size / patch_size)²
    channels: int = 3
    image_token_id: int = 0  # the placeholder id (set from the tokenizer)

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def image_tensor(image: Any, size: int) -> torch.Tensor:
    """An image as float [C, size, size] in [0, 1] (PIL, or an (H, W, C) uint8 / float array or tensor)."""
    if hasattr(image, "resize") and hasattr(image, "mode"):  # PIL
        img = image.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size))
        arr = np.asarray(img, dtype=np.float32) / 255.0
    else:
        arr = np.asarray(image, dtype=np.float32)
        if arr.max(initial=0.0) > 1.0:
            arr = arr / 255.0
        if arr.shape[0] != size or arr.shape[1] != size:
            raise ValueError(f"array image of shape {arr.shape}: expected ({size}, {size}, C); pass a PIL image "
                             "to have it resized")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)  # [C, H, W]


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """[N, C, H, W] → [N, (H/p)·(W/p), C·p·p], patches in row-major order."""
    N, C, H, W = images.shape
    x = images.reshape(N, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # [N, H/p, W/p, C, p, p]
    return x.reshape(N, (H // p) * (W // p), C * p * p)


class TinyVLM(TinyLM):
    """`TinyLM` that reads images: see the module docstring."""

    model_type = "tinyvlm"
    config_class = VLMConfig

    def __init__(self, cfg: VLMConfig) -> None:
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size={cfg.image_size} must be a multiple of patch_size={cfg.patch_size}")
        super().__init__(cfg)
        self.patch = nn.Linear(cfg.channels * cfg.patch_size**2, cfg.d_model)
        self.patch_pos = nn.Parameter(torch.zeros(cfg.n_patches, cfg.d_model))
        nn.init.normal_(self.patch.weight, std=0.02)
        nn.init.normal_(self.patch_pos, std=0.02)

    def _logits(self, x: torch.Tensor, lin: DenseLinears = DENSE) -> torch.Tensor:
        """The placeholder is input only: its logit is pinned to -1e9 so that it is never sampled (probability
        exactly 0 in float32; finite, so entropies and temperature scaling stay finite)."""
        logits = super()._logits(x, lin)
        logits[..., self.cfg.image_token_id] = -1e9
        return logits

    def embed_inputs(self, input_ids: torch.Tensor, images: list | None = None) -> torch.Tensor:
        """Token embeddings with each placeholder replaced by its patch embedding. `images`: per row, a list of
        the row's images (or None); the row's placeholders must number n_patches × len(its images)."""
        x = self.embed(input_ids)  # [B, t, D]
        slots = input_ids == self.cfg.image_token_id  # [B, t]
        n_slots = int(slots.sum())
        flat = [img for row in (images or []) for img in (row or [])]
        if n_slots == 0 and not flat:
            return x
        if n_slots != len(flat) * self.cfg.n_patches:
            raise ValueError(f"{n_slots} image placeholders for {len(flat)} images of {self.cfg.n_patches} patches")
        pix = torch.stack([image_tensor(img, self.cfg.image_size) for img in flat]).to(x.device, x.dtype)
        patches = self.patch(patchify(pix, self.cfg.patch_size)) + self.patch_pos  # [N, n_patches, D]
        x = x.clone()
        x[slots] = patches.reshape(-1, x.shape[-1])  # row-major order of slots = row order of images
        return x


class VLMTokenizer(CharTokenizer):
    """`CharTokenizer` plus one image placeholder id (the last id); `with_images` inserts the placeholders."""

    def __init__(self, chars: str | None = None, n_patches: int = 36) -> None:
        super().__init__(*(() if chars is None else (chars,)))
        self.image_token_id = len(self.itos)
        self.itos.append("<img>")
        self.n_patches = n_patches

    def with_images(self, ids: list[int], n_images: int) -> list[int]:
        """`ids` (BOS first) with n_patches placeholders per image right after BOS."""
        return ids[:1] + [self.image_token_id] * (self.n_patches * n_images) + ids[1:]

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return super().decode([i for i in ids if i != self.image_token_id] if skip_special else ids, skip_special)

    def save(self, directory: str | Path) -> None:
        spec = {"type": "char_vlm", "chars": self.chars, "n_patches": self.n_patches}
        Path(directory, "tokenizer.json").write_text(json.dumps(spec))

    @classmethod
    def load(cls, directory: str | Path) -> VLMTokenizer:
        spec = json.loads(Path(directory, "tokenizer.json").read_text())
        return cls(spec["chars"], spec["n_patches"])
