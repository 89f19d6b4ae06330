"""Deduplication: exact (hash of the normalised text) and near (MinHash + LSH banding, written from scratch).

MinHash (Broder 1997): for a random hash h, P[min h(A) == min h(B)] = |A ∩ B| / |A ∪ B| = Jaccard(A, B),
so the fraction of k hashes whose minima agree estimates Jaccard with standard error sqrt(J(1-J)/k).
LSH banding (Leskovec, Rajaraman & Ullman, "Mining of Massive Datasets", ch. 3.4): split the k minima
into b bands of r rows; two documents become candidates when any band agrees entirely.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections import defaultdict
from collections.abc import Iterable
from functools import partial
from multiprocessing import Pool

import numpy as np

from llmlab.data.clean import WORD
from llmlab.data.load import Document

PRIME = (1 << 31) - 1  # Mersenne prime 2^31 - 1: a*x + b < 2^62 never overflows uint64


def normalize(text: str) -> str:
    """NFKC, lower case, whitespace runs -> one space: copies that differ only in layout hash equal."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).lower()).strip()


def text_hash(text: str) -> str:
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()


def exact_dedup(docs: Iterable[Document]) -> tuple[list[Document], int]:
    """Keep the first document of each normalised text; returns (kept, number removed)."""
    seen: set[str] = set()
    kept = []
    removed = 0
    for doc in docs:
        h = text_hash(doc.text)
        if h in seen:
            removed += 1
        else:
            seen.add(h)
            kept.append(doc)
    return kept, removed


def shingles(text: str, n: int = 5) -> set[str]:
    """Word n-grams of the normalised text (a CJK character is a word, as in clean.py); short texts: one shingle."""
    words = WORD.findall(normalize(text))
    if len(words) <= n:
        return {" ".join(words)}
    return set(map(" ".join, zip(*(words[i:] for i in range(n)), strict=False)))  # words[i:i+n] for each i


def shingle_ids(items: Iterable[str]) -> np.ndarray:
    """32-bit ids of the shingles (CRC-32 of the UTF-8 bytes): (S,) uint64."""
    return np.fromiter((zlib.crc32(s.encode("utf-8")) for s in items), dtype=np.uint64)


class MinHasher:
    """k hash functions h_i(x) = (a_i * x + b_i) mod p from the universal family (Carter & Wegman 1979)."""

    def __init__(self, num_perm: int = 128, seed: int = 0, chunk: int = 4096) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = rng.integers(1, PRIME, size=num_perm, dtype=np.uint64)  # (k,)
        self.b = rng.integers(0, PRIME, size=num_perm, dtype=np.uint64)  # (k,)
        self.chunk = chunk  # shingles per step: bounds the (chunk, k) temporary to a few MB

    def signature(self, ids: np.ndarray) -> np.ndarray:
        """(S,) shingle ids -> (k,) minima of each hash over the set; an empty set gives all p."""
        x = ids.astype(np.uint64) % PRIME  # (S,)
        sig = np.full(self.num_perm, PRIME, dtype=np.uint64)
        for start in range(0, len(x), self.chunk):
            h = (x[start:start + self.chunk, None] * self.a + self.b) % PRIME  # (chunk, k)
            np.minimum(sig, h.min(axis=0), out=sig)
        return sig

    def text_signature(self, text: str, ngram: int = 5) -> np.ndarray:
        return self.signature(shingle_ids(shingles(text, ngram)))

    def signatures(self, texts: list[str], ngram: int = 5, workers: int = 1) -> np.ndarray:
        """(N, k) signatures of the texts' shingle sets, over `workers` processes."""
        sign = partial(self.text_signature, ngram=ngram)
        if workers > 1 and len(texts) > 1:
            with Pool(workers) as pool:
                sigs = pool.map(sign, texts, chunksize=max(1, len(texts) // (8 * workers)))
        else:
            sigs = [sign(t) for t in texts]
        return np.stack(sigs) if sigs else np.zeros((0, self.num_perm), dtype=np.uint64)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))


def exact_jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """P(two documents at Jaccard s share a band) = 1 - (1 - s^r)^b: the LSH S-curve."""
    return 1 - (1 - s**rows) ** bands


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands b and rows r (b * r <= num_perm) whose S-curve is steepest nearest the threshold.

    candidate_probability(s) = 1 - (1 - s^r)^b is an S-curve whose steepest rise is near s* = (1/b)^(1/r).
    """
    # b = num_perm // r uses (nearly) every hash: more rows and bands make the S-curve steeper
    r = min(range(1, num_perm + 1), key=lambda r: abs((1 / (num_perm // r)) ** (1 / r) - threshold))
    return num_perm // r, r


def candidate_pairs(sigs: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Pairs (i < j) that agree on all r rows of at least one band."""
    pairs = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i, key in enumerate(sigs[:, band * rows:(band + 1) * rows]):
            buckets[key.tobytes()].append(i)
        for members in buckets.values():
            pairs.update((members[x], members[y]) for x in range(len(members)) for y in range(x + 1, len(members)))
    return pairs


def near_duplicate_of(sigs: np.ndarray, threshold: float = 0.8, bands: int | None = None,
                      rows: int | None = None) -> dict[int, int]:
    """{duplicate index: index kept}: candidates whose estimated Jaccard >= threshold are merged (union-find);
    each cluster keeps its first document."""
    if bands is None or rows is None:
        bands, rows = lsh_params(threshold, sigs.shape[1])
    parent = list(range(len(sigs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in sorted(candidate_pairs(sigs, bands, rows)):
        if estimated_jaccard(sigs[i], sigs[j]) >= threshold:
            ri, rj = root(i), root(j)
            parent[max(ri, rj)] = min(ri, rj)  # the root is the cluster's first document
    return {i: root(i) for i in range(len(sigs)) if root(i) != i}


def near_dedup(docs: list[Document], threshold: float = 0.8, num_perm: int = 128, ngram: int = 5,
               seed: int = 0, workers: int = 1) -> tuple[list[Document], dict[int, int]]:
    """Drop documents whose estimated Jaccard with an earlier one is >= threshold; returns (kept, {dropped: kept})."""
    sigs = MinHasher(num_perm, seed).signatures([d.text for d in docs], ngram, workers)
    dups = near_duplicate_of(sigs, threshold)
    return [d for i, d in enumerate(docs) if i not in dups], dups
