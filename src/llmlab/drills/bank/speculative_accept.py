"""The speculative decoding acceptance rule and the residual distribution."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.infer.speculative import accept_prob, residual, verify

STARTER = '''"""Drill: speculative_accept. Check with `llmlab drill check speculative_accept`."""
import torch
from torch import Tensor


def accept_and_residual(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): a drafted token x ~ q is accepted with
    probability min(1, p(x) / q(x)) (1 where q(x) = 0); after a rejection the token is drawn from the residual
    norm(max(0, p - q)) (sum over the last dim = 1; where p == q the residual is all zeros: return p instead).

    p: (N, V) target probabilities, q: (N, V) draft probabilities.
    Returns (acceptance probabilities (N, V), residual distributions (N, V)), both in p's dtype.
    """
    raise NotImplementedError
'''


def accept_and_residual(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    return accept_prob(p, q), residual(p, q)


def _probs(g: torch.Generator, n: int, v: int, zeros: bool = False) -> Tensor:
    x = randn(g, n, v, scale=2.0).softmax(-1)
    if zeros:
        x[:, : v // 2] = 0.0
        x = x / x.sum(-1, keepdim=True)
    return x


def examples() -> list[Case]:
    return [Case(dict(p=torch.tensor([[0.5, 0.3, 0.2]]), q=torch.tensor([[0.2, 0.6, 0.2]])), ("basic",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    v = randint(g, 4, 30)
    p = _probs(g, 3, v)
    return [Case(dict(p=p, q=_probs(g, 3, v)), ("random",)),
            Case(dict(p=_probs(g, 2, v), q=_probs(g, 2, v, zeros=True)), ("q-zero",)),
            Case(dict(p=p, q=p.clone()), ("p-equals-q",)),
            Case(dict(p=_probs(g, 2, v, zeros=True), q=_probs(g, 2, v)), ("p-zero",)),
            Case(dict(p=_probs(g, 2, v).double(), q=_probs(g, 2, v).double()), ("fp64",))]


DRILL = Drill(
    name="speculative_accept", area="inference", difficulty=2, minutes=10, func="accept_and_residual",
    statement="Write speculative decoding's acceptance probability and the residual distribution to resample from.",
    starter=STARTER, reference=accept_and_residual, sources=(accept_prob, residual, verify), examples=examples,
    hidden=hidden, tags=("q-zero", "p-equals-q"),
    hints=("accept = min(1, p / q) element-wise: (p / q).clamp(max=1).",
           "Where q == 0 the draft never proposes that token: define the acceptance as 1 (torch.where).",
           "residual = (p - q).clamp(min=0), divided by its row sum; if the sum is 0 (p == q) return p."),
    tag_hints={"q-zero": "guard q == 0: torch.where(q > 0, (p / q).clamp(max=1), 1).",
               "p-equals-q": "when p == q the residual sums to 0: return p for that row, not NaN.",
               "random": "the residual is max(0, p - q), normalised; not p - q and not p."},
    banned=("accept_prob", "residual", "verify"),
)
