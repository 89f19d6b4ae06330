"""Quality rules: each rule at the threshold Gopher (Rae et al. 2021, App. A.1.1) or C4 (Raffel et al. 2020,
Sec. 2.2) states, with a document that passes and one that fails; CJK text is judged by characters."""

from pathlib import Path

import pytest

from llmlab.data import clean as c
from llmlab.data.load import Document, read_jsonl

SAMPLE = Path(__file__).parent / "sample"
ENGLISH = ("The jury further said in term-end presentments that the City Executive Committee, which had over-all "
           "charge of the election, deserves the praise and thanks of the City of Atlanta for the manner in which "
           "the election was conducted. ")  # 36 words, from Brown ca01
POEM = "秦川雄帝宅，函谷壯皇居。綺殿千尋起，離宮百雉餘。連甍遙接漢，飛觀迥凌虛。雲日隱層闕，風煙出綺疎。"  # 40 Han


def words(n: int) -> str:
    return " ".join((ENGLISH.split() * (n // 36 + 1))[:n])


def test_word_count_bounds_50_and_100000():
    """Gopher: keep 50 <= words <= 100,000."""
    assert not c.word_count(c.view(words(49)))
    assert c.word_count(c.view(words(50)))
    assert c.word_count(c.view(words(100_000)))
    assert not c.word_count(c.view(words(100_001)))


def test_word_count_counts_cjk_characters():
    """CJK has no spaces: 80 Han characters are 80 words, not 8 whitespace tokens; 40 are too few."""
    assert len((POEM * 2).split()) == 1 and c.word_count(c.view(POEM * 2))
    assert not c.word_count(c.view(POEM))


def test_mean_word_length_3_to_10():
    """Gopher: keep mean word length in [3, 10]."""
    assert c.mean_word_length(c.view(ENGLISH))
    assert not c.mean_word_length(c.view("a b c d e f g h i j " * 10))
    assert not c.mean_word_length(c.view("internationalisation " * 60))


def test_mean_word_length_passes_cjk():
    """A CJK word is one character: the rule would reject every Chinese text, so CJK-majority text passes."""
    assert c.view(POEM).cjk_fraction == 1.0
    assert c.mean_word_length(c.view(POEM * 2))


def test_symbol_to_word_ratio_at_most_0_1():
    """Gopher: remove if (# '#' + # ellipses) / words > 0.1."""
    assert c.symbol_to_word_ratio(c.view(words(100) + " #tag" * 10))  # 10 / 110
    assert not c.symbol_to_word_ratio(c.view(words(100) + " #tag" * 12))  # 12 / 112
    assert not c.symbol_to_word_ratio(c.view(words(50) + " wait..." * 10))


def test_bullet_lines_at_most_90_percent():
    """Gopher: remove if more than 90% of lines start with a bullet."""
    nine = "\n".join(["• " + words(8)] * 9 + [words(8)])
    assert c.bullet_lines(c.view(nine))  # exactly 90%
    assert not c.bullet_lines(c.view("\n".join(f"- item {i} of the list" for i in range(10))))


def test_ellipsis_lines_at_most_30_percent():
    """Gopher: remove if more than 30% of lines end with an ellipsis."""
    lines = [words(6) + (" and then..." if i < 3 else ".") for i in range(10)]
    assert c.ellipsis_lines(c.view("\n".join(lines)))
    lines[3] = words(6) + " and then…"
    assert not c.ellipsis_lines(c.view("\n".join(lines)))


def test_alphabetic_words_at_least_80_percent():
    """Gopher: keep if >= 80% of words contain an alphabetic character; Han characters are alphabetic."""
    assert c.alphabetic_words(c.view(ENGLISH)) and c.alphabetic_words(c.view(POEM))
    table = " ".join(f"{i} {i * 7} {i * 13} {i % 5}.{i}" for i in range(30)) + " " + words(20)
    assert not c.alphabetic_words(c.view(table))


def test_repeated_lines_at_most_30_percent():
    """Gopher Table A1: remove if more than 30% of lines repeat an earlier line."""
    distinct = [f"line {i}: " + words(5) for i in range(7)]
    assert c.repeated_lines(c.view("\n".join(distinct + ["Click here to subscribe"] * 4)))  # 3 of 11 repeat
    assert not c.repeated_lines(c.view("\n".join(distinct + ["Click here to subscribe"] * 5)))  # 4 of 12


def test_repeated_line_chars_at_most_20_percent():
    """Gopher Table A1: remove if repeated lines hold more than 20% of the characters."""
    long = "Share this article with your friends and family on every social network you use."
    distinct = [f"{i}: " + words(12) for i in range(10)]
    assert c.repeated_line_chars(c.view("\n".join(distinct + [long] * 2)))
    assert not c.repeated_line_chars(c.view("\n".join(distinct + [long] * 5)))


def test_c4_lorem_ipsum_and_curly_brace():
    """C4: drop pages containing 'lorem ipsum' (any case) or a curly bracket."""
    assert c.no_lorem_ipsum(c.view(ENGLISH)) and c.no_curly_brace(c.view(ENGLISH))
    assert not c.no_lorem_ipsum(c.view(ENGLISH + "Lorem Ipsum dolor sit amet."))
    assert not c.no_curly_brace(c.view(ENGLISH + "function f() { return 1; }"))


def test_c4_javascript_lines_are_dropped_not_pages():
    """C4 removes the *lines* that mention JavaScript and keeps the rest of the page."""
    text, dropped = c.drop_javascript_lines(f"{ENGLISH}\nPlease enable JavaScript to view comments.\n{ENGLISH}")
    assert dropped == 1 and text == f"{ENGLISH}\n{ENGLISH}"
    kept, stats = c.clean([Document(f"{words(60)}\nThis site needs javascript.", "web")])
    assert len(kept) == 1 and stats.javascript_lines == 1 and "javascript" not in kept[0].text


def test_rules_on_the_real_sample():
    """On real text the rules remove exactly what they should: Psalm 117 (33 words), Numbers 7 (the same offering
    listed twelve times), Brown cj20 (mathematics writing f{t}); Shakespeare, speeches and Tang poems pass."""
    docs = list(read_jsonl(SAMPLE / "en.jsonl")) + list(read_jsonl(SAMPLE / "zh.jsonl"))
    failed = {d.text.split("\n")[0][:20]: c.first_failed_rule(d.text) for d in docs}
    assert {k: v for k, v in failed.items() if v} == {
        "Psalms 117": "word_count", "Numbers 7": "repeated_lines", "Consider a simple, c": "curly_brace"}
    kept, stats = c.clean(docs)
    assert stats.docs_in == len(docs) and stats.kept == len(kept) == len(docs) - 3
    assert stats.removed["word_count"] == stats.removed["repeated_lines"] == stats.removed["curly_brace"] == 1


@pytest.mark.parametrize("text", ["", "   \n\n  "])
def test_empty_documents_are_removed_by_word_count(text):
    """An empty document fails the first rule (word count) and no rule divides by zero."""
    assert c.first_failed_rule(text) == "word_count"
    assert all(isinstance(rule(c.view(text)), bool) for rule in c.RULES.values())
