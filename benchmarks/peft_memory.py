"""Full fine-tuning vs LoRA vs QLoRA on the same model: trainable parameters and peak training memory.

Each method runs in a fresh process: build the preset model (QLoRA: every block linear -> NF4 with double
quantization), add the adapters, then two AdamW steps on a random batch. Two memory figures, labelled:
  exact   = weights (parameters + NF4 buffers) + gradients + AdamW state (2 fp32 tensors per trainable param),
            counted tensor by tensor; activations are not in it;
  measured= the steps' peak above the built model (llmlab.memory.peak_memory): CUDA allocated bytes, or CPU
            resident-set growth: activations + gradients + optimizer state (+ allocator slack on CPU).
Run: `llmlab bench peft-memory` or `python benchmarks/peft_memory.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

METHODS = ("full", "lora", "qlora")


def measure(method: str, preset: str, batch: int, seq_len: int, r: int, targets: list[str], device: str) -> dict:
    """One method; runs inside a worker process so its memory is its own."""
    import ctypes
    import gc

    import torch

    from llmlab.compress.nf4 import quantize_model_nf4
    from llmlab.memory import peak_memory
    from llmlab.model.presets import preset as make_preset
    from llmlab.model.transformer import Transformer
    from llmlab.posttrain.lora import apply_lora

    torch.manual_seed(0)
    cfg = make_preset(preset, max_seq_len=max(seq_len, 16))
    model = Transformer(cfg)
    n_total = model.num_parameters()
    if method == "qlora":
        quantize_model_nf4(model)
    if method != "full":
        apply_lora(model, tuple(targets), r=r, alpha=2 * r)
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), device=device)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give the freed fp32 weights (QLoRA) back before the baseline
    except OSError:
        pass
    with peak_memory(device) as peak:
        for _ in range(2):
            logits = model(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=False)  # keep the gradients allocated, as a training loop holds them at peak
    measured = peak.bytes
    weights = (sum(p.numel() * p.element_size() for p in model.parameters())
               + sum(b.numel() * b.element_size() for b in model.buffers()))
    n_train = sum(p.numel() for p in trainable)
    grads = sum(p.numel() * p.element_size() for p in trainable)
    adam = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if t.dim() > 0)
    return {"method": method, "params": n_total, "trainable": n_train, "weights_mib": weights / 2**20,
            "grads_mib": grads / 2**20, "adam_mib": adam / 2**20, "exact_mib": (weights + grads + adam) / 2**20,
            "measured_mib": measured / 2**20}


def main(preset: str = "small", batch: int = 4, seq_len: int = 256, r: int = 8,
         targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
         device: str = "cpu", save: Path | None = None) -> list[dict]:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    rows = []
    for method in METHODS:
        args = dict(method=method, preset=preset, batch=batch, seq_len=seq_len, r=r, targets=list(targets),
                    device=device)
        done = subprocess.run([sys.executable, __file__, json.dumps(args)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"benchmark worker failed for {method}:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    table = Table(title=f"fine-tuning memory: preset {preset}, batch {batch}x{seq_len}, AdamW, {device}; "
                        f"LoRA r={r} on {','.join(targets)}")
    what = "peak allocated" if device.startswith("cuda") else "peak RSS growth"
    for col in ("method", "trainable", "%", "weights", "grads", "AdamW", "exact", f"measured ({what})"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(row["method"], f"{row['trainable']:,}", f"{100 * row['trainable'] / row['params']:.2f}",
                      f"{row['weights_mib']:.1f}", f"{row['grads_mib']:.1f}", f"{row['adam_mib']:.1f}",
                      f"{row['exact_mib']:.1f}", f"{row['measured_mib']:.1f}")
    console.print(table)
    console.print("MiB; exact = weights + grads + AdamW state, counted per tensor (no activations); QLoRA keeps the "
                  "embeddings and lm_head in fp32, every block linear in NF4 (4.127 bits/param)")
    if save is not None:
        save = Path(save)
        save.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(preset=preset, batch=batch, seq_len=seq_len, r=r, targets=list(targets), device=device)
        save.write_text(json.dumps({"config": meta, "rows": rows}, indent=2) + "\n")
        console.print(f"saved {save}")
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(measure(**json.loads(sys.argv[1]))))
    else:
        main()
