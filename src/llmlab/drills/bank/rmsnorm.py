"""RMSNorm: scale by the root mean square, no centring, no bias."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.model.norms import RMSNorm

STARTER = '''"""Drill: rmsnorm. Check with `llmlab drill check rmsnorm`."""
import torch
from torch import Tensor


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2 over the last dim) + eps) * weight.

    x: (..., D), weight: (D,). Statistics in at least float32 (upcast fp16/bf16, cast back before the weight).
    Returns x's shape; differentiable in x and weight.
    """
    raise NotImplementedError
'''


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    norm = RMSNorm(x.shape[-1], eps).to(weight.dtype)
    return functional_call(norm, {"weight": weight}, (x,))


def examples() -> list[Case]:
    return [Case(dict(x=torch.tensor([[1.0, 2.0, 3.0, 4.0]]), weight=torch.ones(4)), ("basic",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    d = randint(g, 4, 33)
    return [Case(dict(x=randn(g, 2, 5, d, scale=3.0) + 2.0, weight=randn(g, d)), ("offset",)),
            Case(dict(x=randn(g, 3, d, scale=1e-4), weight=randn(g, d), eps=1e-3), ("eps",)),
            Case(dict(x=randn(g, 1, 1), weight=randn(g, 1)), ("len1",)),
            Case(dict(x=randn(g, 4, d, dtype=torch.float64), weight=randn(g, d, dtype=torch.float64)), ("fp64",)),
            Case(dict(x=randn(g, 4, d, dtype=torch.bfloat16), weight=randn(g, d, dtype=torch.bfloat16)), ("bf16",))]


DRILL = Drill(
    name="rmsnorm", area="basics", difficulty=1, minutes=5, func="rms_norm",
    statement="Write RMSNorm over the last dim, with a learned scale and eps inside the square root.",
    starter=STARTER, reference=rms_norm, sources=(RMSNorm,), examples=examples, hidden=hidden,
    tags=("eps", "bf16"),
    hints=("rms = sqrt(mean(x^2, dim=-1, keepdim=True) + eps); y = x / rms * weight.",
           "Unlike LayerNorm, do not subtract the mean: RMSNorm only rescales.",
           "eps goes inside the sqrt (torch.rsqrt(ms + eps)); upcast half precision to float32 for the statistics."),
    tag_hints={"offset": "do not subtract the mean: that is LayerNorm.",
               "eps": "eps is added to mean(x^2) inside the square root, not to the rms."},
    banned=("rms_norm", "RMSNorm", "layer_norm", "normalize"),
    grad=("x", "weight"),
)
