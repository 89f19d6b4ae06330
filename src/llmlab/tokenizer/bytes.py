"""The simplest lossless tokenizer: one id per UTF-8 byte, plus a few special tokens after the 256 bytes.

It is the baseline every learned tokenizer is measured against (compression = bytes per token = 1 here).
"""

from __future__ import annotations

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|mask|>")


class ByteTokenizer:
    def __init__(self) -> None:
        self.special = {tok: 256 + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.vocab_size = 256 + len(SPECIAL_TOKENS)
        self.bos_id, self.eos_id, self.pad_id, self.mask_id = (self.special[t] for t in SPECIAL_TOKENS)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        # special ids are dropped; bytes that do not form valid UTF-8 become U+FFFD rather than raising
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
