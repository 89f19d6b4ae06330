"""`llmlab sft` and `llmlab data sft` / `llmlab data prefs`: parse options, call llmlab.posttrain, print the result."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
chat_data_app = typer.Typer(no_args_is_help=True)


def _tasks(text: str) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] or None


def _write(kind: str, out: Path, n: int, seed: int, tasks: str, val_fraction: float) -> None:
    from llmlab.posttrain.chat_data import write_set

    manifest = write_set(out, kind, n, seed, _tasks(tasks), val_fraction)
    table = Table(title=f"{kind} set in {out} (seed {seed})")
    for name in ("split", "examples", "per task", "sha256"):
        table.add_column(name, justify="right" if name == "examples" else "left")
    for split, f in manifest["files"].items():
        table.add_row(split, f"{f['examples']:,}", ", ".join(f"{t} {c}" for t, c in f["per_task"].items()),
                      f["sha256"][:16])
    console.print(table)


@chat_data_app.command("sft", help="Write a generated chat SFT set (messages JSONL with checkable answers): "
                       "OUT/train.jsonl, OUT/val.jsonl, OUT/manifest.json.")
def data_sft(
    out: Path = typer.Option(..., "--out", help="Output directory."),
    n: int = typer.Option(2000, "--n", help="Examples in all (train + val)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed writes the same files."),
    tasks: str = typer.Option("", "--tasks", help="Comma-separated tasks (default: all): add,sub,mul,count_letter,"
                              "count_words,upper,reverse_words,json_fields,next_line,chitchat."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share held out as val.jsonl."),
) -> None:
    _write("sft", out, n, seed, tasks, val_fraction)


@chat_data_app.command("prefs", help="Write a generated preference set (prompt/chosen/rejected JSONL; rejected is a "
                       "plausible wrong answer): OUT/train.jsonl, OUT/val.jsonl, OUT/manifest.json.")
def data_prefs(
    out: Path = typer.Option(..., "--out", help="Output directory."),
    n: int = typer.Option(2000, "--n", help="Pairs in all (train + val)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed writes the same files."),
    tasks: str = typer.Option("", "--tasks", help="Comma-separated tasks (default: all)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share held out as val.jsonl."),
) -> None:
    _write("prefs", out, n, seed, tasks, val_fraction)


def sft(
    model: str = typer.Argument(..., help="MODEL: an llmlab run dir or an HF checkpoint dir."),
    data: str = typer.Option(..., "--data", help="messages JSONL, a set dir from `llmlab data sft` (its val.jsonl "
                             "is the validation set), a saved HF dataset or an HF dataset name."),
    out: str = typer.Option(..., "--out", help="Run directory to write (model, tokenizer/, sft_metrics.json)."),
    val: str = typer.Option(None, "--val", help="Validation data, same forms as --data."),
    steps: int = typer.Option(200, "--steps", help="Optimizer steps."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (cosine decay to lr/10)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per step."),
    max_len: int = typer.Option(None, "--max-len", help="Tokens kept per example [the model's max_seq_len]."),
    lora: bool = typer.Option(False, "--lora", help="Train LoRA adapters (merged into the saved weights)."),
    lora_r: int = typer.Option(8, "--lora-r", help="LoRA rank."),
    lora_alpha: float = typer.Option(16.0, "--lora-alpha", help="LoRA alpha (scale alpha/r)."),
    packing: bool = typer.Option(False, "--packing", help="Pack several examples per row (needs segment masks)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip invalid records (counted) instead of stopping."),
    accuracy: int = typer.Option(0, "--accuracy", help="Greedy-decode this many graded val examples before/after."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights' LoRA init and the batch order."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, auto."),
) -> None:
    from llmlab.posttrain.sft import train_sft

    r = train_sft(model, data, out, steps=steps, lr=lr, batch_size=batch_size, lora=lora, lora_r=lora_r,
                  lora_alpha=lora_alpha, val_data=val, max_len=max_len, seed=seed,
                  on_error="skip" if skip_bad else "raise", packing=packing, accuracy_examples=accuracy,
                  device=device)
    t = Table(title=f"llmlab sft -> {r.out_dir}")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("examples train / val", f"{r.train_examples:,} / {r.val_examples:,}")
    if r.skipped or r.dropped:
        t.add_row("skipped (invalid) / dropped (no assistant token in max_len)", f"{r.skipped} / {r.dropped}")
    t.add_row("trainable / total parameters", f"{r.trainable_params:,} / {r.total_params:,}" + (" (LoRA)" * r.lora))
    t.add_row("train loss (first -> last step)", f"{r.losses[0]:.4f} -> {r.losses[-1]:.4f}")
    if r.val_loss_before is not None:
        t.add_row("val loss (before -> after)", f"{r.val_loss_before:.4f} -> {r.val_loss_after:.4f}")
    if r.accuracy_before is not None:
        t.add_row(f"val accuracy, {r.accuracy_after['n']} graded (before -> after)",
                  f"{r.accuracy_before['accuracy']:.1%} -> {r.accuracy_after['accuracy']:.1%}")
    t.add_row("time", f"{r.seconds:.1f} s")
    console.print(t)
    for line in r.skipped_reasons[:5]:
        console.print(f"skipped {line}", style="yellow", markup=False, highlight=False)
