"""Tensor encodings of GGUF files: F32, F16, BF16 and Q8_0, to and from float32 PyTorch tensors.

Q8_0 (ggml's ggml-quants.c `quantize_row_q8_0_ref` / `dequantize_row_q8_0`): each run of 32 consecutive values of
a row is one block, an fp16 scale d = max|x| / 127 followed by 32 int8 q = roundf(x / d), x ~= d * q. 34 bytes per
32 values: 8.5 bits per weight, symmetric absmax quantization with one scale per block.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from llmlab.errors import LlmlabError
from llmlab.model.gguf.format import TYPE_SIZES, TensorType

Q8_0_BLOCK = 32


def roundf(x: Tensor) -> Tensor:
    """C's roundf: halves away from zero (torch.round rounds them to even). floor(|x|) + floor(2 (|x| - floor(|x|)))
    is exact in floating point, unlike floor(|x| + 0.5), which rounds 0.49999997 + 0.5 up to 1."""
    a = x.abs()
    whole = a.floor()
    return x.sign() * (whole + (2 * (a - whole)).floor())


def quantize_q8_0(x: Tensor) -> Tensor:
    """(..., n) float, n a multiple of 32 -> (..., n / 32, 34) uint8 blocks: fp16 scale bytes, then 32 int8."""
    if x.shape[-1] % Q8_0_BLOCK:
        raise LlmlabError(f"Q8_0 needs rows of a multiple of {Q8_0_BLOCK} values, got shape {tuple(x.shape)}")
    blocks = x.detach().float().reshape(*x.shape[:-1], -1, Q8_0_BLOCK)  # float32 throughout, as ggml's C
    d = blocks.abs().amax(dim=-1, keepdim=True) / 127  # absmax maps to +-127
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)  # an all-zero block: d = 0, q = 0
    q = roundf(blocks * inv).to(torch.int8)
    scale = d.to(torch.float16).view(torch.uint8)  # (..., n/32, 2): the fp16 bytes, little-endian
    return torch.cat([scale, q.view(torch.uint8)], dim=-1)


def dequantize_q8_0(blocks: Tensor) -> Tensor:
    """(..., n / 32, 34) uint8 -> (..., n) float32: x = d * q."""
    d = blocks[..., :2].contiguous().view(torch.float16).float()  # (..., n/32, 1)
    q = blocks[..., 2:].contiguous().view(torch.int8).float()
    return (q * d).flatten(-2)


def encode(x: Tensor, type_: TensorType) -> np.ndarray:
    """A float tensor -> its bytes as `type_` (uint8, C order); the caller keeps x's shape for the tensor info."""
    x = x.detach().cpu().contiguous()
    if type_ == TensorType.F32:
        out = x.float()
    elif type_ == TensorType.F16:
        out = x.to(torch.float16)  # round to nearest even, as numpy's astype(float16) in gguf-py
    elif type_ == TensorType.BF16:
        out = x.to(torch.bfloat16)  # round to nearest even, as gguf-py's BF16 quantize and ggml's fp32_to_bf16
    elif type_ == TensorType.Q8_0:
        out = quantize_q8_0(x)
    else:
        raise LlmlabError(f"llmlab writes F32, F16, BF16 and Q8_0 tensors, not {type_.name}")
    return out.contiguous().view(torch.uint8).numpy().reshape(-1)


def decode(data: np.ndarray, type_: TensorType, shape: tuple[int, ...]) -> Tensor:
    """A tensor's bytes (uint8) -> float32 tensor of `shape` (PyTorch order)."""
    raw = torch.from_numpy(np.array(data, dtype=np.uint8, copy=True))  # a writable copy of the (memory-mapped) bytes
    if type_ == TensorType.Q8_0:
        block, size = TYPE_SIZES[type_]
        return dequantize_q8_0(raw.view(-1, size)).reshape(shape)
    dtypes = {TensorType.F32: torch.float32, TensorType.F16: torch.float16, TensorType.BF16: torch.bfloat16,
              TensorType.F64: torch.float64, TensorType.I8: torch.int8, TensorType.I16: torch.int16,
              TensorType.I32: torch.int32, TensorType.I64: torch.int64}
    if type_ not in dtypes:
        raise LlmlabError(f"llmlab decodes {', '.join(t.name for t in dtypes)} and Q8_0 tensors, not {type_}")
    return raw.view(dtypes[type_]).reshape(shape).float()
