"""Scaled dot-product attention: the readable version, torch's SDPA, and the module that uses them.

Shapes: q (B, H, Tq, D); k, v (B, Hkv, Tk, D) with H % Hkv == 0 (GQA/MQA share each K/V head across
H / Hkv query heads). Query i sits at absolute position i + (Tk - Tq), so a KV-cached decode step with one
query lines up with the last key. A query row that can see no key at all returns zeros (as torch SDPA does).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmlab.errors import LlmlabError
from llmlab.model.config import TransformerConfig
from llmlab.model.positions import apply_rope


def build_attention_mask(
    q_len: int,
    k_len: int,
    *,
    causal: bool,
    window: int | None = None,
    key_padding_mask: Tensor | None = None,
    segment_ids: Tensor | None = None,
    device: torch.device | str | None = None,
) -> Tensor | None:
    """Boolean mask, True = may attend: (B or 1, 1, Tq, Tk), or None when every key is visible.

    causal: key j <= query position; window w: query position - j < w (|difference| < w when not causal);
    key_padding_mask (B, Tk): True for real tokens, False for padding; segment_ids (B, Tk): documents packed in
    one row, a query sees keys of its own segment only (block-diagonal attention).
    """
    if key_padding_mask is None and segment_ids is None and (window is None or k_len <= window) \
            and (q_len == 1 or not causal):
        # every key visible: no padding, a window wider than the keys, and causality hides nothing from a
        # single query (the last one) or applies not at all -- a cached decode step builds no mask
        return None
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]  # (Tq, 1)
    k_pos = torch.arange(k_len, device=device)[None, :]  # (1, Tk)
    mask = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        mask &= k_pos <= q_pos
    if window is not None:
        dist = q_pos - k_pos if causal else (q_pos - k_pos).abs()
        mask &= dist < window
    mask = mask[None, None]  # (1, 1, Tq, Tk)
    if key_padding_mask is not None:
        mask = mask & key_padding_mask.to(device=mask.device, dtype=torch.bool)[:, None, None, :]
    if segment_ids is not None:
        seg = segment_ids.to(mask.device)
        mask = mask & (seg[:, None, -q_len:, None] == seg[:, None, None, :])
    return mask


def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi head slopes: a geometric sequence starting at 2^(-8/n) (Press et al. 2022).

    For a head count that is not a power of two, the closest power 2^k gets its slopes and the rest are
    taken from every other slope of 2^(k+1), as in the paper's reference code and HF Bloom.
    """
    closest = 2 ** math.floor(math.log2(n_heads))
    base = 2.0 ** (-8.0 / closest)
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest < n_heads:
        extra_base = 2.0 ** (-4.0 / closest)  # the base for 2 * closest heads; its odd powers fill the gap
        slopes += [extra_base ** (2 * i + 1) for i in range(n_heads - closest)]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: Tensor, q_len: int, k_len: int, *, causal: bool) -> Tensor:
    """Additive ALiBi bias -slope_h * distance, shape (1, H, Tq, Tk)."""
    q_pos = torch.arange(k_len - q_len, k_len, device=slopes.device)[:, None]
    k_pos = torch.arange(k_len, device=slopes.device)[None, :]
    dist = (q_pos - k_pos) if causal else (q_pos - k_pos).abs()
    return -(slopes[:, None, None] * dist.to(slopes.dtype))[None]


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, Hkv, T, D) -> (B, Hkv * n_rep, T, D), each K/V head repeated for its group of query heads."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def naive_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    key_padding_mask: Tensor | None = None,
    segment_ids: Tensor | None = None,
    alibi: Tensor | None = None,
    bias: Tensor | None = None,
    softcap: float | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
) -> Tensor:
    """softmax(Q K^T / sqrt(d) + bias, masked) V, written out (Vaswani et al. 2017).

    alibi: head slopes (H,); bias: an additive score bias (B or 1, H, Tq, Tk), e.g. T5's relative position bias.
    """
    tq, tk = q.shape[-2], k.shape[-2]
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)  # Gemma 2 logit soft-capping
    if alibi is not None:
        scores = scores + alibi_bias(alibi.to(scores.dtype), tq, tk, causal=causal)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    mask = build_attention_mask(tq, tk, causal=causal, window=window, key_padding_mask=key_padding_mask,
                                segment_ids=segment_ids, device=q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if mask is not None:
        probs = probs.masked_fill(~mask, 0.0)  # rows with no visible key: NaN -> 0
    if dropout_p > 0.0 and training:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v


def sdpa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    key_padding_mask: Tensor | None = None,
    segment_ids: Tensor | None = None,
    alibi: Tensor | None = None,
    bias: Tensor | None = None,
    softcap: float | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
) -> Tensor:
    """The same computation through `F.scaled_dot_product_attention` (fused kernels where available); ALiBi and
    `bias` reach it as its additive float mask."""
    if softcap is not None:
        raise ValueError("torch SDPA cannot soft-cap logits; use the naive or flash backend")
    tq, tk = q.shape[-2], k.shape[-2]
    dropout_p = dropout_p if training else 0.0
    enable_gqa = q.shape[1] != k.shape[1]
    mask = build_attention_mask(tq, tk, causal=causal, window=window, key_padding_mask=key_padding_mask,
                                segment_ids=segment_ids, device=q.device)
    if alibi is None and bias is None and mask is not None and causal and window is None \
            and key_padding_mask is None and segment_ids is None and tq == tk:
        # plain causal: let SDPA pick its causal kernel instead of reading a mask
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, dropout_p=dropout_p,
                                              enable_gqa=enable_gqa)
    attn_mask: Tensor | None = mask
    if alibi is not None:
        slopes_bias = alibi_bias(alibi.to(q.dtype), tq, tk, causal=causal)
        bias = slopes_bias if bias is None else bias + slopes_bias
    additive = bias is not None
    if additive:
        bias = bias.to(q.dtype)
        # a finite fill keeps empty rows NaN-free (forward and backward); they are zeroed below
        attn_mask = bias if mask is None else bias.masked_fill(~mask, torch.finfo(q.dtype).min)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, dropout_p=dropout_p,
                                         enable_gqa=enable_gqa)
    if additive and mask is not None:
        out = out.masked_fill(~mask.any(-1, keepdim=True), 0.0)  # rows with no visible key -> 0
    return out


