"""The inference engine: many requests share one model and one paged KV cache, tokens stream out per request.

    engine = Engine(model, tokenizer, max_batch_size=16, cache_blocks=256)
    rid = engine.submit(prompt_ids, SamplingParams(max_new_tokens=64, temperature=0.7, seed=1))
    for event in engine.events(rid):          # TokenEvents until one has a finish_reason
        print(event.text, end="")

Each `step` is one iteration of continuous batching (Yu et al. 2022, Orca; Kwon et al. 2023, vLLM): requests
submitted or cancelled since the last step join or leave, the scheduler (`scheduler.py`) admits waiting requests
while KV cache blocks allow, each admitted prompt is prefilled, then all running sequences decode one token in one
batched forward (`model_runner.py`). Finished sequences free their blocks at once, so the next request can start at
the next step instead of waiting for the whole batch. `start()` runs steps on a background thread; `events` and
`aevents` read a request's tokens from any thread or from an asyncio server. Without `start()`, `events` and
`generate` run the steps themselves.

Memory is capped by `cache_blocks`: requests that fit the cache but not right now wait in the queue (first come,
first served) and the newest running sequence is preempted when the others need its blocks; requests that could
never fit (prompt + max_new_tokens beyond the context or the whole cache) are rejected at `submit` with an
LlmlabError. An exception inside a forward pass ends the requests in it with finish_reason "error"; the engine goes on.

compile=True (opt-in) runs each decode step as one torch.compile'd graph (`model_runner.py`), with dynamic shapes so
that batches of any size and length reuse it; the first steps pay the compilation (seconds). A failed compilation
ends the requests with finish_reason "error" and a message that says to run without compile.
"""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.kv_cache import bytes_per_token
from llmlab.infer.paged_cache import PagedKVCache
from llmlab.infer.sampling import SamplingParams
from llmlab.model.transformer import Transformer
from llmlab.serve.detokenizer import Detokenizer
from llmlab.serve.model_runner import Choice, ModelRunner
from llmlab.serve.scheduler import Scheduler
from llmlab.serve.sequence import Sequence, Status

NO_TOKEN = -1  # token_id of an event that carries no token: cancelled, error, or max_new_tokens=0
DEFAULT_CACHE_BYTES = 1 << 30  # the default cache: room for max_batch_size full-length sequences, at most 1 GiB


@dataclass
class TokenEvent:
    """One generated token of one request (or, with token_id NO_TOKEN, the end of a request that got no token)."""

    request_id: str
    token_id: int
    text: str  # the new text this token completes: whole characters only, never a stop string or eos/stop token
    logprob: float  # log-prob of token_id under the processed distribution it was chosen from
    top_logprobs: list[tuple[int, float]]  # the n most likely (token id, log-prob) asked for with logprobs=n, else []
    finish_reason: str | None  # None while running, then "stop" (eos/stop token/string), "length", "cancelled", "error"
    error: str | None = None


class EventQueue:
    """One request's TokenEvents, put by the engine thread and taken by one reader: `get` blocks a thread, `aget`
    awaits in an asyncio loop (woken by call_soon_threadsafe, so no thread is parked per streaming request)."""

    def __init__(self) -> None:
        self._items: deque[TokenEvent] = deque()
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    def put(self, event: TokenEvent) -> None:
        with self._cond:
            self._items.append(event)
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # the reader's event loop is closed: nobody is waiting any more
                pass

    def get(self, block: bool = True) -> TokenEvent | None:
        with self._cond:
            while block and not self._items:
                self._cond.wait()
            return self._items.popleft() if self._items else None

    async def aget(self) -> TokenEvent:
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._items:
                    return self._items.popleft()
                future = loop.create_future()
                self._waiters.append((loop, future))
            await future


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


@dataclass
class _Counters:
    steps: int = 0
    prompt_tokens: int = 0
    tokens_generated: int = 0
    requests_finished: int = 0
    requests_by_reason: dict[str, int] = field(default_factory=dict)


