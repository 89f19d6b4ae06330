"""ROUGE-N, ROUGE-L and ROUGE-Lsum (Lin 2004) as Google's rouge-score (`rouge_scorer.RougeScorer`) computes them.

Tokens: the text lowercased, every run of characters other than a-z and 0-9 a separator; with `use_stemmer`,
tokens longer than 3 characters are replaced by their Porter stem (nltk's variant, llmlab.eval.porter).

  ROUGE-N    matches = sum over n-grams of min(count in prediction, count in reference)
             P = matches / prediction n-grams, R = matches / reference n-grams   (a 0 count divides by 1)
  ROUGE-L    P = LCS / len(prediction), R = LCS / len(reference)    (LCS: longest common token subsequence)
  ROUGE-Lsum summary-level LCS (Lin 2004, section 3.2): texts split into sentences on newlines; for each reference
             sentence, the union of its LCS with every prediction sentence; hits = those union tokens, each
             token counted at most as often as it occurs in both whole texts (ROUGE-1.5.5's rule, also rouge-score's)
             P = hits / prediction tokens, R = hits / reference tokens
  F = 2PR / (P + R) (0 when P + R = 0). Against several references, each type takes the reference with the best F
  (the first on a tie), as `score_multi`.

Which LCS joins the union matters when there are several: like rouge-score, walk the LCS table back from the end,
take a token when the two sides match, else step along the prediction only if that keeps a strictly longer LCS.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from llmlab.errors import LlmlabError
from llmlab.eval.porter import porter_stem

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class RougeScore(NamedTuple):
    precision: float
    recall: float
    fmeasure: float


def _score(matches: int, n_pred: int, n_ref: int) -> RougeScore:
    p, r = matches / n_pred, matches / n_ref
    return RougeScore(p, r, 2 * p * r / (p + r) if p + r > 0 else 0.0)


def rouge_tokenize(text: str, use_stemmer: bool = False) -> list[str]:
    """Lowercased a-z0-9 runs; Porter-stemmed when longer than 3 characters and `use_stemmer`."""
    tokens = re.findall(r"[a-z0-9]+", text.lower())
    return [porter_stem(t) if use_stemmer and len(t) > 3 else t for t in tokens]


def rouge_n(pred: Sequence[str], ref: Sequence[str], n: int) -> RougeScore:
    """Clipped n-gram overlap of token lists."""
    pg = Counter(tuple(pred[i : i + n]) for i in range(len(pred) - n + 1))
    rg = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
    matches = sum((pg & rg).values())
    return _score(matches, max(sum(pg.values()), 1), max(sum(rg.values()), 1))


def lcs_table(a: Sequence[str], b: Sequence[str]) -> list[list[int]]:
    """t[i][j] = length of the LCS of a[:i] and b[:j]  (t[i][j] = t[i-1][j-1] + 1 on a match, else the max of the two
    neighbours)."""
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            t[i][j] = t[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(t[i - 1][j], t[i][j - 1])
    return t


def lcs_positions(ref: Sequence[str], pred: Sequence[str]) -> list[int]:
    """Positions in `ref` of one LCS with `pred`, chosen as rouge-score chooses it (see the module docstring)."""
    t = lcs_table(ref, pred)
    i, j, out = len(ref), len(pred), []
    while i > 0 and j > 0:
        if ref[i - 1] == pred[j - 1]:
            out.append(i - 1)
            i, j = i - 1, j - 1
        elif t[i][j - 1] > t[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return out[::-1]


def rouge_l(pred: Sequence[str], ref: Sequence[str]) -> RougeScore:
    if not pred or not ref:
        return RougeScore(0.0, 0.0, 0.0)
    return _score(lcs_table(ref, pred)[-1][-1], len(pred), len(ref))


def rouge_lsum(pred_sents: Sequence[Sequence[str]], ref_sents: Sequence[Sequence[str]]) -> RougeScore:
    """Summary-level LCS over tokenized sentences."""
    n_pred, n_ref = sum(map(len, pred_sents)), sum(map(len, ref_sents))
    if n_pred == 0 or n_ref == 0:
        return RougeScore(0.0, 0.0, 0.0)
    # each token can be hit at most min(count in prediction, count in reference) times over the whole summary
    left_pred = Counter(t for s in pred_sents for t in s)
    left_ref = Counter(t for s in ref_sents for t in s)
    hits = 0
    for r in ref_sents:
        union = sorted(set().union(*(lcs_positions(r, p) for p in pred_sents)))
        for tok in (r[i] for i in union):
            if left_pred[tok] > 0 and left_ref[tok] > 0:
                hits += 1
                left_pred[tok] -= 1
                left_ref[tok] -= 1
    return _score(hits, n_pred, n_ref)


def rouge(prediction: str, reference: str, rouge_types: Sequence[str] = ROUGE_TYPES,
          use_stemmer: bool = False) -> dict[str, RougeScore]:
    """ROUGE of `prediction` against `reference`: rouge-score's `RougeScorer(rouge_types, use_stemmer).score(
    reference, prediction)` (note its argument order: target first). Types: rougeN for N >= 1, rougeL, rougeLsum."""
    out = {}
    pred, ref = rouge_tokenize(prediction, use_stemmer), rouge_tokenize(reference, use_stemmer)
    for kind in rouge_types:
        if kind == "rougeL":
            out[kind] = rouge_l(pred, ref)
        elif kind == "rougeLsum":
            # sentences are the non-empty lines (rouge-score's default, split_summaries=False)
            out[kind] = rouge_lsum([rouge_tokenize(s, use_stemmer) for s in prediction.split("\n") if s],
                                   [rouge_tokenize(s, use_stemmer) for s in reference.split("\n") if s])
        elif re.fullmatch(r"rouge[1-9]", kind):
            out[kind] = rouge_n(pred, ref, int(kind[5:]))
        else:
            raise LlmlabError(f"rouge type {kind!r}: expected rouge1..rouge9, rougeL or rougeLsum")
    return out


def rouge_multi(prediction: str, references: Sequence[str], rouge_types: Sequence[str] = ROUGE_TYPES,
                use_stemmer: bool = False) -> dict[str, RougeScore]:
    """Per type, the score against the reference with the highest F (the first on a tie): rouge-score's
    `score_multi(references, prediction)`."""
    if not references:
        raise LlmlabError("ROUGE needs at least one reference")
    scores = [rouge(prediction, r, rouge_types, use_stemmer) for r in references]
    return {k: max((s[k] for s in scores), key=lambda x: x.fmeasure) for k in rouge_types}


def corpus_rouge(predictions: Sequence[str], refs: Sequence[Sequence[str]], rouge_types: Sequence[str] = ROUGE_TYPES,
                 use_stemmer: bool = False) -> dict[str, RougeScore]:
    """Mean over segments of each type's P, R and F, each segment scored against its references (reference streams
    parallel to `predictions`, as for BLEU). rouge-score's own `BootstrapAggregator` reports a resampled median of
    this mean instead; the plain mean is what it converges to."""
    if not refs or any(len(s) != len(predictions) for s in refs):
        raise LlmlabError("every reference stream must have one segment per prediction")
    if not predictions:
        raise LlmlabError("no predictions to score")
    per = [rouge_multi(p, [s[i] for s in refs], rouge_types, use_stemmer) for i, p in enumerate(predictions)]
    n = len(per)
    return {k: RougeScore(*(sum(s[k][f] for s in per) / n for f in range(3))) for k in rouge_types}
