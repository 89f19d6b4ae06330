"""Byte-level BPE: the trainer, the encoder and decoder, and the `Tokenizer` that uses tiktoken as its fast path.

BPE (Sennrich et al. 2016) on UTF-8 bytes (GPT-2, Radford et al. 2019): start from the 256 byte values, repeatedly
make the most frequent adjacent pair one new token. Every string is representable, so there is no unknown token.

Ranks, as in tiktoken: `ranks[token_bytes]` is both a token's id and its merge priority (lower merges first). Bytes
are ranks 0..255 in byte order, learned tokens follow in the order they were learned, special tokens come last.
"""

from __future__ import annotations

import base64
import heapq
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable
from itertools import pairwise
from pathlib import Path
from typing import Literal

from llmlab.errors import ConfigError, LlmlabError
from llmlab.tokenizer.pretokenize import resolve_pattern, split, split_special

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>")
# bos/eos/pad are looked up by these names when not given (ours, Llama 3, SentencePiece-style, GPT-2).
BOS_NAMES = ("<|bos|>", "<|begin_of_text|>", "<s>", "<|endoftext|>")
EOS_NAMES = ("<|eos|>", "<|end_of_text|>", "</s>", "<|endoftext|>")
PAD_NAMES = ("<|pad|>", "<pad>")

Progress = Callable[[int, int], None]  # progress(merges done, merges to do)


# ---------------------------------------------------------------------------------------------------------- training
def chunk_counts(texts: Iterable[str], pattern: str) -> Counter[bytes]:
    """How often each pre-tokenized chunk occurs, as UTF-8 bytes; BPE only ever sees these counts."""
    counts: Counter[bytes] = Counter()
    for text in texts:
        counts.update(chunk.encode("utf-8") for chunk in split(text, pattern))
    return counts


