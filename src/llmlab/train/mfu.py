"""Model FLOPs utilisation: the fraction of the hardware's peak that the model's own arithmetic uses.

MFU = (training FLOPs per token x tokens per second) / peak FLOPs per second  (PaLM, Chowdhery et al. 2022, app. B).
FLOPs per token come from the config (`llmlab.model.flops.flops_per_token`: 6N + 12 L H D T); the recompute of
activation checkpointing is not counted (that would be hardware FLOPs utilisation, HFU).

The peak is, in order: the user's `--peak-tflops`; the dense BF16 tensor-core figure from NVIDIA's datasheet for a
known GPU (MFU is reported against the BF16 peak whatever the training dtype, as PaLM and nanoGPT do); otherwise a
measured peak, the best of a few large matmuls on this device (fp32 on CPU). A measured peak is what this machine
reached in this process, not a datasheet figure, so CPU MFU reads as "fraction of the best matmul speed".
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass

import torch

# Dense (no sparsity) BF16 tensor-core TFLOPS from NVIDIA's product datasheets, which print the 2:4-sparsity figure
# first; the dense one is half of it. Keys: (model word, variant word or None) in the name torch reports, e.g.
# "NVIDIA H100 80GB HBM3" (SXM5), "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB". Variants are listed before the base.
GPU_BF16_TFLOPS: dict[tuple[str, str | None], float] = {
    ("H100", "PCIE"): 756.0,  # H100 PCIe: 1,513 sparse
    ("H100", "NVL"): 835.0,  # H100 NVL: 1,671 sparse
    ("H100", None): 989.0,  # H100 SXM5: 1,979 sparse
    ("H200", "NVL"): 835.0,  # H200 NVL: 1,671 sparse
    ("H200", None): 989.0,  # H200 SXM: 1,979 sparse
    ("A100", None): 312.0,  # A100 SXM4 and PCIe: 624 sparse
    ("L40S", None): 362.0,  # L40S: 733 sparse
    ("L40", None): 181.0,  # L40: 362 sparse
    ("L4", None): 121.0,  # L4: 242 sparse
    ("A10", None): 125.0,  # A10: 250 sparse
}


@dataclass(frozen=True)
class Peak:
    tflops: float
    source: str  # where the figure comes from, shown next to every MFU

    @property
    def flops(self) -> float:
        return self.tflops * 1e12


def mfu(flops_per_token: float, tokens_per_second: float, peak_flops: float) -> float:
    """Achieved FLOPs/s over peak FLOPs/s, in [0, 1] for an honest peak."""
    return flops_per_token * tokens_per_second / peak_flops


def datasheet_tflops(device_name: str) -> float | None:
    """The table's dense BF16 peak for a GPU name as torch.cuda.get_device_name() gives it; None if unknown."""
    words = set(re.split(r"[^A-Z0-9]+", device_name.upper()))
    for (model, variant), tflops in GPU_BF16_TFLOPS.items():
        if model in words and (variant is None or variant in words):
            return tflops
    return None


@functools.cache
def measure_tflops(device: str, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best (n x n) @ (n x n) throughput over `repeats` runs after one warm-up: 2 n^3 FLOPs each. Cached per process."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        if i:  # run 0 is the warm-up (allocations, kernel selection)
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


def peak(device: torch.device, override_tflops: float | None = None) -> Peak:
    """The peak that MFU is measured against on `device` (see the module docstring for the order)."""
    if override_tflops is not None:
        return Peak(override_tflops, "--peak-tflops")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tflops = datasheet_tflops(name)
        if tflops is not None:
            return Peak(tflops, f"{name} datasheet, dense bf16")
        return Peak(measure_tflops(str(device), torch.bfloat16, 8192), f"{name}, measured bf16 matmul")
    threads = torch.get_num_threads()
    return Peak(measure_tflops(str(device), torch.float32, 1024), f"{device.type}, measured fp32 matmul, "
                f"{threads} thread{'s' * (threads > 1)}")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
