"""chrF (Popović 2015) and chrF++ (Popović 2017) as sacrebleu's `CHRF` computes them.

chrF_beta = 100 * (1 + beta^2) * P * R / (beta^2 * P + R), with P and R the character n-gram precision and recall
averaged over the orders n = 1..6 (whitespace removed before counting); chrF++ adds word uni- and bigrams
(`word_order=2`) to the average. beta = 2 weighs recall twice as much as precision.

sacrebleu's rules, kept here:
- corpus chrF sums each order's (hypothesis, reference, matched) n-gram counts over the segments, then computes one
  F; per segment the reference with the best sentence-level F supplies the counts (the first on a tie);
- an order averages in only when both sides have n-grams of it ("effective order"); with `eps_smoothing` instead
  each order's F is computed with a 1e-16 floor and the F's averaged over all orders (chrF++.py's way);
- an order the reference has no n-grams of counts no hypothesis n-grams either;
- words for chrF++ split one punctuation mark off their end, or else off their start.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmlab.errors import LlmlabError

_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_EPS = 1e-16


@dataclass(frozen=True)
class ChrfScore:
    score: float  # 0-100
    char_order: int
    word_order: int
    beta: float


def _char_ngrams(text: str, n: int, whitespace: bool) -> Counter[str]:
    if not whitespace:
        text = "".join(text.split())
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def _words(text: str) -> list[str]:
    """Whitespace words, one punctuation mark split off the end (else off the start) of words longer than 1."""
    out: list[str] = []
    for w in text.split():
        if len(w) > 1 and w[-1] in _PUNCT:
            out += [w[:-1], w[-1]]
        elif len(w) > 1 and w[0] in _PUNCT:
            out += [w[0], w[1:]]
        else:
            out.append(w)
    return out


def _word_ngrams(words: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _all_ngrams(text: str, char_order: int, word_order: int, whitespace: bool) -> list[Counter]:
    grams: list[Counter] = [_char_ngrams(text, n, whitespace) for n in range(1, char_order + 1)]
    words = _words(text) if word_order else []
    return grams + [_word_ngrams(words, n) for n in range(1, word_order + 1)]


def _match_stats(hyp: list[Counter], ref: list[Counter]) -> list[int]:
    """Per order: [hypothesis n-grams (0 if the reference has none), reference n-grams, clipped matches]."""
    out = []
    for h, r in zip(hyp, ref, strict=True):
        matched = sum(min(c, r[g]) for g, c in h.items() if g in r)
        out += [sum(h.values()) if r else 0, sum(r.values()), matched]
    return out


def chrf_from_stats(stats: Sequence[int], beta: float = 2, eps_smoothing: bool = False) -> float:
    """chrF on a 0-100 scale from per-order [hyp, ref, match] counts, flattened."""
    b2 = beta**2
    f_sum, p_sum, r_sum, used = 0.0, 0.0, 0.0, 0
    n_orders = len(stats) // 3
    for i in range(n_orders):
        n_hyp, n_ref, n_match = stats[3 * i : 3 * i + 3]
        p = n_match / n_hyp if n_hyp > 0 else _EPS
        r = n_match / n_ref if n_ref > 0 else _EPS
        denom = b2 * p + r
        f_sum += (1 + b2) * p * r / denom if denom > 0 else _EPS
        if n_hyp > 0 and n_ref > 0:
            p_sum, r_sum, used = p_sum + p, r_sum + r, used + 1
    if eps_smoothing:
        return 100 * f_sum / n_orders
    if used:
        p_sum, r_sum = p_sum / used, r_sum / used
    else:
        p_sum = r_sum = 0.0
    if p_sum + r_sum == 0:
        return 0.0
    return 100 * ((1 + b2) * p_sum * r_sum / (b2 * p_sum + r_sum))


def corpus_chrf(hyps: Sequence[str], refs: Sequence[Sequence[str | None]], char_order: int = 6,
                word_order: int = 0, beta: float = 2, lowercase: bool = False, whitespace: bool = False,
                eps_smoothing: bool = False) -> ChrfScore:
    """Corpus chrF of `hyps` against reference streams `refs` (each parallel to `hyps`; None = no reference there):
    sacrebleu's `CHRF(...).corpus_score(hyps, refs)`."""
    for i, stream in enumerate(refs):
        if len(stream) != len(hyps):
            raise LlmlabError(f"reference stream {i + 1} has {len(stream)} segments, the hypotheses {len(hyps)}")
    orders = (char_order, word_order, whitespace)
    total = [0] * (3 * (char_order + word_order))
    for i, hyp in enumerate(hyps):
        h = _all_ngrams(hyp.lower() if lowercase else hyp, *orders)
        best, best_f = None, -1.0
        for stream in refs:
            if stream[i] is None:
                continue
            stats = _match_stats(h, _all_ngrams(stream[i].lower() if lowercase else stream[i], *orders))
            f = chrf_from_stats(stats, beta, eps_smoothing)
            if f > best_f:
                best, best_f = stats, f
        if best is None:
            raise LlmlabError(f"segment {i + 1} has no reference (every stream has None there)")
        total = [a + b for a, b in zip(total, best, strict=True)]
    return ChrfScore(chrf_from_stats(total, beta, eps_smoothing), char_order, word_order, beta)


def sentence_chrf(hyp: str, refs: Sequence[str], **kwargs: Any) -> ChrfScore:
    """chrF of one hypothesis against its references (same options as `corpus_chrf`)."""
    return corpus_chrf([hyp], [[r] for r in refs], **kwargs)
