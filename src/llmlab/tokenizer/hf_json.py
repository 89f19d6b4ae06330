"""Hugging Face `tokenizer.json` for byte-level BPE, both directions: write ours, load GPT-2 / Llama-3 / Qwen2 style.

In the file, a token is a string over GPT-2's byte-to-unicode alphabet (each byte one printable character, e.g. the
space byte is "Ġ"); `merges` lists pairs in priority order. We keep tiktoken's form, ranks = ids = priorities, so a
file loads only when its merges create tokens in increasing id order (true of GPT-2, Llama 3, Qwen2 and files that
`tokenizers`' BpeTrainer writes).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from llmlab.errors import LlmlabError
from llmlab.tokenizer.bpe import Tokenizer, bpe_merge, write_tiktoken_ranks
from llmlab.tokenizer.pretokenize import GPT2_PATTERN


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character map (openai/gpt-2 src/encoder.py): printable Latin-1 bytes map to themselves, the
    other 68 bytes to the characters from U+0100 on, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def token_to_str(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def str_to_token(s: str, source: str) -> bytes:
    inverse = unicode_to_bytes()
    try:
        return bytes(inverse[c] for c in s)
    except KeyError:
        raise LlmlabError(f"{source}: vocab entry {s!r} is not in the byte-level alphabet") from None


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover the merge that made each token: BPE over its bytes using only lower-ranked tokens ends in two parts
    (the recipe of HF's tiktoken converter). Merges in rank order, so HF's merge priorities equal our ranks. A token
    that does not end in two parts (e.g. GPT-2's <|endoftext|> kept as a plain vocab entry) gets no merge: like in
    tiktoken, it is produced only for a chunk that is exactly that token (`ignore_merges`)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            parts = bpe_merge(token, ranks, max_rank=rank)
            if len(parts) == 2:
                merges.append((parts[0], parts[1]))
    return merges


def tokenizer_json(tok: Tokenizer) -> dict:
    """The tokenizer.json object: BPE model, Split(our regex) + ByteLevel pre-tokenizer, ByteLevel decoder,
    special tokens as added_tokens. `ignore_merges`: a chunk that is itself a token is that token, as in tiktoken."""
    vocab = {token_to_str(t): r for t, r in sorted(tok.ranks.items(), key=lambda kv: kv[1])}
    vocab.update(tok.special_tokens)
    merges = [[token_to_str(a), token_to_str(b)] for a, b in merges_from_ranks(tok.ranks)]
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for t, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])]
    split = {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": tok.normalizer} if tok.normalizer else None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json (for transformers' AutoTokenizer) and tokenizer.tiktoken."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer_json(tok), ensure_ascii=False), encoding="utf-8")
    names = {i: t for t, i in tok.special_tokens.items()}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "bos_token": names.get(tok.bos_id), "eos_token": names.get(tok.eos_id),
              "pad_token": names.get(tok.pad_id)}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    write_tiktoken_ranks(tok.ranks, directory / "tokenizer.tiktoken")
    return directory


def _pattern(pre: dict | None, source: str) -> str:
    """The split regex of a byte-level pre-tokenizer: ByteLevel alone (GPT-2) or Split(regex) + ByteLevel (Llama 3)."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") if s else None for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        byte_level, pattern = steps[0], GPT2_PATTERN
    elif kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        split, byte_level = steps
        if "Regex" not in split.get("pattern", {}) or split.get("behavior") != "Isolated" or split.get("invert"):
            raise LlmlabError(f"{source}: only an isolating regex Split pre-tokenizer is supported, got {split}")
        pattern = split["pattern"]["Regex"]
    else:
        raise LlmlabError(f"{source}: pre-tokenizer {kinds} is not supported; expected ByteLevel (GPT-2 style) or "
                          "Split + ByteLevel (Llama 3 / Qwen2 style)")
    if byte_level.get("add_prefix_space"):
        raise LlmlabError(f"{source}: ByteLevel add_prefix_space=true is not supported")
    return pattern


def _normalizer(norm: dict | None, source: str) -> str | None:
    if norm is None:
        return None
    if norm.get("type") in ("NFC", "NFD", "NFKC", "NFKD"):
        return norm["type"]
    raise LlmlabError(f"{source}: normalizer {norm.get('type')!r} is not supported (none or a Unicode form)")


def ranks_from_vocab(vocab: dict[str, int], merges: list[tuple[str, str]], source: str,
                     exclude: set[str] = frozenset()) -> dict[bytes, int]:
    """HF vocab (byte-level strings -> ids) as tiktoken ranks, after checking the merges follow the ids."""
    ranks = {str_to_token(s, source): i for s, i in vocab.items() if s not in exclude}
    made, last = set(), -1
    for a, b in merges:
        if a + b in made:  # a later merge making a token an earlier merge already made adds no token
            continue
        made.add(a + b)
        i = vocab.get(a + b)
        if i is None or i <= last:
            raise LlmlabError(f"{source}: merge {a!r} + {b!r} does not make a new token after the previous merge's; "
                              "only vocabularies whose merges create tokens in increasing id order are supported")
        last = i
    return ranks


def _token_name(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def load_tokenizer(path: str | Path, backend: str = "tiktoken") -> Tokenizer:
    """A tokenizer from a directory with tokenizer.json (ours or an HF byte-level BPE checkpoint), or the file itself.

    bos/eos/pad come from tokenizer_config.json beside it when present, else from well-known special-token names.
    Templates in the post-processor (e.g. Llama 3 prepending <|begin_of_text|>) are not applied: `encode` never adds
    tokens; compare with `tokenizers`' encode(text, add_special_tokens=False)."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise LlmlabError(f"{path}: no tokenizer.json (expected an llmlab tokenizer directory or an HF checkpoint "
                          "directory with a byte-level BPE tokenizer.json)")
    source = str(file)
    try:
        obj = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LlmlabError(f"{source}: not a readable tokenizer.json ({e})") from None
    model = obj.get("model") or {}
    if model.get("type") != "BPE":
        raise LlmlabError(f"{source}: model type {model.get('type')!r} is not supported; only byte-level BPE")
    if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise LlmlabError(f"{source}: BPE with byte_fallback or subword prefixes/suffixes is not byte-level BPE")
    pattern = _pattern(obj.get("pre_tokenizer"), source)
    specials = {t["content"]: t["id"] for t in obj.get("added_tokens", [])}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    ranks = ranks_from_vocab(model.get("vocab", {}), merges, source, exclude=set(specials))
    config_file = file.parent / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    names = {k: _token_name(config.get(f"{k}_token")) for k in ("bos", "eos", "pad")}
    names = {k: v if v in specials else None for k, v in names.items()}  # a name we cannot map: fall back to guessing
    return Tokenizer(ranks, pattern, specials, backend=backend, normalizer=_normalizer(obj.get("normalizer"), source),
                     **names)
