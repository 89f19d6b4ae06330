"""PagedAttention's KV memory (Kwon et al. 2023, vLLM): a pool of fixed-size blocks and a block table per sequence.

A contiguous cache reserves max_len slots per sequence up front. Here a sequence takes one block of block_size
tokens at a time as it grows, so at most one part-filled block per sequence is wasted, sequences of any length
share one pool, and a finished sequence's blocks go straight back to the free list for the next request.
Token i of a sequence lives in block `table[i // block_size]` at offset `i % block_size`.

A forward gathers each sequence's K/V from its blocks (left-padded to the longest, newest token last); a lone
sequence whose blocks are consecutive (as a request alone on an idle engine is: the lowest free blocks are handed
out first) is read as a view of the pool instead, as the contiguous cache does.
"""

from __future__ import annotations

import heapq

import torch
from torch import Tensor

from llmlab.errors import LlmlabError
from llmlab.infer.kv_cache import CacheFullError, bytes_per_token
from llmlab.model.config import TransformerConfig


class OutOfBlocksError(CacheFullError):
    """The pool has fewer free blocks than asked for. Nothing was allocated: an engine catches this and queues
    the request (or preempts a sequence) until blocks are freed."""


class BlockAllocator:
    """The free block ids 0 .. n_blocks-1, lowest first (a min-heap): a request alone on an idle pool gets consecutive
    blocks as it grows, which `PagedBatch` reads as one view instead of gathering them."""

    def __init__(self, n_blocks: int) -> None:
        if n_blocks <= 0:
            raise LlmlabError(f"n_blocks={n_blocks} must be a positive integer")
        self.n_blocks = n_blocks
        self._free = list(range(n_blocks))  # sorted, so already a heap
        self._used: set[int] = set()

    @property
    def n_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        """The n lowest free block ids, or OutOfBlocksError (and none taken) when fewer than n are free."""
        if n > len(self._free):
            raise OutOfBlocksError(f"need {n} KV cache blocks, {len(self._free)} of {self.n_blocks} are free")
        blocks = [heapq.heappop(self._free) for _ in range(n)]
        self._used.update(blocks)
        return blocks

    def free(self, blocks: list[int]) -> None:
        seen: set[int] = set()
        for b in blocks:  # all checked before any is freed
            if b not in self._used or b in seen:
                raise LlmlabError(f"block {b} is not allocated (freed twice?)")
            seen.add(b)
        self._used -= seen
        for b in blocks:
            heapq.heappush(self._free, b)


