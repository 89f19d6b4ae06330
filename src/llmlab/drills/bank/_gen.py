"""Helpers shared by the drills' case generators."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.model.config import TransformerConfig
from llmlab.model.transformer import Transformer


def randn(g: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> Tensor:
    """Normal noise drawn in float64 (so every dtype sees the same numbers), then rounded to dtype."""
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def randint(g: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high, (), generator=g))


def padding_mask(g: torch.Generator, b: int, t: int, *, empty_row: bool = False) -> Tensor:
    """(B, T) bool, True = real token: each row a random number of real tokens, right-padded."""
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    if empty_row:
        lengths[0] = 0
    return torch.arange(t)[None, :] < lengths[:, None]


class TinyLM:
    """A random-weight 2-layer llmlab decoder in float64, passed to decoding drills as a plain callable:
    model(ids (B, T) int64) -> logits (B, T, V). `.model` is the Transformer llmlab's own code runs."""

    def __init__(self, g: torch.Generator, vocab_size: int = 61, max_seq_len: int = 64) -> None:
        cfg = TransformerConfig(vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                                max_seq_len=max_seq_len)
        with torch.random.fork_rng(devices=[]):  # the constructor's init draws must not move the global RNG
            self.model = Transformer(cfg).double().eval()
        with torch.no_grad():
            for p in self.model.parameters():
                noise = 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64)
                p.copy_(noise if p.dim() > 1 else p + noise)  # peaked next-token distributions; norms stay near 1

    @torch.no_grad()
    def __call__(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids)

    def __repr__(self) -> str:
        return f"TinyLM(vocab_size={self.model.cfg.vocab_size})"
