"""Named configs. A family is a handful of field values (a style); a preset is a style at a size.

The point of `STYLES`: GPT-2, Llama, Mistral, Qwen2, Mixtral, Qwen2-MoE and BERT are the same Transformer with
different fields.
"""

from __future__ import annotations

from typing import Any

from llmlab.errors import ConfigError
from llmlab.model.config import TransformerConfig

STYLES: dict[str, dict[str, Any]] = {
    # Radford et al. 2019: learned positions, LayerNorm, GELU(tanh) MLP, biases everywhere, tied head
    "gpt2": dict(position="learned", norm="layernorm", activation="gelu_tanh", gated_mlp=False, qkv_bias=True,
                 out_bias=True, mlp_bias=True, tie_embeddings=True, norm_eps=1e-5),
    # Touvron et al. 2023: RoPE, RMSNorm, SwiGLU, no biases, untied head
    "llama": dict(position="rope", norm="rmsnorm", activation="silu", gated_mlp=True, norm_eps=1e-5),
    # Jiang et al. 2023: Llama + sliding-window attention
    "mistral": dict(position="rope", norm="rmsnorm", activation="silu", gated_mlp=True, norm_eps=1e-5,
                    sliding_window=128),
    # Qwen2 (2024): Llama + bias on Q, K, V only, theta 1e6
    "qwen2": dict(position="rope", norm="rmsnorm", activation="silu", gated_mlp=True, norm_eps=1e-6,
                  qkv_bias=True, rope_theta=1_000_000.0),
    # Jiang et al. 2024: Llama with 8 experts per layer, 2 per token (weights renormalised), theta 1e6
    "mixtral": dict(position="rope", norm="rmsnorm", activation="silu", gated_mlp=True, norm_eps=1e-5,
                    rope_theta=1_000_000.0, n_experts=8, n_experts_per_tok=2, router_aux_loss_coef=0.02),
    # Qwen1.5-MoE (2024): Qwen2 with fine-grained experts (4 of 8 per token, d_ff / 4 wide, weights not
    # renormalised) plus a shared expert d_ff wide (see `preset`)
    "qwen2-moe": dict(position="rope", norm="rmsnorm", activation="silu", gated_mlp=True, norm_eps=1e-6,
                      qkv_bias=True, rope_theta=1_000_000.0, n_experts=8, n_experts_per_tok=4, norm_topk_prob=False,
                      router_aux_loss_coef=0.001),
    # Devlin et al. 2019: bidirectional encoder, post-norm, embedding norm, segment embeddings, MLM head
    "bert": dict(arch="encoder", position="learned", norm="layernorm", norm_position="post", embed_norm=True,
                 activation="gelu", gated_mlp=False, qkv_bias=True, out_bias=True, mlp_bias=True,
                 tie_embeddings=True, n_token_types=2, mlm_head_transform=True, lm_head_bias=True,
                 norm_eps=1e-12),
}

SIZES: dict[str, dict[str, Any]] = {
    # ~0.8M params: a forward/backward in well under a second on 2 CPU cores
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=352, max_seq_len=256),
    # ~11M params: CPU-trainable in tens of minutes, comfortable on one GPU
    "small": dict(d_model=384, n_layers=6, n_heads=6, n_kv_heads=2, d_ff=1024, max_seq_len=512),
    # GPT-2 small's shape (124M with GPT-2's 50,257-token vocabulary): for GPUs
    "gpt2-124m": dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=1024, vocab_size=50257),
}

DEFAULT_STYLE = {"tiny": "llama", "small": "llama", "gpt2-124m": "gpt2"}


def preset(size: str, style: str | None = None, **overrides: Any) -> TransformerConfig:
    """`preset("tiny")` is a tiny Llama; `preset("tiny", "bert")` the same size as a BERT encoder."""
    if size not in SIZES:
        raise ConfigError(f"preset={size!r} must be one of {', '.join(SIZES)}")
    style = style or DEFAULT_STYLE[size]
    if style not in STYLES:
        raise ConfigError(f"style={style!r} must be one of {', '.join(STYLES)}")
    fields = {**STYLES[style], **SIZES[size], **overrides}
    if style in ("gpt2", "bert"):  # these families use full multi-head attention
        fields.setdefault("n_kv_heads", None) if "n_kv_heads" in overrides else fields.update(n_kv_heads=None)
    if style == "qwen2-moe":  # expert widths follow the size's d_ff
        fields.setdefault("moe_d_ff", fields["d_ff"] // 4)
        fields.setdefault("shared_expert_d_ff", fields["d_ff"])
    if fields.get("sliding_window") and fields["sliding_window"] >= fields["max_seq_len"]:
        fields["sliding_window"] = fields["max_seq_len"] // 2  # keep the window visible at this size
    return TransformerConfig(**fields)
