"""Okapi BM25 ranking (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework: BM25 and Beyond").

score(q, d) = sum over query tokens t of idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

with tf(t, d) the count of t in document d, |d| its length in tokens and avgdl the mean length. A token repeated in
the query counts once per occurrence; a token no document has scores 0. Two idf choices, n(t) documents of N
holding t:
- "lucene" (default): ln(1 + (N - n + 0.5) / (n + 0.5)), always > 0 (Lucene's BM25Similarity; Lucene >= 8 also
  drops the constant factor k1 + 1, which changes no ranking);
- "okapi": ln((N - n + 0.5) / (n + 0.5)), negative for a term in more than half the documents; such terms get
  epsilon * (the mean idf over the vocabulary) instead, as `rank_bm25.BM25Okapi` 0.2.2 does (tests/apps prove
  the scores equal).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

from llmlab.errors import ConfigError, LlmlabError

WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lower-cased runs of letters, digits and underscores: "Don't panic!" -> ["don", "t", "panic"]."""
    return WORD.findall(text.lower())


def _tokens(x: Sequence[str], what: str) -> Sequence[str]:
    if isinstance(x, str):
        raise LlmlabError(f"{what} must be a list of tokens, not a str (tokenize(text) splits one)")
    return x


class BM25:
    """A BM25 index over tokenized documents: `scores(query)` (N,) float64, `top_k(query, k)`."""

    def __init__(self, docs: Sequence[Sequence[str]], *, k1: float = 1.5, b: float = 0.75, idf: str = "lucene",
                 epsilon: float = 0.25) -> None:
        if k1 < 0:
            raise ConfigError(f"k1={k1} must be >= 0 (term-frequency saturation; 1.2 to 2 is usual)")
        if not 0.0 <= b <= 1.0:
            raise ConfigError(f"b={b} must be in [0, 1] (0: no length normalisation, 1: full)")
        if idf not in ("lucene", "okapi"):
            raise ConfigError(f"idf={idf!r} must be 'lucene' or 'okapi'")
        if len(docs) == 0:
            raise ConfigError("BM25 needs at least one document to index")
        self.k1, self.b, self.idf_kind, self.epsilon = k1, b, idf, epsilon
        self.n_docs = len(docs)
        self.doc_len = torch.tensor([len(_tokens(d, "each document")) for d in docs], dtype=torch.float64)  # (N,)
        if self.doc_len.sum() == 0:
            raise ConfigError(f"all {self.n_docs} documents are empty: nothing to index")
        self.avgdl = float(self.doc_len.mean())
        # postings: term -> (ids of the documents holding it (n,), its count in each (n,))
        ids: dict[str, list[int]] = {}
        tfs: dict[str, list[int]] = {}
        for i, doc in enumerate(docs):
            for term, count in Counter(doc).items():
                ids.setdefault(term, []).append(i)
                tfs.setdefault(term, []).append(count)
        self.postings = {t: (torch.tensor(ids[t]), torch.tensor(tfs[t], dtype=torch.float64)) for t in ids}
        self.idf = self._idf({t: len(v) for t, v in ids.items()})
        # the length part of the denominator, k1 * (1 - b + b * |d| / avgdl): (N,)
        self.norm = k1 * (1.0 - b + b * self.doc_len / self.avgdl)

    def _idf(self, df: dict[str, int]) -> dict[str, float]:
        n = self.n_docs
        if self.idf_kind == "lucene":
            return {t: math.log(1.0 + (n - m + 0.5) / (m + 0.5)) for t, m in df.items()}
        idf = {t: math.log(n - m + 0.5) - math.log(m + 0.5) for t, m in df.items()}
        floor = self.epsilon * sum(idf.values()) / len(idf)  # rank_bm25: epsilon * mean idf, before flooring
        return {t: floor if v < 0 else v for t, v in idf.items()}

    def scores(self, query: Sequence[str]) -> Tensor:
        """query: a list of tokens -> the BM25 score of every document, (N,) float64."""
        if len(_tokens(query, "the query")) == 0:
            raise LlmlabError("empty query: give at least one token")
        out = torch.zeros(self.n_docs, dtype=torch.float64)
        for term in query:
            if term not in self.postings:
                continue
            ids, tf = self.postings[term]
            out.index_add_(0, ids, self.idf[term] * tf * (self.k1 + 1.0) / (tf + self.norm[ids]))
        return out

    def top_k(self, query: Sequence[str], k: int) -> tuple[Tensor, Tensor]:
        """The min(k, N) best documents: (scores, indices), best first; equal scores in document order."""
        if k < 1:
            raise ConfigError(f"k={k} must be >= 1")
        scores = self.scores(query)
        order = torch.sort(scores, descending=True, stable=True).indices[:k]
        return scores[order], order
