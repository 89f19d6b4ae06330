"""`llmlab serve MODEL`: the OpenAI-compatible API and the chat page for a MODEL (llmlab run dir or HF dir)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from llmlab.cli.generate_cmds import COMPILE, compile_engine
from llmlab.cli.model_cmds import MODEL_ARG

console = Console()


def serve(
    model: Path = MODEL_ARG,
    port: int = typer.Option(8000, "--port", help="TCP port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (0.0.0.0: the whole network)."),
    api_key: str = typer.Option(None, "--api-key", envvar="LLMLAB_API_KEY",
                                help="Require `Authorization: Bearer KEY` on /v1 (else 401)."),
    model_name: str = typer.Option(None, "--model-name", help="The `model` clients send (default: MODEL's dir name)."),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="Tokenizer dir (default: MODEL's own, or bytes)."),
    max_batch_size: int = typer.Option(16, "--max-batch-size", help="Sequences decoded together per step."),
    cache_blocks: int = typer.Option(None, "--cache-blocks", help="KV cache size in blocks (default: fits the batch)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    compile: bool = COMPILE,
) -> None:
    import uvicorn

    from llmlab.infer.chat_template import load_chat_template
    from llmlab.model.io import load_model
    from llmlab.serve.api import create_app
    from llmlab.serve.engine import Engine
    from llmlab.tokenizer import find_tokenizer

    m = load_model(model)
    tok = find_tokenizer(model, m.cfg.vocab_size, tokenizer)
    name = model_name or model.resolve().name
    engine = Engine(m, tok, max_batch_size=max_batch_size, cache_blocks=cache_blocks, device=device, compile=compile)
    if compile:  # now, not at the first requests
        compile_engine(engine, console.print)
    app = create_app(engine, tok, name, api_key=api_key, chat_template=load_chat_template(model))
    console.print(f"serving [bold]{name}[/] on {engine.device}: chat page http://{host}:{port}/ , "
                  f"API http://{host}:{port}/v1" + (" (API key required)" if api_key else ""), soft_wrap=True)
    with engine:
        uvicorn.run(app, host=host, port=port, log_level="info")
