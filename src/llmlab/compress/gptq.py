"""GPTQ (Frantar et al. 2022): quantize a weight one input column at a time, each column's rounding error pushed
onto the columns not yet quantized so that the layer's output on calibration inputs X changes as little as possible.

Objective per row w of W: min ||w X^T - w~ X^T||^2, with Hessian H = 2 X^T X / n (d_in, d_in). Optimal Brain
Quantization: after quantizing column i, the remaining columns F move by
    dw_F = -(w_i - q_i) / [H_F^-1]_ii * [H_F^-1]_{i,F},
and H_F^-1 drops row and column i. GPTQ's observations (sec. 4): the order need not be greedy, so every row uses the
same order and one H^-1 serves all rows; the successive H_F^-1 rows are the rows of the upper Cholesky factor U of
H^-1 (H^-1 = U^T U) divided by their diagonal, so
    err_i = (w_i - q_i) / U_ii,   w_F -= err_i U_{i,F};
and the updates are applied lazily: within a block of B columns at once, to the columns after it as one matmul.
Damping: H += 0.01 * mean(diag H) I. Act-order: columns in order of decreasing diag H (largest inputs first).
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.compress.groupwise import GroupQuantized, Scheme, dequantize, qparams, quantize


def block_size_for(block_size: int, group: int, d_in: int) -> int:
    """A group's scale is taken from the weights as updated so far when its first column comes up; so no group may
    reach past the current block unless it starts there: the block a multiple of the group, or the group of it."""
    if group >= d_in or group % block_size == 0 or block_size % group == 0:
        return block_size
    return group * (block_size // group) if group < block_size else group


@torch.no_grad()
def gptq(w: Tensor, h: Tensor, scheme: Scheme, *, block_size: int = 128, damp: float = 0.01,
         act_order: bool = False) -> GroupQuantized:
    """Quantize w (out, in) with Hessian h (in, in) (e.g. CalibrationStats.hessian()); fp64 in, fp64 throughout,
    else fp32. With act_order, groups follow the processing order and g_idx maps each column to its group."""
    dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    w, h = w.detach().to(dtype).clone(), h.to(dtype).clone()
    d_out, d_in = w.shape
    dead = h.diagonal() == 0  # inputs that were always 0: their weights do nothing, so set them to 0
    h.diagonal()[dead] = 1
    w[:, dead] = 0
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(d_in, device=w.device)
    w, h = w[:, perm], h[perm][:, perm]
    h.diagonal().add_(damp * h.diagonal().mean())
    # U: upper Cholesky factor of H^-1; row i / U_ii is the OBS update of columns > i once columns < i are fixed
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    g = scheme.group(d_in)
    block = block_size_for(block_size, g, d_in)
    codes = torch.zeros(d_out, d_in, dtype=torch.uint8, device=w.device)
    scales, zeros = [], []
    for b0 in range(0, d_in, block):
        b1 = min(b0 + block, d_in)
        err = torch.zeros(d_out, b1 - b0, dtype=dtype, device=w.device)  # (out, B) scaled errors of the block
        for i in range(b0, b1):
            if i % g == 0:  # a new group: its grid from the weights as updated so far
                scale, zero = qparams(w[:, i:i + g], scheme)  # (out, 1) each
                scales.append(scale)
                zeros.append(zero)
            q = quantize(w[:, i:i + 1], scale, zero, scheme.qmax)  # (out, 1)
            codes[:, i] = q[:, 0]
            e = (w[:, i] - dequantize(q, scale, zero)[:, 0]) / u[i, i]  # (out,)
            w[:, i:b1] -= e[:, None] * u[i, i:b1]  # within the block, at once
            err[:, i - b0] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]  # the block's updates to all later columns, one matmul

    scale = torch.cat(scales, dim=1)  # (out, n_groups)
    zero = torch.cat(zeros, dim=1).to(torch.uint8)
    if not act_order:
        return GroupQuantized(codes, scale, zero, scheme)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(d_in, device=w.device)  # position of each original column in the processing order
    return GroupQuantized(codes[:, inv], scale, zero, scheme, g_idx=inv // g)
