"""Helpers shared by the drills' case generators."""

from __future__ import annotations

import torch
from torch import Tensor


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
