"""Cross-entropy from scratch: stable log-softmax, ignore_index, label smoothing and PaLM's z-loss.

Matches torch.nn.functional.cross_entropy(logits, targets, ignore_index=..., label_smoothing=...,
reduction=...) except that the class dim is always last: logits (..., V), targets (...) (torch wants
(B, V, T) for sequences). bf16/fp16 logits are computed and returned in float32; fp32/fp64 keep their dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from llmlab.errors import LlmlabError

_REDUCTIONS = ("mean", "sum", "none")
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def log_softmax(logits: Tensor, dim: int = -1) -> Tensor:
    """log p = x - max - log(sum(exp(x - max))) along dim; same shape and dtype as logits."""
    # subtracting the max makes every exp <= 1, so no overflow; it cancels exactly in the result
    m = logits.amax(dim=dim, keepdim=True).detach()
    shifted = logits - m
    return shifted - shifted.exp().sum(dim=dim, keepdim=True).log()


def cross_entropy(
    logits: Tensor,
    targets: Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Mean (or sum, or per-position) -log p[target] over positions whose target != ignore_index.

    logits (..., V), targets (...) integer class ids. reduction="none" returns the leading shape with 0 at
    ignored positions; "mean" over zero valid targets is NaN, as in torch.
    """
    _check_inputs(logits, targets, label_smoothing, z_loss, reduction)
    v = logits.shape[-1]
    x = logits.reshape(-1, v)  # (N, V)
    if x.dtype in (torch.bfloat16, torch.float16):
        x = x.float()
    t = targets.reshape(-1).long()  # (N,)
    valid = t != ignore_index  # (N,)
    bad = valid & ((t < 0) | (t >= v))
    if bad.any():
        raise LlmlabError(
            f"target {t[bad][0].item()} is out of range for {v} classes (ignore_index={ignore_index})"
        )
    t = t.masked_fill(~valid, 0)  # any in-range id; these rows are zeroed below

    logp = log_softmax(x, dim=-1)  # (N, V)
    # nll = -log p[target]
    loss = -logp.gather(1, t[:, None]).squeeze(1)  # (N,)
    if label_smoothing > 0:
        # smoothed CE = (1 - eps) * nll + eps * mean_c(-log p_c)  (Szegedy et al. 2016; torch's definition)
        loss = (1 - label_smoothing) * loss + label_smoothing * -logp.mean(dim=-1)
    if z_loss > 0:
        # z-loss = coef * log(Z)^2, Z = sum_c exp(x_c); keeps log Z near 0  (Chowdhery et al. 2022, sec 5)
        loss = loss + z_loss * torch.logsumexp(x, dim=-1).square()
    loss = loss.masked_fill(~valid, 0.0)  # (N,)

    if reduction == "none":
        return loss.reshape(targets.shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum()  # 0 / 0 = NaN when every target is ignored, as torch


def _check_inputs(
    logits: Tensor, targets: Tensor, label_smoothing: float, z_loss: float, reduction: str
) -> None:
    if logits.ndim < 1 or logits.shape[:-1] != targets.shape:
        raise LlmlabError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must share leading dims"
        )
    if not logits.is_floating_point():
        raise LlmlabError(f"logits must be floating point, got {logits.dtype}")
    if targets.dtype not in _INT_DTYPES:
        raise LlmlabError(
            f"targets must be integer class ids, got {targets.dtype} (soft labels are not supported)"
        )
    if reduction not in _REDUCTIONS:
        raise LlmlabError(f"reduction={reduction!r} must be one of {', '.join(_REDUCTIONS)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise LlmlabError(f"label_smoothing={label_smoothing} must lie in [0, 1]")
    if z_loss < 0:
        raise LlmlabError(f"z_loss={z_loss} must be >= 0")


def torch_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """The same loss through torch's fused kernel (F.cross_entropy): the fast default in training.

    `cross_entropy` above is the readable one; tests/model/test_loss.py proves the two equal.
    """
    _check_inputs(logits, targets, label_smoothing, z_loss, reduction)
    flat, tgt = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long()
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()  # as cross_entropy: low-precision logits are scored in float32
    loss = F.cross_entropy(flat, tgt, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="none")
    valid = tgt != ignore_index
    if z_loss:
        loss = loss + z_loss * torch.logsumexp(flat, dim=-1).pow(2).masked_fill(~valid, 0.0)
    if reduction == "none":
        return loss.view(targets.shape)
    return loss.sum() if reduction == "sum" else loss.sum() / valid.sum()


def next_token_loss(logits: Tensor, input_ids: Tensor, ignore_index: int = -100, impl: str = "torch") -> Tensor:
    """Causal LM objective: logits at position t are scored against the token at t + 1 (teacher forcing).

    impl="torch" uses the fused kernel, impl="ours" the from-scratch cross_entropy; equal to fp32 tolerance.
    """
    loss_fn = torch_cross_entropy if impl == "torch" else cross_entropy
    return loss_fn(logits[:, :-1], input_ids[:, 1:], ignore_index=ignore_index)
