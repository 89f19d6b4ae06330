"""A real server for the serve tests: a tiny model with a tokenizer trained on the bundled sonnets, the engine on its
loop thread, and uvicorn on 127.0.0.1 (a port the OS picks) in a thread, with bounded start and stop.

`tool_calling_model` is a real tiny model trained for a few seconds until it answers one conversation (WEATHER_USER,
with WEATHER_TOOL offered) with a tool call in serve/tools.py's format, so the whole function-calling path runs on
model output; to anything else it answers like the random model it mostly still is."""

from __future__ import annotations

import functools

import torch

from llmlab.data.samples import sample_text
from llmlab.infer.chat_template import render
from llmlab.model.presets import preset
from llmlab.model.transformer import Transformer
from llmlab.serve import tools
from llmlab.serve.background import serve_in_background
from llmlab.serve.engine import Engine
from llmlab.serve.schemas import ChatMessage, Tool
from llmlab.tokenizer import Tokenizer, train_tokenizer

MODEL_NAME = "tiny-test"
START_TIMEOUT_S = 20
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
WEATHER_USER = "Weather in Paris?"
WEATHER_ARGUMENTS = {"city": "Paris"}


@functools.cache
def tiny_tokenizer() -> Tokenizer:
    return train_tokenizer(sample_text(), 400)


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(preset("tiny", vocab_size=tiny_tokenizer().vocab_size, **overrides)).eval()


@functools.cache
def tool_calling_model(max_steps: int = 300) -> Transformer:
    """tiny_model(), trained (AdamW, next-token loss on the answer) until its greedy answer to WEATHER_USER with
    WEATHER_TOOL is the call get_weather(city="Paris"), then <|im_end|>: ~100 steps, a few seconds on one core."""
    tok = tiny_tokenizer()
    messages = tools.plain_messages([ChatMessage(role="user", content=WEATHER_USER)], [Tool(**WEATHER_TOOL)])
    prompt = tok.encode(render(messages), allowed_special="all")
    answer = tok.encode(tools.format_call("get_weather", WEATHER_ARGUMENTS) + "<|im_end|>", allowed_special="all")
    ids = torch.tensor([prompt + answer])  # (1, T)
    model = tiny_model(max_seq_len=640).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(max_steps):
        logits = model(ids[:, :-1])[0, len(prompt) - 1:]  # (len(answer), V): the predictions of the answer
        if bool((logits.argmax(-1) == ids[0, len(prompt):]).all()):
            return model.eval()
        loss = torch.nn.functional.cross_entropy(logits, ids[0, len(prompt):])
        opt.zero_grad()
        loss.backward()
        opt.step()
    raise RuntimeError(f"the tiny model did not learn the tool call in {max_steps} steps")


def serving(engine: Engine, api_key: str | None = None):
    """The engine's API on a fresh port for the `with` block; yields the base URL (http://127.0.0.1:PORT)."""
    return serve_in_background(engine, engine.tokenizer, MODEL_NAME, api_key=api_key, start_timeout=START_TIMEOUT_S)
