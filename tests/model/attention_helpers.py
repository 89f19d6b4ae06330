"""Shared by the attention tests: random q, k, v and outputs with gradients under a fixed upstream gradient."""

from __future__ import annotations

import torch

FP64 = {"atol": 1e-10, "rtol": 1e-10}


def make_qkv(b=2, h=4, hkv=4, tq=19, tk=19, d=8, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, hkv, tk, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, hkv, tk, d, generator=gen, dtype=torch.float64)
    return [x.to(dtype).requires_grad_() for x in (q, k, v)]


def out_and_grads(fn, q, k, v, **kwargs):
    """(out, dq, dk, dv) for a fixed random upstream gradient, so every output element is weighted differently."""
    out = fn(q, k, v, **kwargs)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out.to(out.dtype)))
