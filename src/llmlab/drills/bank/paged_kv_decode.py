"""One decode step over a paged KV cache (PagedAttention, Kwon et al. 2023): block tables, a shared block pool."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.infer.paged_cache import PagedBatch, PagedKVCache
from llmlab.model.attention import naive_attention

STARTER = '''"""Drill: paged_kv_decode. Check with `llmlab drill check paged_kv_decode`."""
import math

import torch
from torch import Tensor


def paged_decode_step(q: Tensor, k_new: Tensor, v_new: Tensor, k_pool: Tensor, v_pool: Tensor,
                      block_tables: list[list[int]], lengths: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """One decode step with a paged KV cache (PagedAttention, Kwon et al. 2023, vLLM) for B sequences.

    k_pool, v_pool: (n_blocks, block_size, Hkv, D), one pool of blocks shared by all sequences. Token i of
    sequence b lives in block block_tables[b][i // block_size] at offset i % block_size. Sequence b holds
    lengths[b] tokens (0 .. lengths[b] - 1); every other slot of the pool is garbage or another sequence's.
    q, k_new, v_new: (B, H, 1, D) and (B, Hkv, 1, D), the new token of each sequence (RoPE applied).
    Write k_new[b], v_new[b] at position lengths[b] of sequence b (its block table already has room), then
    attend q[b] over its positions 0 .. lengths[b]: softmax(q K^T / sqrt(D)) V, H % Hkv == 0 (grouped-query).
    Returns (out (B, H, 1, D) in q's dtype, k_pool, v_pool) with the new tokens written into the pools.
    """
    raise NotImplementedError
'''


def paged_decode_step(q: Tensor, k_new: Tensor, v_new: Tensor, k_pool: Tensor, v_pool: Tensor,
                      block_tables: list[list[int]], lengths: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    n_blocks, block_size, hkv, d = k_pool.shape
    cfg = SimpleNamespace(n_layers=1, n_kv_heads=hkv, head_dim=d)
    cache = PagedKVCache(cfg, n_blocks, block_size, dtype=k_pool.dtype)
    cache.k[0], cache.v[0] = k_pool, v_pool
    for b, (table, length) in enumerate(zip(block_tables, lengths, strict=True)):
        cache.block_tables[b], cache.lengths[b] = list(table), length
    batch = cache.batch(list(range(len(lengths))))
    batch.reserve(len(lengths), 1)  # the tables already cover lengths + 1: no block is allocated
    keys, values, pad = batch.update(0, k_new, v_new)  # (B, Hkv, max length + 1, D), left-padded
    out = naive_attention(q, keys, values, causal=True, key_padding_mask=pad)
    return out, cache.k[0], cache.v[0]


def _case(g: torch.Generator, lengths: list[int], *, h: int = 2, hkv: int = 2, d: int = 8, block_size: int = 4,
          spare: int = 3, dtype: torch.dtype = torch.float32, tags: tuple[str, ...] = (),
          visible: bool = False) -> Case:
    """Each sequence gets the blocks it needs for lengths + 1 tokens, drawn in random order from one pool
    with `spare` blocks nobody holds; the pool starts as random garbage everywhere."""
    need = [-(-(n + 1) // block_size) for n in lengths]
    n_blocks = sum(need) + spare
    perm = torch.randperm(n_blocks, generator=g).tolist()
    tables, i = [], 0
    for n in need:
        tables.append(perm[i:i + n])
        i += n
    b = len(lengths)
    return Case(dict(q=randn(g, b, h, 1, d, dtype=dtype), k_new=randn(g, b, hkv, 1, d, dtype=dtype),
                     v_new=randn(g, b, hkv, 1, d, dtype=dtype),
                     k_pool=randn(g, n_blocks, block_size, hkv, d, dtype=dtype),
                     v_pool=randn(g, n_blocks, block_size, hkv, d, dtype=dtype),
                     block_tables=tables, lengths=lengths), tags, visible)


def examples() -> list[Case]:
    return [_case(torch.Generator().manual_seed(4), [5], h=1, hkv=1, d=4, spare=1, tags=("basic",), visible=True)]


def hidden(g: torch.Generator) -> list[Case]:
    return [_case(g, [randint(g, 1, 12), randint(g, 1, 12), randint(g, 1, 12)], tags=("random", "padding")),
            _case(g, [0, 6], tags=("len1", "padding")),  # an empty sequence attends to its new token only
            _case(g, [4, 8], tags=("block-boundary",)),  # the new token opens a fresh block
            _case(g, [3, 7], tags=("block-end",)),  # the new token fills its block's last slot
            _case(g, [9, 2], h=4, hkv=1, tags=("gqa", "padding")),
            _case(g, [5, 13], block_size=1, tags=("block-size-1",)),
            _case(g, [6, 10], block_size=16, tags=("one-block",)),
            _case(g, [7, 3], dtype=torch.float64, tags=("fp64",)),
            _case(g, [11, 5], dtype=torch.float16, tags=("fp16",)),
            _case(g, [8, 2], h=4, hkv=2, dtype=torch.bfloat16, tags=("bf16", "gqa"))]


DRILL = Drill(
    name="paged_kv_decode", area="inference", difficulty=2, minutes=20, func="paged_decode_step",
    statement="Write one decode step over a paged KV cache: write each sequence's new K/V through its block table, "
              "gather its blocks, attend over its own length.",
    starter=STARTER, reference=paged_decode_step,
    sources=(PagedKVCache.slots, PagedKVCache.write, PagedKVCache.gather, PagedBatch.update, naive_attention),
    examples=examples, hidden=hidden, tags=("block-boundary", "padding", "gqa", "len1", "fp16", "bf16"),
    hints=("Position i of sequence b is flat slot block_tables[b][i // bs] * bs + i % bs in the pool viewed as "
           "(n_blocks * bs, Hkv, D) (k_pool.view(-1, Hkv, D)).",
           "Write the new token at slot(lengths[b]) (clone the pools first), then gather slots 0 .. lengths[b] of "
           "each sequence: (Hkv, L_b, D) after a transpose.",
           "Sequences have different lengths: loop over b and attend one at a time, or left-pad to the longest "
           "with a key padding mask. GQA: repeat_interleave the K/V heads H // Hkv times."),
    tag_hints={"block-boundary": "position lengths[b] may be the first slot of the next block in the table: "
                                 "block = table[pos // bs], offset = pos % bs.",
               "block-end": "the new token's slot is table[length // bs] * bs + length % bs; include it when "
                            "attending (positions 0 .. length, inclusive).",
               "padding": "each sequence attends over its own length only: mask (or skip) the slots past it.",
               "len1": "a sequence with length 0 attends to its new token only (softmax over one key = its value).",
               "random": "table entries are block ids in any order, not consecutive: go through the table.",
               "gqa": "k/v have Hkv heads: repeat each H // Hkv times before q @ k^T.",
               "block-size-1": "block_size 1: every position has its own block."},
    banned=("scaled_dot_product_attention", "naive_attention", "PagedKVCache", "PagedBatch", "flash_attention"),
)
