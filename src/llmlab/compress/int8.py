"""8-bit integer quantization: absmax (symmetric) and min-max (asymmetric, zero point), and LLM.int8().

absmax:  scale = max|x| / 127,  q = round(x / scale) in [-127, 127] (int8),  x ~ q * scale.
min-max: scale = (max - min) / 255,  z = round(-min / scale),  q = clamp(round(x / scale) + z, 0, 255) (uint8),
         x ~ (q - z) * scale; the range always holds 0 (min <= 0 <= max, as torch's MinMaxObserver), so 0 is exact.
Both per tensor (dim=None) or per slice along `dim` (a weight (out, in) with dim=-1: one scale per output channel).

LLM.int8() (Dettmers et al. 2022): X W^T with the input columns (feature dims) that hold any |x| >= threshold (6.0)
multiplied in floating point, the rest as int8 x int8 with int32 accumulation: rows of X and rows of W (output
channels) each get their own absmax scale ("vector-wise"), and C = (s_x s_w^T) * (X_i8 W_i8^T).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

INT8_MAX = 127
UINT8_MAX = 255


def quantize_absmax(x: Tensor, dim: int | None = -1) -> tuple[Tensor, Tensor]:
    """Symmetric int8: x -> (q int8 like x, scale in x's dtype); scale = max|x| / 127 over `dim` (keepdim), or over
    all of x for dim=None (a 0-d scale). An all-zero slice gets scale 0 and q 0 (0 / 0 would be NaN)."""
    absmax = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    scale = absmax / INT8_MAX
    q = torch.where(scale > 0, x / torch.where(scale > 0, scale, 1.0), 0.0)
    return q.round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scale


def quantize_minmax(x: Tensor, dim: int | None = -1) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric uint8: x -> (q uint8, scale, zero_point int64); the range [min(x, 0), max(x, 0)] over `dim`
    (keepdim) or all of x (dim=None) is mapped onto [0, 255]. A constant-zero slice gets scale 1, zero point 0."""
    lo = (x.amin() if dim is None else x.amin(dim=dim, keepdim=True)).clamp(max=0)
    hi = (x.amax() if dim is None else x.amax(dim=dim, keepdim=True)).clamp(min=0)
    scale = (hi - lo) / UINT8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale).clamp(0, UINT8_MAX)
    q = (torch.round(x / scale) + zero).clamp(0, UINT8_MAX)
    return q.to(torch.uint8), scale, zero.long()


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor | None = None) -> Tensor:
    """(q - zero_point) * scale in scale's dtype; zero_point None for absmax codes."""
    q = q.to(scale.dtype)
    return (q if zero_point is None else q - zero_point.to(scale.dtype)) * scale


def int8_matmul(xq: Tensor, sx: Tensor, wq: Tensor, sw: Tensor) -> Tensor:
    """Vector-wise int8 matmul: xq (N, K) int8 with row scales sx (N, 1), wq (M, K) int8 with row scales sw (M, 1)
    -> (N, M) = (sx sw^T) * (xq wq^T), the products summed exactly in int32 (|sum| <= 127^2 K < 2^31)."""
    acc = xq.to(torch.int32) @ wq.to(torch.int32).T  # (N, M) int32, as the int8 tensor-core kernels accumulate
    return acc.to(sx.dtype) * (sx * sw.T.to(sx.dtype))


def outlier_columns(x: Tensor, threshold: float = 6.0) -> Tensor:
    """x (N, K) -> (K,) bool: the feature dims where any |x| >= threshold (LLM.int8's outlier set O)."""
    return (x.abs() >= threshold).any(dim=0)


def llm_int8_matmul(x: Tensor, wq: Tensor, sw: Tensor, threshold: float = 6.0) -> Tensor:
    """LLM.int8(): x (N, K) float, weight as int8 rows wq (M, K) with scales sw (M, 1) -> x W^T (N, M).

    C = X[:, O] W[:, O]^T  +  (s_x s_w^T) * (X_i8[:, ~O] W_i8[:, ~O]^T)   (Dettmers et al. 2022, eq. 7)
    As bitsandbytes does at inference, W is kept only as int8: the outlier columns use its dequantized values, and
    s_x is each row's absmax over the non-outlier columns (the outliers are zeroed before it is taken)."""
    o = outlier_columns(x, threshold)  # (K,)
    xq, sx = quantize_absmax(x.masked_fill(o, 0.0), dim=-1)  # (N, K) int8, (N, 1); outlier columns give q = 0
    out = int8_matmul(xq, sx, wq.masked_fill(o, 0), sw)  # (N, M)
    if o.any():
        out = out + x[:, o] @ dequantize(wq[:, o], sw.to(x.dtype)).T  # the few outlier dims in floating point
    return out


class Int8Linear(nn.Module):
    """A frozen nn.Linear as int8 weight rows + one scale per output channel; forward is LLM.int8() (threshold
    None: every input column goes through int8, the plain vector-wise int8 matmul)."""

    def __init__(self, linear: nn.Linear, threshold: float | None = 6.0) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.threshold = threshold
        wq, sw = quantize_absmax(linear.weight.detach().float(), dim=-1)
        self.register_buffer("weight_q", wq)  # (out, in) int8
        self.register_buffer("weight_scale", sw)  # (out, 1) fp32
        self.register_buffer("bias", linear.bias.detach().clone() if linear.bias is not None else None)

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, self.in_features)  # (N, in), N = all leading dims
        threshold = float("inf") if self.threshold is None else self.threshold
        out = llm_int8_matmul(x2.float(), self.weight_q, self.weight_scale, threshold).to(x.dtype)
        out = out.view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def nbytes(self) -> int:
        """Bytes of the quantized weight: int8 codes + fp32 row scales (no bias)."""
        return self.weight_q.numel() + self.weight_scale.numel() * self.weight_scale.element_size()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}"
