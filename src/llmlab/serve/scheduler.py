"""The scheduler: which sequences run this step, given the KV cache blocks free (continuous batching, Orca/vLLM).

Every step: (1) make room for one more token in each running sequence, preempting the newest running sequence while
the free blocks fall short (vLLM's recompute preemption: its blocks are freed, it goes back to the front of the queue
and is prefilled again later from prompt + generated tokens); (2) admit waiting sequences first come, first served
while the batch has a free row and the cache has blocks for the whole sequence, keeping back one block per running
sequence so that the next decode steps rarely have to preempt. Admitted sequences are prefilled one by one this step
(each prompt is its own forward: a paged batch adds the same number of tokens to every row); the others decode
together. Finished and cancelled sequences leave between steps, so new requests join without waiting for a batch
to drain.
"""

from __future__ import annotations

from collections import deque

from llmlab.infer.paged_cache import PagedKVCache
from llmlab.serve.sequence import Sequence, Status


class Scheduler:
    def __init__(self, cache: PagedKVCache, max_batch_size: int) -> None:
        self.cache = cache
        self.max_batch_size = max_batch_size
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the last one is the first to be preempted
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> tuple[list[Sequence], list[Sequence]]:
        """(sequences to prefill, sequences to decode) for this step; blocks for both are known to be free."""
        decode = list(self.running)
        while decode and self._blocks_needed(decode, 1) > self.cache.allocator.n_free:
            self.preempt(decode.pop())
        free = self.cache.allocator.n_free - self._blocks_needed(decode, 1)
        prefill: list[Sequence] = []
        while self.waiting and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            need = self.cache.blocks_needed(seq.request_id, len(seq))
            if need + len(self.running) > free:  # reserve: one block per running sequence to grow into
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            prefill.append(seq)
            free -= need
        return prefill, decode

    def preempt(self, seq: Sequence) -> None:
        """Free seq's blocks and queue it first: it is prefilled again (prompt + generated) when blocks allow."""
        self._release(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def finish(self, seq: Sequence, reason: str) -> None:
        """seq is done (or cancelled): it leaves the queue or the batch and its blocks are free for the next step."""
        if seq.status is Status.WAITING:
            self.waiting.remove(seq)
        elif seq.status is Status.RUNNING:
            self._release(seq)
        seq.status, seq.finish_reason = Status.FINISHED, reason

    def _release(self, seq: Sequence) -> None:
        self.running.remove(seq)
        if seq.request_id in self.cache.block_tables:
            self.cache.free(seq.request_id)

    def _blocks_needed(self, seqs: list[Sequence], n_new: int) -> int:
        return sum(self.cache.blocks_needed(s.request_id, n_new) for s in seqs)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)
