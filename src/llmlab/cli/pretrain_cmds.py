"""`llmlab pretrain`: build a TrainConfig from --config and the options given, call llmlab.train.loop.pretrain.

Options left out keep the value of --config, or with --resume the run's own train_config.json, or TrainConfig's
default: `llmlab pretrain --out runs/tiny --resume` continues a run exactly as it was started.
Several processes: `torchrun --nproc_per_node 2 -m llmlab pretrain ... [--strategy fsdp]`; only rank 0 prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from llmlab.errors import ConfigError
from llmlab.train.loop import TRAIN_CONFIG, TrainConfig
from llmlab.train.loop import pretrain as run_pretrain

console = Console()


def _overrides(pairs: list[str]) -> dict:
    """["n_layers=2", "attn_backend=naive"] -> {"n_layers": 2, "attn_backend": "naive"}: values are JSON, else text."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--override {pair!r} must be KEY=VALUE, e.g. --override n_layers=2")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _betas(text: str) -> tuple[float, float]:
    try:
        b1, b2 = (float(b) for b in text.split(","))
    except ValueError:
        raise ConfigError(f"--betas {text!r} must be two numbers, e.g. 0.9,0.95") from None
    return b1, b2


def pretrain(
    config: Path = typer.Option(None, "--config", help="A TrainConfig JSON file; options given override it."),
    data: str = typer.Option(None, "--data", help="Shard directory from `llmlab data prepare`."),
    out: str = typer.Option(None, "--out", help="Run directory [default: runs/pretrain]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    tokenizer: str = typer.Option(None, "--tokenizer", help="The data's tokenizer directory (not for byte data)."),
    preset: str = typer.Option(None, "--preset", help="Model size: tiny, small, gpt2-124m [default: tiny]."),
    style: str = typer.Option(None, "--style", help="Model family: gpt2, llama, mistral, qwen2, mixtral, "
                                                    "qwen2-moe [default per preset]."),
    override: list[str] = typer.Option(None, "--override", help="A model config field, KEY=VALUE (repeatable)."),
    steps: int = typer.Option(None, "--steps", help="Optimizer steps (max_steps) [default: 200]."),
    batch_size: int = typer.Option(None, "--batch-size", help="Sequences per micro-batch and process [8]."),
    seq_len: int = typer.Option(None, "--seq-len", help="Tokens per sequence [128]."),
    grad_accum: int = typer.Option(None, "--grad-accum", help="Micro-batches per optimizer step [1]."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate [3e-3]."),
    min_lr: float = typer.Option(None, "--min-lr", help="Learning rate at the end of the decay [3e-4]."),
    schedule: str = typer.Option(None, "--schedule", help="cosine, linear, wsd, constant [cosine]."),
    warmup_steps: int = typer.Option(None, "--warmup-steps", help="Linear warmup steps [5% of --steps]."),
    decay_steps: int = typer.Option(None, "--decay-steps", help="WSD's final decay length [20% of steps]."),
    weight_decay: float = typer.Option(None, "--weight-decay", help="AdamW weight decay on matrices [0.1]."),
    betas: str = typer.Option(None, "--betas", help="AdamW betas, e.g. 0.9,0.95."),
    grad_clip: float = typer.Option(None, "--grad-clip", help="Max global gradient norm, 0 = off [1.0]."),
    eval_interval: int = typer.Option(None, "--eval-interval", help="Steps between val evaluations, 0 = off [50]."),
    eval_batches: int = typer.Option(None, "--eval-batches", help="Val batches per evaluation [8]."),
    sample_interval: int = typer.Option(None, "--sample-interval", help="Steps between samples, 0 = off [100]."),
    sample_tokens: int = typer.Option(None, "--sample-tokens", help="Tokens per sample [64]."),
    prompt: str = typer.Option(None, "--prompt", help="Text the samples continue [none: a document start]."),
    checkpoint_interval: int = typer.Option(None, "--checkpoint-interval", help="Steps between checkpoints [100]."),
    keep_checkpoints: int = typer.Option(None, "--keep-checkpoints", help="Checkpoints kept [2]."),
    spike_warnings: bool = typer.Option(None, "--spike-warnings/--no-spike-warnings",
                                        help="Print a line when the loss or grad norm spikes [yes]."),
    dtype: str = typer.Option(None, "--dtype", help="float32 or bfloat16 (autocast) [float32]."),
    compile: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile the model [no]."),
    activation_checkpointing: bool = typer.Option(None, "--activation-checkpointing/--no-activation-checkpointing",
                                                  help="Recompute activations in backward [no]."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1 ... [auto]."),
    strategy: str = typer.Option(None, "--strategy", help="Under torchrun: ddp (replicate) or fsdp (shard) [ddp]."),
    peak_tflops: float = typer.Option(None, "--peak-tflops", help="Peak TFLOPS for MFU [datasheet or measured]."),
    seed: int = typer.Option(None, "--seed", help="Seed of the weights and the batch order [0]."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar and samples."),
) -> None:
    given = dict(data=data, out_dir=out, tokenizer=tokenizer, preset=preset, style=style, max_steps=steps,
                 batch_size=batch_size, seq_len=seq_len, grad_accum=grad_accum, lr=lr, min_lr=min_lr,
                 schedule=schedule, warmup_steps=warmup_steps, decay_steps=decay_steps, weight_decay=weight_decay,
                 betas=_betas(betas) if betas else None, grad_clip=grad_clip, eval_interval=eval_interval,
                 eval_batches=eval_batches, sample_interval=sample_interval, sample_tokens=sample_tokens,
                 sample_prompt=prompt, checkpoint_interval=checkpoint_interval, keep_checkpoints=keep_checkpoints,
                 spike_warnings=spike_warnings, dtype=dtype, compile=compile,
                 activation_checkpointing=activation_checkpointing, device=device, strategy=strategy,
                 peak_tflops=peak_tflops, seed=seed)
    given = {k: v for k, v in given.items() if v is not None}
    if config is not None:
        base = TrainConfig.from_json(config).to_dict()
    elif resume and out is not None and (Path(out) / TRAIN_CONFIG).is_file():
        base = TrainConfig.from_json(Path(out) / TRAIN_CONFIG).to_dict()
    else:
        base = {}
    if override:
        base["model_overrides"] = {**base.get("model_overrides", {}), **_overrides(override)}
    if "data" not in {**base, **given}:
        raise ConfigError("--data is required (a shard directory from `llmlab data prepare`), or --config FILE")
    result = run_pretrain(TrainConfig.from_dict({**base, **given}), resume=resume, progress=progress)
    if not result.is_main:
        return

    t = Table(title=f"llmlab pretrain -> {result.out_dir}")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("steps", f"{result.steps:,}")
    if result.losses:
        t.add_row("train loss (first -> last step of this run)", f"{result.losses[0]:.4f} -> {result.losses[-1]:.4f}")
    if result.val_loss is not None:
        t.add_row("val loss / perplexity", f"{result.val_loss:.4f} / {result.val_ppl:,.2f}")
    t.add_row("throughput", f"{result.tokens_per_s:,.0f} tokens/s ({result.seconds:.1f} s)")
    t.add_row("MFU", f"{result.mfu:.1%} of {result.peak.tflops:,.2f} TFLOPS ({result.peak.source})")
    t.add_row("load with", f"llmlab.load_model({str(result.out_dir)!r})")
    console.print(t)
