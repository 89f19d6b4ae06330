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
    """The tokenizer of a MODEL dir: tokenizer_dir if given; else MODEL/tokenizer/ (llmlab run dir),
    MODEL/tokenizer.json (HF dir) or the tokenizer inside a .gguf file; else the byte tokenizer when the model's
    vocab_size is its size."""
    model_dir = Path(model_dir)
    if tokenizer_dir is None and model_dir.is_file() and model_dir.suffix == ".gguf":  # its tokenizer is inside
        from llmlab.model.gguf import load_gguf_tokenizer

        return load_gguf_tokenizer(model_dir)
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


def sequence_start_id(model: str | Path, tokenizer) -> int | None:
    """The token a prompt starts with. An llmlab run: eos (pretraining packs documents each followed by eos, so a
    document starts after one); an HF dir: generation_config.json's bos_token_id (llmlab's exports write eos there
    for the same reason), else the tokenizer's bos; a .gguf file: its tokenizer's bos (the exports' eos too)."""
    import json

    from llmlab.model.io import is_run_dir

    model = Path(model)
    if is_run_dir(model):
        return tokenizer.eos_id
    gen = model / "generation_config.json"
    if gen.is_file():
        try:
            bos = json.loads(gen.read_text()).get("bos_token_id")
        except (OSError, ValueError):
            bos = None
        if isinstance(bos, int):
            return bos
    return getattr(tokenizer, "bos_id", None)

