"""`llmlab export` and `llmlab info`: commands that take a MODEL (llmlab run dir or HF checkpoint dir)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from llmlab.errors import LlmlabError
from llmlab.model.flops import count_params, flops_per_token
from llmlab.model.io import load_model

console = Console()
MODEL_ARG = typer.Argument(..., help="An llmlab run directory or a Hugging Face checkpoint directory.")


def export(
    model: Path = MODEL_ARG,
    format: str = typer.Option(
        "hf", "--format",
        help="Output format: hf (config.json, model.safetensors, the tokenizer files, chat template and "
             "generation_config.json), as a native HF family (gpt2, llama, mistral, qwen2, bert) when one "
             "expresses the config, else as llmlab remote code (trust_remote_code=True)."),
    out: Path = typer.Option(..., "--out", help="Directory to write."),
) -> None:
    if format != "hf":
        raise LlmlabError(f"--format {format!r} is not supported; supported: hf")
    from llmlab.model.hf.checkpoint import export_hf

    done = export_hf(model, out)
    auto = "AutoModelForCausalLM" if done.causal else "AutoModelForMaskedLM"
    # soft_wrap: no line breaks inside paths or the from_pretrained call, which users copy
    if done.model_type == "llmlab":
        console.print(f"exported {model} -> {done.out_dir} as llmlab remote code (no native HF family expresses this "
                      "config)", soft_wrap=True)
        console.print(f"load with transformers.{auto}.from_pretrained({str(done.out_dir)!r}, trust_remote_code=True)",
                      soft_wrap=True)
    else:
        console.print(f"exported {model} -> {done.out_dir} as HF {done.model_type} (loads with "
                      f"transformers.{auto}.from_pretrained)", soft_wrap=True)
    console.print(f"files: {', '.join(done.files)}", soft_wrap=True)


def info(model: Path = MODEL_ARG) -> None:
    m = load_model(model)
    cfg = m.cfg
    pc = count_params(cfg)
    t = Table(title=str(model))
    t.add_column("field")
    t.add_column("value", justify="right")
    for k, v in cfg.to_dict().items():
        t.add_row(k, str(v))
    t.add_row("parameters", f"{m.num_parameters():,} ({pc.non_embedding:,} non-embedding)")
    t.add_row("training FLOPs/token @ max_seq_len", f"{flops_per_token(cfg):,.0f}")
    console.print(t)
