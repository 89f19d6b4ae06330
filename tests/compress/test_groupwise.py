"""Group-wise round-to-nearest quantization and bit packing.

References: optimum-quanto's affine int4 quantizer (`MaxOptimizer(zeropoint=True)` + `quantize_affine`, its pure
PyTorch path), torch's `quantized_decomposed.quantize_per_channel_group` / `dequantize_per_channel_group` (the
group-wise ops torch.ao's int4 flows lower to) and torch.quint4x2's packed bytes; closed-form cases. Tolerances per
test.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  registers torch.ops.quantized_decomposed

from llmlab.compress.groupwise import Scheme, pack, qparams, rtn, unpack
from llmlab.errors import ConfigError

decomposed = torch.ops.quantized_decomposed


def weights(seed: int = 0, shape: tuple[int, int] = (24, 256)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.05


def near_tie(ratio: torch.Tensor) -> torch.Tensor:
    """x / s + z within fp32 noise (8 ulps) of k + 1/2, where a reference that rounds x * (1/s) + z may round the
    other way. The absmax weight of a symmetric group is such a tie by construction: it lands on +-2^(b-1) - 1/2."""
    return ((ratio - ratio.floor()) - 0.5).abs() < 8 * torch.finfo(torch.float32).eps * (ratio.abs() + 1)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_asymmetric_int4_equals_quanto(group):
    """Codes, scales and zero points == optimum-quanto's qint4 affine quantizer with integer zero points (exact).
    quanto's range is [min, max] and ours [min(w, 0), max(w, 0)]: the same on groups that straddle 0, as here."""
    pytest.importorskip("optimum.quanto")
    from optimum.quanto import qint4
    from optimum.quanto.tensor.optimizers import MaxOptimizer

    w = weights()
    ours = rtn(w, Scheme(4, group))
    groups = w.view(-1, group)  # (out * n_groups, group): quanto's grouping along axis 0
    assert bool((groups.amin(1) < 0).all() and (groups.amax(1) > 0).all())
    scale, shift = MaxOptimizer()(w, qint4, axis=0, group_size=group, zeropoint=True)  # (out * n_groups, 1)
    codes = torch.ops.quanto.quantize_affine(w, 4, 0, group, scale, shift)  # (out * n_groups, group) uint8
    assert torch.equal(ours.codes, codes.view(w.shape))
    assert torch.equal(ours.scale, scale.view(ours.scale.shape))
    assert torch.equal(ours.zero, shift.view(ours.zero.shape))
    # quanto dequantizes (q - shift) * scale, as we do
    torch.testing.assert_close(ours.dequantize(), ((codes.float() - shift) * scale).view(w.shape), rtol=0, atol=0)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize(("bits", "group"), [(4, 32), (4, 128), (3, 64), (8, 64)])
def test_codes_equal_torch_decomposed_group_ops(bits, group, symmetric):
    """Given our scales and zero points, torch's quantize_per_channel_group gives our codes (symmetric: ours minus
    2^(b-1), on torch's signed range [-2^(b-1), 2^(b-1) - 1]) up to fp32 ties (it multiplies by 1/s), and
    dequantize_per_channel_group our weights off the ties (rtol 1e-6)."""
    w = weights(1)
    scheme = Scheme(bits, group, symmetric)
    q = rtn(w, scheme)
    offset = 2 ** (bits - 1) if symmetric else 0
    lo, hi = -offset, scheme.qmax - offset
    zero = q.zero.long() - offset
    dtype = torch.int8 if symmetric else torch.uint8
    ref = decomposed.quantize_per_channel_group(w, q.scale, zero, lo, hi, dtype, group)
    ratio = w / q.scale.repeat_interleave(group, 1) + zero.repeat_interleave(group, 1)
    same = ~near_tie(ratio)
    assert torch.equal((q.codes.long() - offset)[same], ref.long()[same])
    assert int((~same).sum()) <= q.scale.numel() + 2  # the symmetric groups' absmax weights, and chance
    deq = decomposed.dequantize_per_channel_group(ref, q.scale, zero, lo, hi, dtype, group, torch.float32)
    torch.testing.assert_close(q.dequantize()[same], deq[same], rtol=1e-6, atol=1e-8)


