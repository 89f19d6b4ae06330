"""Byte-level BPE training: repeatedly merge the most frequent adjacent pair."""

from __future__ import annotations

from collections import Counter

import torch

from llmlab.drills.bank._gen import randint
from llmlab.drills.grader import Case, Drill
from llmlab.tokenizer.bpe import merge_pair, train_bpe

STARTER = '''"""Drill: bpe_train. Check with `llmlab drill check bpe_train`."""


def train_bpe(chunks: dict[bytes, int], num_merges: int) -> list[tuple[bytes, bytes]]:
    """Byte-level BPE (Sennrich et al. 2016): start from each chunk's bytes (ids 0..255); num_merges times,
    merge the adjacent pair with the highest count (counts weighted by the chunk's frequency) into a new token.

    chunks: chunk bytes -> how often it occurs (pairs never cross chunks). Ties: the smallest (left id, right id),
    where bytes are ids 0..255 and the i-th merge makes id 256 + i. Merging is left to right, non-overlapping
    ("aaa" with (a, a) -> "aa" "a"). Stop early when no pair is left. Returns the merged pairs as bytes, in order.
    """
    raise NotImplementedError
'''


def examples() -> list[Case]:
    return [Case(dict(chunks={b"hug": 10, b"pug": 5, b"pun": 12, b"bun": 4, b"hugs": 5}, num_merges=3),
                 ("basic",), True)]


def _words(g: torch.Generator, n: int, alphabet: bytes) -> dict[bytes, int]:
    counts: Counter[bytes] = Counter()
    for _ in range(n):
        length = randint(g, 1, 7)
        word = bytes(alphabet[randint(g, 0, len(alphabet))] for _ in range(length))
        counts[word] += randint(g, 1, 6)
    return dict(counts)


def hidden(g: torch.Generator) -> list[Case]:
    return [Case(dict(chunks=_words(g, 40, b"abcde"), num_merges=12), ("random",)),
            Case(dict(chunks={b"aaaa": 3, b"aaa": 2}, num_merges=3), ("overlap",)),
            Case(dict(chunks={b"ab": 1, b"ba": 1, b"cd": 1}, num_merges=2), ("ties",)),
            Case(dict(chunks={b"ab": 2, b"x": 9}, num_merges=5), ("exhausted",)),
            Case(dict(chunks={"héllo wörld".encode(): 3, "wö".encode(): 2}, num_merges=6), ("utf8",)),
            Case(dict(chunks=_words(g, 80, b"xyz ."), num_merges=20), ("random",))]


DRILL = Drill(
    name="bpe_train", area="tokenizer", difficulty=2, minutes=20, func="train_bpe",
    statement="Train byte-level BPE merges from chunk counts, deterministic tie-breaking.",
    starter=STARTER, reference=train_bpe, sources=(train_bpe, merge_pair), examples=examples, hidden=hidden,
    tags=("overlap", "ties", "exhausted"),
    hints=("Keep each chunk as a list of ids (list(chunk) gives the bytes) and a list id -> bytes.",
           "Each round: count pairs over all chunks (weighted by frequency); best = max by (count, then smallest "
           "pair): min(pairs, key=lambda p: (-count[p], p)). Append id 256 + i with bytes a + b.",
           "Merge left to right without overlap: scan i, if (ids[i], ids[i+1]) == pair emit new and skip 2. "
           "Stop when no pair exists."),
    tag_hints={"overlap": "merge non-overlapping, left to right: b'aaa' with (a, a) becomes [aa, a].",
               "ties": "break count ties by the smallest (left id, right id), ids not bytes strings.",
               "exhausted": "stop when no adjacent pair is left, even before num_merges."},
    banned=("train_bpe", "train_tokenizer", "Tokenizer"),
    time_limit_s=30.0,
)
