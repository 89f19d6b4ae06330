"""Shared by the HF import/export tests: random weights that prove something, and padded batches."""

from __future__ import annotations

import torch

V, T = 97, 12  # vocab and sequence length of every HF comparison


def randomise_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Matrices ~ N(0, 0.1^2); 1-D params (biases 0, norm weights 1 at init) get N(0, 0.1^2) noise added."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = 0.1 * torch.randn(p.shape, generator=g)
            p.copy_(noise if p.dim() > 1 else p + noise)
    return model.eval()


def batch(padding: str, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """ids (3, T), mask (3, T) with rows of 0, 3 and 7 pads on the right or the left, and position_ids:
    None (0..T-1 for every row) or, for 'left-pos', counted from each row's first real token."""
    ids = torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(3, T, dtype=torch.long)
    for row, n_pad in ((1, 3), (2, 7)):
        if padding == "right":
            mask[row, T - n_pad:] = 0
        else:
            mask[row, :n_pad] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0) if padding == "left-pos" else None
    return ids, mask, pos


def assert_round_trip(ours: torch.nn.Module, path) -> None:
    """load_hf_model(path), path = save_hf_model(ours): the same config and bit-identical state (torch.equal)."""
    from llmlab.model.hf import load_hf_model

    back = load_hf_model(path)
    assert back.cfg == ours.cfg
    want, got = ours.state_dict(), back.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
