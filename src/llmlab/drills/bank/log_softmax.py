"""Numerically stable log-softmax (the log-sum-exp trick)."""

from __future__ import annotations

import torch

from llmlab.drills.bank._gen import randn
from llmlab.drills.grader import Case, Drill
from llmlab.model.loss import log_softmax

STARTER = '''"""Drill: log_softmax. Check with `llmlab drill check log_softmax`."""
import torch
from torch import Tensor


def log_softmax(logits: Tensor, dim: int = -1) -> Tensor:
    """log softmax = x - logsumexp(x), with logsumexp(x) = m + log sum exp(x - m), m = max (the LSE trick).

    logits: any shape, floating dtype. Returns the same shape and dtype; differentiable.
    """
    raise NotImplementedError
'''


def examples() -> list[Case]:
    return [Case(dict(logits=torch.tensor([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]])), ("large-logits",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    return [Case(dict(logits=randn(g, 3, 5, 7), dim=1), ("dim",)),
            Case(dict(logits=randn(g, 4, 11, scale=300.0)), ("large-logits",)),
            Case(dict(logits=randn(g, 4, 11, scale=1e-3)), ("small-logits",)),
            Case(dict(logits=randn(g, 5, 1)), ("len1",)),
            Case(dict(logits=randn(g, 2, 8, dtype=torch.float64)), ("fp64",)),
            Case(dict(logits=randn(g, 3, 8, dtype=torch.bfloat16)), ("bf16",))]


DRILL = Drill(
    name="log_softmax", area="basics", difficulty=1, minutes=5, func="log_softmax",
    statement="Write log-softmax with the log-sum-exp trick, stable for logits in the thousands.",
    starter=STARTER, reference=log_softmax, examples=examples, hidden=hidden, tags=("large-logits", "dim"),
    hints=("log softmax(x) = x - log(sum(exp(x))).",
           "log(sum(exp(x))) = m + log(sum(exp(x - m))) for any m; choose m = max along dim so exp never overflows.",
           "Do not compute softmax then log: tiny probabilities underflow to 0 and log(0) = -inf."),
    tag_hints={"large-logits": "subtract the max before exp: exp(1000) = inf.",
               "dim": "reduce along `dim` with keepdim=True."},
    banned=("softmax", "log_softmax", "logsumexp"),
    grad=("logits",),
)
