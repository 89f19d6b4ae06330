"""The paged KV cache (vLLM's PagedAttention memory): block allocator, block tables, batched decode.

References: `model(full_sequence)` without a cache at every step (fp32, atol 1e-5 / rtol 1.3e-6, torch.testing's
defaults), also for sequences of different lengths decoded in one batch and for a sequence built on reused
blocks; block counts and bytes against ceil(tokens / block_size) and 2 x layers x Hkv x D x bytes (exact).
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from llmlab.errors import LlmlabError
from llmlab.infer.kv_cache import CacheFullError, bytes_per_token
from llmlab.infer.paged_cache import BlockAllocator, OutOfBlocksError, PagedKVCache
from tests.infer.test_kv_cache import BACKENDS, CONFIGS, FP32, build, check_cached_decode, prompt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", CONFIGS)
def test_paged_decode_equals_full_recompute(name, backend):
    """One batch of two sequences, block_size 3 (tokens straddle blocks): every step equals model(full sequence)."""
    cfg = CONFIGS[name]
    model = build(cfg, backend)
    check_cached_decode(model, lambda: PagedKVCache(cfg, n_blocks=12, block_size=3).batch(["a", "b"]), prompt(),
                        chunks=[5, 2])


@torch.no_grad()
def decode_rows(model, cache, rows: dict, n_steps: int) -> dict:
    """Greedy-decode the sequences `rows` (id -> (1, T) tokens, already prefilled) together in one batch; each
    step's logits per row equal model(that row's tokens) without a cache. Returns the grown rows."""
    ids = list(rows)
    nxt = torch.cat([model(rows[s])[:, -1:].argmax(-1) for s in ids])  # (B, 1)
    for _ in range(n_steps):
        rows = {s: torch.cat((rows[s], nxt[i:i + 1]), dim=1) for i, s in enumerate(ids)}
        logits = model(nxt, cache=cache.batch(ids))  # (B, 1, V)
        for i, s in enumerate(ids):
            assert_close(logits[i, -1], model(rows[s])[0, -1], **FP32)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["gqa", "sliding_window", "alibi", "learned"])
@torch.no_grad()
def test_different_lengths_and_block_reuse(name, backend):
    """Prompts of 3, 9 and 6 tokens prefilled one by one, then decoded in one batch (left-padded gather); then
    b (13 tokens by then) finishes, a new sequence takes its freed blocks, and decoding it with the others is exact."""
    cfg = CONFIGS[name]
    model = build(cfg, backend)
    cache = PagedKVCache(cfg, n_blocks=12, block_size=4)
    rows = {s: prompt(b=1, t=n, seed=i) for i, (s, n) in enumerate([("a", 3), ("b", 9), ("c", 6)])}
    for s, ids in rows.items():
        assert_close(model(ids, cache=cache.batch([s])), model(ids), **FP32)
    rows = decode_rows(model, cache, rows, n_steps=4)
    assert [cache.lengths[s] for s in rows] == [7, 13, 10]

    freed = set(cache.block_tables["b"])  # 13 tokens in 4 blocks
    cache.free("b")
    rows.pop("b")
    assert cache.allocator.n_free == 12 - 2 - 3 and "b" not in cache.lengths
    rows["d"] = prompt(b=1, t=16, seed=7)
    model(rows["d"], cache=cache.batch(["d"]))
    assert set(cache.block_tables["d"]) == freed  # 16 tokens: b's 4 freed blocks, stale K/V overwritten
    decode_rows(model, cache, rows, n_steps=3)


@torch.no_grad()
def test_lone_sequence_in_consecutive_blocks_is_read_as_a_view():
    """A batch of one sequence whose blocks are consecutive reads its K/V as a slice of the pool (no slot gather);
    once another sequence takes the next block, it grows into a non-consecutive one and is gathered; both ways
    equal model(full sequence). The lowest free blocks are handed out first."""
    cfg = CONFIGS["gqa"]
    model = build(cfg)
    cache = PagedKVCache(cfg, n_blocks=8, block_size=4)
    ids = prompt(b=1, t=8)
    batch = cache.batch(["a"])
    assert_close(model(ids, cache=batch), model(ids), **FP32)
    assert batch.span == (0, 8) and batch.slots is None and cache.block_tables["a"] == [0, 1]
    model(prompt(b=1, t=3, seed=2), cache=cache.batch(["b"]))  # block 2
    for _ in range(2):  # a: 9 and 10 tokens, its third block is 3; the same batch object, now gathered
        nxt = model(ids)[:, -1:].argmax(-1)
        ids = torch.cat((ids, nxt), dim=1)
        assert_close(model(nxt, cache=batch)[0, -1], model(ids)[0, -1], **FP32)
        assert batch.span is None and batch.slots.shape == (1, ids.shape[1])
    assert cache.block_tables["a"] == [0, 1, 3]
    cache.free("a")
    assert cache.allocator.allocate(3) == [0, 1, 3]  # the lowest free blocks first


def test_decode_inputs():
    """What a compiled decode step reads and writes: one token reserved per sequence; slots and mask as `slots`
    gives them (contiguous), the new tokens' slots and positions."""
    cache = PagedKVCache(CONFIGS["gqa"], n_blocks=8, block_size=4)
    cache.reserve(["a"], 5)
    cache.reserve(["b"], 2)
    slots, mask, new_slots, positions = cache.decode_inputs(["a", "b"])
    assert cache.lengths == {"a": 6, "b": 3}
    assert slots.tolist() == [[0, 1, 2, 3, 4, 5], [8, 8, 8, 8, 9, 10]] and slots.is_contiguous()
    assert mask.tolist() == [[True] * 6, [False] * 3 + [True] * 3]
    assert new_slots.tolist() == [5, 10] and positions.tolist() == [[5], [2]]


