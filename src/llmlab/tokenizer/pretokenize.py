"""Pre-tokenization: cut text into chunks with a regex before BPE; merges never cross a chunk boundary.

The patterns need the `regex` module (Unicode classes \\p{L} letters, \\p{N} numbers). Both match every character
of any string, so the chunks concatenate back to the text.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import lru_cache

import regex

# GPT-2 (Radford et al. 2019), openai/gpt-2 src/encoder.py: English contractions, an optional space glued to the
# front of a run of letters / digits / other symbols, and whitespace that leaves its last space to the next word.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# GPT-4, tiktoken's cl100k_base pat_str in the form Llama 3 ships in its tokenizer.json (plain quantifiers, so
# `regex`, tiktoken's fancy-regex and HF tokenizers' Oniguruma read it alike): case-insensitive contractions, one
# leading non-letter (space or punctuation) glued to a word, digits in groups of at most three, punctuation runs
# that keep their trailing newlines, and newline runs kept apart from other whitespace.
GPT4_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}


def resolve_pattern(pattern: str) -> str:
    """A pattern name ("gpt2", "gpt4") or a regex string -> the regex string."""
    return PATTERNS.get(pattern, pattern)


@lru_cache(maxsize=16)
def _compiled(pattern: str) -> regex.Pattern:
    return regex.compile(pattern)


def split(text: str, pattern: str) -> list[str]:
    """The chunks of `text` (every match of `pattern`, left to right)."""
    return _compiled(resolve_pattern(pattern)).findall(text)


def split_special(text: str, allowed: Collection[str]) -> list[tuple[str, bool]]:
    """Cut `text` around occurrences of the allowed special tokens: [(piece, is_special), ...], longest token first."""
    if not allowed or not text:
        return [(text, False)] if text else []
    alternation = "|".join(regex.escape(t) for t in sorted(allowed, key=len, reverse=True))
    parts = []
    pos = 0
    for m in _compiled(alternation).finditer(text):
        if m.start() > pos:
            parts.append((text[pos:m.start()], False))
        parts.append((m.group(), True))
        pos = m.end()
    if pos < len(text):
        parts.append((text[pos:], False))
    return parts
