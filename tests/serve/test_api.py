"""The OpenAI-compatible server, driven over HTTP on 127.0.0.1 by the official `openai` client (and httpx for what
the client will not send): a real uvicorn server, a real engine, a real tiny model (tests/serve/live_server.py).

References: OpenAI's API shapes as the `openai` package parses them; the engine itself (`Engine.generate`) for the
text a request must return; OpenAI's error body {"error": {"message", "type", "param", "code"}} and status codes.
Every malformed request is followed by a normal one, which must succeed: errors end a request, never the server.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from llmlab.infer.chat_template import render
from llmlab.infer.sampling import SamplingParams
from llmlab.serve.api import Choice
from llmlab.serve.engine import Engine
from tests.serve.live_server import (
    MODEL_NAME,
    WEATHER_ARGUMENTS,
    WEATHER_TOOL,
    WEATHER_USER,
    serving,
    tiny_tokenizer,
    tool_calling_model,
)

openai = pytest.importorskip("openai")

KEY = "test-key"
HELLO = [{"role": "user", "content": "Shall I compare thee to a summer's day?"}]
WEATHER = [{"role": "user", "content": WEATHER_USER}]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(tool_calling_model(), tiny_tokenizer(), max_batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def url(engine):
    with serving(engine, api_key=KEY) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, timeout=30, max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def http(url):
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c


def chat(client, messages=HELLO, **kw):
    return client.chat.completions.create(model=MODEL_NAME, messages=messages, **kw)


def assert_serving(client) -> None:
    """A normal request still succeeds."""
    r = chat(client, max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 4


def engine_text(engine: Engine, prompt_ids: list[int], **params) -> str:
    """What the engine alone answers, as the API must return it: generated tokens decoded, stop tokens left out."""
    tok = engine.tokenizer
    stops = {tok.special_tokens["<|im_end|>"], tok.eos_id}
    ids = engine.generate(prompt_ids, SamplingParams(**params, stop_token_ids=tuple(stops)))
    return tok.decode([t for t in ids if t not in stops])


def chat_prompt_ids(messages) -> list[int]:
    return tiny_tokenizer().encode(render(messages), allowed_special="all")


# ------------------------------------------------------------------------------------------------------ happy paths
def test_models(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME] and models[0].object == "model"
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_completion_equals_engine(client, engine):
    r = client.completions.create(model=MODEL_NAME, prompt="Shall I compare thee", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and len(r.choices) == 1
    ids = tiny_tokenizer().encode("Shall I compare thee")
    assert r.choices[0].text == engine_text(engine, ids, temperature=0, max_new_tokens=12)
    assert r.usage.prompt_tokens == len(ids) and r.usage.total_tokens == len(ids) + r.usage.completion_tokens


def test_chat_equals_engine(client, engine):
    r = chat(client, max_tokens=16, temperature=0.9, seed=7)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    expected = engine_text(engine, chat_prompt_ids(HELLO), temperature=0.9, seed=7, max_new_tokens=16)
    assert choice.message.content == expected
    assert r.usage.prompt_tokens == len(chat_prompt_ids(HELLO))


def test_chat_stream_equals_non_stream(client):
    full = chat(client, max_tokens=20, temperature=1.0, seed=3)
    chunks = list(chat(client, max_tokens=20, temperature=1.0, seed=3, stream=True,
                       stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completion_stream_equals_non_stream(client):
    kw = dict(model=MODEL_NAME, prompt="From fairest creatures", max_tokens=15, temperature=0.8, seed=11)
    full = client.completions.create(**kw)
    text = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True))
    assert text == full.choices[0].text


def test_n_choices(client):
    r = chat(client, max_tokens=12, temperature=1.0, seed=5, n=2)
    assert [c.index for c in r.choices] == [0, 1] and r.usage.prompt_tokens == len(chat_prompt_ids(HELLO))
    assert r.choices[0].message.content != r.choices[1].message.content  # seeds 5 and 6
    streamed = {0: "", 1: ""}
    for c in chat(client, max_tokens=12, temperature=1.0, seed=5, n=2, stream=True):
        for ch in c.choices:
            streamed[ch.index] += ch.delta.content or ""
    assert [streamed[0], streamed[1]] == [c.message.content for c in r.choices]


def test_seed_reproducible(client):
    a, b, c = (chat(client, max_tokens=16, temperature=1.0, seed=s).choices[0].message.content for s in (42, 42, 43))
    assert a == b and a != c


def test_stop_strings(client):
    prompt = "Thy bosom is endeared"
    full = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=24, temperature=0).choices[0]
    assert len(full.text) >= 8
    stop = full.text[4:7]
    for stops in (stop, [stop, "\x00never"]):
        r = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=24, temperature=0, stop=stops)
        assert r.choices[0].text == full.text[:full.text.find(stop)] and r.choices[0].finish_reason == "stop"
        streamed = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=24, temperature=0,
                                             stop=stops, stream=True)
        assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text


def test_chat_logprobs(client):
    r = chat(client, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0 and isinstance(e.bytes, list)
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob)  # greedy: the chosen token is the top one
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
    plain = chat(client, max_tokens=8, temperature=0)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs(client):
    r = client.completions.create(model=MODEL_NAME, prompt="Thou art", max_tokens=6, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert all(len(top) <= 2 for top in lp.top_logprobs) and lp.text_offset[0] == 0
    assert "".join(lp.tokens) == r.choices[0].text  # no stop token here: each generated token's text, in order


# ------------------------------------------------------------------------------------------------------------ tools
def test_tool_call(client):
    """The trained tiny model answers WEATHER with a call: OpenAI's tool_calls, arguments valid under the schema."""
    r = chat(client, WEATHER, tools=[WEATHER_TOOL], temperature=0, max_tokens=80)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGUMENTS


