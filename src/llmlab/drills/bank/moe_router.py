"""Mixture-of-experts top-k router with the Switch Transformer load-balancing loss.

The reference is llmlab's own: `llmlab.model.moe.route` and `load_balancing_loss`, which the MoE layer runs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.model import moe

STARTER = '''"""Drill: moe_router. Check with `llmlab drill check moe_router`."""
import torch
from torch import Tensor


def route(router_logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k MoE routing (Mixtral: Jiang et al. 2024) and the load-balancing loss (Switch: Fedus et al. 2022).

    router_logits: (N, E), one row per token. probs = softmax over experts. Pick each token's k most probable
    experts (indices (N, k) int64, most probable first) and their weights: softmax over the k chosen logits
    (they sum to 1). aux loss = E * sum_e f_e * P_e, f_e = fraction of the N*k assignments that went to e,
    P_e = mean over tokens of probs[:, e]. Returns (weights (N, k) in the logits' dtype, indices, aux scalar).
    """
    raise NotImplementedError
'''


def route(router_logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    weights, experts = moe.route(router_logits, k, normalize=True)  # renormalised over the chosen k (Mixtral)
    # llmlab's (and HF Mixtral's) f_e counts assignments per token, summing to k; the drill's are shares of the N*k
    # assignments, summing to 1 (Switch's top-1 form): the same loss divided by k
    aux = moe.load_balancing_loss(router_logits, k) / k
    return weights, experts, aux


def examples() -> list[Case]:
    return [Case(dict(router_logits=torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 0.5]]), k=2),
                 ("basic",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    e = randint(g, 4, 17)
    return [Case(dict(router_logits=randn(g, 12, e), k=2), ("top2",)),
            Case(dict(router_logits=randn(g, 9, e), k=1), ("top1",)),
            Case(dict(router_logits=randn(g, 10, 8, scale=2.0) + torch.arange(8.0), k=3), ("imbalanced",)),
            Case(dict(router_logits=randn(g, 1, e), k=2), ("len1",)),
            Case(dict(router_logits=randn(g, 6, e, dtype=torch.float64), k=2), ("fp64",))]


DRILL = Drill(
    name="moe_router", area="efficiency", difficulty=2, minutes=15, func="route",
    statement="Route tokens to their top-k experts with renormalised weights, and compute the load-balance loss.",
    starter=STARTER, reference=route, examples=examples, hidden=hidden, tags=("top1", "imbalanced"),
    hints=("router_logits.topk(k, dim=-1) gives the chosen logits and expert ids, most probable first.",
           "weights = softmax of the k chosen logits (equivalently, the chosen probs divided by their sum).",
           "f_e: count assignments per expert (bincount / scatter_add over the (N*k,) ids) / (N*k); P_e = "
           "softmax(logits).mean(0); aux = E * (f * P).sum()."),
    tag_hints={"top2": "renormalise the weights over the k chosen experts so each row sums to 1.",
               "imbalanced": "f_e counts assignments (a hard count); P_e is the mean soft probability.",
               "top1": "with k = 1 every weight is 1."},
    banned=(),
)
