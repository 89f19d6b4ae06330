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
MODEL_ARG = typer.Argument(..., help="An llmlab run directory or a Hugging Face checkpoint directory "
                                     "(info: also a .gguf file).")


def export(
    model: Path = MODEL_ARG,
    format: str = typer.Option(
        "hf", "--format",
        help="Output format: hf (config.json, model.safetensors, the tokenizer files, chat template and "
             "generation_config.json), as a native HF family (gpt2, llama, mistral, qwen2, bert) when one "
             "expresses the config, else as llmlab remote code (trust_remote_code=True); gguf (one file for "
             "llama.cpp: architecture llama, qwen2 or gpt2, with the tokenizer and chat template)."),
    out: Path = typer.Option(..., "--out", help="Directory to write (hf), or the .gguf file (gguf)."),
    dtype: str = typer.Option(
        None, "--dtype", help="gguf only: f32, f16 (default), bf16 or q8_0 for the matrices; norms and biases stay "
                              "f32, as llama.cpp's convert_hf_to_gguf.py writes them."),
) -> None:
    if format not in ("hf", "gguf"):
        raise LlmlabError(f"--format {format!r} is not supported; supported: hf, gguf")
    if format == "gguf":
        from llmlab.model.gguf import export_gguf

        done = export_gguf(model, out, dtype or "f16")
        console.print(f"exported {model} -> {done.path} as GGUF {done.arch} ({dtype or 'f16'}): {done.n_tensors} "
                      f"tensors, {done.n_bytes / 2**20:.2f} MiB ({done.n_bytes:,} bytes)", soft_wrap=True)
        return
    if dtype is not None:
        raise LlmlabError("--dtype applies to --format gguf; --format hf keeps the model's float32 weights")
    from llmlab.model.hf.checkpoint import export_hf

    done = export_hf(model, out)
    auto = done.auto_class
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
    if pc.inactive_experts:  # MoE: what one token computes with, the FLOPs below count these
        t.add_row("active parameters per token", f"{pc.active:,} ({cfg.n_experts_per_tok} of {cfg.n_experts} experts)")
    t.add_row("training FLOPs/token @ max_seq_len", f"{flops_per_token(cfg):,.0f}")
    console.print(t)
