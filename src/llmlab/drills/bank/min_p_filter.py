"""Min-p filtering of next-token logits."""

from __future__ import annotations

import torch

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.infer.sampling import min_p_filter

STARTER = '''"""Drill: min_p_filter. Check with `llmlab drill check min_p_filter`."""
import torch
from torch import Tensor


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Min-p sampling (Nguyen et al. 2024): keep tokens whose probability >= min_p * the top token's
    probability; set the rest to -inf. min_p <= 0 keeps all.

    logits: (B, V) float. Returns (B, V), same dtype. Graded on which tokens are set to -inf.
    """
    raise NotImplementedError
'''


def masked(out):
    return out == float("-inf")


def examples() -> list[Case]:
    return [Case(dict(logits=torch.tensor([[0.6, 0.3, 0.1]]).log(), min_p=0.4), ("basic",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    v = randint(g, 5, 60)
    return [Case(dict(logits=randn(g, 4, v, scale=2.0), min_p=0.1), ("random",)),
            Case(dict(logits=randn(g, 4, v, scale=2.0) + 50.0, min_p=0.2), ("shifted-logits",)),
            Case(dict(logits=randn(g, 2, v), min_p=0.0), ("off",)),
            Case(dict(logits=randn(g, 2, v), min_p=1.0), ("min-p-1",)),
            Case(dict(logits=randn(g, 3, v, dtype=torch.float16, scale=2.0), min_p=0.05), ("fp16",))]


DRILL = Drill(
    name="min_p_filter", area="sampling", difficulty=1, minutes=5, func="min_p_filter",
    statement="Mask tokens less likely than min_p times the most likely token.",
    starter=STARTER, reference=min_p_filter, examples=examples, hidden=hidden, compare_as=masked,
    tags=("shifted-logits",),
    hints=("probs = softmax(logits, -1); threshold = min_p * probs.max(-1, keepdim=True).",
           "Compare probabilities, not logits: the threshold is relative to the top probability.",
           "masked_fill(probs < threshold, -inf); the top token is never below it."),
    tag_hints={"shifted-logits": "threshold the probabilities (softmax), not the raw logits."},
)
