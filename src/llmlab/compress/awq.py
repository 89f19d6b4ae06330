"""AWQ (Lin et al. 2023): activation-aware weight quantization. A few input channels carry large activations and
matter most; scaling their weights up before round-to-nearest shrinks their relative rounding error.

W x = (W diag(s)) (x / s) for any s > 0, so quantize W diag(s) and divide the input by s (folded into the op
before the layer when deployed). The scales s = s_x^alpha, s_x the mean |x| of each input channel on calibration
data, with alpha in a grid over [0, 1] chosen to minimise the layer's output error on the same data:
    alpha* = argmin_alpha  mean_x || Q(W diag(s)) (x / s) - W x ||^2    (AWQ eq. 5, a grid of 20 in the paper)
alpha = 0 is plain RTN, so AWQ never does worse than RTN on its calibration objective. (The paper also searches a
weight clipping range, and shares s between the layers that read the same input to fold 1/s into their norm; here
each Linear gets its own s and stores it, which computes the same function.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from llmlab.compress.calibration import CalibrationStats
from llmlab.compress.groupwise import GroupQuantized, Scheme, rtn


def awq_scales(x_mean_abs: Tensor, alpha: float) -> Tensor:
    """s = s_x^alpha per input channel, s_x divided by its max (a common factor changes no rounding) and kept above
    1e-5 so a channel that never fired cannot give s = 0."""
    s_x = x_mean_abs / x_mean_abs.max().clamp(min=torch.finfo(x_mean_abs.dtype).tiny)
    return s_x.clamp(min=1e-5) ** alpha


@dataclass
class AWQResult:
    quantized: GroupQuantized  # the codes of W diag(s)
    s: Tensor  # (in,) per-input-channel scales
    alpha: float
    errors: list[tuple[float, float]]  # (alpha, output error) over the grid

    def dequantize(self) -> Tensor:
        """The effective weight Q(W diag(s)) diag(s)^-1 (out, in): what the layer computes with."""
        return self.quantized.dequantize() / self.s

    def forward(self, x: Tensor) -> Tensor:
        """As deployed: the input divided by s, times the dequantized W diag(s)."""
        return F.linear(x / self.s.to(x.dtype), self.quantized.dequantize().to(x.dtype))


@torch.no_grad()
def awq(w: Tensor, stats: CalibrationStats, scheme: Scheme, n_grid: int = 20) -> AWQResult:
    """Grid-search alpha in {0, 1/n_grid, ..., 1} for w (out, in) on the calibration statistics of its inputs."""
    w = w.detach().float()
    x_mean_abs = stats.mean_abs().to(w.dtype)
    errors, best = [], None
    for k in range(n_grid + 1):
        alpha = k / n_grid
        s = awq_scales(x_mean_abs, alpha)  # (in,)
        q = rtn(w * s, scheme)  # W diag(s): column j times s_j
        err = stats.output_error(q.dequantize() / s - w)
        errors.append((alpha, err))
        if best is None or err < best[0]:
            best = (err, q, s, alpha)
    _, q, s, alpha = best
    return AWQResult(q, s, alpha, errors)
