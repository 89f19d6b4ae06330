"""FlashAttention-2 tiled forward pass: online softmax over key blocks."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.model.flash_attention import _FlashAttention, flash_attention

STARTER = '''"""Drill: flash_attention. Check with `llmlab drill check flash_attention`."""
import math

import torch
from torch import Tensor


def flash_attention_forward(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
                            block_q: int = 4, block_k: int = 4) -> Tensor:
    """softmax(Q K^T / sqrt(D)) V computed tile by tile (FlashAttention-2, Dao 2023, Algorithm 1).

    q: (B, H, Tq, D); k, v: (B, H, Tk, D). Loop over query blocks of block_q rows and, inside, over key blocks of
    block_k columns, keeping per row a running max m, running sum l of exp(S - m) and an unnormalised output O,
    rescaled by exp(m_old - m_new) when the max grows; divide by l at the end. Never build the (Tq, Tk) matrix.
    causal: query i (at position i + Tk - Tq) sees keys j <= its position. Returns (B, H, Tq, D) in q's dtype.
    """
    raise NotImplementedError
'''


def flash_attention_forward(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
                            block_q: int = 4, block_k: int = 4) -> Tensor:
    return flash_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k)


def _qkv(g: torch.Generator, b: int, h: int, tq: int, tk: int, d: int, dtype=torch.float32, scale=1.0) -> dict:
    return dict(q=randn(g, b, h, tq, d, dtype=dtype, scale=scale), k=randn(g, b, h, tk, d, dtype=dtype, scale=scale),
                v=randn(g, b, h, tk, d, dtype=dtype))


def examples() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    return [Case(_qkv(g, 1, 1, 5, 5, 4), ("multi-block",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    t = randint(g, 9, 20)
    return [Case({**_qkv(g, 2, 2, t, t, 8), "block_q": 4, "block_k": 3}, ("multi-block", "ragged")),
            Case({**_qkv(g, 2, 2, t, t, 8), "causal": True}, ("causal", "multi-block")),
            Case({**_qkv(g, 1, 2, 3, 11, 8), "causal": True, "block_k": 4}, ("causal", "decode")),
            Case({**_qkv(g, 1, 2, 7, 7, 8), "block_q": 16, "block_k": 16}, ("one-block",)),
            Case({**_qkv(g, 1, 1, 8, 8, 8, scale=30.0), "block_k": 2}, ("large-logits", "multi-block")),
            Case({**_qkv(g, 1, 1, 1, 1, 4), "causal": True}, ("len1",)),
            Case({**_qkv(g, 1, 2, 9, 9, 8, dtype=torch.bfloat16), "causal": True}, ("bf16",))]


DRILL = Drill(
    name="flash_attention", area="attention", difficulty=3, minutes=30, func="flash_attention_forward",
    statement="Write FlashAttention's tiled forward pass with the online softmax; match plain attention.",
    starter=STARTER, reference=flash_attention_forward, sources=(flash_attention, _FlashAttention.forward),
    examples=examples, hidden=hidden, tags=("multi-block", "causal", "large-logits"),
    hints=("For a query block keep m = -inf, l = 0, O = 0 (per row). For each key block: S = Q_i K_j^T * scale.",
           "m_new = max(m, S.amax(-1)); P = exp(S - m_new); alpha = exp(m - m_new); l = alpha l + P.sum(-1); "
           "O = alpha O + P V_j; m = m_new. At the end O / l.",
           "Causal: mask S with -inf where key position > query position (+ Tk - Tq); a row whose block is fully "
           "masked has m_new = -inf: use 0 in place of it so exp(-inf - -inf) does not give NaN."),
    tag_hints={"multi-block": "when the running max grows, rescale both l and O by exp(m_old - m_new).",
               "ragged": "the last block may be shorter: slice k[..., k0:min(k0 + block_k, Tk), :].",
               "causal": "mask per tile with the absolute positions q0 + i + (Tk - Tq) and k0 + j.",
               "large-logits": "subtract the running max before exp; never exp the raw scores."},
    banned=("scaled_dot_product_attention", "softmax", "log_softmax", "naive_attention", "flash_attention",
            "logsumexp"),
)
