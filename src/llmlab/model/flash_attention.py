"""FlashAttention-2, forward and backward, in plain PyTorch (Dao et al. 2022; Dao 2023).

Same inputs and semantics as `attention.naive_attention`: q (B, H, Tq, D); k, v (B, Hkv, Tk, D), H % Hkv == 0;
query i sits at position i + (Tk - Tq); rows with no visible key return 0. The (Tq, Tk) score matrix is never
built: the forward walks (block_q x block_k) tiles with an online softmax and keeps only O and the row
logsumexp L; the backward recomputes each tile's probabilities from L. Tiles that causal/window structure
masks completely are skipped. Python loops over tiles only; batch and heads are vectorised.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def tile_visible(q_start: int, q_end: int, k_start: int, k_end: int, *, offset: int, causal: bool,
                 window: int | None) -> bool:
    """Whether any query in [q_start, q_end) may see any key in [k_start, k_end) (before padding)."""
    first_pos, last_pos = q_start + offset, q_end - 1 + offset  # absolute positions of the block's queries
    if causal and k_start > last_pos:  # every key lies in the future
        return False
    if window is not None:
        if k_end - 1 <= first_pos - window:  # every key is further back than the window
            return False
        if not causal and k_start >= last_pos + window:  # every key is further ahead than the window
            return False
    return True


def visible_tiles(q_len: int, k_len: int, *, block_q: int, block_k: int, causal: bool = False,
                  window: int | None = None) -> list[tuple[int, int]]:
    """(q_start, k_start) of every tile the kernel computes, in forward order."""
    offset = k_len - q_len
    return [(q0, k0) for q0 in range(0, q_len, block_q) for k0 in range(0, k_len, block_k)
            if tile_visible(q0, min(q0 + block_q, q_len), k0, min(k0 + block_k, k_len), offset=offset,
                            causal=causal, window=window)]


def _tile_scores(q_i: Tensor, k_j: Tensor, q_pos: Tensor, k_pos: Tensor, pad_j: Tensor | None,
                 slopes: Tensor | None, *, causal: bool, window: int | None, softcap: float | None,
                 scale: float) -> tuple[Tensor, Tensor | None]:
    """Scores of one tile, (B, Hkv, G, bq, bk), -inf where masked; plus d(softcap)/d(raw score) if capped.

    q_i (B, Hkv, G, bq, D), k_j (B, Hkv, bk, D), q_pos (bq,), k_pos (bk,), pad_j (B, bk) bool,
    slopes (Hkv, G). Order as in naive_attention: scale, soft-cap, ALiBi, mask.
    """
    s = torch.einsum("bhgqd,bhkd->bhgqk", q_i, k_j) * scale  # S = Q K^T / sqrt(d)
    cap_grad = None
    if softcap is not None:
        t = torch.tanh(s / softcap)
        s = softcap * t  # c * tanh(S / c)  (Gemma 2 logit soft-capping)
        cap_grad = 1.0 - t * t  # d/dS c * tanh(S / c) = 1 - tanh^2(S / c)
    dist = q_pos[:, None] - k_pos[None, :]  # (bq, bk), query position minus key position
    if slopes is not None:
        signed = dist if causal else dist.abs()
        s = s - slopes[None, :, :, None, None] * signed.to(s.dtype)  # ALiBi: -slope * distance (Press 2022)
    visible = torch.ones_like(dist, dtype=torch.bool)  # (bq, bk)
    if causal:
        visible &= dist >= 0
    if window is not None:
        visible &= (dist if causal else dist.abs()) < window
    visible = visible[None, None, None]  # (1, 1, 1, bq, bk)
    if pad_j is not None:
        visible = visible & pad_j[:, None, None, None, :]  # (B, 1, 1, bq, bk)
    return s.masked_fill(~visible, float("-inf")), cap_grad


class _FlashAttention(torch.autograd.Function):
    """Tiled forward saving (O, L); tiled backward recomputing P = exp(S - L) (FA2, Algorithms 1 and 2)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, alibi: Tensor | None,
                causal: bool, window: int | None, softcap: float | None, scale: float, block_q: int,
                block_k: int) -> Tensor:
        h, tq = q.shape[1], q.shape[2]
        hkv, tk = k.shape[1], k.shape[2]
        acc = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        qg = q.unflatten(1, (hkv, h // hkv))  # (B, Hkv, G, Tq, D): query head h uses K/V head h // G
        slopes = None if alibi is None else alibi.to(q.device, acc).view(hkv, h // hkv)  # (Hkv, G)
        pad = None if key_padding_mask is None else key_padding_mask.to(q.device, torch.bool)  # (B, Tk)
        q_pos_all = torch.arange(tk - tq, tk, device=q.device)  # (Tq,)
        k_pos_all = torch.arange(tk, device=q.device)  # (Tk,)
        out = torch.empty(qg.shape, dtype=q.dtype, device=q.device)  # (B, Hkv, G, Tq, D)
        lse = torch.empty(qg.shape[:-1], dtype=acc, device=q.device)  # (B, Hkv, G, Tq)

        for q0 in range(0, tq, block_q):
            q1 = min(q0 + block_q, tq)
            q_i = qg[..., q0:q1, :].to(acc)  # (B, Hkv, G, bq, D)
            m = torch.full(q_i.shape[:-1], float("-inf"), dtype=acc, device=q.device)  # running row max
            l = torch.zeros_like(m)  # running row sum of exp(S - m)
            o = torch.zeros_like(q_i)  # running unnormalised output
            for k0 in range(0, tk, block_k):
                k1 = min(k0 + block_k, tk)
                if not tile_visible(q0, q1, k0, k1, offset=tk - tq, causal=causal, window=window):
                    continue  # fully masked tile: skipped, never loaded
                s, _ = _tile_scores(q_i, k[..., k0:k1, :].to(acc), q_pos_all[q0:q1], k_pos_all[k0:k1],
                                    None if pad is None else pad[:, k0:k1], slopes, causal=causal,
                                    window=window, softcap=softcap, scale=scale)
                # online softmax: m' = max(m, rowmax S), l' = e^(m - m') l + rowsum e^(S - m')  (FA2 Alg. 1)
                m_new = torch.maximum(m, s.amax(-1))
                m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)  # no key seen yet: avoid -inf - -inf
                p = torch.exp(s - m_safe[..., None])  # (B, Hkv, G, bq, bk), 0 where masked
                alpha = torch.exp(m - m_safe)  # rescales what was accumulated under the old max
                l = alpha * l + p.sum(-1)
                # O' = e^(m - m') O + P V  (normalised once at the end: FA2's deferred rescaling)
                o = alpha[..., None] * o + torch.einsum("bhgqk,bhkd->bhgqd", p, v[..., k0:k1, :].to(acc))
                m = m_new
            seen = l > 0  # rows with at least one visible key
            out[..., q0:q1, :] = (o / torch.where(seen, l, 1.0)[..., None]).to(q.dtype)  # O = O' / l
            # L = m + log l; +inf for empty rows so that exp(S - L) = 0 in the backward
            lse[..., q0:q1] = torch.where(seen, m + torch.log(torch.where(seen, l, 1.0)), float("inf"))

        out = out.flatten(1, 2)  # (B, H, Tq, D)
        ctx.save_for_backward(q, k, v, out, lse, pad, slopes)
        ctx.config = (causal, window, softcap, scale, block_q, block_k)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, out, lse, pad, slopes = ctx.saved_tensors
        causal, window, softcap, scale, block_q, block_k = ctx.config
        h, tq = q.shape[1], q.shape[2]
        hkv, tk = k.shape[1], k.shape[2]
        acc = lse.dtype
        qg = q.unflatten(1, (hkv, h // hkv))  # (B, Hkv, G, Tq, D)
        do = grad_out.unflatten(1, (hkv, h // hkv))  # (B, Hkv, G, Tq, D)
        q_pos_all = torch.arange(tk - tq, tk, device=q.device)
        k_pos_all = torch.arange(tk, device=q.device)
        out = out.unflatten(1, (hkv, h // hkv))  # (B, Hkv, G, Tq, D)
        delta = (do.to(acc) * out.to(acc)).sum(-1)  # D_i = rowsum(dO_i * O_i)  (FA2 Alg. 2), (B, Hkv, G, Tq)
        dq = torch.zeros(qg.shape, dtype=acc, device=q.device)  # (B, Hkv, G, Tq, D)
        dk = torch.zeros(k.shape, dtype=acc, device=q.device)  # (B, Hkv, Tk, D)
        dv = torch.zeros(v.shape, dtype=acc, device=q.device)

        for k0 in range(0, tk, block_k):  # FA2 backward: outer loop over K/V blocks, inner over Q blocks
            k1 = min(k0 + block_k, tk)
            k_j, v_j = k[..., k0:k1, :].to(acc), v[..., k0:k1, :].to(acc)  # (B, Hkv, bk, D)
            for q0 in range(0, tq, block_q):
                q1 = min(q0 + block_q, tq)
                if not tile_visible(q0, q1, k0, k1, offset=tk - tq, causal=causal, window=window):
                    continue
                q_i, do_i = qg[..., q0:q1, :].to(acc), do[..., q0:q1, :].to(acc)  # (B, Hkv, G, bq, D)
                s, cap_grad = _tile_scores(q_i, k_j, q_pos_all[q0:q1], k_pos_all[k0:k1],
                                           None if pad is None else pad[:, k0:k1], slopes, causal=causal,
                                           window=window, softcap=softcap, scale=scale)
                p = torch.exp(s - lse[..., q0:q1, None])  # P = exp(S - L), recomputed; (B, Hkv, G, bq, bk)
                dv[..., k0:k1, :] += torch.einsum("bhgqk,bhgqd->bhkd", p, do_i)  # dV_j += P^T dO_i
                dp = torch.einsum("bhgqd,bhkd->bhgqk", do_i, v_j)  # dP = dO_i V_j^T
                ds = p * (dp - delta[..., q0:q1, None])  # dS = P * (dP - D_i)  (softmax backward)
                if cap_grad is not None:
                    ds = ds * cap_grad  # chain rule through c * tanh(S / c)
                ds = ds * scale  # S = Q K^T * scale, so the scale comes back on dQ and dK
                dq[..., q0:q1, :] += torch.einsum("bhgqk,bhkd->bhgqd", ds, k_j)  # dQ_i += dS K_j
                dk[..., k0:k1, :] += torch.einsum("bhgqk,bhgqd->bhkd", ds, q_i)  # dK_j += dS^T Q_i

        dq = dq.flatten(1, 2).to(q.dtype)  # (B, H, Tq, D)
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None, None, None


def flash_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, window: int | None = None,
                    key_padding_mask: Tensor | None = None, alibi: Tensor | None = None,
                    softcap: float | None = None, scale: float | None = None, dropout_p: float = 0.0,
                    training: bool = False, block_q: int = 64, block_k: int = 64) -> Tensor:
    """softmax(Q K^T / sqrt(d) + bias, masked) V by FlashAttention-2 tiling; matches `naive_attention`.

    alibi: head slopes (H,), a constant bias (no gradient). Returns (B, H, Tq, D) in q's dtype.
    """
    if dropout_p > 0.0 and training:
        raise ValueError("flash backend has no attention dropout")
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4 or q.shape[0] != k.shape[0] \
            or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"expected q (B, H, Tq, D) and k, v (B, Hkv, Tk, D); got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"n_kv_heads={k.shape[1]} must divide n_heads={q.shape[1]}")
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _FlashAttention.apply(q, k, v, key_padding_mask, alibi, causal, window, softcap, scale,
                                 block_q, block_k)
