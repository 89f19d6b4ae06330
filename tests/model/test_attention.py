"""naive_attention and sdpa_attention vs torch's F.scaled_dot_product_attention, HF Bloom ALiBi and closed forms.

The reference masks are built here by hand, with Python loops (not with `build_attention_mask`), and passed to
`F.scaled_dot_product_attention` directly (not through our wrapper). Sliding windows follow HF Mistral (a query
sees the w most recent keys, itself included; cross-checked with `transformers.masking_utils`). Outputs and
gradients (dq, dk, dv) are compared in float64 at atol = rtol = 1e-10; fp32 cases at torch.testing defaults.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from llmlab.model.attention import alibi_bias, alibi_slopes, build_attention_mask, naive_attention, sdpa_attention
from tests.model.attention_helpers import FP64, make_qkv, out_and_grads


def lengths_mask(tk, lengths):
    """key_padding_mask (B, Tk): the first lengths[b] keys of row b are real (right padding)."""
    return torch.tensor([[j < n for j in range(tk)] for n in lengths])


def loop_mask(b, tq, tk, *, causal=False, window=None, key_padding_mask=None):
    """Reference mask (B, 1, Tq, Tk), True = may attend, one element at a time.

    Query i sits at absolute position i + (Tk - Tq) (bottom-right alignment, as a KV-cached decode step).
    causal window w (HF Mistral): pos - w < j <= pos. Bidirectional window (our documented choice): |pos - j| < w.
    """
    m = torch.zeros(b, 1, tq, tk, dtype=torch.bool)
    for bi in range(b):
        for i in range(tq):
            pos = i + tk - tq
            for j in range(tk):
                ok = True
                if causal and j > pos:
                    ok = False
                if window is not None and not (pos - j < window if causal else abs(pos - j) < window):
                    ok = False
                if key_padding_mask is not None and not key_padding_mask[bi, j]:
                    ok = False
                m[bi, 0, i, j] = ok
    return m


def torch_sdpa(q, k, v, mask, gqa="enable_gqa"):
    """F.scaled_dot_product_attention with our explicit mask; GQA through enable_gqa or repeat_interleave."""
    if gqa == "repeat_interleave":
        n_rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


# (B, H, Hkv, Tq, Tk, D), attention options; no case has a query row that sees no key
CASES = {
    "no_mask": ((2, 4, 4, 19, 19, 8), {}),
    "causal": ((2, 4, 4, 19, 19, 8), {"causal": True}),
    "causal_window": ((2, 4, 4, 19, 19, 8), {"causal": True, "window": 5}),
    "window_1": ((2, 4, 4, 19, 19, 8), {"causal": True, "window": 1}),
    "bidirectional_window": ((2, 4, 4, 19, 19, 8), {"window": 4}),
    "key_padding": ((2, 4, 4, 19, 19, 8), {"key_padding_mask": lengths_mask(19, [19, 11])}),
    "causal_padding_window": ((2, 4, 4, 19, 19, 8),
                              {"causal": True, "window": 6, "key_padding_mask": lengths_mask(19, [15, 14])}),
    "gqa": ((2, 6, 2, 19, 19, 8), {"causal": True}),
    "gqa_padding_window": ((2, 6, 3, 19, 19, 8),
                           {"causal": True, "window": 7, "key_padding_mask": lengths_mask(19, [19, 13])}),
    "mqa": ((2, 4, 1, 19, 19, 8), {"causal": True}),
    "tq_lt_tk_causal": ((2, 4, 2, 5, 23, 8), {"causal": True}),
    "tq_lt_tk_window": ((2, 4, 4, 6, 23, 8), {"causal": True, "window": 4}),
    "decode_step": ((2, 4, 2, 1, 23, 8), {"causal": True, "window": 9}),
}


def case_inputs(name):
    (b, h, hkv, tq, tk, d), opts = CASES[name]
    q, k, v = make_qkv(b, h, hkv, tq, tk, d)
    mask = loop_mask(b, tq, tk, causal=opts.get("causal", False), window=opts.get("window"),
                     key_padding_mask=opts.get("key_padding_mask"))
    assert mask.any(-1).all(), "a case with an empty query row belongs in the fully-masked test"
    return q, k, v, mask, opts


@pytest.mark.parametrize("name", CASES)
def test_naive_matches_torch_sdpa_with_hand_built_mask(name):
    """Reference: F.scaled_dot_product_attention(attn_mask=loop mask, enable_gqa=...) in fp64, output + grads."""
    q, k, v, mask, opts = case_inputs(name)
    got = out_and_grads(naive_attention, q, k, v, **opts)
    want = out_and_grads(torch_sdpa, q, k, v, mask=mask)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **FP64)


@pytest.mark.parametrize("name", [n for n, (shape, _) in CASES.items() if shape[1] != shape[2]])
def test_gqa_matches_repeat_interleave_reference(name):
    """Reference: plain SDPA on K/V heads repeated with repeat_interleave (head j serves queries j*G .. j*G+G-1)."""
    q, k, v, mask, opts = case_inputs(name)
    got = out_and_grads(naive_attention, q, k, v, **opts)
    want = out_and_grads(torch_sdpa, q, k, v, mask=mask, gqa="repeat_interleave")
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **FP64)


@pytest.mark.parametrize("name", CASES)
def test_sdpa_wrapper_matches_naive(name):
    """Reference: naive_attention (itself checked above) on the same inputs; fp64, output + grads."""
    q, k, v, _, opts = case_inputs(name)
    got = out_and_grads(sdpa_attention, q, k, v, **opts)
    want = out_and_grads(naive_attention, q, k, v, **opts)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **FP64)


def test_fp32_matches_fp64_reference_at_fp32_tolerance():
    """Reference: torch SDPA in fp64 on the same values; our fp32 naive and sdpa at torch.testing fp32 defaults."""
    q, k, v, mask, opts = case_inputs("gqa_padding_window")
    want = torch_sdpa(q, k, v, mask).float()
    q32, k32, v32 = (x.detach().float() for x in (q, k, v))
    assert_close(naive_attention(q32, k32, v32, **opts), want)
    assert_close(sdpa_attention(q32, k32, v32, **opts), want)


@pytest.mark.parametrize("window", [1, 3, 6])
def test_mask_matches_hf_mistral_sliding_window(window):
    """Reference: transformers.masking_utils.sliding_window_causal_mask_function(w) (HF Mistral); our loop mask
    and build_attention_mask both agree with it, so each row sees min(i + 1, w) keys."""
    mu = pytest.importorskip("transformers.masking_utils")
    fn = mu.sliding_window_causal_mask_function(window)
    t = 12
    idx = torch.arange(t)
    hf = torch.tensor([[bool(fn(idx[0], idx[0], idx[i], idx[j])) for j in range(t)] for i in range(t)])
    assert torch.equal(loop_mask(1, t, t, causal=True, window=window)[0, 0], hf)
    assert torch.equal(build_attention_mask(t, t, causal=True, window=window)[0, 0], hf)
    assert hf.sum(-1).tolist() == [min(i + 1, window) for i in range(t)]


@pytest.mark.parametrize("tq,tk,causal,window", [(19, 19, True, None), (19, 19, False, 4), (5, 23, True, 4)])
def test_build_attention_mask_matches_loop_mask(tq, tk, causal, window):
    kpm = lengths_mask(tk, [tk, tk - 7])
    got = build_attention_mask(tq, tk, causal=causal, window=window, key_padding_mask=kpm)
    assert torch.equal(got.expand(2, 1, tq, tk), loop_mask(2, tq, tk, causal=causal, window=window,
                                                            key_padding_mask=kpm))


@pytest.mark.parametrize("fn", [naive_attention, sdpa_attention], ids=["naive", "sdpa"])
@pytest.mark.parametrize("alibi", [False, True], ids=["plain", "alibi"])
def test_fully_masked_rows_give_zeros_and_finite_grads(fn, alibi):
    """Reference: the documented rule 'a query row that sees no key returns zeros'; no NaN anywhere.

    Row 0 of batch 1 is all padding; in batch 0 the first 3 keys are padding, so causal rows 0..2 see nothing.
    """
    q, k, v = make_qkv(2, 4, 2, 10, 10, 8)
    kpm = torch.ones(2, 10, dtype=torch.bool)
    kpm[0, :3] = False
    kpm[1] = False
    opts = dict(causal=True, key_padding_mask=kpm, alibi=alibi_slopes(4) if alibi else None)
    out, dq, dk, dv = out_and_grads(fn, q, k, v, **opts)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in (dq, dk, dv))
    assert (out[0, :, :3] == 0).all() and (out[1] == 0).all()
    assert (dq[0, :, :3] == 0).all() and (dq[1] == 0).all()
    # the rows that do see keys are unaffected: same as attention over the real keys only
    ref = naive_attention(q[:1, :, 3:], k[:1, :, 3:], v[:1, :, 3:], causal=True,
                          alibi=alibi_slopes(4) if alibi else None)
    assert_close(out[:1, :, 3:], ref, **FP64)


# --- ALiBi


def bloom_alibi(attention_mask: torch.Tensor, n_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """HF Bloom's ALiBi tensor, (B*H, 1, T) -> (B, H, 1, T): slope_h * key position (constant along queries)."""
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    b, t = attention_mask.shape
    return bloom.build_alibi_tensor(attention_mask, n_heads, dtype).view(b, n_heads, 1, t)


