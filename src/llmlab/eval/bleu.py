"""BLEU (Papineni et al. 2002) as sacrebleu computes it (Post 2018, "A Call for Clarity in Reporting BLEU Scores").

BLEU = BP * exp(sum_{n=1..N} log p_n / N), reported on a 0-100 scale, with
  p_n  = sum over segments of clipped n-gram matches / sum of hypothesis n-grams   (modified precision, N = 4)
         clipped: a hypothesis n-gram counts at most as often as it appears in any single reference
  BP   = 1 if c >= r else exp(1 - r / c)                                             (brevity penalty)
         c = hypothesis tokens, r = for each segment the reference length closest to the hypothesis's
         (the shorter one on a tie), summed over the corpus.
Corpus BLEU sums the statistics over all segments before dividing; it is not a mean of sentence scores.

Smoothing, for n-gram orders with no match (Chen & Cherry 2014, sacrebleu's names):
  'exp' (default, mteval-v13a's): the k-th order with no match gets p_n = 1 / (2^k * total_n);
  'floor': p_n = smooth_value / total_n (default 0.1);  'add-k': p_n = (m_n + k) / (t_n + k) for n >= 2 (k = 1);
  'none': a zero precision makes the score 0.
`effective_order` (sacrebleu's sentence-BLEU default) averages only the orders the hypothesis has n-grams for, so a
3-word hypothesis is scored on p_1..p_3. Without any match at all the score is 0 whatever the smoothing.

Tokenizers: '13a' (mteval-v13a.pl's: punctuation split off, except periods and commas inside numbers and hyphens
not after a digit), 'zh' (every CJK character its own token, the rest as 13a's regexes), 'none' (whitespace only).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from llmlab.errors import LlmlabError

SMOOTH_DEFAULTS: dict[str, float | None] = {"exp": None, "floor": 0.1, "add-k": 1, "none": None}
TOKENIZERS = ("13a", "zh", "none")

# mteval-v13a: every printable ASCII symbol becomes its own token, except the apostrophe and the three the next
# rules handle with care: period, comma (kept inside numbers) and hyphen (split only after a digit)
_SYMBOL = re.compile("([" + re.escape("".join(c for c in map(chr, range(0x20, 0x7F))
                                              if not c.isalnum() and c not in "',-.")) + "])")
_PUNCT_RULES = [
    (re.compile(r"([^0-9])([.,])"), r"\1 \2 "),  # period / comma not after a digit
    (re.compile(r"([.,])([^0-9])"), r" \1 \2"),  # period / comma not before a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # hyphen after a digit
]


def _split_punctuation(line: str) -> str:
    """The regex half of mteval-v13a that 13a and zh share; whitespace collapsed to single spaces."""
    line = _SYMBOL.sub(r" \1 ", line)
    for pattern, repl in _PUNCT_RULES:
        line = pattern.sub(repl, line)
    return " ".join(line.split())


def tokenize_13a(line: str) -> str:
    """mteval-v13a.pl's tokenization (WMT's standard): drop <skipped>, join hyphenated line breaks, unescape the
    four XML entities, then split punctuation off."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
            line = line.replace(entity, char)
    return _split_punctuation(f" {line} ")


# The code points sacrebleu's 'zh' tokenizer treats as Chinese. Two of its ranges are written as 5-hex-digit
# "\u20000"-style escapes, which Python reads as a 4-digit code point plus a '0'; compared as strings they cover
# U+2001..U+2A6D (general punctuation such as the em dash and curly quotes, arrows, maths symbols...) and
# U+2F81..U+2FA1 instead of the CJK Extension B / Compatibility Supplement planes. Reproduced as it behaves.
_ZH_RANGES = [
    (0x3400, 0x4DB5), (0x4E00, 0x9FA5), (0x9FA6, 0x9FBB), (0xF900, 0xFA2D), (0xFA30, 0xFA6A), (0xFA70, 0xFAD9),
    (0x2001, 0x2A6D), (0x2F81, 0x2FA1),  # sacrebleu's effective ranges, see above
    (0xFF00, 0xFFEF), (0x2E80, 0x2EFF), (0x3000, 0x303F), (0x31C0, 0x31EF), (0x2F00, 0x2FDF), (0x2FF0, 0x2FFF),
    (0x3100, 0x312F), (0x31A0, 0x31BF), (0xFE10, 0xFE1F), (0xFE30, 0xFE4F), (0x2600, 0x26FF), (0x2700, 0x27BF),
    (0x3200, 0x32FF), (0x3300, 0x33FF),
]


