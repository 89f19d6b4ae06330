"""Reward model: Bradley-Terry pairwise loss and a scalar-head wrapper around llmlab.Transformer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmlab.model.config import TransformerConfig
from llmlab.model.transformer import Transformer


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None) -> Tensor:
    """Mean of -log sigmoid(r_c - r_r - margin): P(chosen > rejected) = sigmoid(r_c - r_r)  (Bradley & Terry 1952;
    margin as in Llama 2, Touvron et al. 2023). Rewards (B,), margin (B,) or None -> scalar."""
    delta = chosen_rewards - rejected_rewards
    if margin is not None:
        delta = delta - margin
    return -F.logsigmoid(delta).mean()


def pairwise_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> float:
    """Fraction of pairs where the chosen completion scores strictly higher."""
    return (chosen_rewards > rejected_rewards).float().mean().item()


class RewardModel(nn.Module):
    """A Transformer whose vocab head is replaced by a scalar head; the reward is the score at the last real token."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.backbone = Transformer(cfg)
        self.backbone.lm_head = nn.Linear(cfg.d_model, 1, bias=False)  # (d) -> scalar score per position
        nn.init.normal_(self.backbone.lm_head.weight, std=1 / (cfg.d_model + 1) ** 0.5)

    @classmethod
    def from_lm(cls, lm: Transformer) -> RewardModel:
        """Start from a (pre)trained LM's weights, with a fresh scalar head (the usual RLHF recipe)."""
        rm = cls(lm.cfg)
        state = {k: v for k, v in lm.state_dict().items() if not k.startswith("lm_head.")}
        rm.backbone.load_state_dict(state, strict=False)
        return rm

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, T), attention_mask (B, T) right-padded -> rewards (B,)."""
        scores = self.backbone(input_ids, attention_mask=attention_mask).squeeze(-1)  # (B, T)
        if attention_mask is None:
            return scores[:, -1]
        last = attention_mask.long().sum(-1).clamp(min=1) - 1  # index of the last real token (right padding)
        return scores[torch.arange(scores.size(0), device=scores.device), last]
