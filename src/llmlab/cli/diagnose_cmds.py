"""`llmlab diagnose RUN_DIR`: check a pretraining run's curves (llmlab.train.health) and say what went wrong.

Prints a table of findings, or "healthy: no findings" with the run's key numbers; writes RUN_DIR/health.json (and
health.png: the loss curve with a dashed line at each finding). Exit code 1 when a finding is an error, else 0.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from llmlab.train.health import ERROR, HEALTH_JSON, HEALTH_PNG, diagnose_run

console = Console()


def _number(value: float | int | None, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def diagnose(
    run_dir: Path = typer.Argument(..., help="A run directory written by `llmlab pretrain` (holds metrics.jsonl)."),
    unigram_loss: float = typer.Option(None, "--unigram-loss", help="The data's unigram baseline in nats/token "
                                       "(llmlab.eval.baselines); enables the check that the loss goes below it."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help=f"Write RUN_DIR/{HEALTH_PNG} with the findings marked."),
) -> None:
    report = diagnose_run(run_dir, unigram_loss=unigram_loss, plot=plot)
    s = report.summary
    numbers = (f"{s['steps']:,} steps, loss {_number(s['first_loss'])} -> {_number(s['last_loss'])}, min val loss "
               f"{_number(s['min_val_loss'])}, {s['loss_spikes']} loss spikes, {s['grad_spikes']} grad-norm spikes")
    if report.findings:
        t = Table(title=f"llmlab diagnose {run_dir}: {len(report.findings)} finding(s)", caption=numbers)
        for name in ("step", "severity", "kind", "what happened, what to try"):
            t.add_column(name, justify="right" if name == "step" else "left", overflow="fold")
        for f in report.findings:
            color = "red" if f.severity == ERROR else "yellow"
            t.add_row(f"{f.step:,}", f.severity, f.kind, Text(f.message), style=color)  # Text: no markup parsing
        console.print(t)
    else:
        console.print(f"healthy: no findings ({numbers})", markup=False, highlight=False)
    console.print(f"report: {Path(run_dir) / HEALTH_JSON}" + (f", plot: {Path(run_dir) / HEALTH_PNG}" if plot else ""),
                  markup=False, highlight=False)
    if not report.ok:
        raise typer.Exit(1)
