"""Incremental detokenization for streaming: token ids in, text pieces out, UTF-8 safe and cut at stop strings.

A byte-level BPE token can end in the middle of a multi-byte character (a Chinese character is 3 UTF-8 bytes, often
split over two tokens). Tokens are decoded in groups: new ids wait in `pending` until they decode without a trailing
U+FFFD (the replacement character for an incomplete sequence), then their text is appended to `text`. For a
byte-level tokenizer decode(a + b) == decode(a) + decode(b) when a ends on a character boundary, so `text` always
equals decode(all ids) minus an incomplete tail, and the pieces handed out concatenate to the final text.

Stop strings (OpenAI: the stop sequence is not returned): text that could be the start of a stop string is held
back until the next tokens show whether the stop string completes; a stop string found cuts the text before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class Detokenizer:
    def __init__(self, decode: Callable[[list[int]], str] | None, stop_strings: Sequence[str] = ()) -> None:
        self.decode = decode  # None: no tokenizer, every piece is ""
        self.stop_strings = tuple(stop_strings)
        self.max_stop = max((len(s) for s in self.stop_strings), default=0)
        self.text = ""  # decoded text of every id added so far, but for an incomplete character at the end
        self.pending: list[int] = []  # ids whose text is not complete yet
        self.sent = 0  # characters of text already handed out
        self.searched = 0  # stop strings were looked for in text[:searched]

    def add(self, token_id: int) -> None:
        if self.decode is None:
            return
        self.pending.append(token_id)
        piece = self.decode(self.pending)
        if not piece.endswith(REPLACEMENT):
            self.text += piece
            self.pending.clear()

    def find_stop(self) -> int:
        """Index in text of the earliest stop string, or -1. Only the new text (and the tail it may complete) is
        searched, so a whole generation costs O(length), not O(length^2)."""
        if not self.stop_strings:
            return -1
        start = max(0, self.searched - self.max_stop + 1)
        self.searched = len(self.text)
        hits = [i for i in (self.text.find(s, start) for s in self.stop_strings) if i >= 0]
        return min(hits, default=-1)

    def take(self) -> str:
        """The new text that is safe to show: complete characters, minus a tail that may begin a stop string."""
        end = len(self.text) - self._held_back()
        return self._send(end)

    def take_until(self, stop_index: int) -> str:
        """The text left before the stop string found at stop_index (the stop string itself is never shown)."""
        return self._send(stop_index)

    def finish(self) -> str:
        """Everything not shown yet; an incomplete last character decodes to U+FFFD, as decode(all ids) does."""
        if self.pending and self.decode is not None:
            self.text += self.decode(self.pending)
            self.pending.clear()
        return self._send(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest tail of text that is a proper prefix of some stop string."""
        for k in range(min(self.max_stop - 1, len(self.text) - self.sent), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop_strings):
                return k
        return 0

    def _send(self, end: int) -> str:
        piece = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return piece
