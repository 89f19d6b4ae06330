"""NF4: 4-bit NormalFloat quantization with double quantization, the frozen base of QLoRA (Dettmers et al. 2023).

Weights are cut into blocks of 64; each block is divided by its absmax so it lies in [-1, 1] and every value is
replaced by the nearest of 16 code values, the quantiles of N(0, 1) scaled to [-1, 1] (with an exact zero).
Double quantization stores the per-block absmax constants themselves in 8 bits, in blocks of 256 with one fp32
scale each. Storage per parameter: 4 + 8/64 + 32/(64*256) = 4.127 bits ~ 0.516 bytes (plus one fp32 mean).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The published NF4 table: QLoRA paper, Appendix E, and bitsandbytes `functional.get_4bit_type("nf4")`
# (bitsandbytes 0.41+, the same 16 float32 values). Kept as the reference that `nf4_code()` is tested against.
NF4_PUBLISHED = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
BLOCK, BLOCK2 = 64, 256  # NF4 block size; double-quantization block size (QLoRA section 3)


def nf4_code() -> Tensor:
    """The 16 NF4 values, derived: 8 positive quantiles of N(0,1), 7 negative, and 0, scaled to max |q| = 1.

    q_i = Phi^-1(p_i) with p evenly spaced from 0.5 to offset = 1 - (1/30 + 1/32)/2 (the mean of the outermost
    quantile for 2*15 and 2*16 bins), so that Phi^-1 stays finite. As bitsandbytes' `create_normal_map`:
    p in float32, Phi^-1 in float64, the division in float32.
    """
    offset = 0.9677083  # = 1 - (1/30 + 1/32)/2 = 0.96770833..., rounded as bitsandbytes writes it
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double())  # 8 values > 0
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())  # 7 values < 0
    q = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    q = q.float()  # bitsandbytes divides in float32; so do we, to reproduce its table bit for bit
    return q / q.abs().max()


def nf4_bits_per_param(block: int = BLOCK, block2: int = BLOCK2, double_quant: bool = True) -> float:
    """4-bit codes + absmax (8 bits per block with double quant, else 32) + one fp32 scale per block2 blocks."""
    return 4 + (8 / block + 32 / (block * block2) if double_quant else 32 / block)


def _blocks(x: Tensor, block: int) -> Tensor:
    """Flatten and zero-pad to a multiple of block: (n_blocks, block)."""
    flat = x.reshape(-1)
    return F.pad(flat, (0, -flat.numel() % block)).view(-1, block)


def quantize_nf4(w: Tensor, block: int = BLOCK) -> tuple[Tensor, Tensor]:
    """w (any shape) -> (packed uint8 codes (ceil(n/block)*block/2,), absmax fp32 (n_blocks,))."""
    blocks = _blocks(w.detach().float(), block)  # (n_blocks, block)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    x = blocks / absmax.clamp(min=torch.finfo(torch.float32).tiny)[:, None]  # in [-1, 1]
    code = nf4_code().to(w.device)
    idx = torch.bucketize(x, (code[1:] + code[:-1]) / 2).to(torch.uint8).view(-1)  # nearest code value
    return (idx[0::2] << 4) | idx[1::2], absmax  # two codes per byte, first in the high nibble


def dequantize_nf4(packed: Tensor, absmax: Tensor, shape: torch.Size | tuple[int, ...], block: int = BLOCK
                   ) -> Tensor:
    """Inverse of quantize_nf4 up to rounding: code[idx] * absmax of its block, fp32, in `shape`."""
    idx = torch.stack([packed >> 4, packed & 15], dim=-1).view(-1, block).long()  # (n_blocks, block)
    w = nf4_code().to(packed.device)[idx] * absmax[:, None]
    return w.view(-1)[:math.prod(shape)].view(shape)


def double_quantize(absmax: Tensor, block2: int = BLOCK2) -> tuple[Tensor, Tensor, Tensor]:
    """absmax (n,) -> (int8 codes (n,), fp32 scale per block2 constants, fp32 mean).

    QLoRA: the constants are positive, so subtract their mean first, then 8-bit absmax quantization per block of
    256. (bitsandbytes stores the 8 bits as its dynamic float map; this is the plain int8 grid, same bits.)
    """
    mean = absmax.mean()
    blocks = _blocks(absmax - mean, block2)  # (n_blocks2, block2)
    scale = blocks.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(blocks / scale[:, None] * 127).to(torch.int8).view(-1)[:absmax.numel()]
    return q, scale, mean


def double_dequantize(q: Tensor, scale: Tensor, mean: Tensor, block2: int = BLOCK2) -> Tensor:
    """Inverse of double_quantize: the absmax constants, each within scale/254 of the original."""
    blocks = _blocks(q.float(), block2) / 127 * scale[:, None]
    return blocks.view(-1)[:q.numel()] + mean


class _NF4MatMul(torch.autograd.Function):
    """x @ W~^T that keeps no fp32 copy of W~ for backward: it dequantizes again there (as bitsandbytes does)."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: NF4Linear) -> Tensor:
        ctx.layer = layer
        return x @ layer.dequantize().to(x.dtype).T

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad @ ctx.layer.dequantize().to(grad.dtype), None  # dL/dx = dL/dy W~; W~ is frozen


class NF4Linear(nn.Module):
    """A frozen nn.Linear stored as NF4 codes + double-quantized absmax; forward dequantizes, then F.linear."""

    def __init__(self, linear: nn.Linear, block: int = BLOCK, block2: int = BLOCK2) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.block, self.block2 = block, block2
        codes, absmax = quantize_nf4(linear.weight, block)
        q, scale, mean = double_quantize(absmax, block2)
        # buffers, not parameters: the optimizer never sees them and no gradient is kept for them
        self.register_buffer("codes", codes)  # (n_padded / 2,) uint8
        self.register_buffer("absmax_q", q)  # (n_blocks,) int8
        self.register_buffer("absmax_scale", scale)  # (n_blocks / block2,) fp32
        self.register_buffer("absmax_mean", mean)  # () fp32
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def dequantize(self) -> Tensor:
        """The fp32 weight (out, in) this layer computes with."""
        absmax = double_dequantize(self.absmax_q, self.absmax_scale, self.absmax_mean, self.block2)
        return dequantize_nf4(self.codes, absmax, (self.out_features, self.in_features), self.block)

    @property
    def weight(self) -> Tensor:
        return self.dequantize()

    def forward(self, x: Tensor) -> Tensor:
        out = _NF4MatMul.apply(x, self)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def nbytes(self) -> int:
        """Bytes of the quantized weight (codes + constants), without the bias."""
        return sum(b.numel() * b.element_size() for b in (self.codes, self.absmax_q, self.absmax_scale,
                                                          self.absmax_mean))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, block={self.block}"


def quantize_model_nf4(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """Replace every nn.Linear (except names ending in `skip`) by an NF4Linear, in place; QLoRA's frozen base."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and not name.endswith(skip):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, NF4Linear(module))
    return model
