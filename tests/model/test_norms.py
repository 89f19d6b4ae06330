"""LayerNorm and RMSNorm vs torch.nn.LayerNorm / torch.nn.RMSNorm (and HF LlamaRMSNorm for the bf16 dtype rule).

Random weights and biases (the ones/zeros init would hide a swapped or missing affine term). Outputs and
gradients (input, weight, bias): fp32 at torch.testing defaults, fp64 at atol = rtol = 1e-12, bf16 at bf16 defaults.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from llmlab.model.norms import LayerNorm, RMSNorm, make_norm

FP64 = {"atol": 1e-12, "rtol": 1e-12}
DIM = 48


def randomize(*modules: nn.Module, seed: int = 0) -> None:
    """Give each module the same random weight (and bias)."""
    gen = torch.Generator().manual_seed(seed)
    w = 1.0 + 0.5 * torch.randn(DIM, generator=gen, dtype=torch.float64)
    b = 0.3 * torch.randn(DIM, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        for m in modules:
            m.weight.copy_(w)
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(b)


def make_pair(kind: str, eps: float, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    if kind == "layernorm":
        ours, ref = LayerNorm(DIM, eps), nn.LayerNorm(DIM, eps=eps)
    else:
        ours, ref = RMSNorm(DIM, eps), nn.RMSNorm(DIM, eps=eps)
    ours, ref = ours.to(dtype), ref.to(dtype)
    randomize(ours, ref)
    return ours, ref


def outputs_and_grads(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    y = module(x)
    params = [p for p in (module.weight, getattr(module, "bias", None)) if p is not None]
    grads = torch.autograd.grad(y, [x, *params], grad_out.to(y.dtype))
    return [y, *grads]


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, {}), (torch.float64, FP64)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_norm_matches_torch_with_gradients(kind, dtype, tol, eps):
    """Reference: torch.nn.LayerNorm / torch.nn.RMSNorm, same eps and weights; output and all gradients."""
    ours, ref = make_pair(kind, eps, dtype)
    gen = torch.Generator().manual_seed(1)
    x = (3.0 * torch.randn(4, 7, DIM, generator=gen, dtype=torch.float64) + 0.5).to(dtype)  # off-centre input
    grad_out = torch.randn(4, 7, DIM, generator=gen, dtype=torch.float64).to(dtype)
    got, want = outputs_and_grads(ours, x, grad_out), outputs_and_grads(ref, x, grad_out)
    assert got[0].dtype == dtype
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **tol)


def test_layernorm_bf16_input_matches_fp32_reference_rounded():
    """Reference: torch.nn.LayerNorm in fp32 on the same (bf16-representable) input, rounded to bf16; bf16 defaults.

    Our LayerNorm keeps fp32 weights, computes statistics in fp32 and returns the input's dtype.
    """
    ours, ref = make_pair("layernorm", 1e-5, torch.float32)
    x = torch.randn(4, 7, DIM, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    y = ours(x)
    assert y.dtype == torch.bfloat16
    assert_close(y, ref(x.float()).to(torch.bfloat16))
    # the whole module in bf16 (model.to(bfloat16)) against torch's bf16 module
    ours_bf, ref_bf = ours.to(torch.bfloat16), ref.to(torch.bfloat16)
    assert_close(ours_bf(x), ref_bf(x))


def test_rmsnorm_bf16_input_matches_hf_llama_rmsnorm():
    """Reference: HF LlamaRMSNorm (fp32 weight, bf16 input: statistics in fp32, cast back before the weight) exactly;
    and torch.nn.RMSNorm in bf16 at bf16 defaults for a module cast to bf16."""
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    ours = RMSNorm(DIM, 1e-6)
    hf = llama.LlamaRMSNorm(DIM, eps=1e-6)
    randomize(ours, hf)
    x = torch.randn(4, 7, DIM, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    got, want = ours(x), hf(x)
    assert got.dtype == want.dtype  # fp32 weight * bf16 normalised input promotes to fp32, as in HF
    assert_close(got, want, rtol=0.0, atol=0.0)
    ours_bf, ref_bf = ours.to(torch.bfloat16), nn.RMSNorm(DIM, eps=1e-6)
    randomize(ref_bf)
    ref_bf = ref_bf.to(torch.bfloat16)
    y = ours_bf(x)
    assert y.dtype == torch.bfloat16
    assert_close(y, ref_bf(x))


def test_make_norm_picks_the_kind_and_eps():
    ln, rms = make_norm("layernorm", DIM, 1e-12), make_norm("rmsnorm", DIM, 1e-6)
    assert isinstance(ln, LayerNorm) and ln.eps == 1e-12
    assert isinstance(rms, RMSNorm) and rms.eps == 1e-6 and not hasattr(rms, "bias")
