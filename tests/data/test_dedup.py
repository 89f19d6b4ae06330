"""Deduplication. Exact: normalised-text hash. Near: our MinHash estimates are compared with the exact Jaccard of
the shingle sets and with `datasketch.MinHash` (same shingles, its own hashes) within 4.5 standard errors
sqrt(J(1-J)/k); LSH banding finds planted near-duplicates and merges nothing else."""

import random
from pathlib import Path

import numpy as np
import pytest

from llmlab.data.dedup import (
    MinHasher,
    candidate_pairs,
    candidate_probability,
    estimated_jaccard,
    exact_dedup,
    exact_jaccard,
    lsh_params,
    near_dedup,
    near_duplicate_of,
    shingles,
)
from llmlab.data.load import Document, read_jsonl

SAMPLE = Path(__file__).parent / "sample"
K = 256


def sample_docs() -> list[Document]:
    return list(read_jsonl(SAMPLE / "en.jsonl")) + list(read_jsonl(SAMPLE / "zh.jsonl"))


def by_heading(heading: str) -> str:
    return next(d.text for d in sample_docs() if d.text.startswith(heading))


def mutate(text: str, fraction: float, seed: int) -> str:
    """Replace `fraction` of the words (whitespace tokens) with a made-up word."""
    rng = random.Random(seed)
    words = text.split(" ")
    for i in rng.sample(range(len(words)), int(fraction * len(words))):
        words[i] = f"zq{rng.randrange(10**6)}"
    return " ".join(words)


def test_exact_dedup_ignores_case_and_layout_and_keeps_the_first():
    """Exact dedup hashes NFKC + lower case + collapsed whitespace; the first copy is kept."""
    a = Document("In the beginning God created\nthe heaven and the earth.", "kjv")
    docs = [a, Document("in the  beginning god created the heaven and the earth.  ", "copy"),
            Document("In the beginning was the Word.", "kjv"), Document("ＩＮ the beginning God created the heaven "
                                                                        "and the earth.", "fullwidth")]
    kept, removed = exact_dedup(docs)
    assert kept == [a, docs[2]] and removed == 2


def test_shingles_are_word_5grams_and_cjk_characters():
    """Shingles: 5-grams of normalised words; a CJK character counts as a word, with its trailing punctuation
    (NFKC turns the full-width comma into ',')."""
    assert shingles("a b c d e f") == {"a b c d e", "b c d e f"}
    assert shingles("Short text") == {"short text"}
    assert shingles("秦川雄帝宅，函谷壯皇居。") >= {"秦 川 雄 帝 宅,", "帝 宅, 函 谷 壯", "函 谷 壯 皇 居。"}


def test_minhash_estimates_exact_jaccard_and_agrees_with_datasketch():
    """For pairs of real documents at Jaccard 0.1-0.95, |ours - exact|, |datasketch - exact| <= 4.5 sigma and
    |ours - datasketch| <= 4.5 sqrt(2) sigma, sigma = sqrt(J(1-J)/k), k = 256; mean errors comparable."""
    datasketch = pytest.importorskip("datasketch", reason="datasketch is the reference MinHash (verify extra)")
    hasher = MinHasher(K, seed=1)
    ours_err, ref_err = [], []
    texts = [d.text for d in sample_docs() if 2000 < len(d.text) < 20000][:8]
    for i, text in enumerate(texts):
        for fraction in (0.01, 0.05, 0.15, 0.3):
            a, b = shingles(text), shingles(mutate(text, fraction, seed=i))
            exact = exact_jaccard(a, b)
            ours = estimated_jaccard(hasher.text_signature(text), hasher.text_signature(mutate(text, fraction, i)))
            ref_a, ref_b = datasketch.MinHash(num_perm=K, seed=7), datasketch.MinHash(num_perm=K, seed=7)
            ref_a.update_batch([s.encode() for s in a])
            ref_b.update_batch([s.encode() for s in b])
            ref = ref_a.jaccard(ref_b)
            sigma = max(np.sqrt(exact * (1 - exact) / K), 1 / K)
            assert abs(ours - exact) <= 4.5 * sigma, (i, fraction, ours, exact)
            assert abs(ref - exact) <= 4.5 * sigma, (i, fraction, ref, exact)
            assert abs(ours - ref) <= 4.5 * np.sqrt(2) * sigma
            ours_err.append(ours - exact)
            ref_err.append(ref - exact)
    assert abs(np.mean(ours_err)) < 0.02  # unbiased
    assert np.mean(np.abs(ours_err)) < 1.5 * np.mean(np.abs(ref_err)) + 0.005


