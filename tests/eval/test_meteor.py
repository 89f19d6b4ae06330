"""METEOR against nltk 3.10.4 (`nltk.translate.meteor_score.meteor_score`, `single_meteor_score`, `align_words`) to
1e-12, with nltk's default Porter stemmer on its side and ours on ours, and the same synonym source passed to both:
none, and a seeded table over the sample's vocabulary (WordNet's data cannot be downloaded here)."""

import random

import pytest

from llmlab.errors import LlmlabError
from llmlab.eval.meteor import SynonymTable, align, corpus_meteor, count_chunks, meteor, single_meteor
from tests.eval.text_pairs import EDGE_CASES, edited_pairs, parallel

ms = pytest.importorskip("nltk.translate.meteor_score")

NO_SYNONYMS = SynonymTable({})


def synonym_table(seed: int = 0) -> SynonymTable:
    """Synsets for a third of the sample's (lowercased, and stemmed: nltk looks synonyms up on stems) words, drawn
    from the same vocabulary so synonym matches happen; multi-word and capitalized lemmas, which never match."""
    ph, pr = parallel()
    eh, er = edited_pairs()
    vocab = sorted({w.lower() for s in ph + pr + eh + er for w in s.split()})
    rng = random.Random(seed)
    table = {w: [[rng.choice(vocab) for _ in range(rng.randint(1, 3))] + [w] for _ in range(rng.randint(1, 2))]
             for w in vocab[::3]}
    table["lord"] = [["god", "Lord", "master_of_the_house"]]
    return SynonymTable(table)


def pairs() -> list[tuple[list[str], list[str]]]:
    ph, pr = parallel()
    eh, er = edited_pairs()
    return [(h.split(), r.split()) for h, r in [*zip(ph, pr, strict=True), *zip(eh, er, strict=True), *EDGE_CASES]]


@pytest.mark.parametrize("table", [NO_SYNONYMS, synonym_table()], ids=["no-synonyms", "synonym-table"])
def test_single_and_multi_reference_equal_nltk(table):
    changed = 0
    for hyp, ref in pairs():
        ours = single_meteor(hyp, ref, wordnet=table)
        assert ours == pytest.approx(ms.single_meteor_score(ref, hyp, wordnet=table), abs=1e-12, rel=0)
        changed += ours != single_meteor(hyp, ref)
        refs = [ref, hyp[::-1], ref[: len(ref) // 2]]
        assert meteor(hyp, refs, wordnet=table) == pytest.approx(ms.meteor_score(refs, hyp, wordnet=table),
                                                                 abs=1e-12, rel=0)
    if table is not NO_SYNONYMS:
        assert changed >= 5  # the table really adds synonym matches


def test_alignment_equals_nltk():
    table = synonym_table(1)
    for hyp, ref in pairs():
        ours = align([w.lower() for w in hyp], [w.lower() for w in ref], wordnet=table)
        assert ours == ms.align_words(hyp, ref, wordnet=table)[0]


@pytest.mark.parametrize(("alpha", "beta", "gamma"), [(0.5, 1.0, 0.2), (0.85, 2.35, 0.45)])
def test_parameters_equal_nltk(alpha, beta, gamma):
    for hyp, ref in pairs()[:30]:
        theirs = ms.meteor_score([ref], hyp, wordnet=NO_SYNONYMS, alpha=alpha, beta=beta, gamma=gamma)
        assert meteor(hyp, [ref], alpha=alpha, beta=beta, gamma=gamma) == pytest.approx(theirs, abs=1e-12, rel=0)


def test_synonyms_are_looked_up_on_stems_as_nltk_does():
    """nltk's synonym stage sees the stem stage's stems: a synonym listed for 'happy' is never found, one listed for
    its stem 'happi' is."""
    hyp, ref = ["a", "happy", "dog"], ["a", "glad", "dog"]
    for table, expect_match in [(SynonymTable({"happy": [["glad"]]}), False),
                                (SynonymTable({"happi": [["glad"]]}), True)]:
        ours = single_meteor(hyp, ref, wordnet=table)
        assert ours == pytest.approx(ms.single_meteor_score(ref, hyp, wordnet=table), abs=1e-12)
        assert (ours > single_meteor(hyp, ref)) is expect_match


def test_closed_form_and_chunks():
    """3 of 4 words aligned in 2 chunks: P = 3/3, R = 3/4, Fmean = PR / (0.9P + 0.1R), penalty 0.5 (2/3)^3."""
    p, r = 1.0, 0.75
    fmean = p * r / (0.9 * p + 0.1 * r)
    assert single_meteor(["the", "cat", "mat"], ["the", "cat", "on", "mat"]) == pytest.approx(
        (1 - 0.5 * (2 / 3) ** 3) * fmean, abs=1e-15)
    assert count_chunks([(0, 0), (1, 1), (2, 3), (3, 4), (5, 2)]) == 3
    assert single_meteor([], ["a"]) == 0.0 and single_meteor(["a"], []) == 0.0


def test_corpus_meteor_and_user_errors():
    ph, pr = parallel()
    want = sum(ms.meteor_score([r.split()], h.split(), wordnet=NO_SYNONYMS) for h, r in zip(ph, pr, strict=True))
    assert corpus_meteor(ph, [pr]) == pytest.approx(want / len(ph), abs=1e-12)
    with pytest.raises(LlmlabError, match="tokenized"):
        meteor("a cat", ["a cat"])
    with pytest.raises(LlmlabError, match="one segment per hypothesis"):
        corpus_meteor(["a", "b"], [["a"]])
