"""BM25 (llmlab.apps.bm25) against `rank_bm25.BM25Okapi` 0.2.2, the package RAG tutorials reach for.

Reference and tolerance: with idf="okapi" our scores equal rank_bm25's `get_scores` at rtol 1e-9 (atol 0) on the
4,360 chit-chat turns of chatterbot-corpus (a real corpus, with empty documents) and on a fixed set of sentences
where a term sits in more than half the documents (rank_bm25's epsilon floor for negative idf) and one in exactly
half (idf 0, not floored); queries include unknown and repeated tokens. The default Lucene idf is checked against
the formula worked by hand.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from llmlab.apps.bm25 import BM25, tokenize
from llmlab.errors import ConfigError, LlmlabError
from llmlab.posttrain.chat_data import chitchat_pairs

rank_bm25 = pytest.importorskip("rank_bm25")

RTOL = 1e-9
SENTENCES = [  # "the" is in 7 of 10 documents (negative okapi idf), "on" in exactly 5 (idf 0)
    "The cat sat on the mat.",
    "The dog chased the cat up the tree, and the cat stayed on the branch.",
    "A quick brown fox jumps over a lazy dog.",
    "The weather on the coast is mild in winter.",
    "Beam search keeps the best hypotheses on every step.",
    "Attention is all you need.",
    "The mat was red.",
    "Dogs and cats are on good terms here.",
    "The end.",
    "Large language models predict the next token.",
]


def check_equal(docs, queries, **kw):
    ours = BM25(docs, idf="okapi", **kw)
    ref = rank_bm25.BM25Okapi(docs, **kw)
    for q in queries:
        np.testing.assert_allclose(ours.scores(q).numpy(), ref.get_scores(q), rtol=RTOL, atol=0, err_msg=str(q))
    return ours, ref


def test_equals_rank_bm25_on_chatterbot_corpus():
    turns = [t for conv in chitchat_pairs() for t in conv]
    if not turns:
        pytest.skip("chatterbot-corpus not installed")
    docs = [tokenize(t) for t in turns]
    assert any(len(d) == 0 for d in docs)  # punctuation-only turns: empty documents are scored 0
    queries = [tokenize(q) for q in ("what is your favorite movie", "tell me a joke about computers",
                                     "do you like the weather", "is the robot happy happy")] + [["zzyzx", "movie"]]
    for k1, b in ((1.5, 0.75), (1.2, 0.3), (2.0, 0.9)):  # not b=1: rank_bm25 scores empty docs 0/0 = NaN
        ours, _ = check_equal(docs, queries, k1=k1, b=b)
    assert ours.scores(["zzyzx"]).eq(0).all()
    assert BM25(docs, b=1.0).scores(queries[0]).isfinite().all()  # an empty document scores 0, never 0/0


def test_negative_idf_floor_equals_rank_bm25():
    docs = [tokenize(s) for s in SENTENCES]
    queries = [["the"], ["on"], ["the", "cat", "on"], ["cat", "cat", "mat"], ["unknown"], ["the", "unknown", "end"]]
    ours, ref = check_equal(docs, queries, k1=1.5, b=0.75, epsilon=0.25)
    assert math.log(10 - 7 + 0.5) - math.log(7 + 0.5) < 0 and ours.idf["the"] == pytest.approx(ref.idf["the"])
    assert ours.idf["the"] == pytest.approx(0.25 * ref.average_idf, rel=RTOL) and ours.idf["on"] == 0.0
    check_equal(docs, queries, k1=0.9, b=0.0, epsilon=0.5)


def test_lucene_idf_and_score_by_hand():
    docs = [["a", "b", "a"], ["b", "c"], ["c"]]  # N = 3, avgdl = 2
    bm = BM25(docs, k1=1.2, b=0.75)
    idf_a = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    idf_b = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    assert bm.idf["a"] == pytest.approx(idf_a, rel=RTOL) and bm.idf["b"] > 0  # b is in 2 of 3 docs: still > 0
    # doc 0: tf(a) = 2, tf(b) = 1, |d| = 3
    norm0 = 1.2 * (1 - 0.75 + 0.75 * 3 / 2)
    want0 = idf_a * 2 * 2.2 / (2 + norm0) + idf_b * 1 * 2.2 / (1 + norm0)
    got = bm.scores(["a", "b"])
    assert got[0].item() == pytest.approx(want0, rel=RTOL) and got[2].item() == 0.0


def test_top_k_orders_best_first():
    docs = [tokenize(s) for s in SENTENCES]
    bm = BM25(docs, idf="okapi")
    query = ["the", "cat", "dog", "mat"]
    scores, idx = bm.top_k(query, 4)
    assert scores.tolist() == sorted(scores.tolist(), reverse=True) and len(set(scores.tolist())) == 4
    assert idx.tolist() == rank_bm25.BM25Okapi(docs).get_top_n(query, list(range(len(docs))), n=4)
    assert bm.top_k(query, 100)[1].numel() == len(docs)
    tied, order = BM25([["x"], ["y"], ["x"]]).top_k(["x"], 3)  # equal scores keep document order
    assert order.tolist() == [0, 2, 1] and tied[0] == tied[1]


def test_tokenize():
    assert tokenize("Don't PANIC -- it's 42!") == ["don", "t", "panic", "it", "s", "42"]


@pytest.mark.parametrize("make, error, words", [
    (lambda: BM25([]), ConfigError, "at least one document"),
    (lambda: BM25([[], []]), ConfigError, "documents are empty"),
    (lambda: BM25([["a"]]).scores([]), LlmlabError, "empty query"),
    (lambda: BM25([["a"]]).scores("a b"), LlmlabError, "not a str"),
    (lambda: BM25(["a b c"]), LlmlabError, "not a str"),
    (lambda: BM25([["a"]], k1=-1), ConfigError, "k1=-1"),
    (lambda: BM25([["a"]], b=1.5), ConfigError, "b=1.5"),
    (lambda: BM25([["a"]], idf="bm25+"), ConfigError, "idf='bm25+'"),
    (lambda: BM25([["a"]]).top_k(["a"], 0), ConfigError, "k=0"),
])
def test_errors_are_one_line(make, error, words):
    with pytest.raises(error, match=re.escape(words)) as e:
        make()
    assert "\n" not in str(e.value)
