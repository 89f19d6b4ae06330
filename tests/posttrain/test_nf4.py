"""NF4 with double quantization (Dettmers et al. 2023, QLoRA) and QLoRA layers.

Reference: the NF4 table published with QLoRA / bitsandbytes `get_4bit_type("nf4")` (NF4_PUBLISHED; bitsandbytes
is not installed on CPU), and error bounds that follow from the code spacing; tolerances per test.
"""

from __future__ import annotations

import pytest
import torch

from llmlab.compress.nf4 import (
    NF4_PUBLISHED,
    NF4Linear,
    dequantize_nf4,
    double_dequantize,
    double_quantize,
    nf4_bits_per_param,
    nf4_code,
    quantize_nf4,
)
from llmlab.posttrain.lora import LoRALinear

CODE = torch.tensor(NF4_PUBLISHED)
HALF_GAP = float((CODE[1:] - CODE[:-1]).max() / 2)  # 0.152: the worst rounding of a normalized value


def test_code_table_matches_published():
    """nf4_code() derived from N(0,1) quantiles == the published 16 values, bit for bit; sorted, 0 and +-1 in it."""
    code = nf4_code()
    assert torch.equal(code, CODE)
    assert code[0] == -1 and code[-1] == 1 and code[7] == 0 and bool((code[1:] > code[:-1]).all())
    try:  # bitsandbytes when installed (GPU machines)
        from bitsandbytes.functional import get_4bit_type
    except ImportError:
        return
    assert torch.equal(get_4bit_type("nf4", device="cpu").float(), code)


@pytest.mark.parametrize("shape", [(64, 64), (37, 29), (5,)])
def test_round_trip_bound_and_idempotent(shape):
    """|w - deq(q(w))| <= absmax(block) * max half gap between codes (exact bound, +1e-7); codes take all 16
    values on Gaussian weights; re-quantizing the dequantized weight reproduces the codes exactly."""
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    packed, absmax = quantize_nf4(w)
    deq = dequantize_nf4(packed, absmax, w.shape)
    assert deq.shape == w.shape
    flat = torch.nn.functional.pad(w.reshape(-1), (0, -w.numel() % 64)).view(-1, 64)
    bound = (absmax * HALF_GAP + 1e-7)[:, None].expand(-1, 64).reshape(-1)[:w.numel()].view(shape)
    assert bool(((w - deq).abs() <= bound).all())
    assert torch.equal(absmax, flat.abs().amax(1))
    again, absmax2 = quantize_nf4(deq)
    assert torch.equal(again, packed) and torch.allclose(absmax2, absmax)
    if w.numel() >= 4096:
        idx = torch.stack([packed >> 4, packed & 15], -1)
        assert idx.unique().numel() == 16
        assert (w - deq).pow(2).mean().sqrt() < 0.12  # ~0.1 std of N(0,1) weights at 4 bits


def test_double_quant_reconstructs_absmax():
    """Double quantization (8-bit, blocks of 256, mean subtracted): each constant within scale/254 of the
    original, scale = absmax of its centered block; 1000 constants span 4 blocks, the last partial."""
    absmax = torch.rand(1000, generator=torch.Generator().manual_seed(0)) + 0.5
    q, scale, mean = double_quantize(absmax)
    assert q.dtype == torch.int8 and q.shape == (1000,) and scale.shape == (4,)
    back = double_dequantize(q, scale, mean)
    per_elem = scale.repeat_interleave(256)[:1000]
    assert bool(((back - absmax).abs() <= per_elem / 254 + 1e-6).all())


def test_nf4_linear_bytes_and_error():
    """NF4Linear storage = n/2 + n/64 + 4 n/(64*256) + 4 bytes, i.e. nf4_bits_per_param() = 4.127 bits; the
    forward uses W~ = deq(q(W)) with the absmax double-quantized: |W - W~| <= absmax*half_gap + |absmax error|."""
    lin = torch.nn.Linear(512, 512)
    q = NF4Linear(lin)
    n = lin.weight.numel()
    assert q.nbytes() == n // 2 + n // 64 + 4 * (n // (64 * 256)) + 4
    assert nf4_bits_per_param() == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    assert q.nbytes() * 8 / n == pytest.approx(nf4_bits_per_param(), abs=1e-3)
    _, absmax = quantize_nf4(lin.weight)
    absmax_dq = double_dequantize(q.absmax_q, q.absmax_scale, q.absmax_mean)
    bound = (absmax * HALF_GAP + (absmax_dq - absmax).abs() + 1e-7).repeat_interleave(64).view(512, 512)
    assert bool(((lin.weight - q.dequantize()).abs() <= bound).all())
    assert not list(q.parameters())  # frozen: nothing for an optimizer


def test_qlora_equals_lora_over_dequantized_weight():
    """QLoRA layer == LoRA over an nn.Linear holding the dequantized weight, same A, B: exactly equal (and the
    gradients to A and B too), with and without DoRA."""
    lin = torch.nn.Linear(96, 48)
    nf4 = NF4Linear(lin)
    plain = torch.nn.Linear(96, 48)
    with torch.no_grad():
        plain.weight.copy_(nf4.dequantize())
        plain.bias.copy_(lin.bias)
    x = torch.randn(4, 96)
    for use_dora in (False, True):
        q = LoRALinear(nf4, r=4, alpha=8, use_dora=use_dora)
        ref = LoRALinear(plain, r=4, alpha=8, use_dora=use_dora)
        torch.nn.init.normal_(q.lora_B.weight)
        ref.load_state_dict({k: v for k, v in q.state_dict().items()
                             if not k.startswith("base.")}, strict=False)
        out, out_ref = q(x), ref(x)
        assert torch.equal(out, out_ref)
        out.sum().backward()
        out_ref.sum().backward()
        assert torch.equal(q.lora_A.weight.grad, ref.lora_A.weight.grad)
        assert torch.equal(q.lora_B.weight.grad, ref.lora_B.weight.grad)
