"""Tokenizers: byte-level BPE trained from scratch (tiktoken fast path, readable encoder), HF tokenizer.json both ways,
and the byte tokenizer baseline. All share: vocab_size, special_tokens, bos_id / eos_id / pad_id, encode(text,
allowed_special=...), encode_batch(texts), decode(ids), save(dir)."""

from __future__ import annotations

from pathlib import Path

from llmlab.errors import LlmlabError
from llmlab.tokenizer.bpe import SPECIAL_TOKENS, Tokenizer, train_tokenizer
from llmlab.tokenizer.bytes import ByteTokenizer
from llmlab.tokenizer.hf_json import load_tokenizer

__all__ = ["SPECIAL_TOKENS", "ByteTokenizer", "Tokenizer", "find_tokenizer", "load_tokenizer", "train_tokenizer"]


def find_tokenizer(model_dir: str | Path, vocab_size: int | None = None,
                   tokenizer_dir: str | Path | None = None) -> Tokenizer | ByteTokenizer:
    """The tokenizer of a MODEL dir: tokenizer_dir if given; else MODEL/tokenizer/ (llmlab run dir) or
    MODEL/tokenizer.json (HF dir); else the byte tokenizer when the model's vocab_size is its size."""
    model_dir = Path(model_dir)
    if tokenizer_dir is None:
        for candidate in (model_dir / "tokenizer", model_dir):
            if (candidate / "tokenizer.json").is_file():
                tokenizer_dir = candidate
                break
    if tokenizer_dir is not None:
        return load_tokenizer(tokenizer_dir)
    if vocab_size == ByteTokenizer().vocab_size:
        return ByteTokenizer()
    raise LlmlabError(f"{model_dir} has no tokenizer/ and its vocab_size={vocab_size} is not the byte tokenizer's "
                      f"{ByteTokenizer().vocab_size}: pass --tokenizer DIR")
