"""Document quality rules in the style of Gopher (Rae et al. 2021, App. A.1.1) and C4 (Raffel et al. 2020, 2.2).

Each rule is a pure function `rule(view) -> bool` (True = keep) with the paper's threshold as its
default; `clean(docs)` keeps the documents that pass every rule and counts, per rule, the documents it
removed first. C4's JavaScript rule is a line filter (the paper drops lines, not pages).

CJK: Chinese and Japanese put no spaces between words, so `words()` counts each Han/kana character
as one word (a two-character word is two "words"); punctuation that follows a character stays with
it. Word-count bounds then count characters, the alphabetic-word rule sees characters (which are
alphabetic), and the mean-word-length rule, meaningless for one-character words, passes text whose
words are mostly CJK.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from llmlab.data.load import Document

# Han (CJK Unified Ideographs + Ext. A + compatibility + Ext. B-G), hiragana, katakana
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
WORD = re.compile(rf"[{CJK}][^\s{CJK}]*|[^\s{CJK}]+")
CJK_CHAR = re.compile(rf"[{CJK}]")
BULLETS = ("•", "●", "○", "◦", "▪", "▫", "■", "□", "‣", "⁃", "∙", "·", "-", "*", "–", "—")
ELLIPSES = ("...", "…")


@dataclass(frozen=True)
class TextView:
    """What the rules look at: the text, its non-empty stripped lines, its words, and how CJK it is."""

    text: str
    lines: list[str]
    words: list[str]
    cjk_fraction: float  # fraction of words that start with a CJK character


def view(text: str) -> TextView:
    words = WORD.findall(text)
    cjk = sum(1 for w in words if CJK_CHAR.match(w))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return TextView(text, lines, words, cjk / len(words) if words else 0.0)


# ---- Gopher (Rae et al. 2021), Appendix A.1.1 "Quality filters" ---------------------------------

def word_count(v: TextView, lo: int = 50, hi: int = 100_000) -> bool:
    # Gopher: keep documents with 50 <= words <= 100,000 (CJK: characters)
    return lo <= len(v.words) <= hi


def mean_word_length(v: TextView, lo: float = 3.0, hi: float = 10.0) -> bool:
    # Gopher: keep mean word length in [3, 10] characters; CJK-majority text passes (its words are 1 character)
    if v.cjk_fraction > 0.5:
        return True
    return bool(v.words) and lo <= sum(map(len, v.words)) / len(v.words) <= hi


def symbol_to_word_ratio(v: TextView, hi: float = 0.1) -> bool:
    # Gopher: remove if (# '#' + # '...' or '…') / words > 0.1
    symbols = v.text.count("#") + sum(v.text.count(e) for e in ELLIPSES)
    return bool(v.words) and symbols / len(v.words) <= hi


def bullet_lines(v: TextView, hi: float = 0.9) -> bool:
    # Gopher: remove if more than 90% of lines start with a bullet point
    return not v.lines or sum(line.startswith(BULLETS) for line in v.lines) / len(v.lines) <= hi


def ellipsis_lines(v: TextView, hi: float = 0.3) -> bool:
    # Gopher: remove if more than 30% of lines end with an ellipsis
    return not v.lines or sum(line.endswith(ELLIPSES) for line in v.lines) / len(v.lines) <= hi


def alphabetic_words(v: TextView, lo: float = 0.8) -> bool:
    # Gopher: keep if at least 80% of words contain an alphabetic character (Han characters are alphabetic)
    return bool(v.words) and sum(any(c.isalpha() for c in w) for w in v.words) / len(v.words) >= lo


def repeated_lines(v: TextView, hi: float = 0.3) -> bool:
    # Gopher, Table A1: remove if the fraction of lines that repeat an earlier line exceeds 0.30
    return not v.lines or (len(v.lines) - len(set(v.lines))) / len(v.lines) <= hi


def repeated_line_chars(v: TextView, hi: float = 0.2) -> bool:
    # Gopher, Table A1: remove if the characters in repeated lines exceed 20% of all line characters
    counts = Counter(v.lines)
    dup = sum(len(line) * (n - 1) for line, n in counts.items())
    return not v.lines or dup / sum(len(line) for line in v.lines) <= hi


# ---- C4 (Raffel et al. 2020), Section 2.2 ---------------------------------------------------------

def no_lorem_ipsum(v: TextView) -> bool:
    # C4: "we removed any page where the phrase 'lorem ipsum' appeared"
    return "lorem ipsum" not in v.text.lower()


def no_curly_brace(v: TextView) -> bool:
    # C4: "we removed any pages that contained a curly bracket" (code, not natural language)
    return "{" not in v.text


def drop_javascript_lines(text: str) -> tuple[str, int]:
    """C4: "we removed any line with the word Javascript" (cookie/JS warnings); returns (text, lines dropped)."""
    lines = text.split("\n")
    kept = [line for line in lines if "javascript" not in line.lower()]
    return "\n".join(kept), len(lines) - len(kept)


RULES: dict[str, Callable[[TextView], bool]] = {
    "word_count": word_count,
    "mean_word_length": mean_word_length,
    "symbol_to_word_ratio": symbol_to_word_ratio,
    "bullet_lines": bullet_lines,
    "ellipsis_lines": ellipsis_lines,
    "alphabetic_words": alphabetic_words,
    "repeated_lines": repeated_lines,
    "repeated_line_chars": repeated_line_chars,
    "lorem_ipsum": no_lorem_ipsum,
    "curly_brace": no_curly_brace,
}


@dataclass
class CleanStats:
    docs_in: int = 0
    kept: int = 0
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULES, 0))  # by the first rule failed
    javascript_lines: int = 0


def first_failed_rule(text: str, rules: dict[str, Callable[[TextView], bool]] = RULES) -> str | None:
    v = view(text)
    return next((name for name, rule in rules.items() if not rule(v)), None)


def clean(docs: Iterable[Document], rules: dict[str, Callable[[TextView], bool]] = RULES
          ) -> tuple[list[Document], CleanStats]:
    """Drop JavaScript lines, then keep the documents that pass every rule."""
    stats = CleanStats(removed=dict.fromkeys(rules, 0))
    kept = []
    for doc in docs:
        stats.docs_in += 1
        text, dropped = drop_javascript_lines(doc.text)
        stats.javascript_lines += dropped
        failed = first_failed_rule(text, rules)
        if failed is None:
            kept.append(Document(text, doc.source) if dropped else doc)
        else:
            stats.removed[failed] += 1
    stats.kept = len(kept)
    return kept, stats
