"""Okapi BM25 scores of one query over a tokenized corpus."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.apps.bm25 import BM25
from llmlab.drills.bank._gen import randint
from llmlab.drills.grader import Case, Drill

STARTER = '''"""Drill: bm25_score. Check with `llmlab drill check bm25_score`."""
import math

import torch
from torch import Tensor


def bm25_scores(corpus: list[list[str]], query: list[str], k1: float = 1.5, b: float = 0.75) -> Tensor:
    """Okapi BM25 (Robertson & Zaragoza 2009) score of every document for one query, Lucene's idf:

    score(d) = sum over query tokens t of idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t) = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5))

    corpus: N >= 1 tokenized documents (some may be empty, not all); query: tokens, >= 1, repeats count once per
    occurrence. tf(t, d): count of t in d; |d|: d's length; avgdl: mean length; n(t): documents holding t.
    A token no document holds adds 0; so does a document without t (even when k1 = 0). k1 >= 0, 0 <= b <= 1.
    Returns (N,) float64.
    """
    raise NotImplementedError
'''

WORDS = ("the", "cat", "dog", "sat", "on", "mat", "a", "red", "ran", "to", "big", "tree", "of", "and", "bird")


def bm25_scores(corpus: list[list[str]], query: list[str], k1: float = 1.5, b: float = 0.75) -> Tensor:
    return BM25(corpus, k1=k1, b=b).scores(query)


def _corpus(g: torch.Generator, n: int, max_len: int = 10) -> list[list[str]]:
    """n documents of Zipf-distributed words ("the" most common), lengths 1..max_len."""
    weights = 1.0 / torch.arange(1, len(WORDS) + 1, dtype=torch.float64)
    docs = []
    for _ in range(n):
        idx = torch.multinomial(weights, randint(g, 1, max_len + 1), replacement=True, generator=g)
        docs.append([WORDS[i] for i in idx.tolist()])
    return docs


def examples() -> list[Case]:
    corpus = [["the", "cat", "sat"], ["the", "dog", "sat", "on", "the", "mat"], ["a", "bird"]]
    return [Case(dict(corpus=corpus, query=["cat", "sat"]), ("basic",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    docs = _corpus(g, randint(g, 5, 10))
    common = [["the", "cat"], ["the", "dog", "the"], ["the"], ["a", "the", "mat"], ["bird"]]  # "the" in 4 of 5
    with_empty = _corpus(g, 4) + [[]]
    return [Case(dict(corpus=docs, query=["cat", "tree", "dog"]), ("random",)),
            Case(dict(corpus=common, query=["the", "cat"], k1=1.2, b=0.75), ("common-term",)),
            Case(dict(corpus=docs, query=["cat", "zebra"]), ("unknown-term",)),
            Case(dict(corpus=docs, query=["dog", "dog", "red"], k1=2.0), ("repeated-term",)),
            Case(dict(corpus=docs, query=["mat", "the", "of"], b=0.0), ("b0",)),
            Case(dict(corpus=_corpus(g, 6, 20), query=["big", "tree", "the"], b=1.0), ("b1", "length")),
            Case(dict(corpus=with_empty, query=["the", "on"]), ("empty-doc",)),
            Case(dict(corpus=docs, query=["cat", "the"], k1=0.0), ("k1-0",)),
            Case(dict(corpus=[["only", "one", "doc", "one"]], query=["one"]), ("single-doc",))]


DRILL = Drill(
    name="bm25_score", area="apps", difficulty=1, minutes=15, func="bm25_scores",
    statement="Write Okapi BM25: score every document of a tokenized corpus for one query (Lucene's idf).",
    starter=STARTER, reference=bm25_scores, sources=(BM25,), examples=examples, hidden=hidden,
    tags=("common-term", "unknown-term", "empty-doc", "k1-0"),
    hints=("Count once: document lengths, avgdl, and for each term the number of documents holding it "
           "(collections.Counter per document).",
           "idf = ln(1 + (N - n + 0.5) / (n + 0.5)): the `1 +` keeps it positive for a term in most documents.",
           "Per query token (repeats included), add idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avgdl)) "
           "to the documents with tf > 0 only."),
    tag_hints={"common-term": "a term in more than half the documents keeps a small positive idf: ln(1 + ...), "
                              "not ln((N - n + 0.5) / (n + 0.5)), which is negative.",
               "unknown-term": "a query token in no document adds nothing (and must not raise).",
               "repeated-term": "a token repeated in the query counts once per occurrence.",
               "length": "the denominator's k1 * (1 - b + b * |d| / avgdl) penalises long documents.",
               "b0": "b = 0: no length normalisation, the denominator is tf + k1.",
               "empty-doc": "an empty document scores 0; avgdl counts it (length 0).",
               "k1-0": "with k1 = 0 a document without the term gives 0 / 0: skip tf == 0, it adds 0.",
               "single-doc": "N = 1 and n = 1: idf = ln(1 + 0.5 / 1.5) > 0."},
    banned=("BM25", "BM25Okapi", "get_scores"),
)
