"""Attention backends head to head: naive (ours, readable), flash (ours, tiled), sdpa (torch).

Each (backend, length) is measured in a fresh process: forward + backward time (median of repeats after a
warm-up) and peak memory above the inputs (CUDA: max_memory_allocated; CPU: peak resident set growth).
Run: `llmlab bench attention` (options: --seq-lens, --device, --dtype, --block, --save).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

BACKENDS = ("naive", "flash", "sdpa")


def measure(backend: str, seq_len: int, batch: int, heads: int, head_dim: int, causal: bool, device: str,
            dtype: str, block: int, repeats: int) -> dict:
    """One measurement; runs inside a worker process so peak memory is its own."""
    import torch

    from llmlab.memory import peak_memory
    from llmlab.model.attention import attend

    dt = getattr(torch, dtype)
    kwargs = dict(causal=causal)
    if backend == "flash":
        kwargs.update(block_q=block, block_k=block)

    def step(t: int) -> None:
        q, k, v = (torch.randn(batch, heads, t, head_dim, device=device, dtype=dt, requires_grad=True)
                   for _ in range(3))
        attend(backend, q, k, v, **kwargs).sum().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step(16)  # load kernels and libraries before the memory baseline
    inputs = 3 * 2 * batch * heads * seq_len * head_dim * torch.finfo(dt).bits // 8  # q, k, v and their grads
    with peak_memory(device) as peak:
        step(seq_len)
    used = peak.bytes - inputs
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(seq_len)
        times.append(time.perf_counter() - t0)
    return {"backend": backend, "seq_len": seq_len, "ms": 1000 * statistics.median(times),
            "peak_mib": max(used, 0) / 2**20}


def main(seq_lens: list[int], batch: int = 1, heads: int = 8, head_dim: int = 64, causal: bool = True,
         device: str = "cpu", dtype: str = "float32", block: int = 128, repeats: int = 3,
         save: Path | None = None) -> list[dict]:
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    console = Console()
    jobs = [(b, t) for t in seq_lens for b in BACKENDS]
    rows = []
    for backend, t in track(jobs, description="measuring", console=console, transient=True):
        args = dict(backend=backend, seq_len=t, batch=batch, heads=heads, head_dim=head_dim, causal=causal,
                    device=device, dtype=dtype, block=block, repeats=repeats)
        done = subprocess.run([sys.executable, __file__, json.dumps(args)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"benchmark worker failed for {args}:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    table = Table(title=f"attention forward+backward: B={batch} H={heads} D={head_dim} causal={causal} "
                        f"{device} {dtype}, flash block {block}")
    for col in ("T", "backend", "ms", "vs sdpa", "peak MiB"):
        table.add_column(col, justify="right")
    by = {(r["backend"], r["seq_len"]): r for r in rows}
    for t in seq_lens:
        for b in BACKENDS:
            r, ref = by[(b, t)], by[("sdpa", t)]
            table.add_row(str(t), b, f"{r['ms']:.2f}", f"{r['ms'] / ref['ms']:.2f}x", f"{r['peak_mib']:.1f}",
                          end_section=b == BACKENDS[-1])
    console.print(table)
    console.print("ratios > 1 mean slower than torch SDPA; memory is the peak above the inputs and their grads"
                  + (" (CPU: resident-set growth, coarse)" if device == "cpu" else ""))
    if save is not None:
        save = Path(save)
        save.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(batch=batch, heads=heads, head_dim=head_dim, causal=causal, device=device, dtype=dtype,
                    block=block, repeats=repeats)
        save.write_text(json.dumps({"config": meta, "rows": rows}, indent=2) + "\n")
        console.print(f"saved {save}")
    return rows


if __name__ == "__main__":
    print(json.dumps(measure(**json.loads(sys.argv[1]))))
