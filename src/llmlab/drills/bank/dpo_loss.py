"""The DPO loss from sequence log-probs of the policy and the frozen reference."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.posttrain.dpo import _margin
from llmlab.posttrain.dpo import dpo_loss as llmlab_dpo_loss

STARTER = '''"""Drill: dpo_loss. Check with `llmlab drill check dpo_loss`."""
import torch
from torch import Tensor


def dpo_loss(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0) -> Tensor:
    """DPO (Rafailov et al. 2023): Delta = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)],
    loss = -(1 - eps) log sigmoid(beta Delta) - eps log sigmoid(-beta Delta)  (eps = label_smoothing: cDPO).

    All four inputs: (B,) summed completion log-probs, same float dtype. Returns the per-example loss (B,) in
    that dtype (not the mean); finite for any margin. Differentiable in chosen and rejected.
    """
    raise NotImplementedError
'''


def dpo_loss(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0) -> Tensor:
    return llmlab_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta, label_smoothing=label_smoothing)


def _logps(g: torch.Generator, b: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> dict[str, Tensor]:
    # summed log-probs of completions: negative, tens of nats
    return {k: -(randn(g, b, dtype=torch.float64, scale=scale).abs() + 20.0).to(dtype)
            for k in ("chosen", "rejected", "ref_chosen", "ref_rejected")}


def examples() -> list[Case]:
    x = dict(chosen=torch.tensor([-10.0, -12.0]), rejected=torch.tensor([-11.0, -9.0]),
             ref_chosen=torch.tensor([-10.5, -11.0]), ref_rejected=torch.tensor([-10.5, -10.0]))
    return [Case(x, ("basic",), True), Case(dict(x, beta=0.5), ("beta",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    b = randint(g, 2, 9)
    big = _logps(g, 4, scale=5.0)
    big["chosen"] = big["chosen"] + torch.tensor([3000.0, -3000.0, 1000.0, -1000.0])
    return [Case(_logps(g, b, scale=5.0), ("random",)),
            Case(dict(_logps(g, b, scale=5.0), beta=0.5), ("beta",)),
            Case(dict(_logps(g, b, scale=5.0), beta=0.1, label_smoothing=0.2), ("label-smoothing",)),
            Case(dict(big, beta=1.0), ("large-margin",)),
            Case(_logps(g, 1), ("len1",)),
            Case(_logps(g, b, dtype=torch.float64, scale=5.0), ("fp64",))]


DRILL = Drill(
    name="dpo_loss", area="posttrain", difficulty=2, minutes=10, func="dpo_loss",
    statement="Write the DPO loss (with cDPO label smoothing) from policy and reference sequence log-probs.",
    starter=STARTER, reference=dpo_loss, sources=(_margin, llmlab_dpo_loss), examples=examples, hidden=hidden,
    tags=("label-smoothing", "large-margin"),
    hints=("Delta is a difference of log-ratios: (chosen - ref_chosen) - (rejected - ref_rejected).",
           "loss = -log sigmoid(beta * Delta); log sigmoid(z) = -softplus(-z) = min(z, 0) - log1p(exp(-|z|)), "
           "which stays finite where log(sigmoid(z)) gives -inf.",
           "With label smoothing eps the loss mixes both directions: -(1 - eps) logsig(z) - eps logsig(-z). "
           "Return one loss per pair, not the mean."),
    tag_hints={"large-margin": "log(sigmoid(z)) underflows to -inf for z << 0: use a stable log-sigmoid.",
               "random": "subtract the reference log-probs: Delta uses log pi - log ref for both completions.",
               "label-smoothing": "eps weighs -log sigmoid(-beta Delta), the flipped label."},
    banned=("dpo_loss", "logsigmoid", "LogSigmoid"),
    grad=("chosen", "rejected"),
)
