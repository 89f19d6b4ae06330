"""`llmlab tokenizer train` and `llmlab tokenizer encode`."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from llmlab.errors import LlmlabError
from llmlab.tokenizer import ByteTokenizer, load_tokenizer, train_tokenizer
from llmlab.tokenizer.bpe import bytes_per_token

console = Console()
app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Train and use byte-level BPE tokenizers.")
HELD_OUT = 0.1  # the last 10% of the text (cut at a line end) measures compression and is not trained on


def read_texts(paths: list[Path] | None) -> str:
    if not paths:
        from llmlab.data.samples import sample_text

        return sample_text()
    texts = []
    for p in paths:
        try:
            texts.append(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LlmlabError(f"--input {p}: file does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise LlmlabError(f"--input {p}: cannot read it as UTF-8 text ({e})") from None
    return "\n".join(texts)


@app.command("train", help="Train a byte-level BPE; writes tokenizer.json (HF), tokenizer_config.json and "
                           "tokenizer.tiktoken into --out.")
def train(
    vocab_size: int = typer.Option(4096, "--vocab-size", help="Tokens in all: 256 bytes + merges + special tokens."),
    out: Path = typer.Option(..., "--out", help="Directory to write."),
    input: list[Path] = typer.Option(None, "--input", help="UTF-8 text file (repeatable); default: the shipped "
                                                           "sample text."),
    pattern: str = typer.Option("gpt4", help="Pre-tokenization regex: gpt4, gpt2, or a regex."),
) -> None:
    text = read_texts(input)
    cut = text.rfind("\n", 0, int(len(text) * (1 - HELD_OUT)))
    cut = cut if cut > 0 else int(len(text) * (1 - HELD_OUT))
    train_text, held_out = text[:cut], text[cut:]
    with Progress(TextColumn("[bold]merges"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("merges", total=None)
        start = time.perf_counter()
        tok = train_tokenizer(train_text, vocab_size, pattern=pattern,
                              progress=lambda i, n: bar.update(task, completed=i, total=n))
        seconds = time.perf_counter() - start
    tok.save(out)
    ours, byte = bytes_per_token(tok, held_out), bytes_per_token(ByteTokenizer(), held_out)
    t = Table(title=f"byte-level BPE trained on {len(train_text.encode('utf-8')):,} bytes")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("vocab size", f"{tok.vocab_size:,}" + (f" (asked {vocab_size:,}: out of pairs)"
                                                    if tok.vocab_size < vocab_size else ""))
    t.add_row("merges", f"{len(tok.ranks) - 256:,}")
    t.add_row("special tokens", ", ".join(tok.special_tokens))
    t.add_row("training time", f"{seconds:.2f} s")
    t.add_row(f"held-out bytes/token ({len(held_out.encode('utf-8')):,} bytes)", f"{ours:.2f}")
    t.add_row("byte tokenizer bytes/token", f"{byte:.2f}")
    t.add_row("compression vs bytes", f"{ours / byte:.2f}x fewer tokens")
    t.add_row("written to", str(out))
    console.print(t)


@app.command("encode", help="Print the token ids of --text (special-token text becomes the special ids).")
def encode(
    tokenizer: Path = typer.Argument(..., help="A tokenizer directory (llmlab tokenizer train --out) or an HF "
                                               "checkpoint directory with a byte-level BPE tokenizer.json."),
    text: str = typer.Option(..., "--text", help="The text to encode."),
) -> None:
    tok = load_tokenizer(tokenizer)
    ids = tok.encode(text, allowed_special="all")
    console.print(ids)
    console.print(f"{len(ids)} tokens, {len(text.encode('utf-8'))} bytes")
