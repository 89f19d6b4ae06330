"""Group-wise round-to-nearest (RTN) quantization of a weight (out, in) to b bits, the baseline GPTQ and AWQ improve.

Each row is cut into groups of `group_size` consecutive input columns (the last may be shorter); each group gets a
scale and an integer zero point, and every weight its nearest grid point:
    asymmetric:  scale = (max - min) / (2^b - 1),  z = round(-min / scale)   over [min(w, 0), max(w, 0)]
    symmetric:   scale = max|w| / ((2^b - 1) / 2), z = 2^(b-1)              (GPTQ's and torchao's int4 grid)
    q = clamp(round(w / scale) + z, 0, 2^b - 1),   w ~ (q - z) * scale.
The range always holds 0, so zero-padding a short group changes nothing and a zero weight stays exactly zero.
Codes are unsigned b-bit integers, packed 8/b per byte, the first in the low bits (torch.quint4x2's layout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from llmlab.errors import ConfigError


@dataclass(frozen=True)
class Scheme:
    """b-bit codes in groups of group_size input columns (None: one group per row, i.e. per output channel)."""

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ConfigError(f"bits={self.bits} must lie in [2, 8]")
        if self.group_size is not None and self.group_size < 1:
            raise ConfigError(f"group_size={self.group_size} must be positive (or None: one group per row)")

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def group(self, d_in: int) -> int:
        """The group size for rows of d_in columns."""
        return d_in if self.group_size is None else min(self.group_size, d_in)

    def describe(self) -> str:
        group = "per-channel" if self.group_size is None else f"g{self.group_size}"
        return f"{'sym' if self.symmetric else 'asym'} int{self.bits} {group}"


def qparams(x: Tensor, scheme: Scheme) -> tuple[Tensor, Tensor]:
    """x (..., n): one group per slice of the last dim -> (scale, zero) (..., 1) in x's dtype (zero integral)."""
    lo = x.amin(dim=-1, keepdim=True).clamp(max=0)
    hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
    if scheme.symmetric:
        scale = torch.maximum(-lo, hi) / (scheme.qmax / 2)
    else:
        scale = (hi - lo) / scheme.qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: any scale, codes = zero
    if scheme.symmetric:
        return scale, torch.full_like(scale, 2 ** (scheme.bits - 1))
    return scale, torch.round(-lo / scale).clamp(0, scheme.qmax)


def quantize(x: Tensor, scale: Tensor, zero: Tensor, qmax: int) -> Tensor:
    """Codes uint8: clamp(round(x / scale) + zero, 0, qmax); scale and zero broadcast against x."""
    return (torch.round(x / scale) + zero).clamp(0, qmax).to(torch.uint8)


def dequantize(codes: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """(codes - zero) * scale in scale's dtype."""
    return (codes.to(scale.dtype) - zero.to(scale.dtype)) * scale


def quantize_dequantize(x: Tensor, scale: Tensor, zero: Tensor, qmax: int) -> Tensor:
    """The grid point nearest x: dequantize(quantize(x))."""
    return dequantize(quantize(x, scale, zero, qmax), scale, zero)


@dataclass
class GroupQuantized:
    """A weight (out, in) as b-bit codes with a scale and zero point per (row, group)."""

    codes: Tensor  # (out, in) uint8 in [0, 2^bits)
    scale: Tensor  # (out, n_groups) float
    zero: Tensor  # (out, n_groups) uint8
    scheme: Scheme
    g_idx: Tensor | None = None  # (in,) int64 group of each column; None: column // group (set by act-order)

    @property
    def group_index(self) -> Tensor:
        d_in = self.codes.shape[1]
        if self.g_idx is not None:
            return self.g_idx
        return torch.arange(d_in, device=self.codes.device) // self.scheme.group(d_in)

    def dequantize(self) -> Tensor:
        """The float weight (out, in) these codes stand for."""
        g = self.group_index
        return dequantize(self.codes, self.scale[:, g], self.zero[:, g])

    def packed(self) -> dict[str, Tensor]:
        """What is stored: packed codes, fp32 scales, packed zero points (none when symmetric: always 2^(b-1)),
        and int32 g_idx when columns are not grouped in order."""
        out = {"codes": pack(self.codes, self.scheme.bits), "scale": self.scale.float()}
        if not self.scheme.symmetric:
            out["zero"] = pack(self.zero, self.scheme.bits)
        if self.g_idx is not None:
            out["g_idx"] = self.g_idx.int()
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.packed().values())


def rtn(w: Tensor, scheme: Scheme) -> GroupQuantized:
    """Round-to-nearest group-wise quantization of w (out, in)."""
    d_out, d_in = w.shape
    g = scheme.group(d_in)
    groups = F.pad(w, (0, -d_in % g)).view(d_out, -1, g)  # (out, n_groups, g), zero-padded: same min/max
    scale, zero = qparams(groups, scheme)  # (out, n_groups, 1)
    codes = quantize(groups, scale, zero, scheme.qmax).view(d_out, -1)[:, :d_in]  # (out, in)
    return GroupQuantized(codes, scale.squeeze(-1), zero.squeeze(-1).to(torch.uint8), scheme)


def pack(codes: Tensor, bits: int) -> Tensor:
    """b-bit codes (any shape, values < 2^bits) -> uint8 (ceil(n * bits / 8),): a little-endian bit stream of the
    flattened codes, so with 4 bits two codes per byte, the first in the low nibble."""
    flat = codes.reshape(-1).to(torch.uint8)
    shifts = torch.arange(bits, device=codes.device, dtype=torch.uint8)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1)  # (n * bits,) bits, least significant first
    stream = F.pad(stream, (0, -stream.numel() % 8)).view(-1, 8)  # (n_bytes, 8)
    return (stream << torch.arange(8, device=codes.device, dtype=torch.uint8)).sum(dim=1, dtype=torch.uint8)


def unpack(packed: Tensor, bits: int, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of pack: uint8 codes in `shape`."""
    n = math.prod(shape)
    stream = ((packed[:, None] >> torch.arange(8, device=packed.device, dtype=torch.uint8)) & 1).reshape(-1)
    stream = stream[: n * bits].view(n, bits)  # (n, bits), least significant first
    weights = torch.tensor([1 << i for i in range(bits)], device=packed.device, dtype=torch.uint8)
    return (stream * weights).sum(dim=1, dtype=torch.uint8).view(shape)
