"""ROUGE against Google's rouge-score 0.1.2 (`rouge_scorer.RougeScorer(types, use_stemmer).score` / `.score_multi`,
its tokenizer): precision, recall and F to 1e-12 for rouge1, rouge2, rouge3, rougeL and rougeLsum, with and without
the stemmer, on real KJV parallel verses, edited real sentences, multi-sentence summaries and edge cases."""

import pytest

from llmlab.errors import LlmlabError
from llmlab.eval.rouge import corpus_rouge, rouge, rouge_multi, rouge_tokenize
from tests.eval.text_pairs import EDGE_CASES, documents, edited_pairs, parallel, sentences

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
from rouge_score import tokenizers  # noqa: E402

TYPES = ["rouge1", "rouge2", "rouge3", "rougeL", "rougeLsum"]


def pairs() -> list[tuple[str, str]]:
    """(prediction, reference), single lines and newline-separated multi-sentence summaries."""
    ph, pr = parallel()
    eh, er = edited_pairs()
    s = sentences()
    # summaries of 3 edited sentences against 4 real ones in another order: rougeLsum's union LCS
    summaries = [("\n".join(eh[i : i + 3]), "\n".join(s[i : i + 4][::-1])) for i in range(0, 57, 3)]
    edge = [*EDGE_CASES, ("...\n\n", "a\n\nb"), ("a b\n...\nc", "c\na b a")]
    return [*zip(ph, pr, strict=True), *zip(eh, er, strict=True), *summaries, *edge]


def assert_close(ours, theirs):
    assert set(ours) == set(theirs)
    for k in theirs:
        assert tuple(ours[k]) == pytest.approx(tuple(theirs[k]), abs=1e-12, rel=0), k


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_tokens_equal_rouge_score(use_stemmer):
    ref = tokenizers.DefaultTokenizer(use_stemmer)
    for text in list(documents().values()) + [s for pair in EDGE_CASES for s in pair]:
        assert rouge_tokenize(text, use_stemmer) == ref.tokenize(text)


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_scores_equal_rouge_score(use_stemmer):
    scorer = rouge_scorer.RougeScorer(TYPES, use_stemmer=use_stemmer)
    for pred, ref in pairs():
        assert_close(rouge(pred, ref, TYPES, use_stemmer), scorer.score(ref, pred))


def test_rougelsum_alone_equals_rouge_score():
    """rouge-score skips whole-text tokenization when rougeLsum is the only type: same numbers."""
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    for pred, ref in pairs():
        assert_close(rouge(pred, ref, ["rougeLsum"], True), scorer.score(ref, pred))


def test_score_multi_takes_the_best_f_per_type():
    scorer = rouge_scorer.RougeScorer(TYPES, use_stemmer=True)
    eh, er = edited_pairs()
    ph, pr = parallel()
    for i, pred in enumerate(eh):
        refs = [er[i], pr[i % len(pr)], pred[: len(pred) // 2], er[i]]
        assert_close(rouge_multi(pred, refs, TYPES, True), scorer.score_multi(refs, pred))


def test_corpus_rouge_is_the_mean_of_rouge_score_per_segment():
    eh, er = edited_pairs()
    second = [r.upper() for r in er[::-1]]
    scorer = rouge_scorer.RougeScorer(TYPES)
    per = [scorer.score_multi([a, b], p) for p, a, b in zip(eh, er, second, strict=True)]
    got = corpus_rouge(eh, [er, second], TYPES)
    for k in TYPES:
        for f in range(3):
            assert got[k][f] == pytest.approx(sum(s[k][f] for s in per) / len(per), abs=1e-12)


def test_closed_forms_and_user_errors():
    """rougeL of 'the cat sat' vs 'the cat on the mat sat': LCS 3 -> P = 1, R = 1/2, F = 2/3."""
    s = rouge("the cat sat", "the cat on the mat sat", ["rougeL"])["rougeL"]
    assert (s.precision, s.recall) == (1.0, 0.5) and s.fmeasure == pytest.approx(2 / 3, abs=1e-15)
    assert rouge("", "a b", ["rouge1", "rougeL", "rougeLsum"])["rouge1"].fmeasure == 0.0
    with pytest.raises(LlmlabError, match="rouge type"):
        rouge("a", "a", ["rougeW"])
    with pytest.raises(LlmlabError, match="one segment per prediction"):
        corpus_rouge(["a", "b"], [["a"]])
