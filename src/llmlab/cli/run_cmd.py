"""`llmlab run`: the main job."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from llmlab.pipeline import run as run_pipeline

console = Console()


def run(
    preset: str = typer.Option("tiny", help="Model size: tiny, small, gpt2-124m."),
    style: str = typer.Option(None, help="Model family: gpt2, llama, mistral, qwen2, bert (default per preset)."),
    steps: int = typer.Option(200, min=0, help="AdamW steps on the sample text."),
    batch: int = typer.Option(8, min=1),
    seq_len: int = typer.Option(128, min=2),
    backend: str = typer.Option(None, help="Attention backend: naive, sdpa (default), flash."),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/tiny"), help="Run directory to write the model to."),
) -> None:
    with Progress(TextColumn("[bold]training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))
        report = run_pipeline(size=preset, style=style, steps=steps, batch=batch, seq_len=seq_len,
                              backend=backend, seed=seed, out_dir=out,
                              progress=lambda i, n, loss: bar.update(task, completed=i, loss=loss))
    cfg = report.cfg
    t = Table(title=f"llmlab run — preset {preset}, {cfg.arch}, {report.tokens_in_text:,} tokens of real text")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("shape", f"d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads / {cfg.n_kv_heads} kv")
    t.add_row("design", f"{cfg.position} positions, {cfg.norm} ({cfg.norm_position}), "
                        f"{'gated ' if cfg.gated_mlp else ''}{cfg.activation} MLP, attention: {cfg.attn_backend}")
    t.add_row("parameters", f"{report.params:,} ({report.non_embedding_params:,} non-embedding)")
    t.add_row("training FLOPs / token", f"{report.train_flops_per_token:,.0f}  (6N + 12·L·H·D·T, T={seq_len})")
    t.add_row("val loss before (ln V)", f"{report.initial_val_loss:.3f}  ({report.uniform_loss:.3f})")
    if steps:
        t.add_row(f"train loss step 1 → {steps}", f"{report.step_losses[0]:.3f} → {report.step_losses[-1]:.3f}")
        t.add_row("val loss after", f"{report.final_val_loss:.3f}")
        t.add_row("throughput", f"{report.tokens_per_second:,.0f} tokens/s  ({report.step_seconds:.1f} s)")
    t.add_row("run directory", str(report.out_dir))
    console.print(t)
