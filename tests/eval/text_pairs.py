"""Hypothesis/reference pairs from the real text in tests/data/sample, shared by the text-metric tests.

- `parallel()`: two real renderings of the same verses (Isaiah 37 / 2 Kings 19, Psalms 14 / 53 in the KJV);
- `edited_pairs()`: real sentences (State of the Union, Brown corpus, Shakespeare) as references, hypotheses made
  from them by seeded edits: drop, swap, replace, duplicate and insert words, change case, cut the end;
- `EDGE_CASES`: empty hypothesis, no match, identical, hypothesis longer than the reference, unicode punctuation.
"""

from __future__ import annotations

import json
import random
import re
from functools import cache
from pathlib import Path

SAMPLE = Path(__file__).parents[1] / "data" / "sample"


@cache
def documents(lang: str = "en") -> dict[str, str]:
    """First line of each document (its title or opening) -> the document's text."""
    docs = [json.loads(line)["text"] for line in (SAMPLE / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()]
    return {d.split("\n", 1)[0]: d for d in docs}


def _verses(title: str) -> list[str]:
    return [v for v in documents()[title].split("\n")[1:] if v.strip()]


def parallel() -> tuple[list[str], list[str]]:
    """(hypotheses, references): verse i of one book against verse i of its parallel."""
    hyps, refs = [], []
    for a, b in (("Isaiah 37", "2 Kings 19"), ("Psalms 14", "Psalms 53")):
        va, vb = _verses(a), _verses(b)
        hyps += va[: len(vb)]
        refs += vb[: len(va)]
    return hyps, refs


@cache
def sentences(n: int = 60, seed: int = 0) -> list[str]:
    """n real sentences of 4 to 40 words, drawn from the prose and verse documents."""
    pool = []
    for title, text in documents().items():
        if title.startswith(("Isaiah", "2 Kings", "Psalms")):
            continue
        for s in re.split(r"(?<=[.!?;])\s+|\n", text):
            if 4 <= len(s.split()) <= 40:
                pool.append(s.strip())
    return random.Random(seed).sample(pool, n)


def edit(sentence: str, rng: random.Random, vocab: list[str]) -> str:
    """One or more word-level edits of a real sentence."""
    words = sentence.split()
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(["drop", "swap", "replace", "dup", "insert", "case", "cut"])
        i = rng.randrange(len(words))
        if op == "drop" and len(words) > 1:
            del words[i]
        elif op == "swap" and len(words) > 1:
            j = rng.randrange(len(words))
            words[i], words[j] = words[j], words[i]
        elif op == "replace":
            words[i] = rng.choice(vocab)
        elif op == "dup":
            words.insert(i, words[i])
        elif op == "insert":
            words.insert(i, rng.choice(vocab))
        elif op == "case":
            words[i] = words[i].upper() if rng.random() < 0.5 else words[i].lower()
        elif op == "cut" and len(words) > 2:
            words = words[: rng.randint(1, len(words) - 1)]
    return " ".join(words)


def edited_pairs(n: int = 60, seed: int = 0) -> tuple[list[str], list[str]]:
    """(hypotheses, references): each reference a real sentence, its hypothesis an edit of it."""
    refs = sentences(n, seed)
    vocab = sorted({w for s in refs for w in s.split()})
    rng = random.Random(seed + 1)
    return [edit(r, rng, vocab) for r in refs], refs


def zh_lines() -> list[str]:
    """Lines of Tang poems (traditional script, CJK punctuation)."""
    return [line for d in documents("zh").values() for line in d.split("\n") if line.strip()]


# (hypothesis, reference) pairs at the edges
EDGE_CASES = [
    ("", "The cat sat on the mat."),
    ("dog barks loudly", "The cat sat on the mat."),
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("The cat sat on the mat and then the cat sat on the other mat too.", "The cat sat on the mat."),
    ("cat", "The cat sat on the mat."),
    ("the the the the the the the", "The cat sat on the mat."),
    ("“Quoted” — an em dash… and «guillemets», ‘single’ quotes; 3.14, 1,000 and 5-4.",
     "“Quoted” – an en dash... and «guillemets», 'single' quotes; 3.14, 1,000 and 5 - 4."),
    ("Tom's R&amp;D costs &lt;$5&gt; at 9:30 (approx.) [sic] {x} ~ok~ | a/b",
     "Tom's R&D costs <$5> at 9:30 (approx.) [sic] {x} ~ok~ | a/b"),
    ("naïve café résumé Ünïcödé ÉCOLE", "naive cafe resume Unicode école"),
    ("   leading and trailing spaces   ", "leading and trailing spaces"),
]


def datasets() -> dict[str, tuple[list[str], list[list[str]]]]:
    """name -> (hypotheses, reference streams parallel to them): the corpora the BLEU and chrF tests score."""
    ph, pr = parallel()
    eh, er = edited_pairs()
    zh = zh_lines()[:80]
    edge_h, edge_r = [h for h, _ in EDGE_CASES], [r for _, r in EDGE_CASES]
    return {
        "kjv-parallel": (ph, [pr]),
        "edited": (eh, [er]),
        # a second reference stream of other lengths: the closest-length rule and the max-over-references clipping
        "edited-2refs": (eh, [er, [" ".join(r.split()[: len(r.split()) // 2 + 1]) for r in er]]),
        "tang": (zh[1::2], [zh[0::2][: len(zh[1::2])]]),
        "edge": (edge_h, [edge_r]),
    }
