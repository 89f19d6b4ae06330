"""Incremental detokenization against decoding everything at once (ByteTokenizer.decode; exact): the pieces
concatenate to decode(ids) for valid and invalid UTF-8, and stop strings are found however tokens split them."""

from __future__ import annotations

import pytest

from llmlab.serve.detokenizer import Detokenizer
from llmlab.tokenizer import ByteTokenizer

decode = ByteTokenizer().decode


@pytest.mark.parametrize("data", [
    "naïve 中文 🙂".encode(),
    b"\x80\xe4\xb8\xadA\xe4\xb8",  # a stray continuation byte, a character, a character cut off at the end
    b"\xf0\x9f\x99A\xff\xe4",  # an emoji cut short by an ASCII letter, an invalid byte
])
def test_pieces_concatenate_to_decode(data):
    d = Detokenizer(decode)
    pieces = []
    for b in data:
        d.add(b)
        pieces.append(d.take())
        assert decode(list(data)).startswith("".join(pieces))  # what is shown is never taken back
    pieces.append(d.finish())
    assert "".join(pieces) == decode(list(data))


def test_stop_string_split_over_tokens_and_holdback():
    d = Detokenizer(decode, stop_strings=("<END>", "zz"))
    shown = ""
    for i, b in enumerate(b"ab<EN<END>cd"):
        d.add(b)
        at = d.find_stop()
        if at >= 0:
            shown += d.take_until(at)
            break
        shown += d.take()
        if i == 3:
            assert shown == "ab"  # "<E" might start "<END>": held back
    assert shown == "ab<EN" and at == 5
    assert Detokenizer(None).finish() == ""
