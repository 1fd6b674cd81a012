"""A character-level tokenizer for the tiny models: one token per printable ASCII character."""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
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