def _is_zh_char(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _ZH_RANGES)


def tokenize_zh(line: str) -> str:
    """sacrebleu's Chinese tokenizer: each CJK character (see _ZH_RANGES) its own token, then 13a's regexes."""
    return _split_punctuation("".join(f" {ch} " if _is_zh_char(ch) else ch for ch in line.strip()))


def tokenize(line: str, tokenizer: str = "13a", lowercase: bool = False) -> list[str]:
    """The tokens BLEU counts: lowercase (optional), strip the line's end, tokenize, split on whitespace."""
    if tokenizer not in TOKENIZERS:
        raise LlmlabError(f"tokenizer {tokenizer!r}: expected one of {', '.join(TOKENIZERS)}")
    if lowercase:
        line = line.lower()
    line = line.rstrip()
    if tokenizer == "13a":
        line = tokenize_13a(line)
    elif tokenizer == "zh":
        line = tokenize_zh(line)
    return line.split()


def ngrams(tokens: Sequence[str], max_order: int) -> Counter[tuple[str, ...]]:
    """Counts of every n-gram of `tokens`, 1 <= n <= max_order."""
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1))


@dataclass(frozen=True)
class BleuStats:
    """One segment's (or, summed, a corpus's) sufficient statistics."""

    sys_len: int
    ref_len: int
    counts: tuple[int, ...]  # clipped matches per order
    totals: tuple[int, ...]  # hypothesis n-grams per order

    def __add__(self, other: BleuStats) -> BleuStats:
        return BleuStats(self.sys_len + other.sys_len, self.ref_len + other.ref_len,
                         tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
                         tuple(a + b for a, b in zip(self.totals, other.totals, strict=True)))


@dataclass(frozen=True)
class BleuScore:
    score: float  # 0-100
    counts: list[int]
    totals: list[int]
    precisions: list[float]  # 0-100, after smoothing
    bp: float
    sys_len: int
    ref_len: int


def closest_ref_len(hyp_len: int, ref_lens: Sequence[int]) -> int:
    """The reference length closest to the hypothesis length; the shorter one on a tie."""
    return min(ref_lens, key=lambda r: (abs(hyp_len - r), r))


def segment_stats(hyp: Sequence[str], refs: Sequence[Sequence[str]], max_order: int = 4) -> BleuStats:
    """Clipped n-gram matches of tokenized `hyp` against tokenized `refs`: each n-gram's count is capped at its
    largest count in any one reference."""
    max_ref: Counter[tuple[str, ...]] = Counter()
    for ref in refs:
        max_ref |= ngrams(ref, max_order)  # Counter union keeps the maximum count
    counts, totals = [0] * max_order, [0] * max_order
    for gram, c in ngrams(hyp, max_order).items():
        totals[len(gram) - 1] += c
        counts[len(gram) - 1] += min(c, max_ref[gram])
    return BleuStats(len(hyp), closest_ref_len(len(hyp), [len(r) for r in refs]), tuple(counts), tuple(totals))


