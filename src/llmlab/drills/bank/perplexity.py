"""Perplexity of a batch of token sequences from the model's logits: shift by one, mask, mean NLL, exp."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import padding_mask, randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.eval.perplexity import perplexity as llmlab_perplexity
from llmlab.model.loss import cross_entropy

STARTER = '''"""Drill: perplexity. Check with `llmlab drill check perplexity`."""
import torch
from torch import Tensor


def perplexity(logits: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
    """PPL = exp(-(1/n) sum_t log p(x_t | x_<t)) of a causal LM: the logits at t - 1 score the token at t, so token 0
    of each row is never scored; n counts the scored tokens (a token is scored only where mask[b, t] is True).

    logits: (B, T, V) float; tokens: (B, T) int64; mask: (B, T) bool, True = real token (None: all real).
    Returns a scalar: float32 for fp16/bf16 logits (compute in float32), else logits' dtype. Differentiable.
    """
    raise NotImplementedError
'''


def perplexity(logits: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
    # -log p(x_t | x_<t) for t >= 1: the logits at t - 1 score the token at t (as llmlab.eval.perplexity)
    targets = tokens[:, 1:] if mask is None else tokens[:, 1:].masked_fill(~mask[:, 1:], -100)
    return cross_entropy(logits[:, :-1], targets, ignore_index=-100).exp()


def _tokens(g: torch.Generator, b: int, t: int, v: int) -> Tensor:
    return torch.randint(0, v, (b, t), generator=g)


def examples() -> list[Case]:
    logits = torch.tensor([[[2.0, 0.5, -1.0], [0.1, 1.5, 0.3], [1.0, 1.0, 1.0]]])
    return [Case(dict(logits=logits, tokens=torch.tensor([[0, 1, 2]])), ("basic",), True),
            Case(dict(logits=logits, tokens=torch.tensor([[0, 1, 2]]), mask=torch.tensor([[True, True, False]])),
                 ("padding",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    b, t, v = randint(g, 2, 5), randint(g, 3, 12), randint(g, 5, 40)
    return [Case(dict(logits=randn(g, b, t, v), tokens=_tokens(g, b, t, v)), ("random",)),
            Case(dict(logits=randn(g, b, t, v), tokens=_tokens(g, b, t, v), mask=padding_mask(g, b, t)),
                 ("padding",)),
            Case(dict(logits=randn(g, 1, 2, v), tokens=_tokens(g, 1, 2, v)), ("len2",)),
            Case(dict(logits=randn(g, b, t, v) + 1000.0, tokens=_tokens(g, b, t, v)), ("large-logits",)),
            Case(dict(logits=randn(g, b, t, v, dtype=torch.bfloat16), tokens=_tokens(g, b, t, v),
                      mask=padding_mask(g, b, t)), ("bf16", "padding")),
            Case(dict(logits=randn(g, b, t, v, dtype=torch.float16), tokens=_tokens(g, b, t, v)), ("fp16",))]


DRILL = Drill(
    name="perplexity", area="eval", difficulty=1, minutes=10, func="perplexity",
    statement="Compute the perplexity of a causal LM on a padded batch from its logits: shift, mask, mean NLL, exp.",
    starter=STARTER, reference=perplexity, sources=(cross_entropy, llmlab_perplexity), examples=examples,
    hidden=hidden, tags=("padding", "large-logits", "bf16"),
    hints=("PPL = exp(mean NLL); NLL_t = logsumexp(logits[t - 1]) - logits[t - 1][x_t].",
           "Shift: score logits[:, :-1] against tokens[:, 1:]; token 0 has no prediction. Use log-sum-exp with the "
           "row max subtracted so large logits do not overflow.",
           "The mask of the *target* decides: keep mask[:, 1:], sum the NLL over it and divide by its count "
           "(not by B * (T - 1)). Upcast fp16/bf16 logits to float32 first."),
    tag_hints={"padding": "average over the scored real tokens only: divide by mask[:, 1:].sum().",
               "large-logits": "log-softmax via the log-sum-exp trick, not log(softmax(x)).",
               "random": "the logits at position t - 1 predict token t: shift before gathering.",
               "bf16": "compute in float32 and return float32 for half-precision logits."},
    banned=("cross_entropy", "nll_loss", "CrossEntropyLoss", "NLLLoss"),
    grad=("logits",),
)
