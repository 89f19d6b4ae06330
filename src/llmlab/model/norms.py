"""LayerNorm and RMSNorm, from scratch (tested equal to torch.nn.LayerNorm / torch.nn.RMSNorm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * w + b, biased variance over the last dim (Ba et al. 2016)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        dt = torch.promote_types(x.dtype, torch.float32)  # at least fp32: bf16/fp16 up, fp64 stays fp64
        h = x.to(dt)
        mean = h.mean(-1, keepdim=True)
        var = (h - mean).pow(2).mean(-1, keepdim=True)
        h = (h - mean) * torch.rsqrt(var + self.eps)
        return (h * self.weight.to(dt) + self.bias.to(dt)).to(x.dtype)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w: no centring, no bias (Zhang & Sennrich 2019). Statistics in >= fp32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:  # the same formula as below in torch's kernel: one op instead of five
            return self.weight * F.rms_norm(x, (x.shape[-1],), eps=self.eps)
        h = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16/fp16 up to fp32, fp64 stays fp64
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)  # cast back before the weight, as HF Llama does


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    return LayerNorm(dim, eps) if kind == "layernorm" else RMSNorm(dim, eps)
