"""ByteTokenizer: lossless round-trip of any text, and special ids outside the byte range.

Reference: Python's own UTF-8 codec (`str.encode("utf-8")`); random strings come from a seeded generator over every
Unicode plane (hypothesis is not installed in the venv).
"""

from __future__ import annotations

import random

import pytest

from llmlab.tokenizer.bytes import SPECIAL_TOKENS, ByteTokenizer

TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog.\n\tTabs, newlines\r\n and  spaces.",
    "chinese": "大型语言模型的分词器：字节级回退，无未知词。",
    "emoji": "👋🌍 family: 👨‍👩‍👧‍👦, flag: 🇫🇷, skin tone: 👍🏽",
    "mixed": "naïve café — Ωmega ∑ ∫ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ﷽ \x00 nul",
    "empty": "",
}


@pytest.mark.parametrize("name", TEXTS)
def test_round_trip_and_ids_are_utf8_bytes(name):
    tok, text = ByteTokenizer(), TEXTS[name]
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text


def random_text(rng: random.Random, n: int) -> str:
    """n random code points: ASCII, BMP and astral planes alike, surrogates excluded (not encodable)."""
    out = []
    for _ in range(n):
        hi = rng.choice((0x7F, 0x7FF, 0xFFFF, 0x10FFFF))
        c = rng.randint(0, hi)
        while 0xD800 <= c <= 0xDFFF:
            c = rng.randint(0, hi)
        out.append(chr(c))
    return "".join(out)


def test_round_trip_random_unicode():
    tok, rng = ByteTokenizer(), random.Random(0)
    n_bytes = {1: 0, 2: 0, 3: 0, 4: 0}
    for _ in range(300):
        text = random_text(rng, rng.randint(0, 40))
        assert tok.decode(tok.encode(text)) == text
        for ch in text:
            n_bytes[len(ch.encode("utf-8"))] += 1
    assert all(count > 100 for count in n_bytes.values())  # every UTF-8 sequence length was exercised


def test_special_ids_are_after_the_bytes_and_dropped_on_decode():
    tok = ByteTokenizer()
    ids = [tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id]
    assert sorted(ids) == list(range(256, 256 + len(SPECIAL_TOKENS)))
    assert tok.vocab_size == 256 + len(SPECIAL_TOKENS) and max(ids) < tok.vocab_size
    assert set(tok.special) == set(SPECIAL_TOKENS)
    text = "héllo 世界 🙂"
    body = tok.encode(text)
    assert tok.decode([tok.bos_id, *body[:3], tok.pad_id, *body[3:], tok.eos_id, tok.mask_id]) == text
    assert tok.decode(ids) == ""


def test_special_token_text_is_encoded_as_plain_bytes():
    """The literal string '<|eos|>' in user text is ordinary bytes, never the special id."""
    tok = ByteTokenizer()
    ids = tok.encode("a<|eos|>b")
    assert tok.eos_id not in ids and tok.decode(ids) == "a<|eos|>b"


def test_invalid_utf8_decodes_to_replacement_character():
    tok = ByteTokenizer()
    cut = tok.encode("世")[:2]  # a 3-byte character cut short
    assert tok.decode(cut) == "\ufffd"
    assert tok.decode([0xFF, *tok.encode("ok")]) == "\ufffdok"
