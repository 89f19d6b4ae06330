"""`llmlab generate` and `llmlab chat`: text from MODEL (an llmlab run dir or an HF checkpoint dir).

generate runs `infer.generate.stream` on one prompt; chat goes through the serving engine. Both can compile their
decode step (--compile)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import typer

from llmlab.cli.model_cmds import MODEL_ARG
from llmlab.errors import LlmlabError
from llmlab.infer.chat_template import ChatTemplate, load_chat_template
from llmlab.infer.generate import stream as generate_stream
from llmlab.infer.sampling import SamplingParams
from llmlab.model.io import load_model
from llmlab.serve.detokenizer import Detokenizer
from llmlab.serve.engine import Engine, engine_device
from llmlab.tokenizer import find_tokenizer, sequence_start_id

MAX_NEW_TOKENS = typer.Option(128, "--max-new-tokens", min=1, help="Most tokens to generate (per answer in chat).")
TEMPERATURE = typer.Option(1.0, "--temperature", min=0.0, help="Sampling temperature; 0 = greedy.")
TOP_K = typer.Option(None, "--top-k", min=1, help="Sample from the k most likely tokens [off].")
TOP_P = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling: keep this much probability [1 = off].")
SEED = typer.Option(None, "--seed", help="Seed for reproducible sampling [random].")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda.")
COMPILE = typer.Option(False, "--compile", help="Decode steps as one torch.compile'd graph: faster per token after a "
                                                "one-time compilation of seconds.")


def generate(
    model: Path = MODEL_ARG,
    prompt: str = typer.Option(..., "--prompt", help="The text to continue."),
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = TEMPERATURE,
    top_k: int = TOP_K,
    top_p: float = TOP_P,
    seed: int = SEED,
    stream: bool = typer.Option(False, "--stream", help="Print each token as it is generated."),
    compile: bool = COMPILE,
    device: str = DEVICE,
) -> None:
    # one prompt needs no scheduler or paged cache: infer.generate.stream on a contiguous KVCache is the fast path
    m = load_model(model)
    tokenizer = find_tokenizer(model, m.cfg.vocab_size)
    m = m.to(engine_device(m, device))
    ids = prompt_ids(model, tokenizer, prompt)
    params = SamplingParams(max_new_tokens=fit_new_tokens(m.cfg.max_seq_len, len(ids), max_new_tokens),
                            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    eos = getattr(tokenizer, "eos_id", None)
    text = Detokenizer(tokenizer.decode)
    start = last = time.perf_counter()
    n_tokens, finish, shown, compiling = 0, "length", [], 0.0
    input_ids = torch.tensor([ids], device=next(m.parameters()).device)
    for step in generate_stream(m, input_ids, params, eos_token_id=eos, compile=compile):
        token = int(step.tokens[0])
        n_tokens += 1
        if compile and n_tokens == 2:  # the first decode step compiles the graph: time it apart
            compiling = time.perf_counter() - last
        last = time.perf_counter()
        if token == eos:  # eos ends the text and is not shown, as the engine and the API do
            finish = "stop"
            break
        text.add(token)
        shown.append(text.take())
        if stream:
            typer.echo(shown[-1], nl=False)
    shown.append(text.finish())  # an incomplete last character, as decode(all ids) shows it
    typer.echo(shown[-1] if stream else "".join(shown))
    seconds = time.perf_counter() - start
    compiled = f" ({compiling:.2f} s of it compiling)" if compiling else ""
    typer.echo(f"[{n_tokens} tokens in {seconds:.2f} s{compiled}, "
               f"{n_tokens / max(seconds - compiling, 1e-9):.1f} tokens/s, finish: {finish}]", err=True)


def chat(
    model: Path = MODEL_ARG,
    system: str = typer.Option(None, "--system", help="A system message that starts the conversation."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Most tokens per answer."),
    temperature: float = TEMPERATURE,
    top_k: int = TOP_K,
    top_p: float = TOP_P,
    seed: int = SEED,
    compile: bool = COMPILE,
    device: str = DEVICE,
) -> None:
    engine = open_engine(model, device, compile)
    if compile:
        compile_engine(engine, lambda line: typer.echo(line, err=True))
    tokenizer = engine.tokenizer
    template = load_chat_template(model)
    stop_ids, stop_strings = template.stop_token_ids(tokenizer), template.stop_strings(tokenizer)
    start: list[dict] = [{"role": "system", "content": system}] if system else []
    history = list(start)
    typer.echo(f"chatting with {model} ({'its own chat template' if template.source else 'ChatML'}); "
               "/reset forgets the conversation, /exit or Ctrl-D quits")
    turn = 0
    while True:
        try:
            line = input("> ")
        except EOFError:  # end of input (Ctrl-D, or a pipe): leave quietly
            typer.echo()
            return
        if line.strip() == "/exit":
            return
        if line.strip() == "/reset":
            history = list(start)
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        history, ids = fit_conversation(template, tokenizer, history, len(start), engine.max_seq_len, max_new_tokens)
        if ids is None:
            typer.echo(f"(that message does not fit the model's context of {engine.max_seq_len} tokens)", err=True)
            continue
        params = SamplingParams(max_new_tokens=min(max_new_tokens, engine.max_seq_len - len(ids)),
                                temperature=temperature, top_k=top_k, top_p=top_p, stop_token_ids=stop_ids,
                                stop_strings=stop_strings, seed=None if seed is None else seed + turn)
        reply = []
        for event in engine.events(engine.submit(ids, params)):
            if event.finish_reason == "error":
                raise LlmlabError(f"generation failed: {event.error}")
            typer.echo(event.text, nl=False)
            reply.append(event.text)
        typer.echo()
        history.append({"role": "assistant", "content": "".join(reply)})
        turn += 1


def open_engine(model: Path, device: str, compile: bool = False) -> Engine:
    m = load_model(model)
    return Engine(m, find_tokenizer(model, m.cfg.vocab_size), max_batch_size=1, device=device, compile=compile)


def compile_engine(engine: Engine, echo: Callable[[str], object]) -> None:
    """Compile an Engine(compile=True)'s decode step now (`warm_up`), timed apart from the answers that follow; a
    failed compilation raises a one-line LlmlabError here, before the first request."""
    echo("compiling the decode step ...")
    start = time.perf_counter()
    engine.warm_up()
    echo(f"[compiled in {time.perf_counter() - start:.2f} s]")


def prompt_ids(model: Path, tokenizer, text: str) -> list[int]:
    """The model's sequence start (`sequence_start_id`: eos for llmlab-trained models), then the text."""
    start = sequence_start_id(model, tokenizer)
    return ([start] if start is not None else []) + tokenizer.encode(text)


def fit_new_tokens(context: int, n_prompt: int, max_new_tokens: int) -> int:
    """max_new_tokens, lowered so the prompt and the answer fit the context."""
    room = context - n_prompt
    if room < 1:
        raise LlmlabError(f"the prompt is {n_prompt} tokens; the model's context is {context}")
    return min(max_new_tokens, room)


def fit_conversation(template: ChatTemplate, tokenizer, history: list[dict], keep: int, context: int,
                     max_new_tokens: int) -> tuple[list[dict], list[int] | None]:
    """The prompt ids of history, dropping the oldest exchanges (user + assistant) after the first `keep` messages
    (the system message) until the prompt leaves room for max_new_tokens or the new message is all that is left.
    None: the new message alone does not fit; it is removed from the history returned."""
    while True:
        ids = tokenizer.encode(template.render(history, add_generation_prompt=True), allowed_special="all")
        if len(ids) + max_new_tokens <= context or len(history) <= keep + 1:
            break
        history = history[:keep] + history[keep + 2:]
    if len(ids) >= context:
        return history[:-1], None
    return history, ids
