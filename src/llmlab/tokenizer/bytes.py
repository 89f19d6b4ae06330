"""The simplest lossless tokenizer: one id per UTF-8 byte, plus a few special tokens after the 256 bytes.

It is the baseline every learned tokenizer is measured against (compression = bytes per token = 1 here).
It has the interface of `llmlab.tokenizer.Tokenizer`; `save` writes it as a BPE with no merges.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Literal

from llmlab.errors import LlmlabError
from llmlab.tokenizer.pretokenize import split_special

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|mask|>")


class ByteTokenizer:
    def __init__(self) -> None:
        self.special = {tok: 256 + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.vocab_size = 256 + len(SPECIAL_TOKENS)
        self.bos_id, self.eos_id, self.pad_id, self.mask_id = (self.special[t] for t in SPECIAL_TOKENS)

    @property
    def special_tokens(self) -> dict[str, int]:
        """The name the common tokenizer interface uses for `special`."""
        return self.special

    def encode(self, text: str, allowed_special: Collection[str] | Literal["all"] = ()) -> list[int]:
        """UTF-8 bytes of `text`; allowed special tokens ("all" for every one) become their ids, others stay text."""
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        if allowed - set(self.special_tokens):
            raise LlmlabError(f"unknown special tokens {sorted(allowed - set(self.special_tokens))}")
        ids = []
        for piece, is_special in split_special(text, allowed):
            ids.extend([self.special_tokens[piece]] if is_special else piece.encode("utf-8"))
        return ids

    def encode_batch(self, texts: list[str], allowed_special: Collection[str] | Literal["all"] = ()) -> list[list[int]]:
        return [self.encode(t, allowed_special) for t in texts]

    def decode(self, ids: list[int]) -> str:
        # special ids are dropped; bytes that do not form valid UTF-8 become U+FFFD rather than raising
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> Path:
        """Write the tokenizer files (a byte-level BPE without merges); `load_tokenizer` reads them back."""
        from llmlab.tokenizer.bpe import Tokenizer

        byte_ranks = {bytes([b]): b for b in range(256)}
        return Tokenizer(byte_ranks, "gpt4", self.special_tokens, backend="ours").save(directory)