def bleu_from_stats(stats: BleuStats, smooth_method: str = "exp", smooth_value: float | None = None,
                    effective_order: bool = False) -> BleuScore:
    """BLEU from summed statistics (see the module docstring for the formula and the smoothing)."""
    if smooth_method not in SMOOTH_DEFAULTS:
        raise LlmlabError(f"smooth_method {smooth_method!r}: expected one of {', '.join(SMOOTH_DEFAULTS)}")
    k = SMOOTH_DEFAULTS[smooth_method] if smooth_value is None else smooth_value
    c, r = stats.sys_len, stats.ref_len
    bp = 1.0 if c >= r else (math.exp(1 - r / c) if c > 0 else 0.0)
    order = len(stats.counts)
    precisions = [0.0] * order
    counts, totals = list(stats.counts), list(stats.totals)
    if not any(counts):
        return BleuScore(0.0, counts, totals, precisions, bp, c, r)

    used = order  # orders averaged: all N, or with effective_order the ones the hypothesis has n-grams for
    n_unmatched = 0
    for n in range(order):
        matched, total = counts[n], totals[n]
        if smooth_method == "add-k" and n > 0:
            matched, total = matched + k, total + k
        if total == 0:
            break
        if effective_order:
            used = n + 1
        if matched > 0:
            precisions[n] = 100.0 * matched / total
        elif smooth_method == "exp":
            n_unmatched += 1
            precisions[n] = 100.0 / (2**n_unmatched * total)
        elif smooth_method == "floor":
            precisions[n] = 100.0 * k / total
    # a zero precision (no smoothing, or an order without n-grams and no effective order) zeroes the geometric mean
    if any(p == 0.0 for p in precisions[:used]):
        return BleuScore(0.0, counts, totals, precisions, bp, c, r)
    score = bp * math.exp(sum(math.log(p) for p in precisions[:used]) / used)
    return BleuScore(score, counts, totals, precisions, bp, c, r)


def _check_streams(hyps: Sequence[str], refs: Sequence[Sequence[str | None]]) -> None:
    if not refs:
        raise LlmlabError("BLEU needs at least one reference stream")
    for i, stream in enumerate(refs):
        if len(stream) != len(hyps):
            raise LlmlabError(f"reference stream {i + 1} has {len(stream)} segments, the hypotheses {len(hyps)}")


def corpus_stats(hyps: Sequence[str], refs: Sequence[Sequence[str | None]], tokenizer: str = "13a",
                 lowercase: bool = False, max_order: int = 4) -> list[BleuStats]:
    """Per-segment statistics. `refs` is a list of reference streams, each parallel to `hyps` (sacrebleu's layout);
    a None in a stream means that segment has one reference fewer."""
    _check_streams(hyps, refs)
    out = []
    for i, hyp in enumerate(hyps):
        seg_refs = [tokenize(s[i], tokenizer, lowercase) for s in refs if s[i] is not None]
        if not seg_refs:
            raise LlmlabError(f"segment {i + 1} has no reference (every stream has None there)")
        out.append(segment_stats(tokenize(hyp, tokenizer, lowercase), seg_refs, max_order))
    return out


def corpus_bleu(hyps: Sequence[str], refs: Sequence[Sequence[str | None]], tokenizer: str = "13a",
                lowercase: bool = False, smooth_method: str = "exp", smooth_value: float | None = None,
                effective_order: bool = False, max_order: int = 4) -> BleuScore:
    """Corpus BLEU of `hyps` against reference streams `refs`: sacrebleu's `BLEU(...).corpus_score(hyps, refs)`."""
    stats = corpus_stats(hyps, refs, tokenizer, lowercase, max_order)
    total = sum(stats[1:], start=stats[0]) if stats else BleuStats(0, 0, (0,) * max_order, (0,) * max_order)
    return bleu_from_stats(total, smooth_method, smooth_value, effective_order)


def sentence_bleu(hyp: str, refs: Sequence[str], tokenizer: str = "13a", lowercase: bool = False,
                  smooth_method: str = "exp", smooth_value: float | None = None, effective_order: bool = True,
                  max_order: int = 4) -> BleuScore:
    """BLEU of one hypothesis against its references; effective order on by default, as `sacrebleu.sentence_bleu`."""
    return corpus_bleu([hyp], [[r] for r in refs], tokenizer, lowercase, smooth_method, smooth_value,
                       effective_order, max_order)