@pytest.mark.parametrize("n_heads", [8, 6, 12], ids=["pow2_8", "non_pow2_6", "non_pow2_12"])
def test_alibi_slopes_match_bloom(n_heads):
    """Reference: the slopes inside HF Bloom's build_alibi_tensor (value at key position 1); fp32 defaults."""
    alibi = bloom_alibi(torch.ones(1, 4, dtype=torch.long), n_heads, torch.float32)
    assert_close(alibi_slopes(n_heads), alibi[0, :, 0, 1])
    assert_close(alibi[0, :, 0, 3], 3 * alibi_slopes(n_heads))


@pytest.mark.parametrize("n_heads", [8, 6], ids=["pow2", "non_pow2"])
@pytest.mark.parametrize("fn", [naive_attention, sdpa_attention], ids=["naive", "sdpa"])
def test_alibi_attention_matches_bloom_bias(n_heads, fn):
    """Reference: F.scaled_dot_product_attention with Bloom's alibi (+ slope * j) plus a hand-built causal/padding
    -inf mask as the additive bias. Ours adds -slope * (i - j); the difference -slope * i is constant per row and
    cancels in the softmax. fp64 at 1e-10, with right padding in batch row 1."""
    t = 17
    q, k, v = make_qkv(2, n_heads, n_heads, t, t, 8)
    kpm = lengths_mask(t, [t, 12])
    bias = bloom_alibi(kpm.long(), n_heads, torch.float64)  # (B, H, 1, T)
    mask = loop_mask(2, t, t, causal=True, key_padding_mask=kpm)
    additive = bias.masked_fill(~mask, float("-inf"))  # (B, H, T, T)
    want = out_and_grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=additive), q, k, v)
    got = out_and_grads(fn, q, k, v, causal=True, key_padding_mask=kpm, alibi=alibi_slopes(n_heads))
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **FP64)


