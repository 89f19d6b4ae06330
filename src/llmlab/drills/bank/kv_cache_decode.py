"""One decode step with a KV cache: store the new token's K/V, attend over everything cached."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.infer.kv_cache import KVCache
from llmlab.model.attention import naive_attention

STARTER = '''"""Drill: kv_cache_decode. Check with `llmlab drill check kv_cache_decode`."""
import math

import torch
from torch import Tensor


def decode_step(q: Tensor, k_new: Tensor, v_new: Tensor, k_cache: Tensor, v_cache: Tensor,
                length: int) -> tuple[Tensor, Tensor, Tensor]:
    """One KV-cached decode step (Pope et al. 2022) for a single new token.

    q, k_new, v_new: (B, H, 1, D) and (B, Hkv, 1, D) -- the new token's query, key, value (RoPE applied).
    k_cache, v_cache: (B, Hkv, T_max, D); positions 0 .. length-1 hold the past tokens, the rest is garbage.
    Write k_new, v_new at position `length`, then attend q over positions 0 .. length (softmax(q K^T / sqrt(D)) V;
    H % Hkv == 0, grouped-query). Returns (out (B, H, 1, D), k_cache, v_cache) with the caches updated.
    """
    raise NotImplementedError
'''


def decode_step(q: Tensor, k_new: Tensor, v_new: Tensor, k_cache: Tensor, v_cache: Tensor,
                length: int) -> tuple[Tensor, Tensor, Tensor]:
    b, hkv, t_max, d = k_cache.shape
    cfg = SimpleNamespace(n_layers=1, n_kv_heads=hkv, head_dim=d, max_seq_len=t_max, sliding_window=None)
    cache = KVCache(cfg, b, t_max, dtype=k_cache.dtype)
    cache.k[0], cache.v[0] = k_cache, v_cache
    cache.length = length
    cache.reserve(b, 1)
    keys, values, pad = cache.update(0, k_new, v_new)  # (B, Hkv, length + 1, D)
    out = naive_attention(q, keys, values, causal=True, key_padding_mask=pad)
    return out, cache.k[0], cache.v[0]


def _case(g: torch.Generator, b: int, h: int, hkv: int, t_max: int, length: int, d: int, tags, dtype=torch.float32,
          visible=False) -> Case:
    return Case(dict(q=randn(g, b, h, 1, d, dtype=dtype), k_new=randn(g, b, hkv, 1, d, dtype=dtype),
                     v_new=randn(g, b, hkv, 1, d, dtype=dtype),
                     k_cache=randn(g, b, hkv, t_max, d, dtype=dtype, scale=5.0),  # garbage past `length` too
                     v_cache=randn(g, b, hkv, t_max, d, dtype=dtype, scale=5.0), length=length), tags, visible)


def examples() -> list[Case]:
    return [_case(torch.Generator().manual_seed(3), 1, 1, 1, 4, 2, 4, ("basic",), visible=True)]


def hidden(g: torch.Generator) -> list[Case]:
    t_max = randint(g, 4, 12)
    return [_case(g, 2, 2, 2, t_max, randint(g, 1, t_max), 8, ("random",)),
            _case(g, 1, 2, 2, 6, 0, 8, ("empty-cache", "len1")),
            _case(g, 1, 2, 2, 6, 5, 8, ("full",)),
            _case(g, 2, 4, 1, 8, 3, 8, ("gqa",)),
            _case(g, 1, 2, 2, 6, 3, 8, ("fp64",), dtype=torch.float64)]


DRILL = Drill(
    name="kv_cache_decode", area="inference", difficulty=2, minutes=15, func="decode_step",
    statement="Write one KV-cached decode step: append the new K/V to the cache, attend over the valid prefix.",
    starter=STARTER, reference=decode_step, sources=(KVCache.update, naive_attention), examples=examples,
    hidden=hidden, tags=("empty-cache", "full", "gqa"),
    hints=("k_cache[:, :, length] = k_new[:, :, 0] (same for v); clone first if you do not want to write in place.",
           "Attend over k_cache[:, :, :length + 1]: the new token sees itself and the past, never the garbage after.",
           "No causal mask is needed for a single query at the last position; GQA: repeat_interleave K/V heads."),
    tag_hints={"empty-cache": "with length 0 the new token attends to itself only: slice :length + 1.",
               "full": "the new token goes at index `length`, and the slice must include it.",
               "random": "positions past length + 1 hold garbage: slice the cache before attending.",
               "gqa": "k/v have Hkv heads: repeat each H // Hkv times before q @ k^T."},
    banned=("scaled_dot_product_attention", "naive_attention", "KVCache"),
)
