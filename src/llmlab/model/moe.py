"""Mixture of experts: a router sends each token to k of E expert MLPs and mixes their outputs (Mixtral, Qwen2-MoE).

    weights, experts = route(router_logits, k)        # (N, k) each: the top-k experts of every token
    y = sum_j weights[:, j] * expert_{experts[:, j]}(x)  (+ sigmoid(x w_g) * shared_expert(x), Qwen2-MoE)

Training adds the router losses of `Transformer.aux_loss`: the load-balancing loss (Switch) and, optionally, the
router z-loss (ST-MoE). An optional expert capacity drops the tokens an expert has no room for (Switch): they pass
through the residual only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmlab.model.config import TransformerConfig
from llmlab.model.mlp import MLP


def route(router_logits: Tensor, k: int, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """Top-k routing (Shazeer et al. 2017): router_logits (N, E) -> (weights (N, k), experts (N, k) int64).

    Experts are each token's k most probable, most probable first; weights their softmax probabilities, renormalised
    to sum to 1 over the k when normalize (Mixtral; Qwen2-MoE's norm_topk_prob), computed in float32 at least.
    """
    probs = router_logits.softmax(dim=-1, dtype=torch.promote_types(router_logits.dtype, torch.float32))  # (N, E)
    weights, experts = probs.topk(k, dim=-1)  # (N, k)
    if normalize:  # = softmax over the k chosen logits (Mixtral: Jiang et al. 2024)
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


def _real_rows(router_logits: Tensor, attention_mask: Tensor | None) -> Tensor:
    """router_logits (L, N, E) or (N, E), N = B*T in (B, T) order -> (rows, E) of the real tokens of every layer,
    in float32 at least. Padding rows are selected out, not multiplied by 0: their values may be anything."""
    logits = router_logits if router_logits.dim() == 3 else router_logits[None]  # (L, N, E)
    if attention_mask is not None:
        logits = logits[:, attention_mask.reshape(-1).bool()]  # (L, N_real, E)
    return logits.reshape(-1, logits.shape[-1]).to(torch.promote_types(logits.dtype, torch.float32))


def load_balancing_loss(router_logits: Tensor, k: int, attention_mask: Tensor | None = None) -> Tensor:
    """Load-balancing loss, pooled over every MoE layer's routing: equal to HF's Mixtral `load_balancing_loss_func`.

    router_logits (L, N, E) (one (N, E) per MoE layer) or (N, E); attention_mask (B, T), B*T = N: padding excluded.
    Uniform routing scores k (each token's k assignments spread evenly), all tokens on k experts scores E.
    """
    logits = _real_rows(router_logits, attention_mask)  # (rows, E)
    n_experts = logits.shape[-1]
    probs = logits.softmax(dim=-1)  # (rows, E)
    experts = probs.topk(k, dim=-1).indices  # (rows, k)
    counts = F.one_hot(experts, n_experts).sum(dim=(0, 1)).to(probs.dtype)  # (E,) assignments
    # Switch: E * sum_e f_e P_e, f_e = assignments to e per token (sums to k here), P_e = mean prob of e
    # (Fedus et al. 2021, eq. 4-6; top-k as Mixtral/HF)
    return n_experts * (counts / probs.shape[0] * probs.mean(dim=0)).sum()


def router_z_loss(router_logits: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Router z-loss, mean over real tokens (and layers) of logsumexp(logits)^2: keeps router logits small
    (ST-MoE: Zoph et al. 2022, eq. 5). Shapes as `load_balancing_loss`."""
    return _real_rows(router_logits, attention_mask).logsumexp(dim=-1).square().mean()


def expert_capacity(capacity_factor: float, n_tokens: int, k: int, n_experts: int) -> int:
    """Tokens one expert takes per sequence: ceil(capacity_factor * k * T / E) (Switch: Fedus et al. 2021)."""
    return math.ceil(capacity_factor * k * n_tokens / n_experts)


def capacity_keep(experts: Tensor, n_experts: int, capacity: int) -> Tensor:
    """experts (B, T, k) -> keep (B, T, k) bool: which assignments fit their expert's `capacity` seats per sequence.

    Seats go first come, first served in order of choice rank, then position: every token's first choice before any
    second choice (GShard: Lepikhin et al. 2020), and by position within a rank (Switch, Mesh TF). The rest are dropped.
    """
    b, t, k = experts.shape
    order = experts.transpose(1, 2).reshape(b, k * t)  # (B, k*T): first choices of tokens 0..T-1, then second ...
    one_hot = F.one_hot(order, n_experts)  # (B, k*T, E)
    seat = (one_hot.cumsum(dim=1) * one_hot).sum(dim=-1) - 1  # (B, k*T): 0-based arrival order at its expert
    return (seat < capacity).reshape(b, k, t).transpose(1, 2)


class MoE(nn.Module):
    """Sparse MLP: n_experts MLPs (`llmlab.model.mlp.MLP`, moe_d_ff wide), a linear router choosing k per token, and
    an optional shared expert every token uses, scaled by sigmoid(x w_g) (Qwen2-MoE). (B, T, d) -> (B, T, d).

    After each forward, `router_logits` (B*T, E) holds this layer's router logits for the auxiliary losses.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.k, self.normalize, self.capacity_factor = cfg.n_experts_per_tok, cfg.norm_topk_prob, cfg.capacity_factor
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg, cfg.moe_d_ff or cfg.d_ff) for _ in range(cfg.n_experts))
        if cfg.shared_expert_d_ff:
            self.shared_expert = MLP(cfg, cfg.shared_expert_d_ff)
            self.shared_expert_gate = nn.Linear(cfg.d_model, 1, bias=False)
        else:
            self.shared_expert = self.shared_expert_gate = None
        self.router_logits: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        h = x.reshape(b * t, d)  # (N, d): one row per token
        logits = self.router(h)  # (N, E)
        self.router_logits = logits
        weights, experts = route(logits, self.k, self.normalize)  # (N, k) each
        chosen = torch.ones_like(experts, dtype=torch.bool)  # (N, k): assignments that reach their expert
        if self.capacity_factor is not None and self.training:  # training only: inference never drops a token
            capacity = expert_capacity(self.capacity_factor, t, self.k, len(self.experts))
            chosen = capacity_keep(experts.view(b, t, self.k), len(self.experts), capacity).reshape(b * t, self.k)
        out = torch.zeros_like(h)  # a token no expert takes adds nothing: it keeps its residual
        for e, expert in enumerate(self.experts):
            tokens, slots = torch.nonzero((experts == e) & chosen, as_tuple=True)  # (n_e,) each: who comes to e
            y = expert(h[tokens]) * weights[tokens, slots, None]  # (n_e, d), weighted by the router
            out.index_add_(0, tokens, y.to(out.dtype))
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(h)) * self.shared_expert(h)
        return out.view(b, t, d)
