"""`llmlab run`: the main job (see llmlab/pipeline.py for the stages)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from llmlab.pipeline import RunConfig, RunReport
from llmlab.pipeline import run as run_pipeline

console = Console()


def run(
    preset: str = typer.Option("tiny", help="Model size: tiny, small, gpt2-124m."),
    style: str = typer.Option(None, help="Model family: gpt2, llama, mistral, qwen2, mixtral, "
                                         "qwen2-moe (default per preset)."),
    out: Path = typer.Option(None, help="Run directory (default: runs/PRESET); rerunning reuses finished stages."),
    input: list[Path] = typer.Option(None, "--input", help="Text/JSONL files instead of the default corpus."),
    vocab_size: int = typer.Option(4096, min=300, help="BPE vocabulary size."),
    steps: int = typer.Option(1200, min=1, help="Pretraining steps."),
    batch_size: int = typer.Option(16, min=1),
    seq_len: int = typer.Option(256, min=8),
    lr: float = typer.Option(3e-3, min=0.0),
    backend: str = typer.Option(None, help="Attention backend: naive, sdpa (default), flash."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0),
    sft_steps: int = typer.Option(300, min=0, help="SFT steps on the generated chat tasks (0: no post-training)."),
    dpo_steps: int = typer.Option(150, min=0, help="DPO steps from the SFT model (0: skip)."),
    rpo_alpha: float = typer.Option(1.0, min=0.0, help="Weight of RPO's chosen-answer NLL in DPO (0: plain DPO)."),
    grpo_steps: int = typer.Option(60, min=0, help="GRPO steps from the SFT model (0: skip)."),
    compress: str = typer.Option("int8,rtn,gptq,awq,nf4", "--compress",
                                 help="Quantization methods for the pretrained model, comma-separated ('': skip)."),
) -> None:
    out = Path("runs") / preset if out is None else out
    cfg = RunConfig(out_dir=str(out), inputs=[str(p) for p in input] if input else None, vocab_size=vocab_size,
                    preset=preset, style=style, backend=backend, batch_size=batch_size, seq_len=seq_len,
                    max_steps=steps, lr=lr, eval_interval=max(steps // 6, 1), seed=seed, device=device,
                    sft_steps=sft_steps, dpo_steps=dpo_steps, dpo_rpo_alpha=rpo_alpha, grpo_steps=grpo_steps,
                    compress_methods=tuple(m.strip() for m in compress.split(",") if m.strip()))
    report = run_pipeline(cfg, console)
    console.print(summary(report, cfg))
    if report.posttrain:
        console.print(posttrain_table(report))
    if report.compression:
        console.print(compression_table(report))


def summary(r: RunReport, cfg: RunConfig) -> Table:
    t = Table(title=f"llmlab run: {cfg.preset} preset -> {r.out_dir}")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("parameters", f"{r.params:,}")
    t.add_row("train tokens in corpus / seen", f"{r.train_tokens:,} / {r.tokens_seen:,} ({r.steps} steps)")
    t.add_row("tokenizer", f"{cfg.vocab_size:,}-token BPE, {r.bytes_per_token:.2f} bytes/token on val")
    t.add_row("val loss (nats/token)", f"{r.val_loss:.3f}")
    t.add_row("val perplexity", f"{r.val_ppl:,.1f}")
    t.add_row("val bits per byte", f"{r.bits_per_byte:.3f}")
    gain = r.unigram_loss - r.val_loss
    t.add_row("unigram baseline loss", f"{r.unigram_loss:.3f}  (the model is {gain:+.3f} nats/token better)")
    t.add_row("uniform baseline loss (ln V)", f"{r.uniform_loss:.3f}")
    t.add_row("throughput", f"{r.tokens_per_s:,.0f} tokens/s, MFU {r.mfu:.1%}"
              + (f", {r.train_seconds / 60:.1f} min" if r.train_seconds else ""))
    if r.reused:
        t.add_row("reused stages", ", ".join(r.reused))
    for prompt, text in r.samples.items():
        t.add_row(f"sample: {prompt!r}", text.replace("\n", " ⏎ "))
    return t


def posttrain_table(r: RunReport) -> Table:
    """One row per model, each measured on the same held-out tasks and pairs (llmlab.pipeline.measure_chat_model)."""
    first = r.posttrain[0]
    t = Table(title=f"post-training: {first['n']} held-out tasks, {first.get('pref_pairs', 0)} held-out pairs")
    for name in ("model", "task accuracy (greedy)", "task accuracy (sampled, T=1)", "preference accuracy", "time"):
        t.add_column(name, justify="left" if name == "model" else "right")
    for row in r.posttrain:
        pref = f"{row['pref_accuracy']:.1%}" if "pref_accuracy" in row else "-"
        secs = f"{row['seconds']:.0f} s" if row.get("seconds") is not None else "-"
        t.add_row(row["stage"], f"{row['accuracy']:.1%}", f"{row['sampled_accuracy']:.1%}", pref, secs)
    return t


def compression_table(r: RunReport) -> Table:
    """One row per quantization method of the pretrained model (llmlab.pipeline.compress), fp32 first."""
    base = r.compression[0]["ppl"]
    t = Table(title="compression of the pretrained model: val loss on the held-out windows of stage 5")
    for name in ("method", "grid", "bits / weight", "val loss", "perplexity", "delta ppl", "time"):
        t.add_column(name, justify="left" if name in ("method", "grid") else "right")
    for row in r.compression:
        delta = "" if row["method"] == "fp32" else f"{row['ppl'] - base:+.2f}"
        secs = f"{row['seconds']:.0f} s" if row.get("seconds") is not None else "-"
        t.add_row(row["method"], row.get("grid", "-"), f"{row['bits_per_weight']:.2f}", f"{row['val_loss']:.4f}",
                  f"{row['ppl']:.2f}", delta, secs)
    return t