def test_closed_form_and_error_bound():
    """A worked example: [-1.5, 0, 3] at asymmetric int4 has scale 4.5/15 = 0.3, zero 5, codes 0, 5, 15, exact;
    symmetric: scale 3/7.5, codes centred at 8. Every weight lies within scale/2 of its grid point."""
    q = rtn(torch.tensor([[-1.5, 0.0, 3.0]]), Scheme(4, None))
    assert q.codes.tolist() == [[0, 5, 15]] and q.zero.tolist() == [[5]]
    torch.testing.assert_close(q.scale, torch.tensor([[0.3]]))
    torch.testing.assert_close(q.dequantize(), torch.tensor([[-1.5, 0.0, 3.0]]))
    q = rtn(torch.tensor([[-1.5, 0.0, 3.0]]), Scheme(4, None, symmetric=True))
    assert q.codes.tolist() == [[4, 8, 15]] and q.zero.tolist() == [[8]]  # 3 / 0.4 = 7.5 rounds to 8, clamps to 7
    w = weights(2)
    for scheme in (Scheme(4, 64), Scheme(3, 32, symmetric=True), Scheme(2, None)):
        q = rtn(w, scheme)
        scale = q.scale.repeat_interleave(scheme.group(w.shape[1]), 1)
        assert bool(((q.dequantize() - w).abs() <= scale / 2 * (1 + 1e-5)).all())


def test_short_last_group_and_zero_groups():
    """in = 100 with groups of 32: the last group of 4 columns equals quantizing those columns on their own
    (exact), as do the full ones; an all-zero group gets codes = zero point and dequantizes to exact zeros."""
    w = weights(3, (8, 100))
    w[:, 32:64] = 0
    q = rtn(w, Scheme(4, 32))
    assert q.scale.shape == (8, 4)
    for k, (a, b) in enumerate([(0, 32), (32, 64), (64, 96), (96, 100)]):
        part = rtn(w[:, a:b], Scheme(4, None))
        assert torch.equal(q.codes[:, a:b], part.codes) and torch.equal(q.scale[:, k:k + 1], part.scale)
    assert bool((q.dequantize()[:, 32:64] == 0).all())


def test_qparams_is_per_last_dim():
    """qparams over (..., n) gives (..., 1): the same as one row at a time."""
    x = weights(4, (6, 3, 16))
    scale, zero = qparams(x, Scheme(4))
    assert scale.shape == zero.shape == (6, 3, 1)
    s1, z1 = qparams(x[2, 1:2], Scheme(4))
    assert torch.equal(scale[2, 1], s1[0]) and torch.equal(zero[2, 1], z1[0])


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_round_trip(bits):
    """unpack(pack(codes)) == codes exactly for every bit width, including sizes that end mid-byte; the packed size
    is ceil(n * bits / 8) bytes."""
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (7, 13), generator=g, dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-codes.numel() * bits // 8)
    assert torch.equal(unpack(packed, bits, codes.shape), codes)


def test_pack_4bit_equals_torch_quint4x2():
    """4-bit packing == the bytes of torch.quint4x2 (two codes per byte, the first in the low nibble)."""
    codes = torch.randint(0, 16, (64,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.quantize_per_tensor(codes.float(), 1.0, 0, torch.quint4x2).int_repr()
    assert torch.equal(pack(codes, 4), ref)


def test_sizes_and_validation():
    """Asymmetric int4, groups of 128, (64, 256): codes 64*256/2 + fp32 scales 64*2*4 + 4-bit zeros 64*2/2 bytes;
    symmetric stores no zero points. Bad schemes are ConfigErrors naming the field."""
    w = weights(5, (64, 256))
    assert rtn(w, Scheme(4, 128)).nbytes() == 8192 + 512 + 64
    assert rtn(w, Scheme(4, 128, symmetric=True)).nbytes() == 8192 + 512
    with pytest.raises(ConfigError, match="bits=9"):
        Scheme(bits=9)
    with pytest.raises(ConfigError, match="group_size=0"):
        Scheme(group_size=0)