def test_allocator():
    """A free list: allocation hands out free ids, exhaustion raises OutOfBlocksError taking none, free returns
    blocks that are handed out again, and freeing a block twice is an error."""
    alloc = BlockAllocator(4)
    a = alloc.allocate(3)
    assert sorted(a) == [0, 1, 2] and alloc.n_free == 1
    with pytest.raises(OutOfBlocksError, match="need 2 KV cache blocks, 1 of 4 are free"):
        alloc.allocate(2)
    assert alloc.n_free == 1
    alloc.free([a[1]])
    assert alloc.allocate(2) == [a[1], 3]
    with pytest.raises(LlmlabError, match="not allocated"):
        alloc.free([3, 3])


@torch.no_grad()
def test_out_of_blocks_is_catchable_and_changes_nothing():
    """When the pool runs out mid-batch, model(...) raises OutOfBlocksError (a CacheFullError) before any
    change: block tables and lengths are as they were, and after freeing a sequence the same step succeeds."""
    cfg = CONFIGS["gqa"]
    model = build(cfg)
    cache = PagedKVCache(cfg, n_blocks=4, block_size=2)
    model(prompt(b=1, t=4), cache=cache.batch(["a"]))  # 2 blocks, both full
    model(prompt(b=1, t=3), cache=cache.batch(["b"]))  # 2 blocks, one slot left
    before = ({s: list(t) for s, t in cache.block_tables.items()}, dict(cache.lengths))
    with pytest.raises(CacheFullError) as err:  # a needs a 3rd block, b fits in its free slot: all or nothing
        model(prompt(b=2, t=1), cache=cache.batch(["a", "b"]))
    assert isinstance(err.value, OutOfBlocksError) and "need 1 more KV cache blocks, 0 of 4 are free" in str(err.value)
    assert (cache.block_tables, cache.lengths) == before
    with pytest.raises(OutOfBlocksError):
        model(prompt(b=1, t=2), cache=cache.batch(["c"]))  # a new request: the engine would queue it
    assert "c" not in cache.block_tables
    cache.free("a")
    model(prompt(b=1, t=2), cache=cache.batch(["c"]))
    assert cache.lengths == {"b": 3, "c": 2}


def test_memory_accounting():
    """Pool bytes = n_blocks x block_size x bytes_per_token; bytes in use = held blocks x block_size x the same;
    a sequence of n tokens holds ceil(n / block_size) blocks."""
    cfg = CONFIGS["gqa"]  # 256 bytes a token in fp32
    cache = PagedKVCache(cfg, n_blocks=10, block_size=4)
    assert cache.memory_bytes() == 10 * 4 * bytes_per_token(cfg) == 10240
    assert cache.used_bytes() == 0
    cache.reserve(["a"], 5)
    cache.reserve(["b"], 4)
    assert len(cache.block_tables["a"]) == 2 and len(cache.block_tables["b"]) == 1
    assert cache.blocks_needed("a", 3) == 0 and cache.blocks_needed("a", 4) == 1 and cache.blocks_needed("z", 1) == 1
    assert cache.used_bytes() == 3 * 4 * 256  # 9 tokens held in 12 slots: waste < one block per sequence
    cache.free("a")
    assert cache.used_bytes() == 4 * 256 and cache.allocator.n_free == 9


def test_errors():
    """An attention_mask (the cache knows each length), a batch size that differs from the sequence ids, a
    repeated id, an unknown id to free, and a dtype mismatch each raise an error that says what is wrong."""
    cfg = CONFIGS["gqa"]
    model = build(cfg)
    cache = PagedKVCache(cfg, n_blocks=8, block_size=4)
    with pytest.raises(LlmlabError, match="pass no attention_mask"):
        model(prompt(b=1), attention_mask=torch.ones(1, 7), cache=cache.batch(["a"]))
    with pytest.raises(LlmlabError, match="2 sequences"):
        model(prompt(b=1), cache=cache.batch(["a", "b"]))
    with pytest.raises(LlmlabError, match="twice"):
        cache.batch(["a", "a"])
    with pytest.raises(LlmlabError, match="unknown sequence"):
        cache.free("zz")
    with pytest.raises(LlmlabError, match="dtype=torch.float64"):
        model.double()(prompt(b=1), cache=cache.batch(["a"]))
