"""The scheduler on a paged cache without a model: forward passes are simulated by reserving the tokens they would
write. Checked by hand-counted blocks (block_size 4): FCFS admission under max_batch_size and free blocks (keeping
one block per running sequence), preemption of the newest running sequence, which is requeued first and prefilled
again from prompt + generated tokens, and finished sequences leaving between steps."""

from __future__ import annotations

from llmlab.infer.paged_cache import PagedKVCache
from llmlab.infer.sampling import SamplingParams
from llmlab.serve.detokenizer import Detokenizer
from llmlab.serve.scheduler import Scheduler
from llmlab.serve.sequence import Sequence, Status
from tests.infer.test_kv_cache import CONFIGS


def make(n_blocks: int, max_batch_size: int = 8) -> Scheduler:
    return Scheduler(PagedKVCache(CONFIGS["gqa"], n_blocks, block_size=4), max_batch_size)


def seq(request_id: str, n_prompt: int) -> Sequence:
    return Sequence(request_id, [1] * n_prompt, SamplingParams(max_new_tokens=64), frozenset(), Detokenizer(None))


def step(s: Scheduler) -> tuple[list[str], list[str]]:
    """One scheduled step, simulated: a prefill writes all of a sequence's tokens, a decode one per sequence;
    each sequence gets a new token. Returns the ids prefilled and decoded."""
    prefill, decode = s.schedule()
    for q in prefill:
        s.cache.reserve([q.request_id], len(q))
        q.output_ids.append(0)
    if decode:
        s.cache.reserve([q.request_id for q in decode], 1)
        for q in decode:
            q.output_ids.append(0)
    return [q.request_id for q in prefill], [q.request_id for q in decode]


def test_fcfs_admission_under_batch_size_and_leaving_between_steps():
    s = make(n_blocks=32, max_batch_size=2)
    a, b, c, d = (seq(name, 5) for name in "abcd")
    for q in (a, b, c, d):
        s.add(q)
    assert step(s) == (["a", "b"], [])
    assert step(s) == ([], ["a", "b"])
    s.finish(a, "stop")
    assert a.status is Status.FINISHED and "a" not in s.cache.block_tables
    assert step(s) == (["c"], ["b"])  # c joins while b keeps decoding
    s.finish(d, "cancelled")  # a waiting request leaves the queue
    assert list(s.waiting) == [] and [q.request_id for q in s.running] == ["b", "c"]


def test_admission_keeps_a_block_per_running_sequence_and_is_fcfs():
    s = make(n_blocks=6)
    a, b, c, d = seq("a", 8), seq("b", 12), seq("c", 9), seq("d", 2)
    s.add(a)
    assert step(s) == (["a"], [])  # 2 blocks
    s.add(b)
    s.add(c)
    s.add(d)
    # a decodes into its 3rd block (1): 3 free; b needs 3 + 1 kept for a -> waits, and so do c, d behind it
    assert step(s) == ([], ["a"]) and s.cache.allocator.n_free == 3
    s.finish(a, "length")
    assert step(s) == (["b"], [])  # 6 free: b takes 3
    assert step(s) == ([], ["b"])  # c (9 tokens, 3 blocks) + 1 kept for b > 2 free
    assert [q.request_id for q in s.waiting] == ["c", "d"]


def test_preemption_requeues_the_newest_first_and_recomputes():
    s = make(n_blocks=4)
    a, b = seq("a", 7), seq("b", 3)  # 2 blocks + 1 block, 1 kept for the running a
    s.add(a)
    s.add(b)
    assert step(s) == (["a", "b"], [])  # a: 7 tokens cached, b: 3; 1 block free
    assert step(s) == ([], ["a", "b"])  # a: 8 tokens, b: 4 -- both blocks full, 1 free
    # a needs its 3rd block and b its 2nd, 1 is free: b (the newest) is preempted, a decodes
    assert step(s) == ([], ["a"]) and s.preemptions == 1
    assert b.status is Status.WAITING and list(s.waiting) == [b] and "b" not in s.cache.block_tables
    assert len(b) == 5  # 3 prompt + 2 generated tokens: all prefilled again when b comes back
    assert step(s) == ([], ["a"])  # b needs 2 blocks + 1 kept for a, 1 is free: it waits
    s.finish(a, "stop")
    assert step(s) == (["b"], []) and s.cache.lengths["b"] == 5
