"""Per-token and per-sequence log-probabilities of given tokens under a causal LM's logits."""

from __future__ import annotations

import torch
from torch import Tensor


def token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(labels) at each position: logits (B, T, V), labels (B, T) -> (B, T). No shift is applied."""
    # log softmax(z)_y = z_y - logsumexp(z); computed in float32 at least so bf16 logits keep their precision
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def completion_logprobs(logits: Tensor, input_ids: Tensor, completion_mask: Tensor) -> Tensor:
    """Shifted, masked token log-probs: logits (B, T, V) predict input_ids[:, 1:]; returns (B, T-1), 0 off-completion.

    completion_mask (B, T) marks the tokens to score (1 = completion token, 0 = prompt or padding).
    """
    per_token = token_logprobs(logits[:, :-1], input_ids[:, 1:])  # (B, T-1): position t predicts token t+1
    return per_token * completion_mask[:, 1:].to(per_token.dtype)


def sequence_logprobs(logits: Tensor, input_ids: Tensor, completion_mask: Tensor, average: bool = False) -> Tensor:
    """log pi(y|x) = sum_t log pi(y_t | x, y_<t) over completion tokens -> (B,); `average` divides by their count."""
    total = completion_logprobs(logits, input_ids, completion_mask).sum(-1)
    if average:
        return total / completion_mask[:, 1:].sum(-1).clamp(min=1)
    return total