def merge_pair(ids: list[int], a: int, b: int, new: int) -> list[int]:
    """Replace each occurrence of the pair (a, b) in `ids` by `new`, left to right, non-overlapping."""
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(chunks: dict[bytes, int], num_merges: int, progress: Progress | None = None) -> list[tuple[bytes, bytes]]:
    """Learn up to `num_merges` merges over `chunks` (chunk bytes -> count); fewer when no pair is left.

    Each step merges the pair with the highest count; ties go to the smallest (left id, right id), so training is
    deterministic. Ids: bytes are 0..255, the i-th merge makes id 256 + i. Returns the merged pairs in order.

    Incremental counts: `pair_count` (pair -> count weighted by chunk frequency) and `pair_chunks` (pair -> indices of
    the chunks that contain it) are updated only in the chunks where the merged pair occurs, and a max-heap with lazy
    deletion picks the next pair. One merge costs O(total length of the chunks containing the pair + pushes * log H)
    instead of O(total length of all distinct chunks) for a full recount per merge.
    """
    token_bytes = [bytes([b]) for b in range(256)]  # id -> bytes
    words = [list(chunk) for chunk in chunks]  # each distinct chunk as a list of token ids (bytes at first)
    freqs = list(chunks.values())
    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    pair_chunks: dict[tuple[int, int], set[int]] = defaultdict(set)
    for w, ids in enumerate(words):
        for pair in pairwise(ids):
            pair_count[pair] += freqs[w]
            pair_chunks[pair].add(w)
    # heap entries (-count, a, b): the smallest entry is the highest count, then the smallest pair. An entry is stale
    # when the pair's count has changed since it was pushed (every change pushes a fresh entry); stale ones are skipped.
    heap = [(-c, a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)
    merges: list[tuple[bytes, bytes]] = []
    while len(merges) < num_merges and heap:
        neg_count, a, b = heapq.heappop(heap)
        if pair_count.get((a, b)) != -neg_count:
            continue
        new = len(token_bytes)
        token_bytes.append(token_bytes[a] + token_bytes[b])
        merges.append((token_bytes[a], token_bytes[b]))
        if progress is not None:
            progress(len(merges), num_merges)
        changed = set()
        for w in pair_chunks.pop((a, b)):
            old, f = words[w], freqs[w]
            words[w] = merge_pair(old, a, b, new)
            if len(words[w]) == len(old):  # the chunk no longer holds the pair (pair_chunks is not pruned)
                continue
            # in this chunk only: take back the counts of its old pairs, add those of its new pairs
            for pair in pairwise(old):
                pair_count[pair] -= f
                changed.add(pair)
            for pair in pairwise(words[w]):
                pair_count[pair] += f
                pair_chunks[pair].add(w)
                changed.add(pair)
        for pair in changed:
            if pair_count[pair] > 0:
                heapq.heappush(heap, (-pair_count[pair], *pair))
            else:
                del pair_count[pair]
                pair_chunks.pop(pair, None)
    return merges


def ranks_from_merges(merges: Iterable[tuple[bytes, bytes]]) -> dict[bytes, int]:
    """The 256 bytes, then each merge's new token in order.

    Merges never make the same bytes twice: until a token forms, the span of its bytes in any chunk changes exactly
    as the token's bytes alone would (no token crosses the span), so every occurrence is merged by the same pair."""
    ranks = {bytes([b]): b for b in range(256)}
    for a, b in merges:
        ranks[a + b] = len(ranks)
    return ranks


# ---------------------------------------------------------------------------------------------------------- encoding
def bpe_merge(chunk: bytes, ranks: dict[bytes, int], max_rank: int | None = None) -> list[bytes]:
    """Split `chunk` into tokens: start from single bytes, merge the adjacent pair whose concatenation has the lowest
    rank (leftmost on ties), repeat. This is tiktoken's rule (the pair's rank is the rank of its bytes), so ids agree.
    With `max_rank`, only tokens ranked below it may form (used to recover a token's two parts)."""
    parts = [chunk[i:i + 1] for i in range(len(chunk))]
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (max_rank is None or rank < max_rank) and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_rank is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def encode_chunk(chunk: bytes, ranks: dict[bytes, int]) -> list[int]:
    """The ids of one pre-tokenized chunk; a chunk that is itself a token is that token (as in tiktoken)."""
    if chunk in ranks:
        return [ranks[chunk]]
    return [ranks[part] for part in bpe_merge(chunk, ranks)]


def write_tiktoken_ranks(ranks: dict[bytes, int], path: str | Path) -> Path:
    """tiktoken's ranks file: `base64(token) rank` per line, by rank (read by tiktoken.load.load_tiktoken_bpe)."""
    path = Path(path)
    lines = (f"{base64.b64encode(t).decode('ascii')} {r}\n" for t, r in sorted(ranks.items(), key=lambda kv: kv[1]))
    path.write_text("".join(lines), encoding="ascii")
    return path


def _first_present(specials: dict[str, int], name: str | None, candidates: tuple[str, ...]) -> int | None:
    if name is not None:
        if name not in specials:
            raise LlmlabError(f"special token {name!r} is not in the vocabulary")
        return specials[name]
    return next((specials[c] for c in candidates if c in specials), None)


class Tokenizer:
    """Byte-level BPE tokenizer. `backend="tiktoken"` (default) encodes with tiktoken built from our ranks;
    `backend="ours"` uses the readable encoder in this file; the two give the same ids."""

    def __init__(self, ranks: dict[bytes, int], pattern: str = "gpt4", special_tokens: dict[str, int] | None = None,
                 *, backend: Literal["tiktoken", "ours"] = "tiktoken", normalizer: str | None = None,
                 bos: str | None = None, eos: str | None = None, pad: str | None = None) -> None:
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise LlmlabError(f"not a byte-level vocabulary: {len(missing)} of the 256 single bytes have no token")
        self.ranks = ranks
        self.pattern = resolve_pattern(pattern)
        self.special_tokens = dict(special_tokens or {})
        self.normalizer = normalizer  # a unicodedata form applied before encoding (Qwen2 uses NFC), or None
        self._decoder = {r: t for t, r in ranks.items()}  # id -> bytes
        if len(self._decoder) != len(ranks):
            raise LlmlabError("two tokens share one id in the ranks")
        for tok, i in self.special_tokens.items():
            if i in self._decoder:
                raise LlmlabError(f"special token {tok!r} has id {i}, already used by {self._decoder[i]!r}")
            self._decoder[i] = tok.encode("utf-8")
        self.vocab_size = max(self._decoder) + 1
        self.bos_id = _first_present(self.special_tokens, bos, BOS_NAMES)
        self.eos_id = _first_present(self.special_tokens, eos, EOS_NAMES)
        self.pad_id = _first_present(self.special_tokens, pad, PAD_NAMES)
        if backend not in ("tiktoken", "ours"):
            raise LlmlabError(f"backend {backend!r} is not one of: tiktoken, ours")
        self.backend = backend
        self._tiktoken = None
        if backend == "tiktoken":
            import tiktoken

            self._tiktoken = tiktoken.Encoding("llmlab", pat_str=self.pattern, mergeable_ranks=ranks,
                                               special_tokens=self.special_tokens)

    @classmethod
    def from_merges(cls, merges: Iterable[tuple[bytes, bytes]], pattern: str = "gpt4",
                    special_tokens: Iterable[str] = SPECIAL_TOKENS, **kwargs) -> Tokenizer:
        """Ranks from learned merges, with the special tokens appended after the last merge."""
        ranks = ranks_from_merges(merges)
        specials = {tok: len(ranks) + i for i, tok in enumerate(special_tokens)}
        return cls(ranks, pattern, specials, **kwargs)

    def _allowed(self, allowed_special: Collection[str] | Literal["all"]) -> set[str]:
        if allowed_special == "all":
            return set(self.special_tokens)
        unknown = set(allowed_special) - set(self.special_tokens)
        if unknown:
            raise LlmlabError(f"unknown special tokens {sorted(unknown)}; known: {sorted(self.special_tokens)}")
        return set(allowed_special)

    def encode(self, text: str, allowed_special: Collection[str] | Literal["all"] = ()) -> list[int]:
        """Token ids of `text`. Special tokens named in `allowed_special` ("all" for every one) become their ids;
        other special-token text is encoded as ordinary text, never an error (tiktoken's disallowed_special=())."""
        allowed = self._allowed(allowed_special)
        if self.normalizer:
            text = unicodedata.normalize(self.normalizer, text)
        if self._tiktoken is not None:
            return self._tiktoken.encode(text, allowed_special=allowed, disallowed_special=())
        ids = []
        for piece, is_special in split_special(text, allowed):
            if is_special:
                ids.append(self.special_tokens[piece])
                continue
            for chunk in split(piece, self.pattern):
                ids.extend(encode_chunk(chunk.encode("utf-8"), self.ranks))
        return ids

    def encode_batch(self, texts: list[str], allowed_special: Collection[str] | Literal["all"] = ()) -> list[list[int]]:
        if self._tiktoken is None:
            return [self.encode(t, allowed_special) for t in texts]
        if self.normalizer:
            texts = [unicodedata.normalize(self.normalizer, t) for t in texts]
        return self._tiktoken.encode_batch(texts, allowed_special=self._allowed(allowed_special), disallowed_special=())

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        try:
            return b"".join(self._decoder[i] for i in ids)
        except KeyError as e:
            raise LlmlabError(f"token id {e.args[0]} is not in the vocabulary (size {self.vocab_size})") from None

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`, special tokens included; bytes that are not valid UTF-8 (e.g. ids that stop in the middle
        of a character) become U+FFFD, as in tiktoken's decode (errors="replace")."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json (HF), tokenizer_config.json and tokenizer.tiktoken (ranks) into `directory`."""
        from llmlab.tokenizer.hf_json import save_tokenizer

        return save_tokenizer(self, directory)


def train_tokenizer(texts: str | Iterable[str], vocab_size: int, pattern: str = "gpt4",
                    special_tokens: Iterable[str] = SPECIAL_TOKENS, progress: Progress | None = None,
                    backend: Literal["tiktoken", "ours"] = "tiktoken") -> Tokenizer:
    """Train a byte-level BPE tokenizer of `vocab_size` tokens (256 bytes + merges + special tokens).

    The vocabulary is smaller when the text runs out of pairs to merge."""
    specials = list(special_tokens)
    num_merges = vocab_size - 256 - len(specials)
    if num_merges < 0:
        raise ConfigError(f"vocab_size={vocab_size} must be at least 256 bytes + {len(specials)} special tokens")
    counts = chunk_counts([texts] if isinstance(texts, str) else texts, pattern)
    merges = train_bpe(counts, num_merges, progress)
    return Tokenizer.from_merges(merges, pattern, specials, backend=backend)


def bytes_per_token(tokenizer, text: str) -> float:
    """Compression: UTF-8 bytes of `text` per token (1.0 for the byte tokenizer; higher is better)."""
    return len(text.encode("utf-8")) / max(len(tokenizer.encode(text)), 1)
