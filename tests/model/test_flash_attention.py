"""FlashAttention-2 in plain PyTorch vs torch SDPA (and naive_attention where SDPA cannot soft-cap).

Outputs and gradients (dq, dk, dv through autograd) are compared in float64 at atol = rtol = 1e-10, where any
difference is the algorithm's, not rounding; bf16 is compared with fp32 SDPA at bf16 tolerance.
"""

from __future__ import annotations

import pytest
import torch

import llmlab.model.flash_attention as fa
from llmlab.model.attention import alibi_slopes, attend, build_attention_mask, naive_attention, sdpa_attention
from llmlab.model.flash_attention import flash_attention, visible_tiles
from tests.model import attention_helpers

FP64 = attention_helpers.FP64
out_and_grads = attention_helpers.out_and_grads


def make_qkv(b=2, h=4, hkv=4, tq=37, tk=37, d=8, dtype=torch.float64, seed=0):
    """Longer default sequences than the attention tests: several tiles per row."""
    return attention_helpers.make_qkv(b, h, hkv, tq, tk, d, dtype, seed)


def padding(b, tk, lengths):
    """key_padding_mask (B, Tk): the first lengths[b] keys of each batch row are real."""
    return torch.arange(tk)[None, :] < torch.tensor(lengths)[:, None]


# shapes (B, H, Hkv, Tq, Tk, D) and attention options; every case runs with several tilings below
CASES = {
    "no_mask": ((2, 4, 4, 37, 37, 8), {}),
    "causal": ((2, 4, 4, 37, 37, 8), {"causal": True}),
    "causal_window": ((2, 4, 4, 37, 37, 8), {"causal": True, "window": 7}),
    "bidirectional_window": ((2, 4, 4, 37, 37, 8), {"window": 5}),
    "key_padding": ((2, 4, 4, 37, 37, 8), {"key_padding_mask": padding(2, 37, [37, 20])}),
    "padding_causal_window": ((2, 4, 4, 37, 37, 8),
                              {"causal": True, "window": 9, "key_padding_mask": padding(2, 37, [30, 12])}),
    "gqa": ((2, 6, 2, 37, 37, 8), {"causal": True}),
    "mqa": ((2, 4, 1, 37, 37, 8), {"causal": True}),
    "decode_tq1": ((2, 4, 2, 1, 37, 8), {"causal": True}),
    "decode_tq5": ((2, 4, 2, 5, 37, 8), {"causal": True}),
    "decode_tq5_window": ((2, 4, 2, 5, 37, 8), {"causal": True, "window": 4}),
    "tq5_bidirectional": ((2, 4, 4, 5, 37, 8), {}),
    "alibi_causal": ((2, 4, 4, 37, 37, 8), {"causal": True, "alibi": alibi_slopes(4).double()}),
    "alibi_bidirectional_padding": ((2, 4, 2, 37, 37, 8),
                                    {"alibi": alibi_slopes(4).double(),
                                     "key_padding_mask": padding(2, 37, [37, 25])}),
    "scale": ((2, 4, 4, 37, 37, 8), {"causal": True, "scale": 0.3}),
}
# (block_q, block_k): not dividing T=37, unequal, and larger than T (a single tile)
BLOCKS = [(16, 16), (8, 16), (64, 64)]


@pytest.mark.parametrize("block_q,block_k", BLOCKS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_sdpa_fp64(case, block_q, block_k):
    """Output, dq, dk, dv vs torch SDPA (llmlab.sdpa_attention), float64, atol = rtol = 1e-10."""
    (b, h, hkv, tq, tk, d), kwargs = CASES[case]
    q, k, v = make_qkv(b, h, hkv, tq, tk, d)
    expected = out_and_grads(sdpa_attention, q, k, v, **kwargs)
    actual = out_and_grads(flash_attention, q, k, v, block_q=block_q, block_k=block_k, **kwargs)
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        torch.testing.assert_close(a, e, **FP64, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("kwargs", [{"softcap": 2.0}, {"softcap": 1.5, "causal": True, "window": 6},
                                    {"softcap": 3.0, "causal": True, "alibi": alibi_slopes(4).double()}],
                         ids=["softcap", "softcap_causal_window", "softcap_alibi"])
def test_softcap_matches_naive_fp64(kwargs):
    """Soft-capping vs naive_attention (SDPA cannot soft-cap), float64, atol = rtol = 1e-10, GQA."""
    q, k, v = make_qkv(h=4, hkv=2, d=16)
    expected = out_and_grads(naive_attention, q, k, v, **kwargs)
    actual = out_and_grads(flash_attention, q, k, v, block_q=16, block_k=8, **kwargs)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, **FP64)


@pytest.mark.parametrize("kwargs", [
    {"key_padding_mask": padding(3, 37, [37, 0, 10])},  # batch row 1: every key is padding
    # left padding: in batch row 1, queries 0..31 see no key
    {"causal": True, "key_padding_mask": padding(3, 37, [37, 5, 0]).flip(-1)},
    {"causal": True, "alibi": alibi_slopes(4).double(),
     "key_padding_mask": padding(3, 37, [0, 37, 3]).flip(-1)},
], ids=["fully_padded_batch_row", "left_padded_causal", "left_padded_alibi"])
def test_rows_without_keys_are_zero(kwargs):
    """Rows that see no key: output and dq exactly 0, nothing NaN; all matches SDPA (fp64, 1e-10)."""
    q, k, v = make_qkv(b=3)
    actual = out_and_grads(flash_attention, q, k, v, block_q=16, block_k=16, **kwargs)
    mask = build_attention_mask(37, 37, causal=kwargs.get("causal", False),
                                key_padding_mask=kwargs["key_padding_mask"])
    empty = ~mask.any(-1).expand(3, 4, 37)  # (B, H, Tq)
    assert empty.any()
    out, dq = actual[0], actual[1]
    assert (out[empty] == 0).all() and (dq[empty] == 0).all()
    assert not any(t.isnan().any() for t in actual)
    for a, e in zip(actual, out_and_grads(sdpa_attention, q, k, v, **kwargs), strict=True):
        torch.testing.assert_close(a, e, **FP64)


@pytest.mark.parametrize("kwargs", [{}, {"causal": True, "window": 9}], ids=["no_mask", "causal_window"])
def test_float32_matches_sdpa(kwargs):
    """float32 output and grads vs SDPA in float32, assert_close's fp32 defaults (rtol 1.3e-6, atol 1e-5)."""
    q, k, v = make_qkv(h=4, hkv=2, dtype=torch.float32)
    for a, e in zip(out_and_grads(flash_attention, q, k, v, block_q=16, block_k=16, **kwargs),
                    out_and_grads(sdpa_attention, q, k, v, **kwargs), strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, e)


def test_bfloat16_vs_float32_sdpa():
    """bf16 inputs (fp32 accumulation inside) vs fp32 SDPA on the same values: rtol 1.6e-2, atol 1e-2."""
    q, k, v = make_qkv(h=4, hkv=2, dtype=torch.bfloat16)
    actual = out_and_grads(flash_attention, q, k, v, causal=True, window=11, block_q=16, block_k=16)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    expected = out_and_grads(sdpa_attention, q32, k32, v32, causal=True, window=11)
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), e, rtol=1.6e-2, atol=1e-2)


