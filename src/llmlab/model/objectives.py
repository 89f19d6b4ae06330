"""Pretraining objectives: causal LM (predict the next token) and masked LM (recover hidden tokens)."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.model.loss import cross_entropy, next_token_loss


def mask_tokens(x: Tensor, mask_id: int, vocab_size: int, gen: torch.Generator, rate: float = 0.15
                ) -> tuple[Tensor, Tensor]:
    """BERT masking (Devlin et al. 2019): pick `rate` of positions; of those 80% -> [MASK], 10% -> random, 10% kept.

    Returns (inputs, labels) with labels = -100 where nothing is predicted.
    """
    chosen = torch.rand(x.shape, generator=gen) < rate
    labels = torch.where(chosen, x, torch.full_like(x, -100))
    roll = torch.rand(x.shape, generator=gen)
    inputs = torch.where(chosen & (roll < 0.8), torch.full_like(x, mask_id), x)
    random_ids = torch.randint(0, vocab_size, x.shape, generator=gen)
    inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
    return inputs, labels


def lm_loss(model, x: Tensor, *, mask_id: int | None = None, gen: torch.Generator | None = None) -> Tensor:
    """The model's own objective: next-token loss for decoders, masked-token loss for encoders."""
    if model.cfg.causal:
        return next_token_loss(model(x), x)
    if mask_id is None or gen is None:
        raise ValueError("masked LM needs mask_id and a generator")
    inputs, labels = mask_tokens(x, mask_id, model.cfg.vocab_size, gen)
    return cross_entropy(model(inputs), labels)
