"""The LoRA layer's forward: the frozen linear layer plus a scaled low-rank update."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.posttrain.lora import LoRALinear

STARTER = '''"""Drill: lora_forward. Check with `llmlab drill check lora_forward`."""
import torch
from torch import Tensor


def lora_forward(x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, alpha: float,
                 bias: Tensor | None = None) -> Tensor:
    """LoRA (Hu et al. 2021): y = x W^T + b + (alpha / r) * x A^T B^T, r = the rank.

    x: (..., in); weight: (out, in) frozen; bias: (out,) or None; lora_A: (r, in); lora_B: (out, r); all one
    float dtype. Returns (..., out) in that dtype; differentiable in x, lora_A and lora_B.
    """
    raise NotImplementedError
'''


def lora_forward(x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, alpha: float,
                 bias: Tensor | None = None) -> Tensor:
    # llmlab's LoRALinear, its parameters replaced by the drill's tensors (so gradients reach them)
    out_features, in_features = weight.shape
    layer = LoRALinear(nn.Linear(in_features, out_features, bias=bias is not None, dtype=x.dtype),
                       r=lora_A.shape[0], alpha=alpha).to(x.dtype)
    params = {"base.weight": weight, "lora_A.weight": lora_A, "lora_B.weight": lora_B}
    if bias is not None:
        params["base.bias"] = bias
    return functional_call(layer, params, (x,))


def _case(g: torch.Generator, lead: tuple[int, ...], d_in: int, d_out: int, r: int, alpha: float,
          dtype: torch.dtype = torch.float32, bias: bool = True) -> dict:
    x = dict(x=randn(g, *lead, d_in, dtype=dtype), weight=randn(g, d_out, d_in, dtype=dtype, scale=0.2),
             lora_A=randn(g, r, d_in, dtype=dtype, scale=0.2), lora_B=randn(g, d_out, r, dtype=dtype, scale=0.2),
             alpha=alpha)
    if bias:
        x["bias"] = randn(g, d_out, dtype=dtype)
    return x


def examples() -> list[Case]:
    x = dict(x=torch.tensor([[1.0, 2.0]]), weight=torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
             lora_A=torch.tensor([[1.0, -1.0]]), lora_B=torch.tensor([[1.0], [0.0], [2.0]]), alpha=2.0)
    return [Case(x, ("basic",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    d_in, d_out, r = randint(g, 4, 17), randint(g, 3, 13), randint(g, 2, 5)
    zero_b = _case(g, (3,), d_in, d_out, r, 8.0)
    zero_b["lora_B"] = torch.zeros_like(zero_b["lora_B"])
    return [Case(_case(g, (2, 5), d_in, d_out, r, 16.0), ("random", "3d")),
            Case(_case(g, (4,), d_in, d_out, r, 8.0, bias=False), ("no-bias",)),
            Case(_case(g, (3,), d_in, d_out, 1, 1.0), ("rank1",)),
            Case(zero_b, ("init",)),
            Case(_case(g, (2, 3), d_in, d_out, r, 16.0, dtype=torch.bfloat16), ("bf16",)),
            Case(_case(g, (3,), d_in, d_out, r, 4.0, dtype=torch.float64), ("fp64",))]


DRILL = Drill(
    name="lora_forward", area="posttrain", difficulty=1, minutes=8, func="lora_forward",
    statement="Write a LoRA linear layer's forward: frozen W x + b plus the (alpha / r)-scaled update B A x.",
    starter=STARTER, reference=lora_forward, sources=(LoRALinear.__init__, LoRALinear.forward), examples=examples,
    hidden=hidden, tags=("random", "no-bias", "rank1"),
    hints=("Two paths summed: the base x @ W.T (+ b) and the adapter x @ A.T @ B.T.",
           "The adapter is scaled by alpha / r, r = lora_A.shape[0]; not by alpha alone.",
           "Never form B @ A (out x in) when you can go through the rank-r bottleneck; keep the leading dims "
           "of x as they are (matmul broadcasts over them)."),
    tag_hints={"random": "scale the low-rank update by alpha / r, r = lora_A.shape[0].",
               "no-bias": "bias may be None: add it only when given.",
               "rank1": "r = 1 is allowed: alpha / r = alpha there, so check the scale elsewhere."},
    banned=("LoRALinear", "functional_call"),
    grad=("x", "lora_A", "lora_B"),
)
