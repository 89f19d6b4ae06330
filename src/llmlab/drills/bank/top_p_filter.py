"""Top-p (nucleus) filtering of next-token logits."""

from __future__ import annotations

import torch

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.infer.sampling import top_p_filter

STARTER = '''"""Drill: top_p_filter. Check with `llmlab drill check top_p_filter`."""
import torch
from torch import Tensor


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probabilities sum to >= p; set the rest to -inf. The most likely token always stays; p >= 1 keeps all.

    logits: (B, V) float. Returns (B, V), same dtype. Graded on which tokens are set to -inf.
    """
    raise NotImplementedError
'''


def masked(out):
    return out == float("-inf")


def examples() -> list[Case]:
    # probabilities 0.5, 0.3, 0.2: p=0.6 keeps the first two (0.5 < 0.6 <= 0.8)
    return [Case(dict(logits=torch.tensor([[0.5, 0.3, 0.2]]).log(), p=0.6), ("basic",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    v = randint(g, 5, 60)
    return [Case(dict(logits=randn(g, 4, v, scale=2.0), p=0.9), ("random",)),
            Case(dict(logits=randn(g, 4, v, scale=3.0), p=0.5), ("random",)),
            Case(dict(logits=randn(g, 2, v), p=1e-4), ("tiny-p",)),
            Case(dict(logits=randn(g, 2, v), p=1.0), ("p1",)),
            Case(dict(logits=torch.tensor([[0.0, 0.0, 0.0, 0.0]]), p=0.6), ("ties",)),
            Case(dict(logits=randn(g, 3, v, dtype=torch.float64, scale=2.0), p=0.7), ("fp64",))]


DRILL = Drill(
    name="top_p_filter", area="sampling", difficulty=2, minutes=10, func="top_p_filter",
    statement="Mask every token outside the nucleus: the most likely tokens whose probabilities sum to >= p.",
    starter=STARTER, reference=top_p_filter, examples=examples, hidden=hidden, compare_as=masked,
    tags=("tiny-p", "boundary"),
    hints=("Sort the probabilities descending and take the cumulative sum along the row.",
           "A token stays if the mass *before* it is < p: the token that crosses p is inside the nucleus.",
           "Scatter the sorted keep/drop mask back to vocabulary order with the sort indices; the top token always "
           "stays (tiny p)."),
    tag_hints={"random": "the token whose probability takes the sum past p belongs to the nucleus: compare the "
                         "cumulative sum *before* each token with p.",
               "tiny-p": "the most likely token always stays, even when its probability alone exceeds p.",
               "p1": "p = 1 keeps every token."},
)
