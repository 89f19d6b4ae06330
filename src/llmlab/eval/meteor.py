"""METEOR (Banerjee & Lavie 2005) as nltk's `nltk.translate.meteor_score.meteor_score` computes it.

Inputs are pre-tokenized (lists of words), lowercased before matching. Words are aligned in three stages, each on the
words the earlier ones left unmatched:
  1. exact:   the same word;
  2. stem:    the same Porter stem (nltk's variant, llmlab.eval.porter);
  3. synonym: the reference word is a WordNet synonym of the hypothesis word (a lemma name of one of its synsets,
              multi-word lemmas with "_" left out), or the word itself.
Within a stage nltk aligns greedily: hypothesis words from last to first, each to the *last* still-free reference
word that matches it. (The paper chooses, among alignments with the most matches, the one with the fewest
crossings; nltk's greedy rule is what this module reproduces.)

  P = m / len(hypothesis), R = m / len(reference)                          (m aligned words)
  Fmean = P * R / (alpha * P + (1 - alpha) * R)                            (alpha = 0.9: recall weighs 9x)
  penalty = gamma * (chunks / m) ^ beta                                    (beta = 3, gamma = 0.5)
  METEOR = (1 - penalty) * Fmean; 0 when nothing aligns; against several references, the best.
chunks: the fewest runs of aligned words adjacent and in the same order on both sides.

nltk's quirk, kept: the synonym stage receives the *stems* the stem stage computed, so it looks up synonyms of
"happi" rather than "happy", and compares them with stemmed reference words.

WordNet. nltk's default synonym source is `nltk.corpus.wordnet`, whose data is not installed with nltk. Here the
source is an argument: anything with `synsets(word)` returning objects with `lemma_names()` (nltk's WordNet reader
is one). On a machine with internet: `import nltk; nltk.download("wordnet")`, then
`meteor(hyp, refs, wordnet=nltk.corpus.wordnet)`. Without it (`wordnet=None`) there is no synonym stage, which
equals nltk given a source without synonyms. `SynonymTable` is a small in-memory source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Any, Protocol

from llmlab.errors import LlmlabError
from llmlab.eval.porter import porter_stem


class SynonymSource(Protocol):
    def synsets(self, word: str) -> Iterable[Any]: ...  # each with .lemma_names() -> Iterable[str]


class _Synset:
    def __init__(self, names: Sequence[str]) -> None:
        self._names = list(names)

    def lemma_names(self) -> list[str]:
        return list(self._names)

    def lemmas(self) -> list[_Lemma]:  # nltk's meteor reads lemma.name() through synset.lemmas()
        return [_Lemma(n) for n in self._names]


class _Lemma:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name


class SynonymTable:
    """A WordNet stand-in: word -> synsets, each a list of lemma names ({"big": [["large", "big"]]})."""

    def __init__(self, table: Mapping[str, Sequence[Sequence[str]]]) -> None:
        self._table = {w: [_Synset(s) for s in synsets] for w, synsets in table.items()}

    def synsets(self, word: str) -> list[_Synset]:
        return self._table.get(word, [])


Alignment = list[tuple[int, int]]  # (hypothesis position, reference position)
_Words = list[tuple[int, str]]  # (original position, word) of the words still unmatched


def _match(hyp: _Words, ref: _Words, candidates: Callable[[str], set[str]]) -> tuple[Alignment, _Words, _Words]:
    """One greedy stage: hypothesis words right to left, each to the last free reference word in candidates(word)."""
    free: dict[str, list[int]] = {}  # word -> indices into `ref` still free, ascending
    for k, (_, w) in enumerate(ref):
        free.setdefault(w, []).append(k)
    pairs, used_h, used_r = [], set(), set()
    for k in reversed(range(len(hyp))):
        best = max((free[c][-1] for c in candidates(hyp[k][1]) if free.get(c)), default=None)
        if best is None:
            continue
        free[ref[best][1]].pop()
        used_h.add(k)
        used_r.add(best)
        pairs.append((hyp[k][0], ref[best][0]))
    return (pairs, [x for k, x in enumerate(hyp) if k not in used_h], [x for k, x in enumerate(ref) if k not in used_r])


def align(hyp: Sequence[str], ref: Sequence[str], stemmer: Callable[[str], str] = porter_stem,
          wordnet: SynonymSource | None = None) -> Alignment:
    """Exact, then stem, then synonym matches of lowercased word lists, sorted by hypothesis position."""
    h: _Words = list(enumerate(hyp))
    r: _Words = list(enumerate(ref))
    exact, h, r = _match(h, r, lambda w: {w})
    h, r = [(i, stemmer(w)) for i, w in h], [(i, stemmer(w)) for i, w in r]
    stem, h, r = _match(h, r, lambda w: {w})
    syn: Alignment = []
    if wordnet is not None:
        def synonyms(w: str) -> set[str]:
            return {n for s in wordnet.synsets(w) for n in s.lemma_names() if "_" not in n} | {w}

        syn, h, r = _match(h, r, synonyms)
    return sorted(exact + stem + syn)


def count_chunks(alignment: Alignment) -> int:
    """Runs of consecutive alignment pairs adjacent on both sides (alignment sorted by hypothesis position)."""
    return 1 + sum(1 for (h0, r0), (h1, r1) in pairwise(alignment) if not (h1 == h0 + 1 and r1 == r0 + 1))


def single_meteor(hyp: Sequence[str], ref: Sequence[str], alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5,
                  stemmer: Callable[[str], str] = porter_stem, wordnet: SynonymSource | None = None) -> float:
    """METEOR of one tokenized hypothesis against one tokenized reference (nltk's `single_meteor_score`)."""
    hyp, ref = [w.lower() for w in hyp], [w.lower() for w in ref]
    alignment = align(hyp, ref, stemmer, wordnet)
    m = len(alignment)
    if m == 0:
        return 0.0
    p, r = m / len(hyp), m / len(ref)
    fmean = p * r / (alpha * p + (1 - alpha) * r)
    penalty = gamma * (count_chunks(alignment) / m) ** beta
    return (1 - penalty) * fmean


def meteor(hyp: Sequence[str], refs: Sequence[Sequence[str]], alpha: float = 0.9, beta: float = 3.0,
           gamma: float = 0.5, stemmer: Callable[[str], str] = porter_stem,
           wordnet: SynonymSource | None = None) -> float:
    """METEOR of a tokenized hypothesis against tokenized references, the best over them (nltk's
    `meteor_score(references, hypothesis)`; note its argument order)."""
    if isinstance(hyp, str) or any(isinstance(r, str) for r in refs):
        raise LlmlabError("METEOR takes tokenized text: lists of words, not strings (split them first)")
    if not refs:
        raise LlmlabError("METEOR needs at least one reference")
    return max(single_meteor(hyp, r, alpha, beta, gamma, stemmer, wordnet) for r in refs)


def corpus_meteor(hyps: Sequence[str], refs: Sequence[Sequence[str]], wordnet: SynonymSource | None = None) -> float:
    """Mean sentence METEOR of whitespace-tokenized lines against reference streams parallel to `hyps` (nltk scores
    sentences only; the mean is what HF `evaluate`'s meteor reports)."""
    if not refs or any(len(s) != len(hyps) for s in refs):
        raise LlmlabError("every reference stream must have one segment per hypothesis")
    if not hyps:
        raise LlmlabError("no hypotheses to score")
    scores = [meteor(h.split(), [s[i].split() for s in refs], wordnet=wordnet) for i, h in enumerate(hyps)]
    return sum(scores) / len(scores)


def nltk_wordnet() -> SynonymSource:
    """nltk's WordNet reader, checked to have its data; a one-line error saying how to get it otherwise."""
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("dog")  # the reader is lazy: this is where missing data shows
    except ImportError as e:
        raise LlmlabError("WordNet synonyms need nltk: pip install nltk") from e
    except LookupError as e:
        raise LlmlabError("WordNet data is not installed: python -c \"import nltk; nltk.download('wordnet')\" "
                          "(needs internet)") from e
    return wordnet