class PagedKVCache:
    """Block pools k, v (n_layers, n_blocks, block_size, Hkv, D) shared by all sequences, with their block tables.

    Sequences are named by any hashable id; `batch(seq_ids)` is what a model forward takes as `cache=`.
    """

    def __init__(self, cfg: TransformerConfig, n_blocks: int, block_size: int = 16, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        if block_size <= 0:
            raise LlmlabError(f"block_size={block_size} must be a positive integer")
        self.cfg, self.block_size = cfg, block_size
        shape = (cfg.n_layers, n_blocks, block_size, cfg.n_kv_heads, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # the same pools seen as flat slots, built once: (n_layers, n_blocks * block_size, Hkv, D)
        self.flat_k, self.flat_v = self.k.flatten(1, 2), self.v.flatten(1, 2)
        self._offsets = torch.arange(block_size, device=self.k.device)
        self.allocator = BlockAllocator(n_blocks)
        self.block_tables: dict[object, list[int]] = {}
        self.lengths: dict[object, int] = {}  # tokens stored per sequence, counting the forward in progress

    def memory_bytes(self) -> int:
        """Bytes of the whole pool (K and V, every layer)."""
        return 2 * self.k.numel() * self.k.element_size()

    def used_bytes(self) -> int:
        """Bytes of the blocks sequences hold now."""
        n_used = self.allocator.n_blocks - self.allocator.n_free
        return n_used * self.block_size * bytes_per_token(self.cfg, self.k.dtype)

    def blocks_needed(self, seq_id: object, n_new: int) -> int:
        """New blocks seq_id needs to grow by n_new tokens (a new id starts empty)."""
        length = self.lengths.get(seq_id, 0) + n_new
        return -(-length // self.block_size) - len(self.block_tables.get(seq_id, []))  # ceil(length / bs) - held

    def reserve(self, seq_ids: list, n_new: int) -> None:
        """Grow every sequence by n_new tokens, allocating blocks; all or nothing (OutOfBlocksError)."""
        needed = {s: self.blocks_needed(s, n_new) for s in seq_ids}
        if sum(needed.values()) > self.allocator.n_free:
            raise OutOfBlocksError(f"{len(seq_ids)} sequence(s) need {sum(needed.values())} more KV cache blocks, "
                                   f"{self.allocator.n_free} of {self.allocator.n_blocks} are free")
        for s in seq_ids:
            self.block_tables.setdefault(s, []).extend(self.allocator.allocate(needed[s]))
            self.lengths[s] = self.lengths.get(s, 0) + n_new

    def free(self, seq_id: object) -> None:
        """Drop a finished sequence; its blocks return to the free list."""
        if seq_id not in self.block_tables:
            raise LlmlabError(f"unknown sequence {seq_id!r}")
        self.allocator.free(self.block_tables.pop(seq_id))
        del self.lengths[seq_id]

    def slots(self, seq_ids: list) -> tuple[Tensor, Tensor | None]:
        """Flat slot ids (block * block_size + offset) of every stored token of seq_ids, left-padded to the
        longest: (B, Tk), and the padding mask (B, Tk) (None when all lengths are equal). Padding repeats the row's
        first slot (masked out). Every sequence's newest token sits in the last column, where attention's
        bottom-right alignment puts the new queries."""
        lengths = [self.lengths[s] for s in seq_ids]
        tables = [self.block_tables[s] for s in seq_ids]
        tk, n_blocks, dev = max(lengths), max(len(t) for t in tables), self.k.device
        table = torch.tensor([t + [0] * (n_blocks - len(t)) for t in tables], device=dev)  # (B, n_blocks)
        in_order = (table[:, :, None] * self.block_size + self._offsets).flatten(1)  # (B, n_blocks * bs): position p
        if min(lengths) == tk:  # no padding: a slice, no gather
            return in_order[:, :tk], None
        # column c of row b holds position c - (tk - length_b); negative = left padding
        pos = torch.arange(tk, device=dev) - torch.tensor([tk - n for n in lengths], device=dev)[:, None]
        valid = pos >= 0
        return in_order.gather(1, pos.clamp(min=0)), valid

    def decode_inputs(self, seq_ids: list) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """Reserve one new token for each of seq_ids and return what a decode step on them reads and writes, as
        tensors (for a compiled step, `GraphPagedBatch`): slots (B, Tk) and mask as `slots` gives them, the new
        tokens' slots (B,) and their positions (B, 1)."""
        starts = [self.lengths.get(s, 0) for s in seq_ids]
        self.reserve(seq_ids, 1)
        slots, mask = self.slots(seq_ids)
        # fresh strides: a slice's row stride changes with the block count, and a compiled graph guards on strides
        # (.contiguous() keeps a batch of one's column as it is: a size-1 dim counts as contiguous at any stride)
        slots = slots.clone(memory_format=torch.contiguous_format)
        new_slots = slots[:, -1].clone(memory_format=torch.contiguous_format)
        return slots, mask, new_slots, torch.tensor([[p] for p in starts], device=self.k.device)

    def write(self, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> None:
        """Store k, v (B, Hkv, n_new, D) at slots (B * n_new,): row b's new tokens, in order."""
        hkv, d = k.shape[1], k.shape[3]
        self.flat_k[layer].index_copy_(0, slots, k.transpose(1, 2).reshape(-1, hkv, d))  # (B*n_new, Hkv, D)
        self.flat_v[layer].index_copy_(0, slots, v.transpose(1, 2).reshape(-1, hkv, d))

    def gather(self, layer: int, slots: Tensor) -> tuple[Tensor, Tensor]:
        """K, V (B, Hkv, Tk, D) read from slots (B, Tk)."""
        # A PagedAttention kernel reads each block in place through the block table; this readable version
        # copies the blocks into contiguous tensors first, one extra pass over the sequence's K/V.
        # index_select on the flat slots: ~5x faster on CPU than advanced indexing pool[slots] at B=16
        b, tk = slots.shape
        flat = slots.reshape(-1)
        k = self.flat_k[layer].index_select(0, flat).view(b, tk, *self.flat_k.shape[2:])  # (B, Tk, Hkv, D)
        v = self.flat_v[layer].index_select(0, flat).view(b, tk, *self.flat_v.shape[2:])
        return k.transpose(1, 2), v.transpose(1, 2)

    def batch(self, seq_ids: list) -> PagedBatch:
        return PagedBatch(self, seq_ids)


class PagedBatch:
    """The `cache=` of one forward: sequences seq_ids of a PagedKVCache, one per batch row, each at its own length.

    Every row adds the same number of new tokens (a prefill of one prompt, or one decode token per sequence).
    """

    def __init__(self, cache: PagedKVCache, seq_ids: list) -> None:
        if len(set(seq_ids)) != len(seq_ids):
            raise LlmlabError(f"a sequence appears twice in one batch: {seq_ids}")
        self.cache, self.seq_ids = cache, list(seq_ids)
        # set by reserve, once per forward, and read by every layer's update
        self.slots: Tensor | None = None  # (B, Tk) slots of all stored tokens
        self.new_slots: Tensor | None = None  # (B * n_new,) slots of the new tokens
        self.mask: Tensor | None = None  # (B, Tk) padding mask, None without padding
        self.span: tuple[int, int] | None = None  # (first slot, tokens): one sequence held in consecutive blocks

    def reserve(self, batch_size: int, n_new: int, attention_mask: Tensor | None = None) -> Tensor:
        """Allocate room for n_new tokens per sequence (or OutOfBlocksError, nothing changed); positions (B, n_new)."""
        if attention_mask is not None:
            raise LlmlabError("a paged cache tracks each sequence's length itself: pass no attention_mask")
        if batch_size != len(self.seq_ids):
            raise LlmlabError(f"input batch size {batch_size} != {len(self.seq_ids)} sequences in the paged batch")
        starts = [self.cache.lengths.get(s, 0) for s in self.seq_ids]
        self.cache.reserve(self.seq_ids, n_new)
        table = self.cache.block_tables[self.seq_ids[0]]
        if batch_size == 1 and table == list(range(table[0], table[0] + len(table))):
            # a lone request usually sits in consecutive blocks: its K/V are one slice of the pool, read as a view
            # and written by a slice copy, as in the contiguous KVCache (no slot tensors, no gather)
            self.span = (table[0] * self.cache.block_size, self.cache.lengths[self.seq_ids[0]])
            self.slots = self.new_slots = self.mask = None
        else:
            self.span = None
            self.slots, self.mask = self.cache.slots(self.seq_ids)
            self.new_slots = self.slots[:, -n_new:].reshape(-1)
        # positions in Python, one small tensor: cheaper than arange + broadcast on a per-token path
        return torch.tensor([[p + i for i in range(n_new)] for p in starts], device=self.cache.k.device)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        if k.dtype != self.cache.k.dtype:
            raise LlmlabError(f"the model computes in {k.dtype} but the cache holds {self.cache.k.dtype}: build the "
                              f"cache with dtype={k.dtype}")
        if self.span is not None:
            first, n = self.span
            keys, values = (pool[layer, first:first + n] for pool in (self.cache.flat_k, self.cache.flat_v))
            keys[n - k.shape[2]:] = k[0].transpose(0, 1)  # (Hkv, n_new, D) -> the last n_new of (n, Hkv, D)
            values[n - v.shape[2]:] = v[0].transpose(0, 1)
            return keys.transpose(0, 1)[None], values.transpose(0, 1)[None], None  # (1, Hkv, n, D) views
        self.cache.write(layer, self.new_slots, k, v)
        return (*self.cache.gather(layer, self.slots), self.mask)


class GraphPagedBatch:
    """The `cache=` of one compiled decode step: each layer's flat pools k[l], v[l] (n_blocks * block_size, Hkv, D)
    and the tensors of `PagedKVCache.decode_inputs`, computed before the graph (the block bookkeeping is Python);
    built inside the compiled function (cf. the contiguous cache's `infer.generate.StaticCache`)."""

    def __init__(self, k: list[Tensor], v: list[Tensor], slots: Tensor, mask: Tensor | None, new_slots: Tensor,
                 positions: Tensor) -> None:
        # one input tensor per layer: inductor then writes the new K/V in place; slicing one (n_layers, ...) input
        # inside the graph made it copy the whole pool every step (~10 ms a step for the tiny preset on CPU)
        self.k, self.v = k, v
        self.slots, self.mask, self.new_slots, self.positions = slots, mask, new_slots, positions

    def reserve(self, batch_size: int, n_new: int, attention_mask: Tensor | None = None) -> Tensor:
        return self.positions

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        b, tk = self.slots.shape
        flat = self.slots.reshape(-1)
        out = []
        for pool, new in ((self.k[layer], k), (self.v[layer], v)):
            pool.index_copy_(0, self.new_slots, new[:, :, 0])  # new: (B, Hkv, 1, D)
            out.append(pool.index_select(0, flat).view(b, tk, *pool.shape[1:]).transpose(1, 2))  # (B, Hkv, Tk, D)
        return out[0], out[1], self.mask
