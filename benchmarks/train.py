"""Training step head to head: our Transformer + our loss, clipping and AdamW vs the same model in HF transformers.

Both models have the same family, shape and weights (ours exported with `save_hf_model`, loaded with
`AutoModelForCausalLM.from_pretrained(..., attn_implementation="sdpa")`; parameter counts asserted equal) and train
on the same (B, T) token batch with the same optimizer settings (`TrainConfig` defaults, the same decay groups).
One step, timed end to end:
    ours: logits = model(x); next_token_loss(logits, x).backward(); llmlab clip_grad_norm_; llmlab AdamW step
    HF:   model(x, labels=x).loss.backward(); torch clip_grad_norm_; torch.optim.AdamW step
Timing interleaves the two step by step (ours, HF, ours, HF, ... and HF first in every other round), so noise from a
shared machine hits both; step time is the median over all timed steps. Tokens per step = B x T (the inputs).
MFU = flops_per_token(cfg, T) x tokens/s / peak (`llmlab.train.mfu`; on CPU a measured fp32 matmul peak).
Peak memory is measured per model in a fresh process, one step above what the weights and optimizer state hold:
CUDA max_memory_allocated; CPU the peak resident set (Linux VmHWM) over the one before (coarse: allocator caching).
Run: `llmlab bench train` (options: --preset, --style, --batch-size, --seq-len, --steps, --device, --dtype, --save).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

WHO = ("ours", "hf")


def pretrain_defaults() -> dict:
    """`llmlab pretrain`'s defaults (TrainConfig's fields): lr, betas, eps, weight_decay, grad_clip."""
    import dataclasses

    from llmlab.train.loop import TrainConfig

    return {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def build(who: str, preset_name: str, style: str, vocab_size: int, device: str):
    """(model, optimizer) on `device`: ours from the preset (seed 0); HF loaded from that model's HF export."""
    import torch

    from llmlab import Transformer
    from llmlab.model.hf import save_hf_model
    from llmlab.model.presets import preset
    from llmlab.train.optim import AdamW, param_groups_for_weight_decay

    torch.manual_seed(0)
    model = Transformer(preset(preset_name, style, vocab_size=vocab_size))
    if who == "hf":
        from transformers import AutoModelForCausalLM

        with tempfile.TemporaryDirectory() as d:
            save_hf_model(model, d)
            model = AutoModelForCausalLM.from_pretrained(d, attn_implementation="sdpa")
    model = model.to(device).train()  # from_pretrained returns eval mode
    tc = pretrain_defaults()  # the same optimizer settings for both
    groups = param_groups_for_weight_decay(model, tc["weight_decay"])  # matrices decayed, vectors not: both models
    opt_cls = AdamW if who == "ours" else torch.optim.AdamW
    return model, opt_cls(groups, lr=tc["lr"], betas=tc["betas"], eps=tc["eps"])


def make_step(who: str, model, optimizer, dtype: str, device: str, compile: bool):
    """(backward, update) for a (B, T) batch: backward(x) runs forward, loss and backward and returns the loss;
    update() clips the gradients, steps the optimizer and clears the gradients. A training step is the two."""
    import torch

    from llmlab.model.loss import next_token_loss
    from llmlab.train.optim import clip_grad_norm_

    clip = pretrain_defaults()["grad_clip"]
    forward = torch.compile(model) if compile else model
    device_type = torch.device(device).type

    def autocast():
        return torch.autocast(device_type, getattr(torch, dtype)) if dtype != "float32" else nullcontext()

    def ours_backward(x):
        with autocast():
            logits = forward(x)  # (B, T, V)
        loss = next_token_loss(logits, x)  # position t scored against token t + 1
        loss.backward()
        return loss

    def hf_backward(x):
        with autocast():
            loss = forward(input_ids=x, labels=x).loss  # HF shifts the labels itself
        loss.backward()
        return loss

    def update():
        if who == "ours":
            clip_grad_norm_(model.parameters(), clip)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()  # ours: llmlab.train.optim.AdamW; HF: torch.optim.AdamW
        optimizer.zero_grad(set_to_none=True)

    return (ours_backward if who == "ours" else hf_backward), update


def train_step(step, x):
    """One full step with `make_step`'s pair; returns the loss."""
    backward, update = step
    loss = backward(x)
    update()
    return loss


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_memory(who: str, preset: str, style: str, vocab_size: int, batch_size: int, seq_len: int, dtype: str,
                device: str, compile: bool) -> dict:
    """Memory of one step in this (fresh) process, above the weights and optimizer state."""
    import torch

    from llmlab.memory import peak_memory as measure_peak

    model, optimizer = build(who, preset, style, vocab_size, device)
    step = make_step(who, model, optimizer, dtype, device, compile)
    x = torch.randint(vocab_size, (batch_size, seq_len), device=device)
    # libraries, kernels and optimizer state first; on CPU with a small batch, so the allocator holds no freed
    # full-size buffers that the measured step could reuse without growing the resident set
    small = not compile and not device.startswith("cuda")
    train_step(step, x[:1, :16] if small else x)
    sync(device)
    with measure_peak(device) as peak:
        train_step(step, x)
    return {"who": who, "peak_mib": peak.mib}


