"""Presets: every size x style builds and runs; each style carries its family's defining fields.

References: the papers' architecture choices (listed per style below) and HF transformers 5.24's model classes
built from an equivalent config on the meta device, whose parameter count must equal ours exactly; GPT-2 small's
published 124,439,808 parameters.
"""

from __future__ import annotations

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.model.presets import DEFAULT_STYLE, SIZES, STYLES, preset
from llmlab.model.transformer import Transformer

REAL_SIZES = [s for s in SIZES if s != "gpt2-124m"]


def forward(cfg, device: str = "cpu") -> torch.Tensor:
    with torch.device(device):
        model = Transformer(cfg).eval()
        ids = torch.randint(0, cfg.vocab_size, (2, 16))
    with torch.no_grad():
        return model(ids, attention_mask=torch.ones_like(ids))


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("size", REAL_SIZES)
def test_preset_builds_and_runs_forward(size, style):
    cfg = preset(size, style)
    logits = forward(cfg)
    assert logits.shape == (2, 16, cfg.vocab_size) and torch.isfinite(logits).all()


@pytest.mark.parametrize("style", STYLES)
def test_gpt2_124m_builds_and_runs_forward_on_meta(style):
    """The 124M size through every op on the meta device (shapes only, no memory); the real run is marked slow.
    MoE styles: which tokens reach an expert is data (torch.nonzero), which meta lacks; it is told to assume all."""
    cfg = preset("gpt2-124m", style)
    with torch.fx.experimental._config.patch(meta_nonzero_assume_all_nonzero=True):
        logits = forward(cfg, device="meta")
    assert logits.shape == (2, 16, cfg.vocab_size)


@pytest.mark.slow
@pytest.mark.parametrize("style", STYLES)
def test_gpt2_124m_builds_and_runs_forward(style):
    cfg = preset("gpt2-124m", style)
    logits = forward(cfg)
    assert logits.shape == (2, 16, cfg.vocab_size) and torch.isfinite(logits).all()


