"""`llmlab eval ...`: evaluate a MODEL (llmlab run dir or HF checkpoint dir) on the user's text."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from llmlab.cli.model_cmds import MODEL_ARG
from llmlab.errors import LlmlabError
from llmlab.eval.perplexity import evaluate_text
from llmlab.model.io import load_model
from llmlab.tokenizer import find_tokenizer

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)  # help text is plain: "[8]" is a default, not markup
console = Console()


@app.callback()
def evaluate() -> None:
    """Evaluate MODEL on text: perplexity (strided sliding window) and bits per byte."""


@app.command("perplexity", help="Perplexity and bits per byte of MODEL on a text file, HF's strided sliding window.")
def perplexity(
    model: Path = MODEL_ARG,
    data: Path = typer.Option(..., "--data", help="A .txt file, or .jsonl with a \"text\" field per line."),
    max_length: int = typer.Option(None, "--max-length", help="Tokens per window (default: the model's max_seq_len)."),
    stride: int = typer.Option(None, "--stride", help="Window step; < max-length overlaps (default: max-length // 2)."),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="Tokenizer dir (default: MODEL's own, or bytes)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Windows per forward pass."),
) -> None:
    text = read_eval_text(data)
    m = load_model(model)
    tok = find_tokenizer(model, m.cfg.vocab_size, tokenizer)
    max_length = m.cfg.max_seq_len if max_length is None else max_length
    stride = max(1, max_length // 2) if stride is None else stride
    with Progress(TextColumn("[bold]windows"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("eval", total=None)
        report = evaluate_text(m, tok, text, max_length=max_length, stride=stride, batch_size=batch_size,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
    r = report.perplexity
    t = Table(title=f"perplexity of {model} on {data.name} — max_length {max_length}, stride {stride}")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("tokens (scored / in text)", f"{r.n_tokens:,} / {r.n_input_tokens:,}")
    t.add_row("windows", f"{r.n_windows:,}")
    t.add_row("nll / token (nats)", f"{r.nll:.4f}")
    t.add_row("perplexity", f"{r.ppl:.4f}")
    t.add_row("perplexity, HF guide's weighting", f"{r.hf_guide_ppl:.4f}")
    t.add_row("bits / token", f"{r.bits_per_token:.4f}")
    t.add_row("bits / byte", f"{report.bits_per_byte:.4f}  ({report.n_bytes:,} bytes)")
    console.print(t)


def read_eval_text(path: Path) -> str:
    """A .txt file whole, or a .jsonl file's "text" fields joined by blank lines (as the HF guide joins WikiText)."""
    from llmlab.data.load import JSONL_SUFFIXES, TEXT_SUFFIXES, read_jsonl, read_text

    if path.is_dir():
        raise LlmlabError(f"--data {path} is a directory: give a .txt or .jsonl file")
    if not path.is_file():
        raise LlmlabError(f"--data {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return read_text(path)
    if suffix in JSONL_SUFFIXES:
        return "\n\n".join(doc.text for doc in read_jsonl(path))
    raise LlmlabError(f"--data {path}: expected a .txt or .jsonl file, got {suffix or 'no suffix'!r}")