class Engine:
    """Continuous batching over a paged KV cache; see the module docstring. Thread-safe: submit, events, aevents,
    cancel and stats may be called from any thread while `start()`'s loop (or one caller of `step`) runs the model."""

    def __init__(self, model: Transformer, tokenizer, *, max_batch_size: int = 16, cache_blocks: int | None = None,
                 block_size: int = 16, max_seq_len: int | None = None, device: str = "auto",
                 compile: bool = False) -> None:
        cfg = model.cfg
        if not cfg.causal:
            raise LlmlabError(f"the engine generates text with a causal decoder; this model has arch={cfg.arch!r}")
        for name, value in (("max_batch_size", max_batch_size), ("block_size", block_size)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        self.max_seq_len = cfg.max_seq_len if max_seq_len is None else max_seq_len
        if not isinstance(self.max_seq_len, int) or not 1 <= self.max_seq_len <= cfg.max_seq_len:
            raise ConfigError(f"max_seq_len={max_seq_len!r} must be an integer in [1, {cfg.max_seq_len}] "
                              "(the model's context)")
        self.device = engine_device(model, device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        dtype = next(model.parameters()).dtype
        if cache_blocks is None:
            per_seq = math.ceil(self.max_seq_len / block_size)
            in_budget = DEFAULT_CACHE_BYTES // (block_size * bytes_per_token(cfg, dtype))
            cache_blocks = max(per_seq, min(max_batch_size * per_seq, in_budget))
        if not isinstance(cache_blocks, int) or cache_blocks < 1:
            raise ConfigError(f"cache_blocks={cache_blocks!r} must be a positive integer")
        self.cache = PagedKVCache(cfg, cache_blocks, block_size, dtype=dtype, device=self.device)
        self.scheduler = Scheduler(self.cache, max_batch_size)
        self.runner = ModelRunner(self.model, self.cache, compile=compile)
        eos = getattr(tokenizer, "eos_id", None)
        self.eos_ids = frozenset() if eos is None else frozenset([eos])
        self._counters = _Counters()
        self._lock = threading.Lock()  # guards the inbox, the cancel list and the id tables below
        self._wake = threading.Condition(self._lock)  # the loop thread sleeps on it while there is nothing to do
        self._step_lock = threading.Lock()  # one step at a time
        self._inbox: list[Sequence] = []  # submitted, not yet handed to the scheduler
        self._cancels: list[str] = []
        self._live: dict[str, Sequence] = {}  # submitted and not finished
        self._queues: dict[str, EventQueue] = {}  # events not read yet, by request id
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ------------------------------------------------------------------------------------------------ requests
    def submit(self, prompt_ids: list[int], params: SamplingParams, *, logprobs: int = 0,
               request_id: str | None = None) -> str:
        """Queue a request; returns its id (request_id, or a new one). Raises LlmlabError, one line, for a request
        that could never run: empty prompt, unknown token ids, prompt + max_new_tokens beyond the context or the
        whole KV cache."""
        if not isinstance(params, SamplingParams):
            raise LlmlabError(f"params must be a SamplingParams, got {type(params).__name__}")
        prompt_ids = self._check_prompt(prompt_ids, params)
        if not isinstance(logprobs, int) or logprobs < 0:
            raise LlmlabError(f"logprobs={logprobs!r} must be an integer >= 0")
        if params.stop_strings and self.tokenizer is None:
            raise LlmlabError("stop strings need a tokenizer to find them in the text; the engine has none")
        decode = None if self.tokenizer is None else self.tokenizer.decode
        generator = None if params.seed is None else torch.Generator(self.device).manual_seed(params.seed)
        with self._lock:
            request_id = uuid.uuid4().hex if request_id is None else str(request_id)
            if request_id in self._live or request_id in self._queues:
                raise LlmlabError(f"request_id {request_id!r} is already in use")
            seq = Sequence(request_id, prompt_ids, params, self.eos_ids | set(params.stop_token_ids),
                           Detokenizer(decode, params.stop_strings), n_logprobs=logprobs, generator=generator)
            queue = self._queues[request_id] = EventQueue()
            if params.max_new_tokens == 0:  # nothing to generate: finished before it starts
                queue.put(TokenEvent(request_id, NO_TOKEN, "", 0.0, [], "length"))
                return request_id
            self._live[request_id] = seq
            self._inbox.append(seq)
            self._counters.prompt_tokens += len(prompt_ids)
            self._wake.notify()
        return request_id

    def _check_prompt(self, prompt_ids, params: SamplingParams) -> list[int]:
        if isinstance(prompt_ids, Tensor):
            prompt_ids = prompt_ids.flatten().tolist()
        prompt_ids = list(prompt_ids)
        if not prompt_ids:
            raise LlmlabError("the prompt is empty: give at least one token")
        vocab = self.model.cfg.vocab_size
        if not all(isinstance(t, int) and 0 <= t < vocab for t in prompt_ids):
            bad = next(t for t in prompt_ids if not (isinstance(t, int) and 0 <= t < vocab))
            raise LlmlabError(f"prompt token {bad!r} is not a token id of this model (0 .. {vocab - 1})")
        n, total = len(prompt_ids), len(prompt_ids) + params.max_new_tokens
        if total > self.max_seq_len:
            raise LlmlabError(f"the prompt ({n} tokens) + max_new_tokens ({params.max_new_tokens}) = {total} tokens "
                              f"exceed the context of {self.max_seq_len} tokens")
        # the cache holds every token but the last generated one, which is never fed back
        blocks = math.ceil((total - 1) / self.cache.block_size)
        if blocks > self.cache.allocator.n_blocks:
            raise LlmlabError(f"the prompt ({n} tokens) + max_new_tokens ({params.max_new_tokens}) need {blocks} KV "
                              f"cache blocks of {self.cache.block_size} tokens, but the cache has "
                              f"{self.cache.allocator.n_blocks}: lower max_new_tokens or raise cache_blocks")
        return prompt_ids

    def cancel(self, request_id: str) -> None:
        """End a request (e.g. its client disconnected): at the start of the next step it leaves the queue or the
        batch, its blocks are freed, and its readers get a "cancelled" event. Unknown or finished ids are ignored."""
        with self._lock:
            self._cancels.append(request_id)
            self._wake.notify()

    def events(self, request_id: str) -> Iterator[TokenEvent]:
        """The request's TokenEvents, blocking until each arrives, ending with the one that has a finish_reason.
        Without a running loop (`start()`), the iterator runs engine steps itself. Events wait in the request's
        queue until read: read every request submitted, or cancel it."""
        queue = self._queue(request_id)
        return self._read(request_id, queue)

    def _read(self, request_id: str, queue: EventQueue) -> Iterator[TokenEvent]:
        while True:
            event = queue.get(block=False)
            if event is None:
                if self.running:
                    event = queue.get()
                else:
                    if not (self._inbox or self.scheduler.has_work()):
                        raise LlmlabError(f"request {request_id!r} has no more events and the engine is idle")
                    self.step()
                    continue
            yield event
            if event.finish_reason is not None:
                self._drop_queue(request_id, queue)
                return

    async def aevents(self, request_id: str) -> AsyncIterator[TokenEvent]:
        """`events` for asyncio: awaits each event without blocking the event loop. Needs `start()`."""
        queue = self._queue(request_id)
        if not self.running:
            raise LlmlabError("aevents needs the engine's loop thread: call engine.start() first")
        while True:
            event = await queue.aget()
            yield event
            if event.finish_reason is not None:
                self._drop_queue(request_id, queue)
                return

    def _queue(self, request_id: str) -> EventQueue:
        with self._lock:
            if request_id not in self._queues:
                raise LlmlabError(f"unknown request_id {request_id!r} (never submitted, cancelled, or already read)")
            return self._queues[request_id]

    def _drop_queue(self, request_id: str, queue: EventQueue) -> None:
        with self._lock:
            if self._queues.get(request_id) is queue:
                del self._queues[request_id]

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[int]:
        """Submit one request and wait for it; returns the generated token ids (ending with the eos/stop token or
        the one that completed a stop string, if any). Raises LlmlabError if the request fails."""
        ids = []
        for event in self.events(self.submit(prompt_ids, params)):
            if event.finish_reason == "error":
                raise LlmlabError(f"generation failed: {event.error}")
            if event.token_id != NO_TOKEN:
                ids.append(event.token_id)
        return ids

    def warm_up(self) -> None:
        """Decode a request alone, then two together, so that compile=True compiles its two graphs (batch 1, larger
        batches) now rather than at the first requests. Call before `start()`; the counters in `stats` restart."""
        params = SamplingParams(max_new_tokens=2, temperature=0)
        eos, self.eos_ids = self.eos_ids, frozenset()  # an eos as first token would end a request before decoding
        try:
            self.generate([0], params)
            for request_id in [self.submit([0], params), self.submit([0], params)]:
                list(self.events(request_id))
        finally:
            self.eos_ids = eos
        self._counters = _Counters()

    # ----------------------------------------------------------------------------------------------------- steps
    def step(self) -> list[TokenEvent]:
        """One iteration: take in new and cancelled requests, schedule, prefill the admitted, decode the running.
        Returns this step's events (they also go to the readers of `events`)."""
        with self._step_lock:
            events = self._take_inbox()
            prefill, decode = self.scheduler.schedule()
            for seq in prefill:
                events += self._forward(lambda s=seq: self.runner.prefill(s), [seq])
            if decode:
                events += self._forward(lambda: self.runner.decode(decode), decode)
            self._counters.steps += 1
            self._publish(events)
            return events

    def _take_inbox(self) -> list[TokenEvent]:
        with self._lock:
            new, self._inbox = self._inbox, []
            cancels, self._cancels = self._cancels, []
        for seq in new:
            self.scheduler.add(seq)
        events = []
        for request_id in cancels:
            seq = self._live.get(request_id)
            if seq is not None:
                events.append(self._end(seq, "cancelled", ""))
        return events

    def _forward(self, run: Callable[[], Tensor], seqs: list[Sequence]) -> list[TokenEvent]:
        """Run one forward for seqs and append each one's next token. An exception (a bug, GPU out of memory) ends
        these requests with finish_reason "error" and frees their blocks; the engine and other requests go on."""
        events = []
        try:
            choices = self.runner.choose(seqs, run())  # run(): logits (len(seqs), V)
            for seq, choice in zip(seqs, choices, strict=True):
                events.append(self._advance(seq, choice))
        except Exception as e:  # noqa: BLE001 - reported to the request's reader, not raised in the loop
            message = f"{type(e).__name__}: {e}"
            events += [self._end(s, "error", "", error=message) for s in seqs if s.status is not Status.FINISHED]
        return events

    def _advance(self, seq: Sequence, choice: Choice) -> TokenEvent:
        """Append seq's chosen token, decide whether it ends the request, and make its event."""
        token = choice.token_id
        seq.output_ids.append(token)
        self._counters.tokens_generated += 1
        text = seq.detokenizer
        reason = None
        if token in seq.stop_ids:  # eos or a stop token: kept in the ids, its text is not shown
            reason, piece = "stop", text.finish()
        else:
            text.add(token)
            at = text.find_stop()
            if at >= 0:
                reason, piece = "stop", text.take_until(at)
            elif len(seq.output_ids) >= seq.params.max_new_tokens:
                reason, piece = "length", text.finish()
            else:
                piece = text.take()
        if reason is not None:
            self._finish(seq, reason)
        return TokenEvent(seq.request_id, token, piece, choice.logprob, choice.top_logprobs, reason)

    def _end(self, seq: Sequence, reason: str, text: str, error: str | None = None) -> TokenEvent:
        """End seq without a token (cancelled, error): the event that tells its reader."""
        self._finish(seq, reason)
        return TokenEvent(seq.request_id, NO_TOKEN, text, 0.0, [], reason, error)

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.scheduler.finish(seq, reason)
        with self._lock:
            self._live.pop(seq.request_id, None)
        self._counters.requests_finished += 1
        self._counters.requests_by_reason[reason] = self._counters.requests_by_reason.get(reason, 0) + 1

    def _publish(self, events: list[TokenEvent]) -> None:
        with self._lock:
            queues = [self._queues.get(e.request_id) for e in events]
            for e in events:  # a cancelled request's client is gone: forget its queue (a reader still holds it)
                if e.finish_reason == "cancelled":
                    self._queues.pop(e.request_id, None)
        for event, queue in zip(events, queues, strict=True):
            if queue is not None:
                queue.put(event)

    # ------------------------------------------------------------------------------------------------------ loop
    @property
    def running(self) -> bool:
        """True while `start()`'s loop thread runs steps."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Engine:
        """Run steps on a background thread whenever there is work (idempotent)."""
        if not self.running:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="llmlab-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop thread; requests not finished end with finish_reason "cancelled"."""
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._step_lock:
            events = self._take_inbox()
            events += [self._end(s, "cancelled", "", error="engine stopped") for s in list(self._live.values())]
            self._publish(events)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._stopping or self._inbox or self._cancels or self.scheduler.has_work()):
                    self._wake.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - a scheduler bug must not leave readers waiting forever
                with self._step_lock:
                    message = f"{type(e).__name__}: {e}"
                    self._publish([self._end(s, "error", "", error=message) for s in list(self._live.values())
                                   if s.status is not Status.FINISHED])

    @property
    def stats(self) -> dict:
        """A snapshot: requests running and waiting, KV cache blocks and bytes, tokens and requests so far."""
        c, cache = self._counters, self.cache
        return {
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting) + len(self._inbox),
            "free_blocks": cache.allocator.n_free,
            "total_blocks": cache.allocator.n_blocks,
            "block_size": cache.block_size,
            "cache_bytes": cache.memory_bytes(),
            "cache_used_bytes": cache.used_bytes(),
            "max_batch_size": self.scheduler.max_batch_size,
            "max_seq_len": self.max_seq_len,
            "steps": c.steps,
            "prompt_tokens": c.prompt_tokens,
            "tokens_generated": c.tokens_generated,
            "requests_finished": c.requests_finished,
            "finish_reasons": dict(c.requests_by_reason),
            "preemptions": self.scheduler.preemptions,
        }


def engine_device(model: Transformer, device: str) -> torch.device:
    """"auto": the model's device if it is an accelerator, else cuda when available, else cpu."""
    if device != "auto":
        from llmlab.train.loop import resolve_device

        return resolve_device(device)
    current = next(model.parameters()).device
    if current.type != "cpu":
        return current
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
