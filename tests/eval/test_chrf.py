"""chrF and chrF++ against sacrebleu 2.6.0 (`sacrebleu.metrics.CHRF(...).corpus_score` / `.sentence_score`): scores
to 1e-9 absolute (0-100 scale) on real KJV parallel verses, edited real sentences, Tang poems and edge cases."""

import pytest

from llmlab.eval.chrf import corpus_chrf, sentence_chrf
from tests.eval.text_pairs import datasets

CHRF = pytest.importorskip("sacrebleu.metrics").CHRF


@pytest.mark.parametrize("word_order", [0, 2])
@pytest.mark.parametrize("eps_smoothing", [False, True])
def test_corpus_and_sentence_chrf_equal_sacrebleu(word_order, eps_smoothing):
    for lowercase, whitespace in [(False, False), (True, True)]:
        kw = dict(word_order=word_order, lowercase=lowercase, whitespace=whitespace, eps_smoothing=eps_smoothing)
        ref = CHRF(**kw)
        for hyps, refs in datasets().values():
            assert corpus_chrf(hyps, refs, **kw).score == pytest.approx(ref.corpus_score(hyps, refs).score, abs=1e-9)
            for i, hyp in enumerate(hyps):
                seg = [s[i] for s in refs]
                assert sentence_chrf(hyp, seg, **kw).score == pytest.approx(ref.sentence_score(hyp, seg).score,
                                                                            abs=1e-9)


def test_beta_and_orders():
    hyps, refs = datasets()["edited-2refs"]
    for beta, char_order in [(1, 6), (3, 4)]:
        theirs = CHRF(beta=beta, char_order=char_order).corpus_score(hyps, refs).score
        assert corpus_chrf(hyps, refs, beta=beta, char_order=char_order).score == pytest.approx(theirs, abs=1e-9)


def test_identical_is_100():
    assert sentence_chrf("The cat sat on the mat.", ["The cat sat on the mat."]).score == pytest.approx(100.0)
