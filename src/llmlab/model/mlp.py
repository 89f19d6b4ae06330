"""The feed-forward sublayer: plain (GPT-2, BERT) or gated (SwiGLU/GeGLU: Llama, Mistral, Qwen2)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from llmlab.model.config import TransformerConfig


def activation(name: str, x: Tensor) -> Tensor:
    if name == "gelu":
        return F.gelu(x)  # exact: x * Phi(x) (Hendrycks & Gimpel 2016), BERT
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")  # tanh approximation, GPT-2's "gelu_new"
    if name == "silu":
        return F.silu(x)  # x * sigmoid(x)
    if name == "relu":
        return F.relu(x)
    raise ValueError(f"unknown activation {name!r}")


class MLP(nn.Module):
    """plain: down(act(up(x)));  gated: down(act(gate(x)) * up(x))  (Shazeer 2020, "GLU Variants").

    d_ff: the hidden width, cfg.d_ff unless given (a mixture of experts' experts and shared expert set their own).
    """

    def __init__(self, cfg: TransformerConfig, d_ff: int | None = None) -> None:
        super().__init__()
        self.act = cfg.activation
        d_ff = cfg.d_ff if d_ff is None else d_ff
        self.gate_proj = nn.Linear(cfg.d_model, d_ff, bias=cfg.mlp_bias) if cfg.gated_mlp else None
        self.up_proj = nn.Linear(cfg.d_model, d_ff, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(d_ff, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, d_model) -> (B, T, d_model)
        if self.gate_proj is not None:
            return self.down_proj(activation(self.act, self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(activation(self.act, self.up_proj(x)))
