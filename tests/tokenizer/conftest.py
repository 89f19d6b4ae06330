"""Shared texts for the tokenizer tests: the shipped English sample plus a Chinese snippet, split train / held-out."""

import random
import unicodedata
from pathlib import Path

import pytest

from llmlab.data.samples import sample_text
from llmlab.tokenizer import train_tokenizer

DATA = Path(__file__).parents[1] / "data"

# code point ranges random strings draw from: ASCII, control whitespace, Latin-1, Greek, Cyrillic, combining marks,
# CJK, Hangul, emoji, general punctuation (odd spaces, ZWJ, U+2028), CJK punctuation, then anything at all
RANGES = [(0x20, 0x7E), (0x09, 0x0D), (0xA0, 0xFF), (0x370, 0x3FF), (0x400, 0x4FF), (0x300, 0x36F), (0x4E00, 0x9FFF),
          (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x2000, 0x206F), (0x3000, 0x303F), (0x0, 0x10FFFF)]


def random_unicode(n: int, seed: int, assigned_only: bool, max_len: int = 40) -> list[str]:
    """`n` seeded random strings of Unicode scalar values (no lone surrogates: those are not UTF-8). Regex engines
    ship different Unicode versions and disagree on \\p{L} for unassigned code points, so comparisons across engines
    use `assigned_only` (assigned in Python's unicodedata)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chars, length = [], rng.randint(0, max_len)
        while len(chars) < length:
            c = chr(rng.randint(*rng.choice(RANGES)))
            if unicodedata.category(c) != "Cs" and not (assigned_only and unicodedata.category(c) == "Cn"):
                chars.append(c)
        out.append("".join(chars))
    return out


@pytest.fixture(scope="session")
def texts() -> tuple[str, str]:
    """(train, held_out): the first ~90% of the sonnets and half the poems, then the rest of each."""
    en, zh = sample_text("sonnets"), (DATA / "zh_poems.txt").read_text(encoding="utf-8")
    en_cut, zh_cut = en.rfind("\n", 0, int(0.9 * len(en))), zh.find("\n\n", len(zh) // 2)
    return en[:en_cut] + zh[:zh_cut], en[en_cut:] + zh[zh_cut:]


@pytest.fixture(scope="session")
def tok(texts):
    """A 700-token BPE (gpt4 pattern, tiktoken backend) trained on the training text."""
    return train_tokenizer(texts[0], 700)


@pytest.fixture(scope="session")
def strings() -> list[str]:
    """300 random strings of assigned characters, for comparisons across regex engines."""
    return random_unicode(300, seed=0, assigned_only=True)


@pytest.fixture(scope="session")
def any_strings() -> list[str]:
    """300 random strings over every code point (unassigned ones too), for round trips."""
    return random_unicode(300, seed=1, assigned_only=False)
