"""GRPO, the loss side: group-normalized advantages, clipped token ratio, k3 KL to the reference policy.

Completions come in groups of `group_size` per prompt, laid out prompt-major: rewards (N * G,).
Per-token tensors are (B, T) over completion tokens with mask (B, T).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, group_size: int, scale: Literal["group", "batch", "none"] = "group",
                     eps: float = 1e-4) -> Tensor:
    """A_i = (r_i - mean(group)) / (std + eps), std unbiased over the group (or the batch, or 1)
    (GRPO, Shao et al. 2024, Sec. 4.1.2; 'none' = Dr. GRPO, Liu et al. 2025). rewards (N*G,) -> (N*G,)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of group_size={group_size}")
    grouped = rewards.view(-1, group_size)  # (N, G)
    centered = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    if scale == "none":
        return centered
    if scale == "group":
        std = grouped.std(dim=1).repeat_interleave(group_size) if group_size > 1 else torch.zeros_like(rewards)
    elif scale == "batch":
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        raise ValueError(f"scale={scale!r} must be 'group', 'batch' or 'none'")
    return centered / (std + eps)


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """KL(pi || ref) per token, unbiased and >= 0: exp(ref - log pi) - (ref - log pi) - 1  (Schulman 2020, 'k3')."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def grpo_loss(logprobs: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor | None, advantages: Tensor, mask: Tensor,
              beta: float = 0.04, clip_eps_low: float = 0.2, clip_eps_high: float = 0.2,
              loss_type: Literal["grpo", "dapo"] = "grpo") -> Tensor:
    """-min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) + beta k3_KL per token  (GRPO, Shao et al. 2024, Eq. 3).

    'grpo' averages over each sequence's tokens, then over sequences (the paper); 'dapo' averages over all tokens
    of the batch (DAPO, Yu et al. 2025). advantages (B,); ref_logprobs may be None when beta = 0.
    """
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    adv = advantages.unsqueeze(1)  # (B, 1)
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high) * adv)
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError(f"beta={beta} needs ref_logprobs for the KL penalty")
        per_token = per_token + beta * k3_kl(logprobs, ref_logprobs)
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if loss_type == "dapo":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    raise ValueError(f"loss_type={loss_type!r} must be 'grpo' or 'dapo'")
