"""`llmlab data judge`: label preference pairs with an AI judge behind an OpenAI-compatible endpoint (RLAIF)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def judge(
    pairs: Path = typer.Argument(..., help="JSONL of {prompt, a, b} records (or prompt/chosen/rejected to re-judge a "
                                 "preference set); prompt and responses as text or message lists."),
    out: Path = typer.Option(..., "--out", help="DPO pairs JSONL to write (prompt, chosen, rejected, meta); the "
                             "summary goes beside it as OUT.summary.json."),
    base_url: str = typer.Option(..., "--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 "
                                 "(`llmlab serve`, vLLM, OpenAI)."),
    model: str = typer.Option(..., "--model", help="The judge model's name at the endpoint."),
    api_key: str = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="API key, if the endpoint needs one."),
    workers: int = typer.Option(4, "--workers", help="Requests in flight at a time."),
    no_logprobs: bool = typer.Option(False, "--no-logprobs", help="Do not ask for log-probs (for endpoints that "
                                     "reject them); verdicts are then read from the text only."),
) -> None:
    from llmlab.posttrain.rlaif import Judge, judge_file, summary_path

    s = judge_file(pairs, out, Judge(model, base_url=base_url, api_key=api_key, logprobs=not no_logprobs), workers)
    t = Table(title=f"llmlab data judge -> {out} ({s['requests']} requests to {model}, {s['seconds']:.1f} s)")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    for name in ("pairs", "labelled", "inconsistent", "ties", "unparseable"):
        t.add_row(name if name != "inconsistent" else "inconsistent (verdict flips with the order)", f"{s[name]:,}")
    if s["agreement_with_given"] is not None:
        t.add_row("labelled as the input's chosen", f"{s['agreement_with_given']:.1%}")
    console.print(t)
    for text in s["unparseable_answers"]:
        console.print(f"unparseable answer: {text!r}", style="yellow", markup=False, highlight=False)
    console.print(f"summary: {summary_path(out)}", markup=False, highlight=False)