@pytest.mark.parametrize("size", SIZES)
def test_styles_reproduce_family_fields(size):
    """Reference: GPT-2 (Radford 2019), Llama (Touvron 2023), Mistral (Jiang 2023), Qwen2 (2024), Mixtral (Jiang
    2024), Qwen1.5-MoE (2024), BERT (Devlin 2019)."""
    gpt2, llama, mistral, qwen2, bert = (preset(size, s) for s in ("gpt2", "llama", "mistral", "qwen2", "bert"))
    for cfg in (gpt2, llama, mistral, qwen2):
        assert cfg.arch == "decoder" and cfg.causal and cfg.norm_position == "pre"
    # GPT-2: learned positions, LayerNorm, GELU(tanh) plain MLP, biases everywhere, tied head, full MHA
    assert (gpt2.position, gpt2.norm, gpt2.activation, gpt2.gated_mlp) == ("learned", "layernorm", "gelu_tanh", False)
    assert gpt2.qkv_bias and gpt2.out_bias and gpt2.mlp_bias and gpt2.tie_embeddings
    assert gpt2.n_kv_heads == gpt2.n_heads
    # Llama: RoPE, RMSNorm, SwiGLU, no biases, untied head
    assert (llama.position, llama.norm, llama.activation, llama.gated_mlp) == ("rope", "rmsnorm", "silu", True)
    assert not (llama.qkv_bias or llama.out_bias or llama.mlp_bias or llama.tie_embeddings)
    assert llama.sliding_window is None and llama.rope_theta == 10000.0
    # Mistral: Llama plus a sliding window smaller than the context
    assert mistral.replace(sliding_window=None) == llama
    assert mistral.sliding_window is not None and 0 < mistral.sliding_window < mistral.max_seq_len
    # Qwen2: Llama plus bias on Q, K, V only, theta 1e6, eps 1e-6
    assert qwen2.qkv_bias and not (qwen2.out_bias or qwen2.mlp_bias)
    assert qwen2.rope_theta == 1_000_000.0 and qwen2.norm_eps == 1e-6
    # BERT: bidirectional, learned + segment embeddings, post-norm, embedding norm, GELU (exact), MLM head, tied
    assert bert.arch == "encoder" and not bert.causal
    assert (bert.position, bert.norm, bert.norm_position, bert.activation) == ("learned", "layernorm", "post", "gelu")
    assert bert.embed_norm and bert.n_token_types == 2 and bert.mlm_head_transform and bert.lm_head_bias
    assert bert.tie_embeddings and not bert.gated_mlp and bert.n_kv_heads == bert.n_heads and bert.norm_eps == 1e-12
    # Mixtral: Llama with 8 experts of d_ff per layer, 2 per token, weights renormalised, theta 1e6
    mixtral, qwen2_moe = preset(size, "mixtral"), preset(size, "qwen2-moe")
    assert mixtral.replace(n_experts=0, rope_theta=10000.0, router_aux_loss_coef=0.01) == llama
    assert (mixtral.n_experts, mixtral.n_experts_per_tok, mixtral.moe_d_ff) == (8, 2, None) and mixtral.norm_topk_prob
    # Qwen2-MoE: Qwen2 with fine-grained experts (d_ff / 4, 4 of 8, raw top-k weights) and a shared d_ff expert
    assert qwen2_moe.replace(n_experts=0, n_experts_per_tok=2, moe_d_ff=None, shared_expert_d_ff=0,
                             norm_topk_prob=True, router_aux_loss_coef=0.01) == qwen2
    assert (qwen2_moe.moe_d_ff, qwen2_moe.shared_expert_d_ff) == (qwen2.d_ff // 4, qwen2.d_ff)
    # the size's shape is kept by every style
    for cfg in (gpt2, llama, mistral, qwen2, mixtral, qwen2_moe, bert):
        for field in ("d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            assert getattr(cfg, field) == SIZES[size][field]


def hf_model(style: str, cfg):
    """The HF model class of the family, configured to our shape (meta device: parameter shapes only)."""
    tf = pytest.importorskip("transformers")
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                  num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_ff)
    if style == "gpt2":
        hf_cfg = tf.GPT2Config(vocab_size=cfg.vocab_size, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                               n_inner=cfg.d_ff, n_positions=cfg.max_seq_len)
        return tf.GPT2LMHeadModel(hf_cfg)
    if style == "bert":
        hf_cfg = tf.BertConfig(**common, max_position_embeddings=cfg.max_seq_len, type_vocab_size=cfg.n_token_types)
        return tf.BertForMaskedLM(hf_cfg)
    kw = dict(**common, num_key_value_heads=cfg.n_kv_heads, tie_word_embeddings=False)
    if style == "mixtral":
        return tf.MixtralForCausalLM(tf.MixtralConfig(**kw, num_local_experts=cfg.n_experts,
                                                      num_experts_per_tok=cfg.n_experts_per_tok))
    if style == "qwen2-moe":
        return tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(
            **kw, num_experts=cfg.n_experts, num_experts_per_tok=cfg.n_experts_per_tok,
            moe_intermediate_size=cfg.moe_d_ff, shared_expert_intermediate_size=cfg.shared_expert_d_ff))
    if style == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**kw))
    if style == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**kw, sliding_window=cfg.sliding_window))
    return tf.Qwen2ForCausalLM(tf.Qwen2Config(**kw))


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("size", ["tiny", "small"])
def test_parameter_count_equals_hf_family_model(size, style):
    """Reference: sum of parameter sizes of HF's GPT2LMHeadModel / LlamaForCausalLM / MistralForCausalLM /
    Qwen2ForCausalLM / MixtralForCausalLM / Qwen2MoeForCausalLM / BertForMaskedLM at the same shape (shared tensors
    once); exact."""
    cfg = preset(size, style)
    with torch.device("meta"):
        ours, ref = Transformer(cfg), hf_model(style, cfg)
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())


def test_gpt2_124m_has_gpt2_small_parameter_count():
    """Reference: GPT-2 small's 124,439,808 parameters (tied head, learned positions, biases)."""
    with torch.device("meta"):
        assert Transformer(preset("gpt2-124m")).num_parameters() == 124_439_808


def test_default_styles_and_overrides():
    assert preset("tiny") == preset("tiny", DEFAULT_STYLE["tiny"]) == preset("tiny", "llama")
    assert preset("gpt2-124m").position == "learned"
    cfg = preset("tiny", "llama", vocab_size=97, n_layers=2)
    assert (cfg.vocab_size, cfg.n_layers, cfg.d_model) == (97, 2, SIZES["tiny"]["d_model"])
    assert preset("tiny", "gpt2", n_kv_heads=2).n_kv_heads == 2  # an explicit override wins over the family's MHA
    assert preset("tiny", "mistral", max_seq_len=64).sliding_window == 32  # window kept inside a short context


@pytest.mark.parametrize("size,style,field", [("huge", None, "preset"), ("tiny", "gpt3", "style"),
                                              ("tiny", "Llama", "style")])
def test_unknown_preset_or_style_is_config_error(size, style, field):
    with pytest.raises(ConfigError) as excinfo:
        preset(size, style)
    msg = str(excinfo.value)
    assert msg.startswith(f"{field}=") and "\n" not in msg
    for name in (SIZES if field == "preset" else STYLES):
        assert name in msg  # the message lists the valid choices
