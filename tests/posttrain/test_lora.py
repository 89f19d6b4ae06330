"""LoRA / rsLoRA / DoRA against PEFT 0.21 on a random-weight HF Llama (transformers 5.24, eager attention).

Reference: `peft.get_peft_model(hf, LoraConfig(..., init_lora_weights=False))` (B random, so the adapter
changes the output) and `PeftModel.from_pretrained`; tolerance fp32 1e-5 on logits unless a test says otherwise.
"""

from __future__ import annotations

import pytest
import torch

import llmlab
from llmlab.compress.nf4 import NF4Linear, quantize_model_nf4
from llmlab.errors import LlmlabError
from llmlab.model.hf import save_hf_model
from llmlab.model.presets import preset
from llmlab.posttrain.lora import LoRALinear, apply_lora, load_adapter, lora_layers, merge_lora, save_adapter

V = 97
ATOL = 1e-5
CASES = {  # name: (target_modules, LoraConfig extras)
    "lora-qv": (["q_proj", "v_proj"], {}),
    "lora-all": (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], {}),
    "rslora-mlp": (["gate_proj", "down_proj"], {"use_rslora": True}),
    "dora-qv": (["q_proj", "v_proj"], {"use_dora": True}),
    "dora-attn-mlp": (["k_proj", "o_proj", "up_proj"], {"use_dora": True}),
}


def build_hf(seed: int = 0):
    import transformers as tf

    tf.logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attn_implementation="eager"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def peft_model(hf, targets, extra, seed: int = 1):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(hf, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False,
                                         **extra)).eval()


IDS = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(3))