def test_tool_call_stream(client):
    chunks = list(chat(client, WEATHER, tools=[WEATHER_TOOL], temperature=0, max_tokens=80, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""  # the call is not streamed as text
    calls = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == WEATHER_ARGUMENTS
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("text,streamable", [
    ("Sunny", "Sunny"), ("Sunny <tool", "Sunny "), ("Sunny <tool_call>{", "Sunny "), ("a < b", "a < b"),
    ("<", ""), ("x<tool_cal", "x"),
])
def test_content_held_back_before_tool_call(text, streamable):
    """Streaming with tools: content stops where "<tool_call>" starts, or may start with the next token."""
    choice = Choice(0, "r", watch_tools=True, text=text)
    assert choice.streamable() == streamable and choice.streamable() == ""


def test_tool_choice_none_and_auto_without_call(client):
    """tool_choice="none" hides the tools (the model then answers in text); an answer without a call is content."""
    r = chat(client, WEATHER, tools=[WEATHER_TOOL], tool_choice="none", temperature=0, max_tokens=10)
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.tool_calls is None
    r = chat(client, HELLO, tools=[WEATHER_TOOL], temperature=0, max_tokens=10)
    assert r.choices[0].message.tool_calls is None and isinstance(r.choices[0].message.content, str)


def test_forced_tool_call_invalid_output_is_500(client):
    """tool_choice="required" on a conversation the model was not trained for: it writes no valid call, which
    OpenAI reports as a 500 "The model produced invalid content"; the server goes on."""
    with pytest.raises(openai.InternalServerError) as e:
        chat(client, HELLO, tools=[WEATHER_TOOL], tool_choice="required", temperature=0, max_tokens=20)
    assert e.value.body["code"] == "invalid_model_output" and "tool call" in e.value.body["message"]
    assert_serving(client)


def test_tool_result_turn(client):
    """A conversation with an earlier call and its result is accepted (rendered as <tool_call>/<tool_response>)."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps(WEATHER_ARGUMENTS)}}
    messages = [*WEATHER, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 21}'}]
    r = chat(client, messages, tools=[WEATHER_TOOL], temperature=0, max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


# ------------------------------------------------------------------------------------------------------- bad requests
LONG_PROMPT = "word " * 2000
BAD_REQUESTS = {
    # name: (path, json body or raw bytes, status, error code, error param)
    "bad JSON": ("/v1/chat/completions", b'{"model": "tiny-test", "messages": [', 400, "json_invalid", None),
    "body not an object": ("/v1/completions", b"[1, 2]", 400, "invalid_body", None),
    "unknown model": ("/v1/chat/completions", {"model": "gpt-9", "messages": HELLO}, 404, "model_not_found", "model"),
    "negative max_tokens": ("/v1/completions", {"model": MODEL_NAME, "prompt": "a", "max_tokens": -5}, 400,
                            "greater_than_equal", "max_tokens"),
    "huge max_tokens": ("/v1/chat/completions", {"model": MODEL_NAME, "messages": HELLO, "max_tokens": 10**12}, 400,
                        "context_length_exceeded", "max_tokens"),
    "prompt too long": ("/v1/completions", {"model": MODEL_NAME, "prompt": LONG_PROMPT}, 400,
                        "context_length_exceeded", "prompt"),
    "messages too long": ("/v1/chat/completions", {"model": MODEL_NAME, "messages": [
        {"role": "user", "content": LONG_PROMPT}]}, 400, "context_length_exceeded", "messages"),
    "empty stop string": ("/v1/completions", {"model": MODEL_NAME, "prompt": "a", "stop": ["x", ""]}, 400,
                          "string_too_short", "stop[1]"),
    "no messages": ("/v1/chat/completions", {"model": MODEL_NAME, "messages": []}, 400, "too_short", "messages"),
    "temperature out of range": ("/v1/chat/completions", {"model": MODEL_NAME, "messages": HELLO, "temperature": 9},
                                 400, "less_than_equal", "temperature"),
    "image content": ("/v1/chat/completions", {"model": MODEL_NAME, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "literal_error",
        "messages[0].content[0].type"),
    "token id outside vocabulary": ("/v1/completions", {"model": MODEL_NAME, "prompt": [1, 2, 10**6]}, 400, None,
                                    "prompt"),
    "invalid tool schema": ("/v1/chat/completions", {"model": MODEL_NAME, "messages": HELLO, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "integer", "minimum": "zero"}}}}}]}, 400, "invalid_tools",
        "tools[0].function.parameters"),
    "tool schema not an object": ("/v1/chat/completions", {"model": MODEL_NAME, "messages": HELLO, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, 400, "invalid_tools",
        "tools[0].function.parameters"),
    "bad tool name": ("/v1/chat/completions", {"model": MODEL_NAME, "messages": HELLO, "tools": [
        {"type": "function", "function": {"name": "no spaces"}}]}, 400, "string_pattern_mismatch",
        "tools[0].function.name"),
    "tool_choice names an unknown tool": ("/v1/chat/completions", {
        "model": MODEL_NAME, "messages": HELLO, "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "launch"}}}, 400, "invalid_tools", "tool_choice"),
    "tool_choice without tools": ("/v1/chat/completions", {"model": MODEL_NAME, "messages": HELLO,
                                                           "tool_choice": "required"}, 400, "invalid_tools",
                                  "tool_choice"),
    "unknown route": ("/v1/embeddings", {"model": MODEL_NAME, "input": "x"}, 404, None, None),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_openai_error(name, http, client):
    path, body, status, code, param = BAD_REQUESTS[name]
    if isinstance(body, bytes):
        r = http.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = http.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == ("not_found_error" if name == "unknown route" else "invalid_request_error")
    assert (error["code"], error["param"]) == (code, param)
    assert_serving(client)


def test_openai_client_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HELLO)
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, max_tokens=100_000)
    assert "maximum context length is 640 tokens" in e.value.body["message"]
    assert_serving(client)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}])
def test_api_key_required(url, client, headers):
    r = httpx.get(f"{url}/v1/models", headers=headers, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    with openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0, timeout=10) as bad:
        with pytest.raises(openai.AuthenticationError):
            chat(bad, max_tokens=2)
    assert httpx.get(f"{url}/", timeout=10).status_code == 200  # the page itself is public; its requests send the key
    assert_serving(client)


def test_no_api_key_configured(engine):
    """Without --api-key, /v1 needs no Authorization header."""
    with serving(Engine(engine.model, engine.tokenizer, max_batch_size=2, device="cpu")) as base:
        assert httpx.get(f"{base}/v1/models", timeout=10).status_code == 200


# ------------------------------------------------------------------------------------------------------ disconnects
def wait_idle(engine: Engine, timeout_s: float = 10) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = engine.stats
        if stats["running"] == 0 and stats["waiting"] == 0:
            return stats
        time.sleep(0.02)
    raise AssertionError(f"engine still busy after {timeout_s}s: {engine.stats}")


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": MODEL_NAME, "messages": HELLO, "stream": True, "max_tokens": 600,
                              "temperature": 1.0, "seed": 0}),
    ("/v1/completions", {"model": MODEL_NAME, "prompt": "Thou", "stream": True, "max_tokens": 600, "seed": 0}),
])
def test_client_disconnect_mid_stream_cancels(path, body, url, engine, client):
    wait_idle(engine)
    cancelled = engine.stats["finish_reasons"].get("cancelled", 0)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        with c.stream("POST", path, json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]  # a few events, then hang up
            assert got[0].startswith("data: {")
    stats = wait_idle(engine)
    assert stats["finish_reasons"].get("cancelled", 0) == cancelled + 1
    assert stats["free_blocks"] == stats["total_blocks"]  # the request's KV cache blocks are free again
    assert_serving(client)


def test_client_disconnect_non_streaming_cancels(url, engine, client):
    wait_idle(engine)
    cancelled = engine.stats["finish_reasons"].get("cancelled", 0)
    body = {"model": MODEL_NAME, "prompt": "Thou", "max_tokens": 600, "seed": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=0.3)
    stats = wait_idle(engine)
    assert stats["finish_reasons"].get("cancelled", 0) == cancelled + 1
    assert stats["free_blocks"] == stats["total_blocks"]
    assert_serving(client)
