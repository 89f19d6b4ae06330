"""GPTQ (Frantar et al. 2022).

References: a plain OBQ-style loop written below (Frantar & Alistarh 2022: quantize one column, move every later
column by the OBS update, eliminate the column from H^-1) in float64, no Cholesky, no blocks: GPTQ must equal it to
1e-10; round-to-nearest, which GPTQ must beat on real activations and equal when H is diagonal (nothing to feed the
error to).
"""

from __future__ import annotations

import pytest
import torch

from llmlab.compress.calibration import CalibrationStats, calibration_batches, collect_stats
from llmlab.compress.gptq import block_size_for, gptq
from llmlab.compress.groupwise import Scheme, qparams, quantize_dequantize, rtn


def obq_reference(w: torch.Tensor, h: torch.Tensor, scheme: Scheme, order: list[int], damp: float = 0.01
                  ) -> torch.Tensor:
    """The dequantized weight, columns quantized one at a time in `order`; a group's grid is taken when its first
    column comes up, from the weights as updated by then."""
    w, h = w.double().clone(), h.double().clone()
    d = w.shape[1]
    for j in range(d):
        if h[j, j] == 0:  # an input that never fired: its weights are set to 0
            h[j, j] = 1
            w[:, j] = 0
    h += damp * torch.diagonal(h).mean() * torch.eye(d, dtype=h.dtype)
    hinv = torch.linalg.inv(h)
    out = torch.zeros_like(w)
    g = scheme.group(d)
    for k, j in enumerate(order):
        if k % g == 0:
            scale, zero = qparams(w[:, order[k:k + g]], scheme)
        q = quantize_dequantize(w[:, j:j + 1], scale, zero, scheme.qmax)[:, 0]
        out[:, j] = q
        # OBS: dw = -(w_j - q_j) / [H^-1]_jj * [H^-1]_j,:  (quantized columns have [H^-1]_j,: = 0 after elimination)
        w -= ((w[:, j] - q) / hinv[j, j])[:, None] * hinv[j][None, :]
        hinv -= hinv[:, j:j + 1] @ hinv[j:j + 1, :] / hinv[j, j]  # remove column j from the problem
    return out


