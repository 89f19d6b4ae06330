"""Cross-entropy over the vocabulary: stable, with ignore_index, mean over the counted positions."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.model.loss import cross_entropy as llmlab_cross_entropy

STARTER = '''"""Drill: cross_entropy. Check with `llmlab drill check cross_entropy`."""
import torch
from torch import Tensor


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean negative log-likelihood -log softmax(logits)[target] over positions with target != ignore_index.

    logits: (..., V) float (class dim last); targets: (...) int64. Stable for large logits (log-sum-exp).
    Returns a scalar: float32 for fp16/bf16 logits (compute in float32), else logits' dtype; NaN if every
    target is ignored (0 / 0, as torch). Differentiable in logits.
    """
    raise NotImplementedError
'''


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    return llmlab_cross_entropy(logits, targets, ignore_index=ignore_index)


def examples() -> list[Case]:
    logits = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    return [Case(dict(logits=logits, targets=torch.tensor([0, 1])), ("basic",), True),
            Case(dict(logits=logits, targets=torch.tensor([0, -100])), ("ignore-index",), True)]


def _targets(g: torch.Generator, shape: tuple[int, ...], v: int, p_ignore: float, ignore: int = -100) -> Tensor:
    t = torch.randint(0, v, shape, generator=g)
    drop = torch.rand(shape, generator=g) < p_ignore
    return t.masked_fill(drop, ignore)


def hidden(g: torch.Generator) -> list[Case]:
    b, t, v = randint(g, 1, 4), randint(g, 2, 9), randint(g, 5, 40)
    return [
        Case(dict(logits=randn(g, b, t, v), targets=_targets(g, (b, t), v, 0.0)), ("3d",)),
        Case(dict(logits=randn(g, b, t, v), targets=_targets(g, (b, t), v, 0.4)), ("ignore-index", "3d")),
        Case(dict(logits=randn(g, 6, v), targets=_targets(g, (6,), v, 0.5, ignore=0), ignore_index=0),
             ("ignore-index",)),
        Case(dict(logits=randn(g, 5, v, scale=1000.0), targets=_targets(g, (5,), v, 0.0)), ("large-logits",)),
        Case(dict(logits=randn(g, 1, v), targets=torch.tensor([3])), ("len1",)),
        Case(dict(logits=randn(g, 3, v), targets=torch.full((3,), -100)), ("all-ignored",)),
        Case(dict(logits=randn(g, 4, v, dtype=torch.bfloat16), targets=_targets(g, (4,), v, 0.0)), ("bf16",)),
        Case(dict(logits=randn(g, 4, v, dtype=torch.float16), targets=_targets(g, (4,), v, 0.25)), ("fp16",)),
    ]


DRILL = Drill(
    name="cross_entropy", area="basics", difficulty=1, minutes=10, func="cross_entropy",
    statement="Write token-level cross-entropy: stable log-softmax, ignore_index, mean over counted positions.",
    starter=STARTER, reference=cross_entropy, sources=(llmlab_cross_entropy,), examples=examples, hidden=hidden,
    tags=("ignore-index", "large-logits", "bf16"),
    hints=("Flatten to (N, V) and (N,); loss_n = logsumexp(logits_n) - logits_n[target_n].",
           "logsumexp(x) = m + log(sum(exp(x - m))), m = the row max, or exp overflows for large logits.",
           "valid = targets != ignore_index; replace ignored targets by 0 before gather, zero their losses, and "
           "divide by valid.sum(), not by N. Upcast fp16/bf16 logits to float32 first."),
    tag_hints={"ignore-index": "divide by the number of non-ignored targets, and never gather at index -100.",
               "large-logits": "use the log-sum-exp trick: subtract the row max before exp.",
               "all-ignored": "0 / 0 is NaN, as torch: divide the summed loss by the (zero) count of valid targets.",
               "bf16": "compute in float32 and return float32 for half-precision logits."},
    banned=("cross_entropy", "nll_loss", "log_softmax", "CrossEntropyLoss", "NLLLoss", "torch_cross_entropy"),
    grad=("logits",),
)