def attend(backend: str, q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    """Dispatch to one of the three backends, all with the same signature and semantics."""
    if backend == "naive":
        return naive_attention(q, k, v, **kwargs)
    if backend == "sdpa":
        return sdpa_attention(q, k, v, **kwargs)
    if backend == "flash":
        from llmlab.model.flash_attention import flash_attention

        return flash_attention(q, k, v, **kwargs)
    raise ValueError(f"unknown attention backend {backend!r}")


class Attention(nn.Module):
    """Multi-head / grouped-query / multi-query attention with separate Q, K, V and output projections.

    Self-attention by default; cross-attention (a decoder reading an encoder) when forward gets `kv`, the keys and
    values `self.kv(encoder_output)` projected. causal: None -> cfg.causal (an encoder-decoder sets it per stack).
    """

    def __init__(self, cfg: TransformerConfig, causal: bool | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.causal = cfg.causal if causal is None else causal
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=cfg.out_bias)

    def kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, d_model) -> keys, values (B, Hkv, T, D), before any RoPE."""
        b, t, _ = x.shape
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, T, Hkv*D) -> (B, Hkv, T, D)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(
        self,
        x: Tensor,
        *,
        kv: tuple[Tensor, Tensor] | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        key_padding_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
        alibi: Tensor | None = None,
        bias: Tensor | None = None,
        cache=None,
        layer: int = 0,
    ) -> Tensor:
        """x (B, T, d_model) -> (B, T, d_model). With a cache (see `Transformer.forward`), this layer's new K/V
        are stored in it and the T queries attend over every key it returns; it also supplies the key padding.

        kv: cross-attention's keys and values (B, Hkv, Tk, D) from `self.kv(other_sequence)`, computed once and
        reused by every decode step; key_padding_mask is then the other sequence's (B, Tk). bias: an additive score
        bias (B or 1, H, T, Tk) such as T5's relative position bias."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, T, H*D) -> (B, H, T, D)
        if kv is None:
            k, v = self.kv(x)
            if rope is not None:
                cos, sin = rope
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if cache is not None:
                # K/V of past tokens come from the cache: k, v (B, Hkv, Tk, D), Tk >= T; the T queries sit last
                k, v, key_padding_mask = cache.update(layer, k, v)
        else:
            k, v = kv
        cfg = self.cfg
        kwargs = dict(causal=self.causal, window=cfg.sliding_window, key_padding_mask=key_padding_mask,
                      alibi=alibi, softcap=cfg.attn_softcap, scale=cfg.attn_scale, dropout_p=cfg.attn_dropout,
                      training=self.training)
        if bias is not None:
            if cfg.attn_backend == "flash":
                raise LlmlabError("an additive attention bias needs attn_backend 'naive' or 'sdpa'; our flash kernel "
                                  "adds ALiBi slopes only")
            kwargs["bias"] = bias
        if segment_ids is not None:
            if cfg.attn_backend == "flash":
                raise LlmlabError("segment_ids (packed rows) need attn_backend 'naive' or 'sdpa'; our flash kernel "
                                  "has no segment mask")
            kwargs["segment_ids"] = segment_ids
        if cfg.attn_backend == "flash":
            kwargs.update(block_q=cfg.flash_block_q, block_k=cfg.flash_block_k)
        out = attend(cfg.attn_backend, q, k, v, **kwargs)  # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))