def test_gradcheck_everything_at_once():
    """torch.autograd.gradcheck (finite differences, fp64): GQA, causal, window, padding, ALiBi, softcap."""
    q, k, v = make_qkv(b=2, h=4, hkv=2, tq=6, tk=11, d=4)
    kwargs = {"causal": True, "window": 5, "key_padding_mask": padding(2, 11, [11, 7]),
              "alibi": alibi_slopes(4).double(), "softcap": 2.0, "block_q": 4, "block_k": 3}
    assert torch.autograd.gradcheck(lambda q, k, v: flash_attention(q, k, v, **kwargs), (q, k, v))


def test_attend_dispatches_block_sizes():
    """attend('flash', block_q=, block_k=) vs attend('sdpa'), float64, atol = rtol = 1e-10."""
    q, k, v = make_qkv(h=4, hkv=2)
    torch.testing.assert_close(attend("flash", q, k, v, causal=True, block_q=8, block_k=32),
                               attend("sdpa", q, k, v, causal=True), **FP64)


@pytest.mark.parametrize("tq,tk", [(37, 37), (64, 64), (5, 37), (1, 37)])
@pytest.mark.parametrize("causal", [True, False])
def test_visible_tiles_are_exactly_the_unmasked_ones(tq, tk, causal):
    """visible_tiles lists a tile iff build_attention_mask has a True in it, for every window and tiling."""
    for window in [None, *range(1, 40)]:
        mask = build_attention_mask(tq, tk, causal=causal, window=window)
        mask = torch.ones(tq, tk, dtype=torch.bool) if mask is None else mask[0, 0]
        for bq, bk in [(16, 8), (5, 3), (7, 7), (64, 64)]:
            expected = [(q0, k0) for q0 in range(0, tq, bq) for k0 in range(0, tk, bk)
                        if mask[q0:q0 + bq, k0:k0 + bk].any()]
            assert visible_tiles(tq, tk, block_q=bq, block_k=bk, causal=causal, window=window) == expected


def test_masked_tiles_are_skipped(monkeypatch):
    """Causal 64x64 in 16x16 tiles: 10 tiles on or below the diagonal are computed, not 16 (fwd and bwd)."""
    calls = []

    def counting_scores(*args, **kwargs):
        calls.append(1)
        return real_scores(*args, **kwargs)

    real_scores = fa._tile_scores
    monkeypatch.setattr(fa, "_tile_scores", counting_scores)
    q, k, v = make_qkv(b=1, h=2, hkv=2, tq=64, tk=64)
    out = flash_attention(q, k, v, causal=True, block_q=16, block_k=16)
    assert len(calls) == 10 == len(visible_tiles(64, 64, block_q=16, block_k=16, causal=True))
    out.sum().backward()
    assert len(calls) == 20
    calls.clear()
    flash_attention(q, k, v, causal=True, window=16, block_q=16, block_k=16)
    assert len(calls) == 7  # a band: the 4 diagonal tiles and the 3 just below them


def test_dropout_raises():
    q, k, v = make_qkv(b=1, h=2, hkv=2, tq=4, tk=4)
    with pytest.raises(ValueError, match="flash backend has no attention dropout"):
        flash_attention(q, k, v, dropout_p=0.1, training=True)
    flash_attention(q, k, v, dropout_p=0.1, training=False)  # eval: dropout is off, nothing to refuse


def test_bad_head_count_raises():
    q, k, v = make_qkv(b=1, h=4, hkv=3, tq=4, tk=4)
    with pytest.raises(ValueError, match="n_kv_heads=3 must divide n_heads=4"):
        flash_attention(q, k, v)
