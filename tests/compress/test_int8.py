"""int8 absmax / min-max quantization and LLM.int8() (Dettmers et al. 2022).

References: torch's quantized tensors (`torch.quantize_per_tensor` / `torch.quantize_per_channel`, qint8 and quint8)
given our scales and zero points; a float64 transcription of LLM.int8's eq. 7 written in the test (bitsandbytes needs
a GPU, which this machine does not have). Tolerances per test.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from llmlab.compress.int8 import (
    Int8Linear,
    dequantize,
    int8_matmul,
    llm_int8_matmul,
    outlier_columns,
    quantize_absmax,
    quantize_minmax,
)


def weights(seed: int = 0, shape: tuple[int, int] = (48, 96)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * torch.rand(shape[0], 1, generator=g) * 3  # rows of unequal ranges


def torch_quantized(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, dim: int | None,
                    dtype: torch.dtype) -> torch.Tensor:
    zero = torch.zeros_like(scale, dtype=torch.long) if zero is None else zero
    with warnings.catch_warnings():  # torch deprecates its quantized tensors; they are still the reference here
        warnings.simplefilter("ignore")
        if dim is None:
            return torch.quantize_per_tensor(x, scale.item(), int(zero), dtype)
        return torch.quantize_per_channel(x, scale.reshape(-1), zero.reshape(-1), 0, dtype)


def assert_codes_equal(ours: torch.Tensor, ref: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Equal except at fp32 rounding ties: torch rounds x * (1/s) + z where we round x / s then add z, and the two
    can land on opposite sides of k + 1/2 when x / s + z is within a few ulps of it; there they differ by one.
    Returns the mask of entries that are no tie."""
    differ = ours.long() != ref.long()
    tie = ((ratio - ratio.floor()) - 0.5).abs() < 8 * torch.finfo(torch.float32).eps * (ratio.abs() + 1)
    assert bool((differ <= tie).all()) and bool(((ours.long() - ref.long()).abs() <= 1).all())
    assert int(tie.sum()) <= 4 + ratio.numel() // 500  # rare: the comparison is not vacuous
    return ~tie


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dim", [-1, None])
def test_absmax_equals_torch_qint8(seed, dim):
    """absmax codes == torch.quantize_per_channel (axis 0) / quantize_per_tensor qint8 with the same scales
    (int_repr, up to fp32 ties), and the dequantized weights equal torch's dequantize off the ties (rtol 1e-6)."""
    w = weights(seed)
    q, scale = quantize_absmax(w, dim=dim)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    ref = torch_quantized(w, scale, None, dim, torch.qint8)
    same = assert_codes_equal(q, ref.int_repr(), w / scale)
    torch.testing.assert_close(dequantize(q, scale)[same], ref.dequantize()[same], rtol=1e-6, atol=0)
    assert bool(((dequantize(q, scale) - w).abs() <= scale / 2 * (1 + 1e-6)).all())  # round to nearest


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dim", [-1, None])
def test_minmax_equals_torch_quint8(seed, dim):
    """Asymmetric codes == torch quint8 with the same scales and zero points (up to fp32 ties); the range holds 0,
    so a zero weight dequantizes to exactly 0; dequantized values equal torch's off the ties (rtol 1e-6)."""
    w = weights(seed)
    w[0, :5] = 0.0
    w[1] = w[1].abs() + 0.5  # an all-positive row: its range starts at 0, not at its minimum
    q, scale, zero = quantize_minmax(w, dim=dim)
    assert q.dtype == torch.uint8 and int(q.max()) == 255
    ref = torch_quantized(w, scale, zero, dim, torch.quint8)
    same = assert_codes_equal(q, ref.int_repr(), w / scale + zero)
    deq = dequantize(q, scale, zero)
    torch.testing.assert_close(deq[same], ref.dequantize()[same], rtol=1e-6, atol=1e-7)
    assert bool((deq[0, :5] == 0).all())
    assert bool(((deq - w).abs() <= scale / 2 * (1 + 1e-5)).all())


def test_zero_slices_and_drill_reference():
    """An all-zero row gets scale 0 and codes 0 (no NaN); the int8_absmax drill grades against this very function."""
    from llmlab.drills.bank.int8_absmax import DRILL

    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    q, scale = quantize_absmax(x)
    assert torch.equal(q, torch.tensor([[64, -127, 32], [0, 0, 0]], dtype=torch.int8))
    assert torch.equal(scale, torch.tensor([[2 / 127], [0.0]]))
    assert DRILL.reference is quantize_absmax
    q, scale, zero = quantize_minmax(torch.zeros(2, 3))
    assert bool((q == 0).all()) and bool((zero == 0).all()) and bool((scale == 1).all())