def layer_problem(seed: int = 0, d_out: int = 5, d_in: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(80, d_in, generator=g, dtype=torch.float64) @ torch.randn(d_in, d_in, generator=g,
                                                                               dtype=torch.float64)  # correlated
    x[:, 5] = 0  # a dead input
    w = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    return w, 2 * x.T @ x / len(x)


@pytest.mark.parametrize(("scheme", "block_size"), [
    (Scheme(4, 8), 8),  # one group per block
    (Scheme(4, 8), 16),  # two groups per block: the lazy batch update crosses groups
    (Scheme(3, 6), 8),  # a group that does not divide the block: the block shrinks to 6
    (Scheme(4, None), 16),  # one grid per row
    (Scheme(2, 8, symmetric=True), 128),  # everything in one block
])
def test_equals_plain_obq_loop(scheme, block_size):
    """GPTQ (Cholesky rows, lazy block updates) == the plain OBQ loop in the same column order: dequantized weights
    to 1e-10 in float64 (the codes are then equal too)."""
    w, h = layer_problem()
    ours = gptq(w, h, scheme, block_size=block_size)
    ref = obq_reference(w, h, scheme, list(range(w.shape[1])))
    torch.testing.assert_close(ours.dequantize(), ref, rtol=0, atol=1e-10)
    assert bool((ours.dequantize()[:, 5] == 0).all())  # the dead input's weights


def test_act_order_equals_obq_in_that_order():
    """act_order: columns by decreasing diag(H), groups in that order (g_idx maps columns to them) == the OBQ loop
    in the same order, to 1e-10."""
    w, h = layer_problem(1)
    ours = gptq(w, h, Scheme(4, 8), block_size=16, act_order=True)
    diag = h.diagonal().clone()
    diag[diag == 0] = 1
    order = torch.argsort(diag, descending=True).tolist()
    torch.testing.assert_close(ours.dequantize(), obq_reference(w, h, Scheme(4, 8), order), rtol=0, atol=1e-10)
    assert ours.g_idx is not None and sorted(ours.g_idx.tolist()) == sorted(i // 8 for i in range(24))
    assert "g_idx" in ours.packed()


def test_diagonal_hessian_reduces_to_rtn():
    """With H diagonal (uncorrelated inputs) no error can be fed to other columns: GPTQ == RTN, codes, scales and
    zero points exactly."""
    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(2))
    h = torch.diag(torch.rand(96, generator=torch.Generator().manual_seed(3)) + 0.1)
    for scheme in (Scheme(4, 32), Scheme(3, None, symmetric=True)):
        ours, ref = gptq(w, h, scheme), rtn(w, scheme)
        assert torch.equal(ours.codes, ref.codes) and torch.equal(ours.scale, ref.scale)
        assert torch.equal(ours.zero, ref.zero)


def test_block_size_for():
    """Blocks stay multiples of the group (or the group of the block), so a group's grid sees every update."""
    assert block_size_for(128, 32, 512) == 128 and block_size_for(128, 256, 512) == 128
    assert block_size_for(128, 96, 512) == 96 and block_size_for(128, 48, 512) == 96
    assert block_size_for(128, 200, 512) == 200 and block_size_for(128, 352, 352) == 128


@pytest.fixture(scope="module")
def real_activations():
    """A small llmlab decoder (random init) run on Shakespeare's Sonnets as bytes: the inputs of two of its
    layers, on 2048 calibration tokens and on the next 2048 (held out)."""
    from llmlab.data.samples import sample_text
    from llmlab.model.config import TransformerConfig
    from llmlab.model.transformer import Transformer
    from llmlab.tokenizer import ByteTokenizer

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=260, d_model=64, n_layers=2, n_heads=4, d_ff=160,
                                          max_seq_len=128)).eval()
    ids = ByteTokenizer().encode(sample_text()[:12_000])
    calib, held = calibration_batches(ids, 2048, 128), calibration_batches(ids[2048:], 2048, 128)
    out = {}
    for name in ("blocks.0.attn.q_proj", "blocks.1.mlp.down_proj"):
        layer = model.get_submodule(name)
        out[name] = (layer.weight.detach().clone(), collect_stats(model, layer, calib),
                     collect_stats(model, layer, held))
    return out


@pytest.mark.parametrize("name", ["blocks.0.attn.q_proj", "blocks.1.mlp.down_proj"])
@pytest.mark.parametrize("scheme", [Scheme(4, 32), Scheme(3, None)])
def test_beats_rtn_on_real_activations(real_activations, name, scheme):
    """Layer output error mean ||dW x||^2: GPTQ's < RTN's on the calibration tokens and on held-out tokens."""
    w, calib, held = real_activations[name]
    assert calib.n == held.n == 2048
    ours, ref = gptq(w, calib.hessian(), scheme).dequantize(), rtn(w, scheme).dequantize()
    for stats in (calib, held):
        assert stats.output_error(ours - w) < stats.output_error(ref - w)


def test_calibration_stats_accumulate():
    """X^T X, mean |x| and n summed over batches == computed on all tokens at once (rtol 1e-5); output_error is
    mean ||dW x||^2 (rtol 1e-5)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 10, 8, generator=g)
    stats = CalibrationStats(8)
    for part in x:
        stats.add(part)
    flat = x.view(-1, 8)
    assert stats.n == 30
    torch.testing.assert_close(stats.hessian(), 2 * flat.T @ flat / 30, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.mean_abs(), flat.abs().mean(0), rtol=1e-5, atol=1e-6)
    dw = torch.randn(4, 8, generator=g)
    want = float((flat @ dw.T).pow(2).sum(1).mean())
    assert stats.output_error(dw) == pytest.approx(want, rel=1e-5)
