"""The continuous-batching engine against `llmlab.infer.generate.generate` (the single-request, contiguous-cache
reference, itself equal to HF `generate`): the same prompt and SamplingParams give identical tokens, greedy and
seeded sampling, alone and when batched with requests of other lengths that arrive and leave at other steps (eager
and compile=True), with a cache so small that requests queue and get preempted. Log-probs against the reference's
log-softmax (fp32, atol 1e-5). Text: a scripted model (greedy output fixed in advance) streams Chinese, emoji and
stop strings, checked against tokenizer.decode and `truncate_at_stop` (exact).
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from llmlab.errors import LlmlabError
from llmlab.infer.generate import generate, stream, truncate_at_stop
from llmlab.infer.sampling import SamplingParams
from llmlab.model.config import TransformerConfig
from llmlab.model.transformer import Transformer
from llmlab.serve.engine import NO_TOKEN, Engine, TokenEvent
from llmlab.tokenizer import ByteTokenizer
from tests.infer.test_kv_cache import CONFIGS, V, build

# (prompt length, step it arrives at, params): greedy and seeded sampling with every logits transform
REQUESTS = [
    (5, 0, SamplingParams(temperature=0, max_new_tokens=12)),
    (9, 0, SamplingParams(temperature=0.9, top_k=20, seed=1, max_new_tokens=15)),
    (3, 2, SamplingParams(temperature=1.2, top_p=0.9, min_p=0.02, repetition_penalty=1.3, seed=2, max_new_tokens=10)),
    (12, 3, SamplingParams(temperature=0, frequency_penalty=0.5, presence_penalty=0.3, max_new_tokens=20)),
    (7, 6, SamplingParams(temperature=0.7, seed=3, stop_token_ids=(5,), max_new_tokens=14)),
    (2, 9, SamplingParams(temperature=1.0, seed=4, max_new_tokens=16)),
]


def prompt_of(n: int, seed: int) -> list[int]:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(100 + seed)).tolist()


def reference(model, prompt: list[int], params: SamplingParams, **kwargs) -> list[int]:
    """The request alone through llmlab.infer.generate (contiguous KV cache, batch of one)."""
    out = generate(model, torch.tensor([prompt]), **params.to_dict(), **kwargs)
    return out[0, len(prompt):].tolist()


def run(engine: Engine, requests) -> tuple[dict[int, list[TokenEvent]], list[int]]:
    """Submit request i at its arrival step, step until all are done; events per request, decode batch sizes."""
    batch_sizes = []
    decode = engine.runner.decode
    engine.runner.decode = lambda seqs: batch_sizes.append(len(seqs)) or decode(seqs)
    ids, events, step = {}, {}, 0
    while len(ids) < len(requests) or engine.scheduler.has_work():
        for i, (n, arrival, params) in enumerate(requests):
            if arrival == step:
                ids[engine.submit(prompt_of(n, i), params)] = i
        for e in engine.step():
            events.setdefault(ids[e.request_id], []).append(e)
        step += 1
        assert step < 500
    return events, batch_sizes


def tokens(events: list[TokenEvent]) -> list[int]:
    return [e.token_id for e in events if e.token_id != NO_TOKEN]


@pytest.mark.parametrize("name", ["gqa", "learned", "alibi", "sliding_window"])
def test_alone_equals_generate(name):
    """Each request alone (one at a time through one engine): identical tokens to generate()."""
    model = build(CONFIGS[name])
    engine = Engine(model, None, block_size=4)
    for i, (n, _, params) in enumerate(REQUESTS):
        assert engine.generate(prompt_of(n, i), params) == reference(model, prompt_of(n, i), params)
    assert engine.stats["free_blocks"] == engine.stats["total_blocks"]


@pytest.mark.parametrize("name", ["gqa", "learned", "sliding_window"])
def test_continuous_batching_equals_alone(name):
    """The key test: requests of different lengths arrive at different steps (at most 3 run at once, the rest wait)
    and are decoded in one batch with whoever is running; every request still gets exactly its tokens alone."""
    model = build(CONFIGS[name])
    engine = Engine(model, None, max_batch_size=3, block_size=4)
    events, batch_sizes = run(engine, REQUESTS)
    for i, (n, _, params) in enumerate(REQUESTS):
        assert tokens(events[i]) == reference(model, prompt_of(n, i), params), f"request {i}"
        assert [e.finish_reason for e in events[i]][:-1] == [None] * (len(events[i]) - 1)
    assert max(batch_sizes) == 3 and len(set(batch_sizes)) > 1  # batched, and requests joined and left
    stats = engine.stats
    assert stats["requests_finished"] == len(REQUESTS) and stats["free_blocks"] == stats["total_blocks"]
    assert stats["tokens_generated"] == sum(len(tokens(e)) for e in events.values())


@pytest.mark.parametrize("name", ["gqa", "sliding_window", "learned", "sinusoidal"])
def test_compiled_decode_equals_eager(name, dynamo_counters):
    """compile=True (decode steps as one torch.compile'd graph, dynamic shapes): the same requests arriving and
    leaving at the same steps get exactly the tokens generate() gives each alone, greedy and seeded sampling.
    Two graphs in all (batch 1, larger batches), without a graph break, whatever the position encoding."""
    model = build(CONFIGS[name])
    engine = Engine(model, None, max_batch_size=3, block_size=4, compile=True)
    events, batch_sizes = run(engine, REQUESTS)
    for i, (n, _, params) in enumerate(REQUESTS):
        assert tokens(events[i]) == reference(model, prompt_of(n, i), params), f"request {i}"
    assert {1, 2, 3} <= set(batch_sizes)
    assert engine.stats["free_blocks"] == engine.stats["total_blocks"]
    assert dict(dynamo_counters["graph_break"]) == {}
    assert dynamo_counters["stats"]["unique_graphs"] == 2


def test_compile_failure_ends_requests_with_a_clear_error(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler\n  and a long traceback")

    monkeypatch.setattr(importlib.import_module("llmlab.serve.model_runner"), "_compiled_step", broken)
    engine = Engine(build(CONFIGS["gqa"]), None, block_size=4, compile=True)
    events = list(engine.events(engine.submit(prompt_of(5, 0), SamplingParams(temperature=0, max_new_tokens=4))))
    assert events[-1].finish_reason == "error" and "\n" not in events[-1].error
    assert "no C++ compiler" in events[-1].error and "compile=False" in events[-1].error
    assert engine.stats["free_blocks"] == engine.stats["total_blocks"]


def test_warm_up_decodes_batches_of_one_and_two():
    """warm_up (what `llmlab serve --compile` runs before serving) decodes at batch 1 and 2, whatever the model's
    first token (eos included), then leaves the cache empty and the counters at zero."""
    model = scripted_model([ByteTokenizer().eos_id] * 3)  # eos at once: without care, no decode step at all
    engine = Engine(model, ByteTokenizer(), block_size=4)
    batch_sizes = []
    decode = engine.runner.decode
    engine.runner.decode = lambda seqs: batch_sizes.append(len(seqs)) or decode(seqs)
    engine.warm_up()
    assert batch_sizes == [1, 2] and engine.eos_ids == {ByteTokenizer().eos_id}
    stats = engine.stats
    assert stats["tokens_generated"] == stats["steps"] == 0 and stats["free_blocks"] == stats["total_blocks"]


def test_full_cache_queues_and_preempts():
    """8 blocks of 4 tokens, 6 requests at once: they wait, running ones get preempted (recomputed later), all
    finish with the tokens they get alone and no block stays allocated."""
    model = build(CONFIGS["gqa"])
    engine = Engine(model, None, cache_blocks=8, block_size=4)
    requests = [(n, 0, params) for n, _, params in REQUESTS]
    waiting_seen = []
    step = engine.step
    engine.step = lambda: waiting_seen.append(engine.stats["waiting"]) or step()
    events, _ = run(engine, requests)
    for i, (n, _, params) in enumerate(requests):
        assert tokens(events[i]) == reference(model, prompt_of(n, i), params), f"request {i}"
        assert events[i][-1].finish_reason in ("length", "stop")
    stats = engine.stats
    assert max(waiting_seen) >= 3 and stats["preemptions"] > 0
    assert stats["free_blocks"] == 8 and stats["running"] == stats["waiting"] == 0


def test_impossible_requests_are_rejected_at_submit():
    """Requests that could never run are a one-line LlmlabError (an HTTP 400), and nothing is queued."""
    model = build(CONFIGS["gqa"])  # max_seq_len 40
    engine = Engine(model, None, cache_blocks=5, block_size=4)  # 20 tokens of cache
    cases = [
        ([1] * 30, SamplingParams(max_new_tokens=11), "exceed the context of 40 tokens"),
        ([1] * 10, SamplingParams(max_new_tokens=12), "need 6 KV cache blocks of 4 tokens, but the cache has 5"),
        ([], SamplingParams(), "empty"),
        ([1, V], SamplingParams(), f"not a token id of this model \\(0 .. {V - 1}\\)"),
        ([1], SamplingParams(stop_strings=("x",)), "need a tokenizer"),
    ]
    for prompt, params, message in cases:
        with pytest.raises(LlmlabError, match=message) as e:
            engine.submit(prompt, params)
        assert "\n" not in str(e.value)
    engine.submit([1] * 10, SamplingParams(max_new_tokens=11), request_id="a")  # 20 tokens: fits exactly
    with pytest.raises(LlmlabError, match="already in use"):
        engine.submit([1], SamplingParams(), request_id="a")
    with pytest.raises(LlmlabError, match="max_seq_len"):
        Engine(model, None, max_seq_len=41)
    assert engine.stats["waiting"] == 1


def test_cancel_frees_blocks():
    """A cancelled request leaves at the next step: running -> its blocks are free; waiting -> it never runs.
    Its reader gets a last event with finish_reason "cancelled"; unknown ids are ignored."""
    model = build(CONFIGS["gqa"])
    engine = Engine(model, None, max_batch_size=1, block_size=4)
    a = engine.submit(prompt_of(9, 0), SamplingParams(temperature=0, max_new_tokens=30))
    b = engine.submit(prompt_of(3, 1), SamplingParams(temperature=0, max_new_tokens=30))
    reader_a = engine.events(a)
    engine.step()
    engine.step()
    assert engine.stats["running"] == 1 and engine.stats["waiting"] == 1
    assert engine.stats["free_blocks"] < engine.stats["total_blocks"]
    engine.cancel(a)
    engine.cancel(b)
    engine.cancel("no-such-request")
    events = engine.step()
    assert {(e.request_id, e.token_id, e.finish_reason) for e in events} == {(a, NO_TOKEN, "cancelled"),
                                                                           (b, NO_TOKEN, "cancelled")}
    assert engine.stats["free_blocks"] == engine.stats["total_blocks"] and not engine.scheduler.has_work()
    assert [e.finish_reason for e in reader_a] == [None, None, "cancelled"]  # the reader still gets the end
    with pytest.raises(LlmlabError, match="unknown request_id"):
        engine.events(b)


def test_logprobs():
    """logprob = log-softmax of the processed logits at the chosen token; greedy without penalties: the model's
    own log-probs (the reference's Step.logprobs). top_logprobs: the n best, best first; filtered tokens left out."""
    model = build(CONFIGS["gqa"])
    engine = Engine(model, None, block_size=4)
    prompt = prompt_of(6, 0)
    params = SamplingParams(temperature=0, max_new_tokens=5)
    events = list(engine.events(engine.submit(prompt, params, logprobs=4)))
    steps = list(stream(model, torch.tensor([prompt]), params))
    for e, s in zip(events, steps, strict=True):
        assert e.token_id == s.tokens.item()
        torch.testing.assert_close(e.logprob, s.logprobs[0, e.token_id].item(), atol=1e-5, rtol=0)
        assert len(e.top_logprobs) == 4 and e.top_logprobs[0] == (e.token_id, pytest.approx(e.logprob))
        assert [lp for _, lp in e.top_logprobs] == sorted((lp for _, lp in e.top_logprobs), reverse=True)
    sampled = SamplingParams(temperature=1.0, top_k=2, seed=0, max_new_tokens=3)
    for e in engine.events(engine.submit(prompt, sampled, logprobs=5)):
        assert len(e.top_logprobs) == 2 and e.token_id in dict(e.top_logprobs) and e.logprob <= 0
    assert all(e.top_logprobs == [] for e in engine.events(engine.submit(prompt, params)))


def test_zero_new_tokens_and_an_error_in_a_forward():
    """max_new_tokens=0 ends at once ("length", no token). An exception in a forward pass ends the requests in it
    with finish_reason "error" and frees their blocks; the engine goes on serving."""
    model = build(CONFIGS["gqa"])
    engine = Engine(model, None, block_size=4)
    assert [(e.token_id, e.finish_reason) for e in engine.events(engine.submit([1, 2], SamplingParams(
        max_new_tokens=0)))] == [(NO_TOKEN, "length")]
    decode = engine.runner.decode

    def broken(seqs):
        engine.runner.decode = decode
        raise RuntimeError("device lost")

    engine.runner.decode = broken
    params = SamplingParams(temperature=0, max_new_tokens=6)
    events = list(engine.events(engine.submit(prompt_of(5, 0), params)))
    assert events[-1].finish_reason == "error" and events[-1].error == "RuntimeError: device lost"
    assert engine.stats["free_blocks"] == engine.stats["total_blocks"]
    assert engine.generate(prompt_of(5, 0), params) == reference(model, prompt_of(5, 0), params)
    with pytest.raises(LlmlabError, match="device lost"):
        engine.runner.decode = broken
        engine.generate(prompt_of(5, 0), params)


# ------------------------------------------------------------------------------------------------- text streaming
def scripted_model(script: list[int], vocab_size: int = ByteTokenizer().vocab_size) -> Transformer:
    """A model whose greedy output is fixed: the logits at position p pick script[p], whatever the tokens (one-hot
    learned positions, every block's weights zero so the blocks add nothing, lm_head maps position p to script[p])."""
    n = len(script)
    cfg = TransformerConfig(vocab_size=vocab_size, d_model=n, n_layers=1, n_heads=1, d_ff=4, max_seq_len=n,
                            position="learned")
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.final_norm.weight.fill_(1.0)
        model.pos_emb.weight.copy_(torch.eye(n))
        model.lm_head.weight[script, torch.arange(n)] = 1.0
    return model


def stream_text(script: list[int], **params) -> tuple[list[TokenEvent], Engine]:
    """Greedy generation of the scripted model from a one-token prompt: it writes script[0], script[1], ..."""
    engine = Engine(scripted_model(script + [0]), ByteTokenizer(), block_size=4)
    params = SamplingParams(temperature=0, max_new_tokens=params.pop("max_new_tokens", len(script)), **params)
    return list(engine.events(engine.submit([0], params))), engine


def test_utf8_streaming_of_chinese_text():
    """Byte tokens split each Chinese character (3 bytes) and emoji (4 bytes): an event's text is "" until a
    character is complete, never U+FFFD, and the pieces concatenate to tokenizer.decode(all ids)."""
    text = "流式输出：你好，世界！🙂 ok"
    events, _ = stream_text(list(text.encode("utf-8")))
    ids = tokens(events)
    assert ids == list(text.encode("utf-8")) and events[-1].finish_reason == "length"
    assert "".join(e.text for e in events) == ByteTokenizer().decode(ids) == text
    assert [e.text for e in events if e.text] == list(text)  # one whole character at a time
    # cut in the middle of a character: the end decodes like decode(ids) does, with U+FFFD
    events, _ = stream_text(list(text.encode("utf-8")), max_new_tokens=4)
    assert "".join(e.text for e in events) == ByteTokenizer().decode(tokens(events)) == "流\ufffd"


def test_eos_and_stop_token_end_a_request():
    """eos (from the tokenizer) and stop_token_ids end with "stop": the token is in the ids, its text is not shown."""
    tok = ByteTokenizer()
    script = list(b"ok") + [tok.eos_id] + list(b"more")
    events, engine = stream_text(script)
    assert tokens(events) == [*b"ok", tok.eos_id] and events[-1].finish_reason == "stop"
    assert "".join(e.text for e in events) == "ok"
    assert tokens(events) == reference(engine.model, [0], SamplingParams(temperature=0, max_new_tokens=7),
                                       eos_token_id=tok.eos_id)
    events, _ = stream_text(list(b"abc"), stop_token_ids=(ord("b"),))
    assert tokens(events) == list(b"ab") and "".join(e.text for e in events) == "a"


@pytest.mark.parametrize(("text", "stops", "shown"), [
    ("Hello STOP world", ("STOP",), "Hello "),
    ("Hi STx S STOP!", ("STOP", "xyz"), "Hi STx S "),  # "ST" and "S" are held back, then released
    ("你好。再见", ("。",), "你好"),  # a stop string that is one multi-byte character
    ("no stop here", ("STOP",), "no stop here"),
    ("line one\nline two", ("\n", "one"), "line "),  # the earliest stop string wins
])
def test_stop_strings(text, stops, shown):
    """The text stops before the stop string (OpenAI), the ids end with the token that completed it, as in
    generate(); text that could start a stop string is held back until it cannot."""
    script = list(text.encode("utf-8"))
    events, engine = stream_text(script, stop_strings=stops)
    params = SamplingParams(temperature=0, max_new_tokens=len(script), stop_strings=stops)
    ids = tokens(events)
    assert ids == reference(engine.model, [0], params, decode=ByteTokenizer().decode)
    assert "".join(e.text for e in events) == truncate_at_stop(ByteTokenizer().decode(ids), stops) == shown
    assert events[-1].finish_reason == ("stop" if shown != text else "length")
    for k in range(1, len(events)):  # no piece ever shows a character the final text does not have
        assert shown.startswith("".join(e.text for e in events[:k]))


# ------------------------------------------------------------------------------------------------------- threads
def test_events_from_other_threads_and_asyncio():
    """start() runs the loop on its own thread: readers in other threads (events) and in asyncio (aevents) get
    the same tokens as generate(); stop() ends requests still running with "cancelled"."""
    model = build(CONFIGS["gqa"])
    engine = Engine(model, None, max_batch_size=4, block_size=4)
    with pytest.raises(LlmlabError, match="start"):
        asyncio.run(anext(engine.aevents(engine.submit([1], SamplingParams(max_new_tokens=1)))))
    expected = [reference(model, prompt_of(n, i), p) for i, (n, _, p) in enumerate(REQUESTS)]
    engine.start()
    try:
        def client(i: int) -> list[int]:
            n, _, params = REQUESTS[i]
            return tokens(list(engine.events(engine.submit(prompt_of(n, i), params))))

        with ThreadPoolExecutor(len(REQUESTS)) as pool:
            results = [f.result(timeout=60) for f in [pool.submit(client, i) for i in range(len(REQUESTS))]]
        assert results == expected

        async def aclient(i: int) -> list[int]:
            n, _, params = REQUESTS[i]
            rid = engine.submit(prompt_of(n, i), params)
            return [e.token_id async for e in engine.aevents(rid)]

        async def main():
            return await asyncio.wait_for(asyncio.gather(*(aclient(i) for i in range(len(REQUESTS)))), 60)

        assert asyncio.run(main()) == expected
        assert threading.active_count() >= 2 and engine.running
        long = engine.submit([1, 2, 3], SamplingParams(temperature=0, max_new_tokens=36))
        reader = engine.events(long)
        next(reader)
    finally:
        engine.stop()
    assert not engine.running
    rest = list(reader)
    assert rest[-1].finish_reason == "cancelled" and rest[-1].error == "engine stopped"
    assert engine.stats["free_blocks"] == engine.stats["total_blocks"]
