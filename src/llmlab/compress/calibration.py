"""Calibration: what GPTQ and AWQ need to know about a Linear's inputs, gathered from real text with a forward hook.

For inputs x (n tokens, d_in) both methods need only two running sums: X^T X (GPTQ's Hessian H = 2 X^T X / n, and
the layer's output error ||X dW^T||^2 = sum over rows of dW_r X^T X dW_r^T) and sum |x| per input channel (AWQ's
activation magnitude s_x).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from llmlab.errors import LlmlabError


class CalibrationStats:
    """Running X^T X (d_in, d_in), sum |x| (d_in,) and the token count n of one Linear's inputs."""

    def __init__(self, d_in: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
                 ) -> None:
        self.xtx = torch.zeros(d_in, d_in, device=device, dtype=dtype)
        self.abs_sum = torch.zeros(d_in, device=device, dtype=dtype)
        self.n = 0

    def add(self, x: Tensor) -> None:
        """x (..., d_in): every leading position is one token."""
        x2 = x.detach().reshape(-1, self.xtx.shape[0]).to(self.xtx.dtype)  # (n_batch, d_in)
        self.xtx += x2.T @ x2
        self.abs_sum += x2.abs().sum(dim=0)
        self.n += x2.shape[0]

    def hessian(self) -> Tensor:
        """GPTQ's H = 2 X^T X / n: the Hessian of the layer-wise loss mean_x ||W x - W~ x||^2 in each row of W~."""
        return 2 * self.xtx / self.n

    def mean_abs(self) -> Tensor:
        """AWQ's s_x: the mean |x| of each input channel."""
        return self.abs_sum / self.n

    def output_error(self, dw: Tensor) -> float:
        """mean over tokens of ||dW x||^2 = sum_r dW_r (X^T X) dW_r^T / n, for dW (out, d_in)."""
        dw = dw.to(self.xtx.dtype)
        return float(((dw @ self.xtx) * dw).sum() / self.n)


class _Stop(Exception):
    """Raised by the hook once it has the layer's input: the rest of the forward pass is not needed."""


@torch.no_grad()
def collect_stats(model: nn.Module, layer: nn.Linear, batches: Tensor, batch_size: int = 8) -> CalibrationStats:
    """Run `model` on token rows batches (B, T) and gather the inputs of `layer` (the first call per forward)."""
    stats = CalibrationStats(layer.in_features, device=layer.weight.device)

    def hook(module: nn.Module, args: tuple) -> None:
        stats.add(args[0])
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        for chunk in batches.split(batch_size):
            try:
                model(chunk.to(layer.weight.device))
            except _Stop:
                pass
    finally:
        handle.remove()
    return stats


def calibration_batches(token_ids: list[int] | Tensor, n_tokens: int, seq_len: int) -> Tensor:
    """The first n_tokens of a token stream as rows of seq_len: (B, seq_len), the tail that fills no row dropped
    (one shorter row when the stream is shorter than seq_len)."""
    ids = torch.as_tensor(token_ids, dtype=torch.long)[:n_tokens]
    if len(ids) < 2:
        raise LlmlabError(f"calibration needs at least 2 tokens, got {len(ids)}")
    if len(ids) < seq_len:
        return ids[None]
    return ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)  # (B, seq_len)
