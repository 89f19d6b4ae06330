"""BLEU against sacrebleu 2.6.0 (`sacrebleu.metrics.BLEU(...).corpus_score` / `.sentence_score`, its tokenizers):
score and precisions to 1e-9 absolute (0-100 scale), counts, totals, lengths and tokens identical; on real KJV parallel
verses, edited real sentences, Tang poems and edge cases."""

import logging

import pytest

from llmlab.errors import LlmlabError
from llmlab.eval.bleu import closest_ref_len, corpus_bleu, sentence_bleu, tokenize_13a, tokenize_zh
from tests.eval.text_pairs import EDGE_CASES, datasets, documents, edited_pairs, zh_lines

sacrebleu = pytest.importorskip("sacrebleu")
from sacrebleu.metrics import BLEU  # noqa: E402
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a  # noqa: E402
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh  # noqa: E402

logging.getLogger("sacrebleu").setLevel(logging.ERROR)  # "use effective_order for sentence BLEU" on every call


def assert_same(ours, theirs, add_k: float = 0.0):
    assert ours.score == pytest.approx(theirs.score, abs=1e-9, rel=0)
    assert ours.precisions == pytest.approx(theirs.precisions, abs=1e-9, rel=0)
    assert ours.bp == pytest.approx(theirs.bp, abs=1e-12, rel=0)
    assert (ours.sys_len, ours.ref_len) == (theirs.sys_len, theirs.ref_len)
    # sacrebleu's add-k adds k to the counts and totals it reports for n >= 2 (when anything matched at all)
    k = add_k if any(ours.counts) else 0
    assert [c + (k if n else 0) for n, c in enumerate(ours.counts)] == list(theirs.counts)
    assert [t + (k if n else 0) for n, t in enumerate(ours.totals)] == list(theirs.totals)


def test_13a_tokens_equal_sacrebleu():
    """Every line of the English sample (150 KB of speeches, verse, scripture, fiction) and the edge cases."""
    ref = Tokenizer13a()
    lines = [line for d in documents().values() for line in d.split("\n")]
    lines += [s for pair in EDGE_CASES for s in pair] + ["a-\nb <skipped> x&quot;y&amp;z", "1,000.5 -3 5-4 a.b ,x"]
    for line in lines:
        assert tokenize_13a(line) == ref(line), line


def test_zh_tokens_equal_sacrebleu_with_its_range_quirk():
    """sacrebleu's '\\u20000'-style ranges make U+2001..U+2A6D "Chinese": the em dash and curly quotes are split off
    like CJK characters, while a real CJK Extension B character (U+20000) is not; we reproduce both."""
    ref = TokenizerZh()
    quirks = ["a—b “c”d", "x\u2000y", "x\u2001y", "x\u2a6dy", "x\u2a6ey", "𠀀字𠀁", "x\u2f80y\u2f81z", "ＡＢＣ！"]
    for line in zh_lines() + quirks + [s for pair in EDGE_CASES for s in pair]:
        assert tokenize_zh(line) == ref(line), line
    assert tokenize_zh("a—b") == "a — b" and tokenize_zh("𠀀字") == "𠀀 字"


@pytest.mark.parametrize("tokenizer", ["13a", "zh", "none"])
@pytest.mark.parametrize("smooth", ["exp", "floor", "add-k", "none"])
def test_corpus_bleu_equals_sacrebleu(tokenizer, smooth):
    for name, (hyps, refs) in datasets().items():
        for lowercase, effective_order in [(False, False), (True, True)]:
            kw = dict(tokenize=tokenizer, lowercase=lowercase, smooth_method=smooth, effective_order=effective_order)
            theirs = BLEU(**kw).corpus_score(hyps, refs)
            ours = corpus_bleu(hyps, refs, tokenizer=tokenizer, lowercase=lowercase, smooth_method=smooth,
                               effective_order=effective_order)
            assert_same(ours, theirs, add_k=1 if smooth == "add-k" else 0), name


@pytest.mark.parametrize("smooth", ["exp", "floor", "add-k", "none"])
@pytest.mark.parametrize("effective_order", [True, False])
def test_sentence_bleu_equals_sacrebleu(smooth, effective_order):
    """Every segment alone: short hypotheses exercise the effective order and each smoothing."""
    ref = BLEU(smooth_method=smooth, effective_order=effective_order)
    for hyps, refs in datasets().values():
        for i, hyp in enumerate(hyps):
            seg_refs = [s[i] for s in refs]
            ours = sentence_bleu(hyp, seg_refs, smooth_method=smooth, effective_order=effective_order)
            assert_same(ours, ref.sentence_score(hyp, seg_refs), add_k=1 if smooth == "add-k" else 0)


def test_smooth_values_and_max_order():
    hyps, refs = edited_pairs()
    for smooth, value in [("floor", 0.3), ("add-k", 2), ("add-k", 0.5)]:
        for order in (2, 4, 6):
            theirs = BLEU(smooth_method=smooth, smooth_value=value, max_ngram_order=order).corpus_score(
                hyps[:8], [refs[:8]])
            ours = corpus_bleu(hyps[:8], [refs[:8]], smooth_method=smooth, smooth_value=value, max_order=order)
            assert_same(ours, theirs, add_k=value if smooth == "add-k" else 0)


def test_identical_is_100_and_no_match_is_0():
    s = "It is a guide to action which ensures that the military always obeys the commands of the party."
    assert sentence_bleu(s, [s]).score == pytest.approx(100.0, abs=1e-12)
    empty = sentence_bleu("", [s])
    assert empty.score == 0.0 and empty.bp == 0.0 and empty.sys_len == 0
    assert corpus_bleu(["zebra quagga okapi"], [[s]]).score == 0.0


def test_closest_reference_length_prefers_the_shorter_on_a_tie():
    assert closest_ref_len(5, [7, 3]) == 3
    assert closest_ref_len(5, [8, 6, 4]) == 4
    hyp = "a b c d e"
    theirs = BLEU().sentence_score(hyp, ["a b c d e f g", "a b c"])
    assert sentence_bleu(hyp, ["a b c d e f g", "a b c"]).ref_len == theirs.ref_len == 3


def test_none_marks_a_missing_reference():
    hyps, refs = edited_pairs()
    second = [None if i % 3 else r[::-1] for i, r in enumerate(refs)]
    assert_same(corpus_bleu(hyps, [refs, second]), BLEU().corpus_score(hyps, [refs, second]))


def test_mismatched_streams_and_bad_options_are_user_errors():
    with pytest.raises(LlmlabError, match="2 segments"):
        corpus_bleu(["a", "b", "c"], [["a", "b"]])
    with pytest.raises(LlmlabError, match="tokenizer"):
        corpus_bleu(["a"], [["a"]], tokenizer="intl")
    with pytest.raises(LlmlabError, match="smooth"):
        corpus_bleu(["a"], [["a"]], smooth_method="add-one")
    with pytest.raises(LlmlabError, match="no reference"):
        corpus_bleu(["a"], [[None]])
