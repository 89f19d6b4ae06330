"""PPO for RLHF, the loss side: KL-shaped per-token rewards, GAE, clipped policy and value losses.

Tensors are per completion token, (B, T), right-padded; mask (B, T) is 1 on real completion tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over positions where mask is 1 (all tokens of the batch pooled)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(x - mean) / sqrt(var + 1e-8) over masked positions (unbiased var); keeps the mean if not shift_mean."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)
    white = (x - mean) * torch.rsqrt(var + 1e-8)
    return white if shift_mean else white + mean


def kl_penalized_rewards(score: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor,
                         beta: float = 0.05) -> Tensor:
    """r_t = -beta (log pi(y_t) - log ref(y_t)) at every token, + the reward-model score at the last token
    (Ziegler et al. 2019; Stiennon et al. 2020). score (B,) -> rewards (B, T), 0 off-mask."""
    rewards = -beta * (logprobs - ref_logprobs) * mask
    last = mask.long().sum(-1).clamp(min=1) - 1  # (B,) index of the last completion token
    rewards[torch.arange(rewards.size(0), device=rewards.device), last] += score.to(rewards.dtype)
    return rewards


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, V = 0 past the last token
    (Schulman et al. 2016). Returns (advantages, returns = advantages + values), both (B, T), 0 off-mask."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        next_value = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = (delta + gamma * lam * last_gae) * mask[:, t]  # padding resets the recursion to 0
        advantages[:, t] = last_gae
    return advantages, (advantages + values) * mask


def ppo_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                    clip_eps: float = 0.2) -> Tensor:
    """mean_t max(-A rho, -A clip(rho, 1-eps, 1+eps)), rho = pi/pi_old per token  (PPO-clip, Schulman et al. 2017)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    return masked_mean(torch.maximum(unclipped, clipped), mask)


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float = 0.2) -> Tensor:
    """0.5 mean_t max((V - R)^2, (clip(V, V_old +- eps) - R)^2)  (clipped value loss, Schulman et al. 2017 code;
    as in TRL's PPOTrainer)."""
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
