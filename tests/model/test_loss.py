"""llmlab.model.loss against torch.nn.functional.cross_entropy / log_softmax and a closed-form z-loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmlab.errors import LlmlabError
from llmlab.model.loss import cross_entropy, log_softmax

V = 11
FP64_TOL = {"rtol": 1e-12, "atol": 1e-12}


def _data(shape: tuple[int, ...], dtype: torch.dtype, ignore: str, seed: int = 0):
    """logits shape + (V,), targets shape; ignore: 'absent' | 'present' (some -100) | 'all'."""
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(*shape, V, generator=g)).to(dtype).requires_grad_()
    targets = torch.randint(0, V, shape, generator=g)
    if ignore == "present":
        targets[torch.rand(shape, generator=g) < 0.3] = -100
        targets.view(-1)[0] = -100
    elif ignore == "all":
        targets.fill_(-100)
    return logits, targets


def _reference(logits, targets, **kw):
    """F.cross_entropy with the class dim last: flatten to (N, V), reshape 'none' back to targets' shape."""
    out = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), **kw)
    return out.reshape(targets.shape) if kw.get("reduction") == "none" else out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(4, 7), (2, 3, 5)], ids=["(N,V)", "(B,T,V)"])
def test_log_softmax_matches_torch(shape, dtype):
    """Reference: F.log_softmax, values and grad along every dim; fp64 rtol=atol=1e-12, fp32 defaults."""
    tol = FP64_TOL if dtype == torch.float64 else {}
    x = (5 * torch.randn(*shape, generator=torch.Generator().manual_seed(1))).to(dtype)
    for dim in range(-1, -len(shape) - 1, -1):
        ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours, ref = log_softmax(ours_x, dim=dim), F.log_softmax(ref_x, dim=dim)
        torch.testing.assert_close(ours, ref, **tol)
        w = torch.randn_like(ours)
        (ours * w).sum().backward()
        (ref * w).sum().backward()
        torch.testing.assert_close(ours_x.grad, ref_x.grad, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("ignore", ["absent", "present", "all"])
@pytest.mark.parametrize("shape", [(6,), (2, 5)], ids=["(N,V)", "(B,T,V)"])
def test_cross_entropy_matches_torch(shape, ignore, label_smoothing, reduction, dtype):
    """Reference: F.cross_entropy (same ignore_index, label_smoothing, reduction), loss and d loss / d logits;
    fp64 rtol=atol=1e-12, fp32 assert_close defaults. All-ignored 'mean' is NaN with zero grads in both."""
    tol = FP64_TOL if dtype == torch.float64 else {}
    logits, targets = _data(shape, dtype, ignore)
    ref_logits = logits.detach().clone().requires_grad_()
    kw = {"label_smoothing": label_smoothing, "reduction": reduction}
    ours, ref = cross_entropy(logits, targets, **kw), _reference(ref_logits, targets, **kw)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, equal_nan=True, **tol)
    w = torch.randn(ours.shape, dtype=dtype)  # a random upstream grad, so 'none' is checked per position
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, **tol)


def test_cross_entropy_custom_ignore_index():
    """Reference: F.cross_entropy with ignore_index = a class id present in targets; fp64 rtol=atol=1e-12."""
    logits, targets = _data((3, 4), torch.float64, "absent", seed=2)
    ignore_index = int(targets[0, 0])
    for reduction in ("mean", "sum", "none"):
        ours = cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
        ref = _reference(logits, targets, ignore_index=ignore_index, reduction=reduction)
        torch.testing.assert_close(ours, ref, **FP64_TOL)


def test_cross_entropy_stable_for_huge_logits():
    """Reference: F.cross_entropy on logits of +-1e4 (a naive exp overflows); fp32 assert_close defaults."""
    g = torch.Generator().manual_seed(3)
    logits = (1e4 * torch.randint(-1, 2, (8, V), generator=g).float()).requires_grad_()
    targets = torch.randint(0, V, (8,), generator=g)
    ref_logits = logits.detach().clone().requires_grad_()
    ours = cross_entropy(logits, targets, label_smoothing=0.1)
    ref = F.cross_entropy(ref_logits, targets, label_smoothing=0.1)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)
    torch.testing.assert_close(log_softmax(logits.detach()), F.log_softmax(logits.detach(), dim=-1))