def test_int8_matmul_accumulates_exactly():
    """(sx sw^T) * (xq wq^T) with the integer sum in int32 == the same sum in float64 (exact: integers < 2^53),
    then rescaled: rtol 1e-6."""
    g = torch.Generator().manual_seed(0)
    xq = torch.randint(-127, 128, (7, 300), generator=g, dtype=torch.int8)
    wq = torch.randint(-127, 128, (5, 300), generator=g, dtype=torch.int8)
    sx, sw = torch.rand(7, 1, generator=g), torch.rand(5, 1, generator=g)
    want = (xq.double() @ wq.double().T) * sx.double() * sw.double().T
    torch.testing.assert_close(int8_matmul(xq, sx, wq, sw).double(), want, rtol=1e-6, atol=0)


def paper_llm_int8(x: torch.Tensor, w: torch.Tensor, threshold: float) -> torch.Tensor:
    """LLM.int8 eq. 7 in float64: C = X[:, O] W[:, O]^T + (s_x s_w^T) * (X_i8[:, ~O] W_i8[:, ~O]^T), with W held
    as int8 rows (absmax per output channel) and X's rows scaled by their absmax over the non-outlier columns."""
    o = (x.abs() >= threshold).any(dim=0)
    sw = w.abs().amax(dim=1, keepdim=True) / 127
    w_i8 = (w / sw).round()  # fp32 rounding, as the layer does; the products and sums below are float64
    x_rest = x[:, ~o]
    sx = x_rest.abs().amax(dim=1, keepdim=True) / 127
    x_i8 = (x_rest / sx).round()
    c = (x_i8.double() @ w_i8[:, ~o].double().T) * (sx.double() * sw.double().T)
    return x[:, o].double() @ (w_i8[:, o] * sw).double().T + c


def planted_outliers(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 256, generator=g)  # |x| >= 6 has probability 2e-9 per entry: no outliers of its own
    cols = [3, 100, 201]
    x[:, cols] *= 25.0  # systematic outlier features, as in the paper's sec. 4
    w = torch.randn(32, 256, generator=g) * 0.05
    return x, w, cols


def test_llm_int8_equals_the_papers_formula():
    """llm_int8_matmul == the float64 eq. 7 transcription (rtol 1e-5, atol 1e-5: fp32 matmuls); the outlier set is
    exactly the planted columns."""
    x, w, cols = planted_outliers()
    assert outlier_columns(x).nonzero().view(-1).tolist() == cols
    wq, sw = quantize_absmax(w, dim=-1)
    ours = llm_int8_matmul(x, wq, sw, threshold=6.0)
    torch.testing.assert_close(ours.double(), paper_llm_int8(x, w, 6.0), rtol=1e-5, atol=1e-5)


def test_llm_int8_beats_plain_int8_with_outliers():
    """With outlier features the activation-quantization error (against x times the int8 weight, exact in float64)
    is far below plain vector-wise int8's (at least 10x), where the outliers inflate every row's scale; without
    outliers the two are identical."""
    x, w, _ = planted_outliers()
    wq, sw = quantize_absmax(w, dim=-1)
    exact = x.double() @ dequantize(wq, sw).double().T
    err_mixed = (llm_int8_matmul(x, wq, sw, 6.0).double() - exact).norm()
    err_plain = (llm_int8_matmul(x, wq, sw, float("inf")).double() - exact).norm()
    assert err_mixed * 10 < err_plain
    calm = torch.randn(16, 256, generator=torch.Generator().manual_seed(1))
    assert torch.equal(llm_int8_matmul(calm, wq, sw, 6.0), llm_int8_matmul(calm, wq, sw, float("inf")))


def test_int8_linear_forward_and_size():
    """Int8Linear(x) on (B, T, in) == llm_int8_matmul on the flattened tokens + bias (exact: the same ops), close to
    the fp32 layer (relative error < 1%); nbytes = out * in + 4 * out."""
    x, w, _ = planted_outliers()
    linear = torch.nn.Linear(256, 32)
    with torch.no_grad():
        linear.weight.copy_(w)
    layer = Int8Linear(linear)
    x3 = x.view(4, 16, 256)
    with torch.no_grad():
        out, ref = layer(x3), linear(x3)
    assert out.shape == (4, 16, 32)
    want = llm_int8_matmul(x, layer.weight_q, layer.weight_scale) + linear.bias
    assert torch.equal(out.view(64, 32), want)
    assert float((out - ref).norm() / ref.norm()) < 0.01
    assert layer.nbytes() == 32 * 256 + 4 * 32
