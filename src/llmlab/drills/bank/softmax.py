"""Numerically stable softmax over a chosen dim."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.model.loss import log_softmax

STARTER = '''"""Drill: softmax. Check with `llmlab drill check softmax`."""
import torch
from torch import Tensor


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """softmax(x)_i = exp(x_i - max) / sum_j exp(x_j - max) along `dim` (max-subtracted: stable for large x).

    x: any shape, floating dtype. Returns the same shape and dtype; differentiable.
    """
    raise NotImplementedError
'''


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    return log_softmax(x, dim=dim).exp()


def examples() -> list[Case]:
    return [Case(dict(x=torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])), ("basic",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    cases = [Case(dict(x=randn(g, 3, 5, 7), dim=1), ("dim",)),
             Case(dict(x=randn(g, 4, 6), dim=0), ("dim",)),
             Case(dict(x=randn(g, 2, 9, scale=500.0)), ("large-logits",)),
             Case(dict(x=randn(g, 2, 1)), ("len1",)),
             Case(dict(x=randn(g, 3, 8, dtype=torch.float16)), ("fp16",)),
             Case(dict(x=randn(g, 3, 8, dtype=torch.bfloat16)), ("bf16",))]
    cases.append(Case(dict(x=randn(g, randint(g, 1, 5), randint(g, 2, 50))), ("random",)))
    return cases


DRILL = Drill(
    name="softmax", area="basics", difficulty=1, minutes=5, func="softmax",
    statement="Write a numerically stable softmax along any dim.",
    starter=STARTER, reference=softmax, sources=(log_softmax,), examples=examples, hidden=hidden,
    tags=("dim", "large-logits", "fp16"),
    hints=("exp(x) / exp(x).sum(dim, keepdim=True) is the formula; keepdim keeps it broadcastable.",
           "exp(1000) overflows to inf: subtract x.amax(dim, keepdim=True) first; it cancels in the ratio.",
           "Use the `dim` argument everywhere (amax, sum), never a hard-coded -1."),
    tag_hints={"dim": "reduce along `dim`, not the last axis.",
               "large-logits": "subtract the max along dim before exp, or exp overflows to inf -> NaN."},
    banned=("softmax", "log_softmax", "logsumexp", "softmin"),
    grad=("x",),
)