def test_bf16_logits_computed_and_returned_in_float32():
    """Reference: F.cross_entropy on the same logits upcast to float32; assert_close defaults for fp32."""
    logits, targets = _data((2, 6), torch.bfloat16, "present", seed=4)
    ours = cross_entropy(logits, targets, label_smoothing=0.1)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, _reference(logits.detach().float(), targets, label_smoothing=0.1))
    ours.backward()
    assert logits.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_z_loss_matches_closed_form(reduction):
    """Reference: nll + z * logsumexp(x)^2 on valid positions (PaLM sec 5), reduced like the nll, and its grad
    (1 + 2 z lse(x)) softmax(x) - onehot(target); fp64 rtol=atol=1e-12."""
    z = 1e-2
    logits, targets = _data((3, 5), torch.float64, "present", seed=5)
    ours = cross_entropy(logits, targets, z_loss=z, reduction=reduction)

    x, valid = logits.detach(), targets != -100
    lse = torch.log(torch.exp(x).sum(-1))  # (B, T); fine unshifted for randn logits
    nll = lse - x.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    per_pos = torch.where(valid, nll + z * lse**2, 0.0)
    expected = {"none": per_pos, "sum": per_pos.sum(), "mean": per_pos.sum() / valid.sum()}[reduction]
    torch.testing.assert_close(ours, expected, **FP64_TOL)

    ours.sum().backward()
    scale = {"none": 1.0, "sum": 1.0, "mean": 1.0 / valid.sum().item()}[reduction] * valid[..., None].double()
    onehot = F.one_hot(targets.clamp(min=0), V).double()
    expected_grad = scale * ((1 + 2 * z * lse[..., None]) * x.softmax(-1) - onehot)
    torch.testing.assert_close(logits.grad, expected_grad, **FP64_TOL)


def test_z_loss_zero_is_identity():
    """Reference: cross_entropy without z_loss; z_loss=0.0 must give bit-identical loss and grad."""
    logits, targets = _data((2, 4), torch.float32, "present", seed=6)
    other = logits.detach().clone().requires_grad_()
    a = cross_entropy(logits, targets, label_smoothing=0.1, z_loss=0.0)
    b = cross_entropy(other, targets, label_smoothing=0.1)
    assert torch.equal(a, b)
    a.backward()
    b.backward()
    assert torch.equal(logits.grad, other.grad)


@pytest.mark.parametrize(
    ("logits_shape", "targets", "kw", "match"),
    [
        ((4, 10, V), torch.zeros(4, 9, dtype=torch.long), {}, r"logits \(4, 10, 11\) and targets \(4, 9\)"),
        ((4, V), torch.zeros(4, V, dtype=torch.long), {}, "must share leading dims"),
        ((4, V), torch.zeros(4), {}, "integer class ids"),
        ((4, V), torch.tensor([0, 1, 2, V]), {}, "target 11 is out of range for 11 classes"),
        ((4, V), torch.tensor([0, 1, -1, 2]), {}, "target -1 is out of range"),
        ((4, V), torch.zeros(4, dtype=torch.long), {"reduction": "avg"}, "reduction='avg'"),
        (
            (4, V),
            torch.zeros(4, dtype=torch.long),
            {"label_smoothing": 1.5},
            r"label_smoothing=1.5 .* \[0, 1\]",
        ),
        ((4, V), torch.zeros(4, dtype=torch.long), {"label_smoothing": -0.1}, "label_smoothing=-0.1"),
        ((4, V), torch.zeros(4, dtype=torch.long), {"z_loss": -1e-4}, "z_loss=-0.0001"),
    ],
)
def test_bad_input_raises_llmlab_error(logits_shape, targets, kw, match):
    """Reference: none; each mistake raises LlmlabError with a one-line message naming the bad value."""
    with pytest.raises(LlmlabError, match=match):
        cross_entropy(torch.randn(logits_shape), targets, **kw)


@pytest.mark.parametrize("smoothing,z", [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-3), (0.1, 1e-4)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_fast_path_equals_ours(smoothing, z, reduction):
    """torch_cross_entropy (F.cross_entropy + z-loss) equals our cross_entropy: values and grads, fp64 1e-12."""
    from llmlab.model.loss import torch_cross_entropy

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 7, 11, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, 11, (2, 7), generator=g)
    targets[0, 2] = -100
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = cross_entropy(a, targets, label_smoothing=smoothing, z_loss=z, reduction=reduction)
    fast = torch_cross_entropy(b, targets, label_smoothing=smoothing, z_loss=z, reduction=reduction)
    torch.testing.assert_close(fast.double(), ours, atol=1e-12, rtol=1e-12)
    ours.sum().backward()
    fast.sum().backward()
    torch.testing.assert_close(b.grad, a.grad, atol=1e-12, rtol=1e-12)
