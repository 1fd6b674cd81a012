"""A character-level tokenizer for the tiny models: one token per printable ASCII character."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


class Tokenizer(Protocol):
    """What rollouts and generation backends need from a tokenizer (`CharTokenizer`, `VLMTokenizer`,
    `models.hf.HFTokenizer`, `models.hf_vlm.HFVLMTokenizer`).

    `encode(text)` gives ids without BOS; `encode_prompt(text)` frames a prompt as the policy expects (BOS + text, or
    the chat template's user turn and generation prompt); `decode(ids)` drops special tokens by default; `pad_id` fills
    batches; `eos_ids` lists every id that ends a completion. A vision tokenizer also has `with_images(ids, n_images)`
    (checked with `hasattr`: vision is optional).
    """

    pad_id: int
    eos_ids: list[int]

    def encode(self, text: str) -> list[int]: ...

    def encode_prompt(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int], skip_special: bool = True) -> str: ...
DEFAULT_CHARS = "\n" + "".join(chr(c) for c in range(32, 127))


class CharTokenizer:
    """Maps each character to one id; ids 0..3 are <pad>, <bos>, <eos>, <unk>.

    >>> tok = CharTokenizer()
    >>> tok.decode(tok.encode("1+2=3"))
    '1+2=3'
    """

    def __init__(self, chars: str = DEFAULT_CHARS) -> None:
        self.chars = chars
        self.itos: list[str] = list(SPECIALS) + list(chars)
        self.stoi: dict[str, int] = {c: i + len(SPECIALS) for i, c in enumerate(chars)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3
        self.eos_ids: list[int] = [self.eos_id]  # every id that ends a completion (the `Tokenizer` protocol)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(c, self.unk_id) for c in text]

    def encode_prompt(self, text: str) -> list[int]:
        """BOS + the text's tokens: how a prompt is framed for the policy."""
        return [self.bos_id, *self.encode(text)]

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        n = len(SPECIALS)
        if skip_special:
            return "".join(self.itos[i] for i in ids if i >= n)
        return "".join(self.itos[i] for i in ids)

    def save(self, directory: str | Path) -> None:
        Path(directory, "tokenizer.json").write_text(json.dumps({"type": "char", "chars": self.chars}))

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        spec = json.loads(Path(directory, "tokenizer.json").read_text())
        return cls(spec["chars"])