def main(preset: str = "tiny", style: str | None = None, vocab_size: int = 4096, batch_size: int = 8,
         seq_len: int = 128, steps: int = 20, warmup: int = 3, rounds: int = 3, dtype: str = "float32",
         device: str = "cpu", compile: bool = False, save: Path | None = None) -> dict:
    """`save`: a JSON file of runs; a run with the same settings already in it is replaced, others are kept."""
    import torch
    import transformers
    from rich.console import Console
    from rich.table import Table

    from llmlab.errors import ConfigError
    from llmlab.model.flops import count_params, flops_per_token
    from llmlab.model.loss import next_token_loss
    from llmlab.model.presets import DEFAULT_STYLE
    from llmlab.model.presets import preset as preset_config
    from llmlab.train.loop import DTYPES
    from llmlab.train.mfu import Peak, measure_tflops, mfu, peak

    console = Console()
    style = style or DEFAULT_STYLE[preset]
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} must be one of {', '.join(DTYPES)} (bfloat16: autocast, fp32 weights)")

    cfg = preset_config(preset, style, vocab_size=vocab_size)
    if not cfg.causal:
        raise ConfigError(f"style={style!r} is an encoder; this benchmark trains causal LMs (gpt2, llama, mistral, "
                          "qwen2)")
    if seq_len > cfg.max_seq_len:
        raise ConfigError(f"seq_len={seq_len} exceeds the {preset} preset's max_seq_len={cfg.max_seq_len}")
    transformers.logging.disable_progress_bar()
    with console.status("building both models"):
        built = {who: build(who, preset, style, vocab_size, device) for who in WHO}
    models = {who: built[who][0] for who in WHO}
    cfg = models["ours"].cfg
    n_params = {who: sum(p.numel() for p in m.parameters()) for who, m in models.items()}
    if n_params["ours"] != n_params["hf"]:
        raise RuntimeError(f"parameter counts differ: ours {n_params['ours']:,}, HF {n_params['hf']:,}")
    x = torch.randint(vocab_size, (batch_size, seq_len), device=device,
                      generator=torch.Generator(device).manual_seed(0))  # (B, T), the same batch every step
    with torch.no_grad():  # same weights => same loss before training, to rounding (fp32, no autocast here)
        start_loss = {"ours": next_token_loss(models["ours"](x), x).item(),
                      "hf": models["hf"](input_ids=x, labels=x).loss.item()}
    if abs(start_loss["ours"] - start_loss["hf"]) > 1e-3:
        raise RuntimeError(f"the models disagree before training: loss ours {start_loss['ours']:.5f}, "
                           f"HF {start_loss['hf']:.5f}; the export did not give the same model")

    step = {who: make_step(who, *built[who], dtype, device, compile) for who in WHO}
    times: dict[str, list[list[float]]] = {who: [] for who in WHO}  # whole steps: per round, per step, seconds
    update_times: dict[str, list[float]] = {who: [] for who in WHO}  # the clip + optimizer part of each step
    with console.status(f"warm-up: {warmup} steps each"):
        for who in WHO:
            for _ in range(warmup):
                train_step(step[who], x)
            sync(device)
    load_start = os.getloadavg()[0]  # 1-minute load average: how busy the shared machine was
    cpu_peaks = []  # CPU: the matmul peak is measured once per round too, and the best kept
    for r in range(rounds):
        order = WHO if r % 2 == 0 else WHO[::-1]  # step by step: A B A B ... in even rounds, B A B A ... in odd
        for who in WHO:
            times[who].append([])
        with console.status(f"round {r + 1}/{rounds}: {steps} steps each, interleaved"):
            for _ in range(steps):
                for who in order:
                    backward, update = step[who]
                    sync(device)
                    t0 = time.perf_counter()
                    backward(x)
                    sync(device)
                    t1 = time.perf_counter()
                    update()
                    sync(device)
                    times[who][-1].append(time.perf_counter() - t0)
                    update_times[who].append(time.perf_counter() - t1)
            if device == "cpu":
                cpu_peaks.append(measure_tflops.__wrapped__("cpu", torch.float32, 1024))  # uncached
    load_end = os.getloadavg()[0]
    end_loss = {who: train_step(step[who], x).item() for who in WHO}  # equal weights, equal steps: close

    with console.status("peak memory: one step per model in a fresh process"):
        memory = {}
        for who in WHO:
            args = dict(who=who, preset=preset, style=style, vocab_size=vocab_size, batch_size=batch_size,
                        seq_len=seq_len, dtype=dtype, device=device, compile=compile)
            done = subprocess.run([sys.executable, __file__, json.dumps(args)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"memory worker failed for {who}:\n{done.stderr[-2000:]}")
            memory[who] = json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]

    pk = peak(torch.device(device))
    if cpu_peaks:
        pk = Peak(max(cpu_peaks + [pk.tflops]), f"{pk.source}, best of {len(cpu_peaks) + 1} measured between rounds")
    fpt = flops_per_token(cfg, seq_len)
    tokens = batch_size * seq_len
    results = {}
    for who in WHO:
        step_s = statistics.median(t for rnd in times[who] for t in rnd)
        results[who] = {"step_ms": 1000 * step_s, "update_ms": 1000 * statistics.median(update_times[who]),
                        "tokens_per_s": tokens / step_s,
                        "mfu": mfu(fpt, tokens / step_s, pk.flops), "peak_mib": memory[who],
                        "round_step_ms": [1000 * statistics.median(rnd) for rnd in times[who]],
                        "loss_start": start_loss[who], "loss_end": end_loss[who]}
    ratio = results["ours"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
    round_ratios = [h / o for o, h in zip(results["ours"]["round_step_ms"], results["hf"]["round_step_ms"],
                                          strict=True)]

    config = dict(preset=preset, style=style, vocab_size=vocab_size, batch_size=batch_size, seq_len=seq_len,
                  steps=steps, warmup=warmup, rounds=rounds, dtype=dtype, device=device, compile=compile)
    machine = (torch.cuda.get_device_name(device) if device.startswith("cuda")
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    run = {"config": config, "params": n_params["ours"], "params_non_embedding": count_params(cfg).non_embedding,
           "flops_per_token": fpt, "tokens_per_step": tokens, "peak_tflops": pk.tflops, "peak_source": pk.source,
           "machine": machine, "cpus": os.cpu_count(), "load_avg_1min": [load_start, load_end],
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
           "ours": results["ours"], "hf": results["hf"], "ratio_tokens_per_s": ratio, "round_ratios": round_ratios}

    table = Table(title=f"training step: {preset} {style} ({n_params['ours'] / 1e6:.2f}M params, vocab {vocab_size}), "
                        f"B={batch_size} T={seq_len}, {device} {dtype}{', compiled' if compile else ''}")
    for col in ("", "step ms", "clip+AdamW ms", "tokens/s", "MFU", "peak MiB", "loss"):
        table.add_column(col, justify="right")
    for who, name in (("ours", "llmlab"), ("hf", "HF")):
        r = results[who]
        table.add_row(name, f"{r['step_ms']:.1f}", f"{r['update_ms']:.1f}", f"{r['tokens_per_s']:,.0f}",
                      f"{100 * r['mfu']:.1f}%", f"{r['peak_mib']:.1f}", f"{r['loss_start']:.2f}→{r['loss_end']:.2f}")
    console.print(table)
    console.print("clip+AdamW ms: the part of the step after backward; loss: before the first and after the last "
                  "step (same weights, same batch, so the two should agree)")
    console.print(f"ours / HF tokens/s: [bold]{ratio:.2f}x[/bold] (> 1: ours faster); per round "
                  + ", ".join(f"{q:.2f}x" for q in round_ratios))
    console.print(f"{rounds} rounds of {steps} steps each after {warmup} warm-up steps, ours and HF interleaved "
                  f"step by step (who goes first alternating by round) so a shared machine's noise hits both; "
                  f"step time = median of all timed steps. "
                  + (f"Load average {load_start:.1f} -> {load_end:.1f} on {os.cpu_count()} CPUs. "
                     if device == "cpu" else "")
                  + f"MFU against {pk.tflops:.3g} TFLOPS ({pk.source}); {fpt / 1e6:.1f} MFLOPs/token. "
                  f"Memory: one step in a fresh process, above weights and optimizer state"
                  + (" (CPU: resident-set growth, coarse)." if device == "cpu" else "."))
    if save is not None:
        save = Path(save)
        save.parent.mkdir(parents=True, exist_ok=True)
        runs = json.loads(save.read_text())["runs"] if save.exists() else []
        same = {k: v for k, v in config.items() if k not in ("steps", "warmup", "rounds")}
        runs = [r for r in runs if {k: r["config"].get(k) for k in same} != same] + [run]
        save.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
        console.print(f"saved {save}")
    return run


if __name__ == "__main__":
    print(json.dumps(peak_memory(**json.loads(sys.argv[1]))))
