"""LayerNorm: centre, scale by the (biased) standard deviation, then affine."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.model.norms import LayerNorm

STARTER = '''"""Drill: layernorm. Check with `llmlab drill check layernorm`."""
import torch
from torch import Tensor


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """LayerNorm (Ba et al. 2016): y = (x - mean) / sqrt(var + eps) * weight + bias over the last dim,
    var the biased variance (divide by D). x: (..., D); weight, bias: (D,). Statistics in at least float32.
    Returns x's shape and dtype; differentiable in x, weight and bias.
    """
    raise NotImplementedError
'''


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    norm = LayerNorm(x.shape[-1], eps).to(weight.dtype)
    return functional_call(norm, {"weight": weight, "bias": bias}, (x,))


def examples() -> list[Case]:
    return [Case(dict(x=torch.tensor([[1.0, 2.0, 3.0, 4.0]]), weight=torch.ones(4), bias=torch.zeros(4)),
                 ("basic",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    d = randint(g, 2, 33)
    return [Case(dict(x=randn(g, 2, 5, d, scale=3.0) + 2.0, weight=randn(g, d), bias=randn(g, d)), ("offset",)),
            Case(dict(x=randn(g, 3, 4, scale=1e-3), weight=randn(g, 4), bias=randn(g, 4), eps=1e-2), ("eps",)),
            Case(dict(x=randn(g, 3, 2), weight=randn(g, 2), bias=randn(g, 2)), ("small-d",)),
            Case(dict(x=randn(g, 4, d, dtype=torch.float64), weight=randn(g, d, dtype=torch.float64),
                      bias=randn(g, d, dtype=torch.float64)), ("fp64",)),
            Case(dict(x=randn(g, 4, d, dtype=torch.float16), weight=randn(g, d, dtype=torch.float16),
                      bias=randn(g, d, dtype=torch.float16)), ("fp16",))]


DRILL = Drill(
    name="layernorm", area="basics", difficulty=1, minutes=5, func="layer_norm",
    statement="Write LayerNorm over the last dim with the biased variance, eps, weight and bias.",
    starter=STARTER, reference=layer_norm, sources=(LayerNorm,), examples=examples, hidden=hidden,
    tags=("eps", "small-d", "fp16"),
    hints=("mean = x.mean(-1, keepdim=True); var = ((x - mean)**2).mean(-1, keepdim=True).",
           "The variance is biased (divide by D, unbiased=False): torch.var defaults to D - 1.",
           "eps goes inside the sqrt; upcast fp16/bf16 to float32 for the statistics and cast back at the end."),
    tag_hints={"small-d": "the biased variance divides by D; x.var() divides by D - 1 (use unbiased=False).",
               "eps": "eps inside the square root: (var + eps).rsqrt()."},
    banned=("layer_norm", "LayerNorm", "group_norm", "batch_norm", "normalize"),
    grad=("x", "weight", "bias"),
)
