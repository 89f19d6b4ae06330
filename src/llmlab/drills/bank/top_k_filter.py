"""Top-k filtering of next-token logits."""

from __future__ import annotations

import torch

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.infer.sampling import top_k_filter

STARTER = '''"""Drill: top_k_filter. Check with `llmlab drill check top_k_filter`."""
import torch
from torch import Tensor


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (and every token tied with the k-th); set the rest to -inf.

    logits: (B, V) float; k >= 1 (k >= V keeps everything). Returns (B, V), same dtype.
    Graded on which tokens are set to -inf.
    """
    raise NotImplementedError
'''


def masked(out):
    return out == float("-inf")


def examples() -> list[Case]:
    return [Case(dict(logits=torch.tensor([[1.0, 3.0, 2.0, 0.0]]), k=2), ("basic",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    v = randint(g, 5, 50)
    ties = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5, 3.0]])
    return [Case(dict(logits=randn(g, 3, v), k=randint(g, 1, v)), ("random",)),
            Case(dict(logits=randn(g, 2, v), k=1), ("k1",)),
            Case(dict(logits=randn(g, 2, 6), k=6), ("k-ge-vocab",)),
            Case(dict(logits=randn(g, 2, 6), k=10), ("k-ge-vocab",)),
            Case(dict(logits=ties, k=2), ("ties",)),
            Case(dict(logits=randn(g, 4, v, dtype=torch.float16), k=3), ("fp16",))]


DRILL = Drill(
    name="top_k_filter", area="sampling", difficulty=1, minutes=5, func="top_k_filter",
    statement="Mask all but the k most likely tokens of each row (HF TopKLogitsWarper).",
    starter=STARTER, reference=top_k_filter, examples=examples, hidden=hidden, compare_as=masked,
    tags=("ties", "k-ge-vocab"),
    hints=("torch.topk(logits, k, dim=-1).values[:, -1:] is each row's k-th largest logit.",
           "Mask logits strictly below the k-th value: ties with it stay (as HF).",
           "If k >= V there is nothing to remove; topk would raise."),
    tag_hints={"ties": "compare with `<` against the k-th value so tokens tied with it stay.",
               "k-ge-vocab": "k >= vocab size keeps everything (guard before torch.topk)."},
)
