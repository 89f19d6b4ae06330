"""AWQ (Lin et al. 2023).

References: the identity W x = (W diag(s)) (x / s) the method rests on (to 1e-6), round-to-nearest (alpha = 0 is
RTN exactly, and the chosen alpha can only do better on the calibration objective), and inputs with planted
salient channels, where scaling must pay off. Tolerances per test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmlab.compress.awq import awq, awq_scales
from llmlab.compress.calibration import CalibrationStats
from llmlab.compress.groupwise import Scheme, rtn


def salient_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, CalibrationStats]:
    """Inputs whose channels 0..3 are 30x the others (LLMs' salient channels), and a weight (out, in)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1024, 128, generator=g)
    x[:, :4] *= 30.0
    w = torch.randn(64, 128, generator=g) * 0.02
    stats = CalibrationStats(128)
    stats.add(x)
    return x, w, stats


def test_scaling_is_an_identity_before_quantization():
    """(W diag(s)) (x / s) == W x for AWQ's scales at every alpha of the grid (atol 1e-6): the function is unchanged
    until W diag(s) is rounded."""
    x, w, stats = salient_problem()
    for alpha in (0.0, 0.35, 1.0):
        s = awq_scales(stats.mean_abs(), alpha)
        torch.testing.assert_close(F.linear(x / s, w * s), F.linear(x, w), rtol=0, atol=1e-6)


def test_never_worse_than_rtn_and_alpha_zero_is_rtn():
    """The grid's alpha = 0 error == RTN's output error (same float ops: exact); the chosen alpha's error is the
    grid minimum, so <= RTN's."""
    _, w, stats = salient_problem(1)
    for scheme in (Scheme(4, 32), Scheme(3, 128, symmetric=True)):
        res = awq(w, stats, scheme)
        rtn_err = stats.output_error(rtn(w, scheme).dequantize() - w)
        assert res.errors[0] == (0.0, rtn_err)
        chosen = stats.output_error(res.dequantize() - w)
        assert chosen == min(e for _, e in res.errors) <= rtn_err
        assert len(res.errors) == 21 and res.errors[-1][0] == 1.0


def test_salient_channels_pay_off():
    """With salient input channels AWQ picks alpha > 0 and its output error is under 70% of RTN's, on the
    calibration inputs and on fresh inputs drawn the same way."""
    _, w, stats = salient_problem(2)
    scheme = Scheme(4, 128)
    res = awq(w, stats, scheme)
    assert res.alpha > 0
    fresh, _, _ = salient_problem(3)
    held = CalibrationStats(128)
    held.add(fresh)
    for s in (stats, held):
        assert s.output_error(res.dequantize() - w) < 0.7 * s.output_error(rtn(w, scheme).dequantize() - w)


def test_deployed_form_equals_fake_quantized_weight():
    """forward(x) = Q(W diag(s)) (x / s), as deployed with 1/s folded into the previous op, == x times the
    effective weight Q(W diag(s)) / s (rtol 1e-5, atol 1e-6)."""
    x, w, stats = salient_problem(4)
    res = awq(w, stats, Scheme(4, 64))
    torch.testing.assert_close(res.forward(x), F.linear(x, res.dequantize()), rtol=1e-5, atol=1e-6)
    assert res.s.shape == (128,)
