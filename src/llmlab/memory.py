"""Peak memory of a block of code, for benchmarks: CUDA allocator bytes, or on CPU the resident-set growth.

CPU: Linux keeps the peak resident set in /proc/self/status (VmHWM); writing "5" to /proc/self/clear_refs resets it
to the current resident set, so the peak growth of one block can be read in the same process (ru_maxrss cannot be
reset and carries a parent's peak into a forked child). It counts allocator slack too: coarse, and labelled so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Peak:
    bytes: int = 0  # the block's peak above what was held when it started

    @property
    def mib(self) -> float:
        return max(self.bytes, 0) / 2**20


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # "VmHWM:   123456 kB"
    raise RuntimeError(f"{key} not in /proc/self/status: CPU peak memory needs Linux")


@contextmanager
def peak_memory(device: str = "cpu") -> Iterator[Peak]:
    """`with peak_memory(device) as peak: ...`, then `peak.bytes` / `peak.mib`."""
    peak = Peak()
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield peak
        torch.cuda.synchronize(device)
        peak.bytes = torch.cuda.max_memory_allocated(device) - base
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current VmRSS
        base = _status_bytes("VmRSS")
        yield peak
        peak.bytes = _status_bytes("VmHWM") - base
