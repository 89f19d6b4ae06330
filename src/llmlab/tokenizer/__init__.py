"""Tokenizers: byte-level BPE trained from scratch (tiktoken fast path, readable encoder), HF tokenizer.json both ways,
and the byte tokenizer baseline. All share: vocab_size, special_tokens, bos_id / eos_id / pad_id, encode(text,
allowed_special=...), encode_batch(texts), decode(ids), save(dir)."""

from llmlab.tokenizer.bpe import SPECIAL_TOKENS, Tokenizer, train_tokenizer
from llmlab.tokenizer.bytes import ByteTokenizer
from llmlab.tokenizer.hf_json import load_tokenizer

__all__ = ["SPECIAL_TOKENS", "ByteTokenizer", "Tokenizer", "load_tokenizer", "train_tokenizer"]