def test_minhash_of_identical_and_disjoint_sets():
    """Jaccard 1 -> every minimum agrees; disjoint sets -> almost none do."""
    hasher = MinHasher(K)
    text = by_heading("Genesis 1")
    assert estimated_jaccard(hasher.text_signature(text), hasher.text_signature(text)) == 1.0
    assert estimated_jaccard(hasher.text_signature(text), hasher.text_signature(by_heading("John 1"))) < 0.05


def test_lsh_params_follow_the_s_curve_formula():
    """b * r <= k and the S-curve's threshold (1/b)^(1/r) is within 0.05 of the requested one; the candidate
    probability 1 - (1 - s^r)^b is low well below the threshold and high well above."""
    for threshold in (0.5, 0.7, 0.8, 0.9):
        b, r = lsh_params(threshold, 128)
        assert b * r <= 128 and abs((1 / b) ** (1 / r) - threshold) < 0.05
        assert candidate_probability(threshold - 0.3, b, r) < 0.1
        assert candidate_probability(min(threshold + 0.15, 1.0), b, r) > 0.9


def test_lsh_finds_planted_near_duplicates_and_merges_nothing_else():
    """Copies of real documents with 1% of words changed (Jaccard ~0.9) are dropped at threshold 0.8 and mapped to
    their original; no unrelated document is merged (the sample's closest real pair is at Jaccard 0.47)."""
    docs = sample_docs()
    originals = [i for i, d in enumerate(docs) if len(d.text.split()) > 300][:5]
    planted = [Document(mutate(docs[i].text, 0.01, seed=i), "planted") for i in originals]
    kept, dups = near_dedup(docs + planted, threshold=0.8)
    assert dups == {len(docs) + n: i for n, i in enumerate(originals)}
    assert kept == docs


def test_real_near_duplicate_pair_isaiah_37_and_2_kings_19():
    """Isaiah 37 retells 2 Kings 19 (5-gram Jaccard 0.47): merged at threshold 0.4, kept apart at 0.8."""
    texts = [by_heading("Isaiah 37"), by_heading("2 Kings 19"), by_heading("Genesis 1")]
    assert 0.4 < exact_jaccard(shingles(texts[0]), shingles(texts[1])) < 0.55
    sigs = MinHasher(K).signatures(texts)
    assert near_duplicate_of(sigs, threshold=0.4) == {1: 0}
    assert near_duplicate_of(sigs, threshold=0.8) == {}


def test_candidate_pairs_share_a_whole_band():
    """Two signatures are candidates iff some band of r rows is equal in full."""
    sigs = np.arange(24, dtype=np.uint64).reshape(3, 8)
    sigs[2, 4:] = sigs[0, 4:]  # doc 2 shares band 1 (rows 4-7) with doc 0
    sigs[1, 5] = sigs[0, 5]  # doc 1 shares one row only
    assert candidate_pairs(sigs, bands=2, rows=4) == {(0, 2)}


def test_parallel_signatures_equal_serial():
    """The process pool changes nothing: signatures with 2 workers equal those computed in one process."""
    texts = [d.text for d in sample_docs()]
    hasher = MinHasher(64, seed=3)
    assert np.array_equal(hasher.signatures(texts, workers=2), hasher.signatures(texts, workers=1))
