"""Rotary position embeddings (RoPE), HF Llama's half-split pairing."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.model.positions import apply_rope, rope_inv_freq

STARTER = '''"""Drill: rope. Check with `llmlab drill check rope`."""
import torch
from torch import Tensor


def rope(x: Tensor, positions: Tensor, theta: float = 10000.0) -> Tensor:
    """RoPE (Su et al. 2021): rotate each pair (x[i], x[i + D/2]) by the angle pos * theta^(-2i/D), i < D/2.

    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) -- the half-split pairing of HF Llama, not (x[2i], x[2i+1]).
    x: (B, H, T, D), D even; positions: (T,) int64. Returns x's shape and dtype; differentiable in x.
    """
    raise NotImplementedError
'''


def rope(x: Tensor, positions: Tensor, theta: float = 10000.0) -> Tensor:
    inv_freq, _ = rope_inv_freq(x.shape[-1], theta)  # (D/2,) float32, as HF
    angle = positions.to(torch.float64)[:, None] * inv_freq.double()  # (T, D/2)
    emb = torch.cat((angle, angle), dim=-1)[None]  # (1, T, D): pair i and i + D/2 share an angle
    return apply_rope(x, emb.cos(), emb.sin())


def examples() -> list[Case]:
    return [Case(dict(x=torch.arange(8.0).view(1, 1, 2, 4), positions=torch.tensor([0, 1])), ("basic",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    b, h, t, d = randint(g, 1, 3), randint(g, 1, 4), randint(g, 2, 9), 2 * randint(g, 1, 9)
    return [Case(dict(x=randn(g, b, h, t, d), positions=torch.arange(t)), ("pairing",)),
            Case(dict(x=randn(g, 1, 2, 4, 16), positions=torch.tensor([5, 17, 300, 1000])), ("offset-positions",)),
            Case(dict(x=randn(g, 1, 2, 3, 8), positions=torch.arange(3), theta=500000.0), ("theta",)),
            Case(dict(x=randn(g, 1, 1, 1, 2), positions=torch.tensor([7])), ("len1",)),
            Case(dict(x=randn(g, 2, 2, 5, 8, dtype=torch.float64), positions=torch.arange(5)), ("fp64",)),
            Case(dict(x=randn(g, 2, 2, 5, 8, dtype=torch.bfloat16), positions=torch.arange(5)), ("bf16",))]


DRILL = Drill(
    name="rope", area="positions", difficulty=2, minutes=15, func="rope",
    statement="Apply rotary position embeddings to queries or keys, HF Llama layout.",
    starter=STARTER, reference=rope, sources=(rope_inv_freq, apply_rope), examples=examples, hidden=hidden,
    tags=("pairing", "theta", "bf16"),
    hints=("inv_freq = 1 / theta ** (torch.arange(0, D, 2) / D): (D/2,). angle = positions[:, None] * inv_freq.",
           "Duplicate the angles to (T, D) with cat((angle, angle), -1) so pair i and i + D/2 share one.",
           "rotate_half(x) = cat((-x[..., D/2:], x[..., :D/2]), -1); y = x * cos + rotate_half(x) * sin."),
    tag_hints={"pairing": "pairs are (x[i], x[i + D/2]) (half split), not adjacent (x[2i], x[2i+1]).",
               "offset-positions": "use the given positions, not arange(T).",
               "theta": "the base theta is an argument: inv_freq = theta ** (-2i / D)."},
    banned=("apply_rope", "RotaryEmbedding", "rotate_half", "rope_inv_freq"),
    grad=("x",),
)
