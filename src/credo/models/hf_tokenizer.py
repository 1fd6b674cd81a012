"""A Hugging Face tokenizer with the interface credo's sampler and trainer use (`HFTokenizer`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class HFTokenizer:
    """A `transformers` tokenizer with the interface the sampler and trainer use.

    `encode_prompt` applies the chat template (user turn + generation prompt) when the tokenizer has one and
    `chat` is true; otherwise it encodes the raw text after BOS (when the tokenizer has a BOS token).
    `eos_ids` holds every id that ends a completion: the tokenizer's EOS and the generation config's.
    """

    def __init__(self, tokenizer: Any, chat: bool = True, extra_eos: list[int] | None = None) -> None:
        self.tk = tokenizer
        self.chat = chat and bool(getattr(tokenizer, "chat_template", None))
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.eos_ids = sorted({*eos, *(extra_eos or [])})
        if not self.eos_ids:
            raise ValueError("tokenizer has no EOS token and the model's generation config names none")
        self.eos_id = self.eos_ids[0]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.bos_id = tokenizer.bos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.tk)

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False)

    def encode_prompt(self, text: str) -> list[int]:
        if self.chat:
            ids = self.tk.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
            if isinstance(ids, dict) or hasattr(ids, "keys"):  # some versions return a BatchEncoding
                ids = ids["input_ids"]
            return list(ids)
        return ([self.bos_id] if self.bos_id is not None else []) + self.encode(text)

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.tk.decode(ids, skip_special_tokens=skip_special)

    def save(self, path: str | Path) -> None:
        self.tk.save_pretrained(path)


__all__ = ["HFTokenizer"]
