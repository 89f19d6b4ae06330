"""quantize_model: every method over every nn.Linear of an llmlab Transformer, calibrated on real text.

References: the fp32 model (logits stay close; lm_head and embeddings untouched), the per-layer quantizers tested in
this folder (a layer quantized inside the model == the same quantizer on that weight), size arithmetic, and a
save / load round trip (bit-exact logits). Tolerances per test.
"""

from __future__ import annotations

import copy

import pytest
import torch

from llmlab.compress.calibration import calibration_batches
from llmlab.compress.groupwise import Scheme, rtn
from llmlab.compress.int8 import Int8Linear
from llmlab.compress.quantize_model import METHODS, quantize_model, target_linears
from llmlab.data.samples import sample_text
from llmlab.errors import LlmlabError
from llmlab.model.config import TransformerConfig
from llmlab.model.io import load_model, save_model
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import ByteTokenizer


def tiny_model(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = dict(vocab_size=260, d_model=64, n_layers=2, n_heads=4, d_ff=96, max_seq_len=64) | kw
    return Transformer(TransformerConfig(**cfg)).eval()


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return calibration_batches(ByteTokenizer().encode(sample_text()[:4000]), 512, 64)  # (8, 64)


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    return torch.tensor([ByteTokenizer().encode(sample_text()[5000:5064])])  # (1, 64), not calibrated on


@pytest.mark.parametrize("method", METHODS)
def test_every_method_quantizes_every_linear(method, calib, probe):
    """All 14 Linears (2 blocks x q, k, v, o, gate, up, down) change, lm_head and the embedding do not; logits stay
    within 10% (relative norm) of fp32's; the packed layers are smaller than fp32, and so is the model."""
    fp = tiny_model()
    model = copy.deepcopy(fp)
    result = quantize_model(model, method, Scheme(4, 32), calib if method != "llm.int8" else None)
    assert [r.name for r in result.layers] == [name for name, _ in target_linears(fp)] and len(result.layers) == 14
    assert torch.equal(model.lm_head.weight, fp.lm_head.weight) and torch.equal(model.tok_emb.weight,
                                                                                fp.tok_emb.weight)
    for name, _ in target_linears(fp):
        layer = model.get_submodule(name)
        w = layer.weight_q.float() * layer.weight_scale if method == "llm.int8" else layer.weight
        assert not torch.equal(w, fp.get_submodule(name).weight)
    with torch.no_grad():
        ref, out = fp(probe), model(probe)
    assert float((out - ref).norm() / ref.norm()) < 0.1
    assert result.nbytes < result.fp32_bytes and result.model_bytes < result.model_fp32_bytes
    if method != "llm.int8":  # with calibration tokens every method reports its layers' output errors
        assert all(r.error is not None and 0 < r.error < 0.1 for r in result.layers)


def test_rtn_inside_the_model_equals_rtn_on_the_weight():
    """A layer's fake-quantized weight == rtn(that weight).dequantize() exactly; packed bytes == the sum of each
    layer's codes + scales + zero points (int4, groups of 32; d_ff = 96 = 3 groups)."""
    fp = tiny_model()
    model = copy.deepcopy(fp)
    result = quantize_model(model, "rtn", Scheme(4, 32))
    expect = 0
    for name, layer in target_linears(fp):
        q = rtn(layer.weight.detach(), Scheme(4, 32))
        assert torch.equal(model.get_submodule(name).weight, q.dequantize())
        out, d_in = layer.weight.shape
        n_groups = -(-d_in // 32)
        expect += out * d_in // 2 + 4 * out * n_groups + -(-out * n_groups // 2)
    assert result.nbytes == expect
    assert result.calib_tokens == 0 and result.to_json()["packed_bytes"] == expect


def test_gptq_and_awq_beat_rtn_on_calibration(calib):
    """Sequential calibration: GPTQ's mean layer error < RTN's (measured on the same tokens); AWQ's <= RTN's per
    layer up to the sequential drift (its grid holds RTN), and it records each layer's alpha."""
    errors = {}
    for method in ("rtn", "gptq", "awq"):
        result = quantize_model(tiny_model(), method, Scheme(4, 32), calib)
        assert result.calib_tokens == calib.numel()
        errors[method] = [r.error for r in result.layers]
        if method == "awq":
            assert all(r.alpha is not None for r in result.layers)
            assert all("awq_scale" in p for p in result.packed.values())
    mean = {k: sum(v) / len(v) for k, v in errors.items()}
    assert mean["gptq"] < mean["rtn"] and mean["awq"] <= mean["rtn"] * 1.01


def test_saved_model_reloads_bit_exact(tmp_path, calib, probe):
    """The fake-quantized model is a plain llmlab Transformer: saved and loaded, its logits are identical."""
    model = tiny_model()
    quantize_model(model, "gptq", Scheme(3, 32), calib, act_order=True)
    save_model(model, tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "q")(probe), model(probe))


def test_llm_int8_swaps_in_int8_layers(probe):
    """llm.int8 replaces each Linear by an Int8Linear (activations quantized at run time)."""
    model = tiny_model()
    quantize_model(model, "llm.int8")
    assert isinstance(model.blocks[0].attn.q_proj, Int8Linear) and isinstance(model.lm_head, torch.nn.Linear)
    assert model(probe).shape == (1, 64, 260)


def test_moe_routers_stay_fp32(calib):
    """MoE: the experts' Linears are quantized, the router is not."""
    fp = tiny_model(n_experts=4, n_experts_per_tok=2)
    model = copy.deepcopy(fp)
    result = quantize_model(model, "gptq", Scheme(4, 32), calib)
    names = [r.name for r in result.layers]
    assert any(".experts." in n for n in names) and not any(n.endswith("router") for n in names)
    assert torch.equal(model.blocks[0].mlp.router.weight, fp.blocks[0].mlp.router.weight)


def test_user_errors():
    """Unknown methods and calibrated methods without calibration tokens are LlmlabErrors."""
    with pytest.raises(LlmlabError, match="unknown quantization method 'int3'"):
        quantize_model(tiny_model(), "int3")
    with pytest.raises(LlmlabError, match="gptq needs calibration"):
        quantize_model(tiny_model(), "gptq")