def test_alibi_bias_closed_form():
    """Reference: -slope_h * (i - j) causal, -slope_h * |i - j| bidirectional, with Tq < Tk bottom-right aligned."""
    slopes = alibi_slopes(4).double()
    got_c, got_b = alibi_bias(slopes, 3, 7, causal=True), alibi_bias(slopes, 3, 7, causal=False)
    for h in range(4):
        for i in range(3):
            for j in range(7):
                pos = i + 4
                assert got_c[0, h, i, j].item() == pytest.approx(-slopes[h].item() * (pos - j), abs=1e-15)
                assert got_b[0, h, i, j].item() == pytest.approx(-slopes[h].item() * abs(pos - j), abs=1e-15)


# --- soft-capping and dropout


@pytest.mark.parametrize("cap", [2.0, 50.0])
def test_softcap_closed_form(cap):
    """Reference: softmax(c * tanh(Q K^T / sqrt(d) / c) masked causal) V written out here (Gemma 2); fp64 + grads."""
    q, k, v = make_qkv(2, 4, 2, 13, 13, 8)
    q = (q * 3).detach().requires_grad_()  # large logits so a cap of 2 bites

    def ref(q, k, v):
        kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
        s = q @ kk.transpose(-2, -1) / math.sqrt(8)
        s = cap * torch.tanh(s / cap)
        s = s.masked_fill(~loop_mask(2, 13, 13, causal=True), float("-inf"))
        return torch.softmax(s, -1) @ vv

    got = out_and_grads(naive_attention, q, k, v, causal=True, softcap=cap)
    want = out_and_grads(ref, q, k, v)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **FP64)
    if cap == 2.0:  # the cap changes the result
        assert not torch.allclose(got[0], naive_attention(q, k, v, causal=True))


def test_sdpa_wrapper_refuses_softcap():
    q, k, v = make_qkv(1, 2, 2, 4, 4, 8)
    with pytest.raises(ValueError, match="soft-cap"):
        sdpa_attention(q, k, v, softcap=5.0)


@pytest.mark.parametrize("fn", [naive_attention, sdpa_attention], ids=["naive", "sdpa"])
def test_attention_dropout_only_in_training(fn):
    """Reference: no dropout -> eval output is exactly the dropout_p=0 output; training output differs and varies."""
    q, k, v = (x.detach() for x in make_qkv(2, 4, 2, 13, 13, 8))
    clean = fn(q, k, v, causal=True)
    assert torch.equal(fn(q, k, v, causal=True, dropout_p=0.5, training=False), clean)
    torch.manual_seed(0)
    a = fn(q, k, v, causal=True, dropout_p=0.5, training=True)
    b = fn(q, k, v, causal=True, dropout_p=0.5, training=True)
    assert not torch.allclose(a, clean) and not torch.allclose(a, b)


def test_naive_dropout_is_inverted_dropout_on_probabilities():
    """Reference: F.dropout(softmax(scores), p) @ V under the same RNG seed (dropout on attention probabilities)."""
    q, k, v = (x.detach() for x in make_qkv(2, 4, 4, 13, 13, 8))
    s = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~loop_mask(2, 13, 13, causal=True), float("-inf"))
    torch.manual_seed(3)
    want = F.dropout(torch.softmax(s, -1), p=0.3) @ v
    torch.manual_seed(3)
    got = naive_attention(q, k, v, causal=True, dropout_p=0.3, training=True)
    assert_close(got, want, **FP64)
