"""`llmlab bench ...`: runs the scripts in the repository's benchmarks/ folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer

from llmlab.errors import LlmlabError

app = typer.Typer(no_args_is_help=True)


def load_benchmark(name: str):
    """benchmarks/NAME.py from the source checkout (found from the current directory or the package)."""
    here = Path(__file__).resolve()
    for root in (Path.cwd(), *Path.cwd().parents, *here.parents):
        script = root / "benchmarks" / f"{name}.py"
        if script.is_file():
            spec = importlib.util.spec_from_file_location(f"llmlab_bench_{name}", script)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise LlmlabError(f"benchmarks/{name}.py not found: benchmarks live in the source checkout; run from a clone")


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise LlmlabError(f"expected comma-separated integers, got {text!r}") from None


@app.command("attention", help="Forward+backward time and peak memory of naive / sdpa / flash attention.")
def attention(
    seq_lens: str = typer.Option("128,256,512,1024", help="Comma-separated sequence lengths."),
    batch: int = typer.Option(1, min=1),
    heads: int = typer.Option(8, min=1),
    head_dim: int = typer.Option(64, min=1),
    causal: bool = typer.Option(True),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16"),
    block: int = typer.Option(128, help="Flash tile size (block_q = block_k)."),
    repeats: int = typer.Option(3, min=1),
    save: Path = typer.Option(None, help="Also write the results as JSON here (e.g. benchmarks/results/...)."),
) -> None:
    load_benchmark("attention").main(seq_lens=_ints(seq_lens), batch=batch, heads=heads, head_dim=head_dim,
                                     causal=causal, device=device, dtype=dtype, block=block, repeats=repeats,
                                     save=save)


@app.command("tokenizer", help="BPE training time vs HF tokenizers, encoding MB/s vs tiktoken; same text, same vocab.")
def tokenizer(
    vocab_size: int = typer.Option(4096, help="Tokens in all (256 bytes + merges + special tokens)."),
    text_bytes: int = typer.Option(1_000_000, min=1, help="Bytes of text: the inputs repeated as needed."),
    input: list[Path] = typer.Option(None, "--input",
                                     help="UTF-8 text file (repeatable); default: the shipped sample."),
    repeats: int = typer.Option(3, min=1, help="Times are the best of this many runs."),
    save: Path = typer.Option(None, help="Also write the results as JSON here."),
) -> None:
    load_benchmark("tokenizer").main(vocab_size=vocab_size, text_bytes=text_bytes, inputs=input,
                                     repeats=repeats, save=save)
