"""GPT-2 (HF `GPT2LMHeadModel` / `GPT2Model`) <-> llmlab: learned positions, pre-LayerNorm, gelu_new, tied head.

HF GPT-2 stores its projections as `Conv1D`, weight (in, out) with y = x W + b, where `nn.Linear` stores
(out, in); and it fuses Q, K, V into one `c_attn` of width 3 d_model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from llmlab.model.config import TransformerConfig
from llmlab.model.hf.common import ACT_TO_HF, act_from_hf, refuse_if, require, strip_prefix, take

# HF GPT2Config defaults (transformers 5.24), for keys an older config.json leaves out
DEFAULTS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
            "activation_function": "gelu_new", "resid_pdrop": 0.1, "attn_pdrop": 0.1, "layer_norm_epsilon": 1e-5,
            "initializer_range": 0.02, "tie_word_embeddings": True}

# ours -> HF, per block; "attn.qkv" stands for q_proj, k_proj, v_proj fused in c_attn
LAYER = {"attn_norm": "ln_1", "attn.qkv": "attn.c_attn", "attn.o_proj": "attn.c_proj", "mlp_norm": "ln_2",
         "mlp.up_proj": "mlp.c_fc", "mlp.down_proj": "mlp.c_proj"}
CONV1D = tuple(f".{m}.weight" for m in ("attn.qkv", "attn.o_proj", "mlp.up_proj", "mlp.down_proj"))
# causal-mask buffers of old checkpoints; lm_head.weight when it is a saved copy of the tied wte
IGNORE = (".attn.bias", ".attn.masked_bias", "lm_head.weight")


def config_from_hf(d: dict[str, Any]) -> TransformerConfig:
    get = lambda k: d.get(k, DEFAULTS[k])  # noqa: E731
    refuse_if(d.get("scale_attn_by_inverse_layer_idx", False),
              "gpt2 scale_attn_by_inverse_layer_idx=true is not supported: llmlab scales by 1/sqrt(head_dim) only")
    refuse_if(not d.get("scale_attn_weights", True),
              "gpt2 scale_attn_weights=false is not supported: llmlab always scales scores by 1/sqrt(head_dim)")
    refuse_if(d.get("add_cross_attention", False), "gpt2 add_cross_attention=true is not supported (decoder-only)")
    # reorder_and_upcast_attn only changes precision (scores in fp32), not the function: accepted
    return TransformerConfig(
        arch="decoder", vocab_size=get("vocab_size"), d_model=get("n_embd"), n_layers=get("n_layer"),
        n_heads=get("n_head"), d_ff=get("n_inner") or 4 * get("n_embd"), max_seq_len=get("n_positions"),
        position="learned", norm="layernorm", norm_eps=get("layer_norm_epsilon"), norm_position="pre",
        activation=act_from_hf(get("activation_function"), "activation_function"), gated_mlp=False,
        qkv_bias=True, out_bias=True, mlp_bias=True, tie_embeddings=get("tie_word_embeddings"),
        dropout=get("resid_pdrop"), attn_dropout=get("attn_pdrop"), init_std=get("initializer_range"),
    )


def config_to_hf(cfg: TransformerConfig) -> dict[str, Any]:
    require(cfg, "gpt2", arch="decoder", position="learned", norm="layernorm", norm_position="pre",
            embed_norm=False, gated_mlp=False, qkv_bias=True, out_bias=True, mlp_bias=True, n_kv_heads=cfg.n_heads,
            head_dim=cfg.d_model // cfg.n_heads, sliding_window=None, attn_softcap=None, n_token_types=0,
            mlm_head_transform=False, lm_head_bias=False, n_experts=0, attn_scale=None)
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_seq_len, "n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads,
        "n_inner": cfg.d_ff,
        "activation_function": "gelu_new" if cfg.activation == "gelu_tanh" else ACT_TO_HF[cfg.activation],
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attn_dropout,
        "layer_norm_epsilon": cfg.norm_eps, "initializer_range": cfg.init_std, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": None, "eos_token_id": None,
    }


def _names(cfg: TransformerConfig) -> dict[str, str]:
    """ours -> HF (without the "transformer." prefix), with q/k/v as one fused "attn.qkv" entry."""
    names = {"tok_emb.weight": "wte.weight", "pos_emb.weight": "wpe.weight",
             "final_norm.weight": "ln_f.weight", "final_norm.bias": "ln_f.bias"}
    for i in range(cfg.n_layers):
        for ours, hf in LAYER.items():
            for p in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{p}"] = f"h.{i}.{hf}.{p}"
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    return names


def state_from_hf(hf_state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    fused = take(strip_prefix(hf_state, "transformer."), _names(cfg), IGNORE, "gpt2")
    state = {}
    for name, t in fused.items():
        if name.endswith(CONV1D):
            t = t.t()  # Conv1D (in, out) -> Linear (out, in)
        if ".attn.qkv." in name:
            for part, chunk in zip("qkv", t.chunk(3, dim=0), strict=True):  # (3d, ...) -> 3 x (d, ...)
                state[name.replace("qkv", f"{part}_proj")] = chunk
        else:
            state[name] = t
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    return state


def state_to_hf(state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    fused = dict(state)
    for i in range(cfg.n_layers):
        for p in ("weight", "bias"):  # q, k, v (d, ...) each -> c_attn (3d, ...)
            fused[f"blocks.{i}.attn.qkv.{p}"] = torch.cat([state[f"blocks.{i}.attn.{x}_proj.{p}"] for x in "qkv"])
    out = {}
    for ours, hf in _names(cfg).items():
        t = fused[ours].t() if ours.endswith(CONV1D) else fused[ours]  # Linear (out, in) -> Conv1D (in, out)
        out[hf if hf.startswith("lm_head") else f"transformer.{hf}"] = t.contiguous()
    return out