def logits_hf(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def logits_ours(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS)


@pytest.mark.parametrize("case", CASES)
def test_logits_and_merge_equal_peft(case, tmp_path):
    """Ours (PEFT's adapter loaded with load_adapter) vs PeftModel: logits 1e-5; ours merged == ours unmerged 1e-5;
    ours merge_lora == PEFT merge_and_unload 1e-5."""
    targets, extra = CASES[case]
    hf = build_hf()
    hf.save_pretrained(tmp_path / "base")
    peft = peft_model(hf, targets, extra)
    peft.save_pretrained(tmp_path / "adapter")
    ours = load_adapter(llmlab.load_model(tmp_path / "base"), tmp_path / "adapter").eval()
    assert len(lora_layers(ours)) == 2 * len(targets)
    ref = logits_hf(peft)
    assert not torch.allclose(ref, logits_hf(peft.get_base_model().__class__.from_pretrained(tmp_path / "base")),
                              atol=1e-3)  # the adapter changes the output: the comparison proves something
    torch.testing.assert_close(logits_ours(ours), ref, atol=ATOL, rtol=0)

    for layer in lora_layers(ours).values():
        layer.merge()
    torch.testing.assert_close(logits_ours(ours), ref, atol=ATOL, rtol=0)
    for layer in lora_layers(ours).values():
        layer.unmerge()
    torch.testing.assert_close(logits_ours(ours), ref, atol=ATOL, rtol=0)

    merged_ref = logits_hf(peft.merge_and_unload())
    merged = merge_lora(ours)
    assert not lora_layers(merged) and isinstance(merged.blocks[0].attn.q_proj, torch.nn.Linear)
    torch.testing.assert_close(logits_ours(merged), merged_ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", ["lora-qv", "rslora-mlp", "dora-qv"])
def test_gradients_equal_peft_and_only_adapters(case, tmp_path):
    """Same loss on both: the gradient reaches exactly the adapter tensors (A, B, DoRA m), equal to PEFT's
    (atol 1e-5, rtol 1e-4) — DoRA's detached norm included; the base gets none."""
    targets, extra = CASES[case]
    hf = build_hf()
    hf.save_pretrained(tmp_path / "base")
    peft = peft_model(hf, targets, extra)
    peft.save_pretrained(tmp_path / "adapter")
    ours = load_adapter(llmlab.load_model(tmp_path / "base"), tmp_path / "adapter")
    peft(input_ids=IDS).logits.square().mean().backward()
    ours(IDS).square().mean().backward()
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in ours.named_parameters() if p.grad is not None}
    assert trainable == with_grad
    assert all(n.rsplit(".", 2)[-2] in ("lora_A", "lora_B") or n.endswith("lora_magnitude_vector")
               for n in trainable)
    peft_grads = {n.replace(".default", ""): p.grad for n, p in peft.named_parameters() if p.grad is not None}
    for name, layer in lora_layers(ours).items():
        i, rest = name.split(".", 2)[1:]
        hf_name = f"base_model.model.model.layers.{i}.{'self_attn' if rest.startswith('attn') else 'mlp'}." \
                  f"{rest.split('.')[1]}"
        torch.testing.assert_close(layer.lora_A.weight.grad, peft_grads[f"{hf_name}.lora_A.weight"],
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.lora_B.weight.grad, peft_grads[f"{hf_name}.lora_B.weight"],
                                   atol=1e-5, rtol=1e-4)
        if layer.use_dora:
            torch.testing.assert_close(layer.lora_magnitude_vector.grad,
                                       peft_grads[f"{hf_name}.lora_magnitude_vector.weight"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("use_dora", [False, True])
def test_save_adapter_opens_in_peft(use_dora, tmp_path):
    """Our save_adapter -> `PeftModel.from_pretrained(HF model from save_hf_model(ours), dir)`: logits 1e-5;
    load_adapter of the same files rebuilds ours exactly."""
    import transformers as tf
    from peft import PeftModel

    base = llmlab.Transformer(preset("tiny", vocab_size=V, n_layers=2))
    save_hf_model(base, tmp_path / "hf")
    ours = apply_lora(base, ("q_proj", "k_proj", "down_proj"), r=4, alpha=8, use_dora=use_dora, use_rslora=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(ours).values():  # random B (and m): the adapter matters
            layer.lora_B.weight.copy_(0.1 * torch.randn(layer.lora_B.weight.shape, generator=g))
            if use_dora:
                layer.lora_magnitude_vector.mul_(1 + 0.1 * torch.randn(layer.lora_magnitude_vector.shape,
                                                                       generator=g))
    save_adapter(ours.eval(), tmp_path / "adapter")
    hf = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    plain = logits_hf(hf)
    peft = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ref = logits_hf(peft)
    assert not torch.allclose(ref, plain, atol=1e-3)
    torch.testing.assert_close(logits_ours(ours), ref, atol=ATOL, rtol=0)
    again = load_adapter(llmlab.load_model(tmp_path / "hf"), tmp_path / "adapter").eval()  # round trip
    torch.testing.assert_close(logits_ours(again), logits_ours(ours), atol=0, rtol=0)


def test_lora_linear_formula_and_zero_init():
    """LoRALinear vs the formula written out (exact to 1e-6): W x + b + (alpha/r) B A x; rsLoRA alpha/sqrt(r);
    a fresh adapter (B = 0) leaves the output unchanged (exactly)."""
    base = torch.nn.Linear(16, 8)
    x = torch.randn(3, 16)
    layer = LoRALinear(base, r=4, alpha=8)
    assert torch.equal(layer(x), base(x))
    torch.nn.init.normal_(layer.lora_B.weight)
    a, b = layer.lora_A.weight, layer.lora_B.weight
    torch.testing.assert_close(layer(x), base(x) + 2.0 * x @ a.T @ b.T, atol=1e-6, rtol=0)
    rs = LoRALinear(base, r=4, alpha=8, use_rslora=True)
    assert rs.scaling == 4.0


def test_dora_formula():
    """DoRA vs Liu et al. 2024 written out, W' = m (W + sBA) / ||W + sBA|| (norm over each output row): 1e-6."""
    base = torch.nn.Linear(16, 8)
    layer = LoRALinear(base, r=2, alpha=4, use_dora=True)
    torch.nn.init.normal_(layer.lora_B.weight)
    with torch.no_grad():
        layer.lora_magnitude_vector.uniform_(0.5, 2)
    x = torch.randn(3, 16)
    v = base.weight + 2.0 * layer.lora_B.weight @ layer.lora_A.weight  # (out, in)
    w = layer.lora_magnitude_vector[:, None] * v / v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(layer(x), x @ w.T + base.bias, atol=1e-6, rtol=0)


def test_qlora_merge_and_errors(tmp_path):
    """QLoRA: LoRA over an NF4 base trains only the adapter; merge_lora dequantizes and merges (logits 1e-5);
    unknown target modules raise."""
    model = llmlab.Transformer(preset("tiny", vocab_size=V, n_layers=2))
    quantize_model_nf4(model)
    apply_lora(model, ("q_proj", "v_proj"), r=4, alpha=8)
    assert isinstance(model.blocks[0].attn.q_proj.base, NF4Linear)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    model.eval()
    ref = logits_ours(model)
    torch.testing.assert_close(logits_ours(merge_lora(model)), ref, atol=ATOL, rtol=0)
    with pytest.raises(LlmlabError, match="match no linear layer"):
        apply_lora(llmlab.Transformer(preset("tiny", vocab_size=V)), ("qkv",))
