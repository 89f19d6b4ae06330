"""Cross-entropy with label smoothing and PaLM's z-loss, ignore_index and a mean over counted positions."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.model.loss import cross_entropy as llmlab_cross_entropy
from llmlab.model.loss import log_softmax

STARTER = '''"""Drill: cross_entropy_smoothing. Check with `llmlab drill check cross_entropy_smoothing`."""
import torch
from torch import Tensor


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100, label_smoothing: float = 0.0,
                  z_loss: float = 0.0) -> Tensor:
    """Token cross-entropy as torch's F.cross_entropy(label_smoothing=eps) plus PaLM's z-loss, averaged over the
    positions whose target != ignore_index:

    loss_n = (1 - eps) * (-log p_n[target_n]) + eps * mean_c(-log p_n[c])   (Szegedy et al. 2016; torch's form)
             + z_loss * (log Z_n)^2,  log Z_n = logsumexp_c(logits_n[c])    (Chowdhery et al. 2022, PaLM sec. 5)

    logits: (..., V) float (class dim last); targets: (...) int64. Stable for large logits.
    Returns a scalar: float32 for fp16/bf16 logits (compute in float32), else logits' dtype; NaN if every
    target is ignored (0 / 0, as torch). Differentiable in logits.
    """
    raise NotImplementedError
'''


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100, label_smoothing: float = 0.0,
                  z_loss: float = 0.0) -> Tensor:
    return llmlab_cross_entropy(logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing,
                                z_loss=z_loss)


def _targets(g: torch.Generator, shape: tuple[int, ...], v: int, p_ignore: float) -> Tensor:
    t = torch.randint(0, v, shape, generator=g)
    return t.masked_fill(torch.rand(shape, generator=g) < p_ignore, -100)


def examples() -> list[Case]:
    logits = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    targets = torch.tensor([0, 1])
    return [Case(dict(logits=logits, targets=targets, label_smoothing=0.1), ("smoothing",), True),
            Case(dict(logits=logits, targets=targets, z_loss=1e-2), ("z-loss",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    b, t, v = randint(g, 1, 4), randint(g, 2, 9), randint(g, 5, 40)

    def case(tags, shape=(b, t), dtype=torch.float32, scale=1.0, p_ignore=0.0, **kw):
        return Case(dict(logits=randn(g, *shape, v, dtype=dtype, scale=scale),
                         targets=_targets(g, shape, v, p_ignore), **kw), tags)

    return [case(("smoothing", "3d"), label_smoothing=0.1),
            case(("smoothing", "ignore-index"), p_ignore=0.4, label_smoothing=0.2),
            case(("z-loss", "ignore-index"), shape=(7,), scale=4.0, p_ignore=0.4, z_loss=1e-3),
            case(("smoothing", "z-loss"), label_smoothing=0.1, z_loss=1e-4),
            case(("eps-1",), shape=(4,), label_smoothing=1.0),
            case(("large-logits", "z-loss"), shape=(5,), scale=1000.0, label_smoothing=0.1, z_loss=1e-4),
            case(("len1", "smoothing"), shape=(1,), label_smoothing=0.3),
            case(("all-ignored",), shape=(3,), p_ignore=1.0, label_smoothing=0.1),
            case(("bf16", "smoothing"), shape=(4,), dtype=torch.bfloat16, label_smoothing=0.1, z_loss=1e-3),
            case(("fp16", "ignore-index"), shape=(6,), dtype=torch.float16, p_ignore=0.3, label_smoothing=0.05)]


DRILL = Drill(
    name="cross_entropy_smoothing", area="basics", difficulty=2, minutes=12, func="cross_entropy",
    statement="Write cross-entropy with label smoothing (torch's definition) and PaLM's z-loss, ignore_index, "
              "mean over counted positions.",
    starter=STARTER, reference=cross_entropy, sources=(llmlab_cross_entropy, log_softmax), examples=examples,
    hidden=hidden, tags=("smoothing", "z-loss", "ignore-index", "large-logits", "bf16"),
    hints=("logp = x - logsumexp(x) per row (subtract the row max first); nll = -logp.gather(-1, target).",
           "Smoothing spreads eps uniformly over all V classes, the target included: "
           "(1 - eps) * nll + eps * (-logp.mean(-1)).",
           "z-loss adds coef * logsumexp(x)^2 per position. Zero the ignored positions (of both terms) and divide "
           "by the number of counted targets. Upcast fp16/bf16 to float32."),
    tag_hints={"smoothing": "torch's eps goes to all V classes (eps / V each, the target too), not eps / (V - 1) "
                            "to the others: loss = (1 - eps) * nll + eps * mean(-log p).",
               "eps-1": "eps = 1: the loss is the mean of -log p over the classes, whatever the target.",
               "z-loss": "z-loss = coef * (log sum exp logits)^2, per counted position, averaged like the CE.",
               "ignore-index": "ignored positions add nothing to either term and are not counted in the mean.",
               "all-ignored": "0 / 0 is NaN, as torch.",
               "large-logits": "log-sum-exp with the row max subtracted; never log(softmax(x)).",
               "bf16": "compute in float32 and return float32 for half-precision logits."},
    banned=("cross_entropy", "nll_loss", "log_softmax", "CrossEntropyLoss", "NLLLoss", "torch_cross_entropy",
            "kl_div"),
    grad=("logits",),
)
