"""A multi-head / grouped-query / multi-query attention layer: projections, heads, masks, output projection."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import functional_call

from llmlab.drills.bank._gen import padding_mask, randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.model.attention import Attention, naive_attention, repeat_kv
from llmlab.model.config import TransformerConfig

STARTER = '''"""Drill: multi_head_attention. Check with `llmlab drill check multi_head_attention`."""
import math

import torch
from torch import Tensor


def multi_head_attention(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, wo: Tensor, n_heads: int,
                         n_kv_heads: int, causal: bool = True, key_padding_mask: Tensor | None = None) -> Tensor:
    """Multi-head attention (Vaswani et al. 2017) with grouped-query K/V heads (GQA, Ainslie et al. 2023).

    x: (B, T, C). Weights in nn.Linear's layout (y = x @ w.T), no biases: wq (H * D, C), wk and wv (Hkv * D, C),
    wo (C, H * D), with H = n_heads, Hkv = n_kv_heads (H % Hkv == 0; Hkv == 1 is multi-query), D = head dim.
    Project, split into heads, let K/V head j serve query heads j * H/Hkv ... (j + 1) * H/Hkv - 1, attend with
    softmax(Q K^T / sqrt(D)) per head (causal: query t sees keys <= t; key_padding_mask (B, T) bool, True = real
    token, hides padding keys), merge the heads and apply wo. Returns (B, T, C) in x's dtype; differentiable.
    """
    raise NotImplementedError
'''


def multi_head_attention(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, wo: Tensor, n_heads: int,
                         n_kv_heads: int, causal: bool = True, key_padding_mask: Tensor | None = None) -> Tensor:
    cfg = TransformerConfig(arch="decoder" if causal else "encoder", d_model=x.shape[-1], n_heads=n_heads,
                            n_kv_heads=n_kv_heads, head_dim=wq.shape[0] // n_heads, position="none",
                            attn_backend="naive")
    with torch.device("meta"):  # no weights of its own: the drill's tensors are swapped in below
        layer = Attention(cfg)
    weights = {"q_proj.weight": wq, "k_proj.weight": wk, "v_proj.weight": wv, "o_proj.weight": wo}
    return functional_call(layer, weights, (x,), {"key_padding_mask": key_padding_mask})


def _case(g: torch.Generator, b: int, t: int, h: int, hkv: int, d: int, tags: tuple[str, ...], *,
          causal: bool = True, mask: bool = False, dtype: torch.dtype = torch.float32, x_scale: float = 1.0,
          visible: bool = False) -> Case:
    c = h * d
    w = 1.0 / math.sqrt(c)  # unit-scale activations
    inputs = dict(x=randn(g, b, t, c, dtype=dtype, scale=x_scale), wq=randn(g, h * d, c, dtype=dtype, scale=w),
                  wk=randn(g, hkv * d, c, dtype=dtype, scale=w), wv=randn(g, hkv * d, c, dtype=dtype, scale=w),
                  wo=randn(g, c, h * d, dtype=dtype, scale=w), n_heads=h, n_kv_heads=hkv, causal=causal)
    if mask:
        inputs["key_padding_mask"] = padding_mask(g, b, t)
    return Case(inputs, tags, visible)


def examples() -> list[Case]:
    return [_case(torch.Generator().manual_seed(11), 1, 3, 2, 2, 4, ("basic", "mha"), visible=True)]


def hidden(g: torch.Generator) -> list[Case]:
    t = randint(g, 3, 9)
    return [_case(g, 2, t, 4, 4, 8, ("mha",)),
            _case(g, 2, t, 4, 2, 8, ("gqa",)),
            _case(g, 2, t, 6, 3, 4, ("gqa",)),
            _case(g, 2, t, 4, 1, 8, ("mqa",)),
            _case(g, 2, t, 4, 2, 8, ("bidirectional", "gqa"), causal=False),
            _case(g, 3, 6, 4, 2, 8, ("padding", "bidirectional"), causal=False, mask=True),
            _case(g, 3, 6, 4, 2, 8, ("padding", "causal"), mask=True),
            _case(g, 2, 1, 4, 2, 8, ("len1",)),
            _case(g, 1, 6, 4, 2, 16, ("scale",)),
            # scores of ~1e3 overflow an exp that is not max-subtracted; float64, as fp32 gradients of a saturated
            # softmax are too ill-conditioned to grade
            _case(g, 1, 6, 2, 1, 8, ("large-logits", "mqa"), x_scale=40.0, dtype=torch.float64),
            _case(g, 2, t, 4, 2, 8, ("fp64", "gqa"), dtype=torch.float64),
            _case(g, 2, t, 4, 2, 8, ("fp16", "gqa"), dtype=torch.float16),
            _case(g, 2, t, 4, 2, 8, ("bf16", "gqa"), dtype=torch.bfloat16)]


DRILL = Drill(
    name="multi_head_attention", area="attention", difficulty=2, minutes=25, func="multi_head_attention",
    statement="Write a multi-head attention layer with grouped-query K/V heads: project, split heads, repeat K/V, "
              "scaled causal attention, merge heads, output projection.",
    starter=STARTER, reference=multi_head_attention, sources=(Attention.forward, naive_attention, repeat_kv),
    examples=examples, hidden=hidden, tags=("mha", "gqa", "mqa", "padding", "len1", "large-logits", "fp16", "bf16"),
    hints=("q = (x @ wq.T).view(B, T, H, D).transpose(1, 2): (B, H, T, D); k and v likewise with Hkv heads.",
           "GQA: k.repeat_interleave(H // Hkv, dim=1) gives K/V head j to query heads j*H/Hkv ..; then scores "
           "= q @ k.transpose(-2, -1) / sqrt(D), mask with -inf, softmax over the keys, @ v.",
           "Merge: out.transpose(1, 2).reshape(B, T, H * D) @ wo.T. Causal mask: torch.ones(T, T).tril().bool(); "
           "padding: key_padding_mask[:, None, None, :]."),
    tag_hints={"gqa": "each K/V head serves a contiguous group of H // Hkv query heads: repeat_interleave on the "
                      "head dim, not repeat (which tiles them).",
               "mqa": "one K/V head shared by every query head: broadcast or repeat it H times.",
               "padding": "the padding mask hides keys (columns): key_padding_mask[:, None, None, :].",
               "bidirectional": "causal=False: every query sees every (real) key.",
               "scale": "divide the scores by sqrt(D), the head dim, not by sqrt(C).",
               "len1": "one token attends to itself only; check your reshapes work with T = 1.",
               "large-logits": "use -inf for masked scores and a max-subtracted softmax (torch.softmax is one).",
               "mha": "split with view(B, T, H, D) then transpose(1, 2); merge with the inverse, before wo."},
    banned=("scaled_dot_product_attention", "naive_attention", "sdpa_attention", "flash_attention", "attend",
            "repeat_kv", "MultiheadAttention", "multi_head_attention_forward", "Attention"),
    grad=("x", "wq", "wk", "wv", "wo"),
)
