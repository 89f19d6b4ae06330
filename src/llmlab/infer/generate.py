"""Autoregressive generation, the plain way: run the whole (cropped) sequence through the model for every new token.

No KV cache, so each step costs a full forward over up to max_seq_len tokens (O(T^2) over a generation); it is the
reference that faster decoders are checked against, and all that sample generations during training need.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.errors import LlmlabError
from llmlab.model.transformer import Transformer


@torch.no_grad()
def generate(model: Transformer, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """input_ids (B, T) -> (B, T + max_new_tokens): the prompt followed by sampled tokens.

    temperature=0 is greedy (argmax); otherwise sample from softmax(logits / temperature), restricted to the
    top_k most likely tokens when top_k is set. `generator` (on the model's device) makes sampling reproducible.
    The model is run in eval mode and put back in the mode it was in.
    """
    if not model.cfg.causal:
        raise LlmlabError(f"generate needs a causal decoder; this model has arch={model.cfg.arch!r}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise LlmlabError(f"input_ids must be (batch, seq) with seq >= 1, got shape {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise LlmlabError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if temperature < 0:
        raise LlmlabError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise LlmlabError(f"top_k={top_k} must be >= 1 or None")
    was_training = model.training
    model.eval()
    try:
        ids = input_ids
        for _ in range(max_new_tokens):
            context = ids[:, -model.cfg.max_seq_len:]  # (B, <= max_seq_len): positions beyond it are unseen
            logits = model(context)[:, -1, :].float()  # (B, V): the distribution of the next token
            ids = torch.cat([ids, next_token(logits, temperature, top_k, generator)], dim=1)
        return ids
    finally:
        model.train(was_training)


def next_token(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> Tensor:
    """logits (B, V) -> token ids (B, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)
