"""Scaled dot-product self-attention with causal and padding masks (and grouped-query heads)."""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.drills.bank._gen import padding_mask, randint, randn
from llmlab.drills.grader import Case, Drill
from llmlab.model.attention import naive_attention

STARTER = '''"""Drill: self_attention. Check with `llmlab drill check self_attention`."""
import math

import torch
from torch import Tensor


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
              key_padding_mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention (Vaswani et al. 2017): softmax(Q K^T / sqrt(D), masked) V.

    q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D), H % Hkv == 0 (grouped-query: each K/V head serves H / Hkv
    query heads). Query i sits at absolute position i + (Tk - Tq) (a decode step's query is the last key).
    causal: query may see keys at positions <= its own. key_padding_mask: (B, Tk) bool, True = real token.
    A query row that can see no key returns zeros. Returns (B, H, Tq, D) in q's dtype; differentiable.
    """
    raise NotImplementedError
'''


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, key_padding_mask: Tensor | None = None) -> Tensor:
    return naive_attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask)


def examples() -> list[Case]:
    g = torch.Generator().manual_seed(7)
    q, k, v = randn(g, 1, 1, 3, 4), randn(g, 1, 1, 3, 4), randn(g, 1, 1, 3, 4)
    return [Case(dict(q=q, k=k, v=v), ("basic",), True),
            Case(dict(q=q, k=k, v=v, causal=True), ("causal",), True)]


def hidden(g: torch.Generator) -> list[Case]:
    cases = []
    for dtype, tag in ((torch.float32, "fp32"), (torch.float64, "fp64"), (torch.float16, "fp16"),
                       (torch.bfloat16, "bf16")):
        b, h, t, d = randint(g, 1, 3), randint(g, 1, 4), randint(g, 2, 9), randint(g, 2, 9) * 2
        x = [randn(g, b, h, t, d, dtype=dtype) for _ in range(3)]
        cases.append(Case(dict(q=x[0], k=x[1], v=x[2], causal=True), ("causal", tag)))
    b, h, t, d = 2, 2, 7, 16  # scores grow with D: the 1/sqrt(D) scale matters
    x = [randn(g, b, h, t, d) for _ in range(3)]
    cases.append(Case(dict(q=x[0], k=x[1], v=x[2]), ("scale", "fp32")))
    x = [randn(g, 2, 2, 6, 8) for _ in range(3)]
    cases.append(Case(dict(q=x[0], k=x[1], v=x[2], key_padding_mask=padding_mask(g, 2, 6)), ("padding",)))
    cases.append(Case(dict(q=x[0], k=x[1], v=x[2], causal=True, key_padding_mask=padding_mask(g, 2, 6)),
                      ("causal", "padding")))
    cases.append(Case(dict(q=x[0], k=x[1], v=x[2], key_padding_mask=padding_mask(g, 2, 6, empty_row=True)),
                      ("padding", "all-masked")))
    cases.append(Case(dict(q=randn(g, 2, 2, 1, 8), k=x[1], v=x[2], causal=True), ("decode", "causal", "len1")))
    cases.append(Case(dict(q=randn(g, 1, 2, 3, 8), k=randn(g, 1, 2, 5, 8), v=randn(g, 1, 2, 5, 8), causal=True),
                      ("decode", "causal")))
    t1 = randn(g, 1, 1, 1, 4)
    cases.append(Case(dict(q=t1, k=t1.clone(), v=t1.clone(), causal=True), ("len1",)))
    cases.append(Case(dict(q=randn(g, 2, 4, 5, 8), k=randn(g, 2, 2, 5, 8), v=randn(g, 2, 2, 5, 8), causal=True),
                      ("gqa", "causal")))
    cases.append(Case(dict(q=randn(g, 1, 2, 6, 8, scale=40.0), k=randn(g, 1, 2, 6, 8, scale=40.0),
                           v=randn(g, 1, 2, 6, 8), causal=True), ("large-logits",)))
    return cases


DRILL = Drill(
    name="self_attention", area="attention", difficulty=2, minutes=20, func="attention",
    statement="Write scaled dot-product attention with causal and key-padding masks and grouped-query heads.",
    starter=STARTER, reference=attention, sources=(naive_attention,), examples=examples, hidden=hidden,
    tags=("causal", "padding", "gqa", "len1", "large-logits", "fp16", "bf16"),
    hints=("scores = q @ k.transpose(-2, -1) / sqrt(D): (B, H, Tq, Tk). Mask with -inf, softmax over the last "
           "dim (the keys), then @ v.",
           "Causal with Tq != Tk: query i is at position i + Tk - Tq, so key j is visible iff j <= i + Tk - Tq. "
           "Padding: key_padding_mask[:, None, None, :] broadcasts over heads and queries.",
           "GQA: repeat each K/V head H // Hkv times along dim 1 (repeat_interleave). A fully masked row "
           "softmaxes to NaN: zero it afterwards (probs.masked_fill(~mask, 0)). torch.softmax subtracts the max."),
    tag_hints={"causal": "query i sees keys j <= i + (Tk - Tq); an off-by-one hides the diagonal or shows one "
                         "future key.",
               "decode": "with fewer queries than keys, queries are the *last* positions: offset the mask by Tk - Tq.",
               "all-masked": "a row with no visible key must be zeros, not NaN: zero the probabilities where masked.",
               "gqa": "k and v have fewer heads: repeat each one H // Hkv times (repeat_interleave on dim 1).",
               "scale": "divide the scores by sqrt(D), the head dim, not by D or sqrt(T).",
               "padding": "the padding mask hides keys (columns), broadcast as mask[:, None, None, :].",
               "large-logits": "use -inf (or the dtype's min) for masked scores and a max-subtracted softmax."},
    banned=("scaled_dot_product_attention", "naive_attention", "sdpa_attention", "flash_attention",
            "MultiheadAttention", "multi_head_attention_forward"),
    grad=("q", "k", "v"),
)
