"""Llama, Mistral and Qwen2 (HF `...ForCausalLM`) <-> llmlab: RoPE, pre-RMSNorm, SwiGLU, GQA.

The three differ by config only: Llama has `attention_bias` (q, k, v and o) and `mlp_bias`; Mistral has no
biases and one `sliding_window` for every layer; Qwen2 always has q/k/v biases and no o bias, and a sliding
window on layers i >= `max_window_layers` when `use_sliding_window` (or as `layer_types` lists).
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from llmlab.errors import LlmlabError
from llmlab.model.config import RopeScaling, TransformerConfig
from llmlab.model.hf.common import ACT_TO_HF, act_from_hf, refuse_if, require, take

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# HF config defaults (transformers 5.24) where the three classes differ, for keys a config.json leaves out
DEFAULTS = {
    "llama": {"num_key_value_heads": None, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048},
    "mistral": {"num_key_value_heads": 8, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096 * 32,
                "sliding_window": 4096},
    "qwen2": {"num_key_value_heads": 32, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
              "sliding_window": 4096, "max_window_layers": 28},
}
# ours -> HF (without the "model." prefix), per block
LAYER = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
         **{f"attn.{p}_proj": f"self_attn.{p}_proj" for p in "qkvo"},
         **{f"mlp.{p}_proj": f"mlp.{p}_proj" for p in ("gate", "up", "down")}}
IGNORE = ("rotary_emb.inv_freq", "lm_head.weight")  # old RoPE caches; lm_head.weight when a copy of tied embeddings


# --- RoPE: HF v5 `rope_parameters` (or v4 `rope_theta` + `rope_scaling`) <-> rope_theta + RopeScaling

def rope_from_hf(d: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    rp = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    if any(isinstance(v, dict) for v in rp.values()):
        raise LlmlabError(f"rope_parameters per layer type ({', '.join(rp)}) are not supported: llmlab has one RoPE")
    theta = float(rp.get("rope_theta", d.get("rope_theta", 10000.0)))
    kind = rp.get("rope_type", rp.get("type", "default"))
    refuse_if(rp.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0)) != 1.0,
              "partial_rotary_factor != 1 is not supported: llmlab rotates the whole head")
    l_max = d["max_position_embeddings"]
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, RopeScaling("linear", float(rp["factor"]))
    if kind == "dynamic":  # HF grows the base past max_position_embeddings (its "original" length here)
        return theta, RopeScaling("dynamic", float(rp["factor"]), original_max_seq_len=l_max)
    l0 = rp.get("original_max_position_embeddings", d.get("original_max_position_embeddings", l_max))
    if kind == "llama3":
        return theta, RopeScaling("llama3", float(rp["factor"]), original_max_seq_len=l0,
                                  low_freq_factor=float(rp["low_freq_factor"]),
                                  high_freq_factor=float(rp["high_freq_factor"]))
    if kind == "yarn":
        factor = rp.get("factor") or l_max / l0  # HF: no factor -> max_position_embeddings / original
        attention = rp.get("attention_factor")
        mscale, mscale_all = rp.get("mscale"), rp.get("mscale_all_dim")
        if attention is None and mscale and mscale_all and factor > 1:
            # DeepSeek form: (0.1 m ln s + 1) / (0.1 m_all ln s + 1)  (HF `_compute_yarn_parameters`)
            attention = (0.1 * mscale * math.log(factor) + 1) / (0.1 * mscale_all * math.log(factor) + 1)
        return theta, RopeScaling("yarn", float(factor), original_max_seq_len=l0,
                                  beta_fast=float(rp.get("beta_fast") or 32.0),
                                  beta_slow=float(rp.get("beta_slow") or 1.0),
                                  attention_factor=attention, truncate=rp.get("truncate", True))
    raise LlmlabError(f"rope_type={kind!r} is not supported; llmlab imports default, linear, dynamic, yarn, llama3")


def rope_to_hf(cfg: TransformerConfig) -> tuple[dict[str, Any], int]:
    """(rope_parameters, max_position_embeddings)."""
    s = cfg.rope_scaling
    if s is None:
        return {"rope_type": "default", "rope_theta": cfg.rope_theta}, cfg.max_seq_len
    if s.kind == "ntk":  # static NTK is plain RoPE with theta' = theta * s^(d/(d-2)): the same inv_freq exactly
        d = cfg.head_dim
        return {"rope_type": "default", "rope_theta": cfg.rope_theta * s.factor ** (d / (d - 2))}, cfg.max_seq_len
    rp: dict[str, Any] = {"rope_type": s.kind, "rope_theta": cfg.rope_theta, "factor": s.factor}
    if s.kind == "dynamic":  # HF's dynamic reads max_position_embeddings as the original length
        return rp, s.original_max_seq_len
    if s.kind == "llama3":
        rp.update(original_max_position_embeddings=s.original_max_seq_len, low_freq_factor=s.low_freq_factor,
                  high_freq_factor=s.high_freq_factor)
    if s.kind == "yarn":
        rp.update(original_max_position_embeddings=s.original_max_seq_len, beta_fast=s.beta_fast,
                  beta_slow=s.beta_slow, truncate=s.truncate)
        if s.attention_factor is not None:
            rp["attention_factor"] = s.attention_factor
    return rp, cfg.max_seq_len


# --- config

def _window_from_hf(d: dict[str, Any], model_type: str) -> int | None:
    get = lambda k: d.get(k, DEFAULTS[model_type][k])  # noqa: E731
    if model_type == "llama":
        return None
    if model_type == "mistral":  # one window for every layer (MistralModel ignores layer_types)
        return get("sliding_window")
    window = get("sliding_window") if d.get("use_sliding_window", False) else None
    if window is None:
        return None
    n = d["num_hidden_layers"]
    types = d.get("layer_types") or ["sliding_attention" if i >= get("max_window_layers") else "full_attention"
                                     for i in range(n)]
    if all(t == "full_attention" for t in types):
        return None
    if all(t == "sliding_attention" for t in types):
        return window
    raise LlmlabError(f"qwen2 mixes sliding and full attention layers (layer_types={types}); llmlab's "
                      "sliding_window applies to every layer: set max_window_layers=0 or use_sliding_window=false")


def config_from_hf(d: dict[str, Any]) -> TransformerConfig:
    model_type = d["model_type"]
    get = lambda k, default=None: d.get(k, DEFAULTS[model_type].get(k, default))  # noqa: E731
    n_heads = d["num_attention_heads"]
    theta, scaling = rope_from_hf({**d, "max_position_embeddings": get("max_position_embeddings")})
    qkv_bias = out_bias = model_type == "llama" and d.get("attention_bias", False)
    if model_type == "qwen2":
        qkv_bias, out_bias = True, False
    return TransformerConfig(
        arch="decoder", vocab_size=d["vocab_size"], d_model=d["hidden_size"], n_layers=d["num_hidden_layers"],
        n_heads=n_heads, n_kv_heads=get("num_key_value_heads") or n_heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // n_heads, d_ff=d["intermediate_size"],
        max_seq_len=get("max_position_embeddings"), position="rope", rope_theta=theta, rope_scaling=scaling,
        sliding_window=_window_from_hf(d, model_type), qkv_bias=qkv_bias, out_bias=out_bias,
        norm="rmsnorm", norm_eps=get("rms_norm_eps"), norm_position="pre",
        activation=act_from_hf(d.get("hidden_act", "silu"), "hidden_act"), gated_mlp=True,
        mlp_bias=model_type == "llama" and d.get("mlp_bias", False), tie_embeddings=d.get("tie_word_embeddings", False),
        dropout=0.0, attn_dropout=d.get("attention_dropout", 0.0), init_std=d.get("initializer_range", 0.02),
    )


def model_type_for(cfg: TransformerConfig) -> str:
    """qwen2 when q/k/v have biases and o has none; mistral when a sliding window is set; llama otherwise."""
    if cfg.qkv_bias and not cfg.out_bias:
        return "qwen2"
    return "mistral" if cfg.sliding_window is not None else "llama"


def config_to_hf(cfg: TransformerConfig) -> dict[str, Any]:
    model_type = model_type_for(cfg)
    require(cfg, model_type, arch="decoder", position="rope", norm="rmsnorm", norm_position="pre",
            embed_norm=False, gated_mlp=True, attn_softcap=None, n_token_types=0, mlm_head_transform=False,
            lm_head_bias=False, n_experts=0, attn_scale=None)
    if model_type == "qwen2":
        require(cfg, "qwen2", mlp_bias=False)
    elif cfg.qkv_bias != cfg.out_bias:
        raise LlmlabError(f"cannot export as llama: qkv_bias={cfg.qkv_bias} but out_bias={cfg.out_bias}; llama's "
                          "attention_bias sets both (qkv_bias=True, out_bias=False exports as qwen2)")
    elif model_type == "mistral":
        require(cfg, "mistral (llmlab exports a sliding window as Mistral)", qkv_bias=False, out_bias=False,
                mlp_bias=False)
    rope_parameters, max_positions = rope_to_hf(cfg)
    out: dict[str, Any] = {
        "model_type": model_type, "architectures": [ARCHITECTURES[model_type]], "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "hidden_act": ACT_TO_HF[cfg.activation], "max_position_embeddings": max_positions,
        "rms_norm_eps": cfg.norm_eps, "rope_parameters": rope_parameters, "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": cfg.attn_dropout, "initializer_range": cfg.init_std,
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
    }
    if model_type == "llama":
        out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    elif model_type == "mistral":
        out.update(sliding_window=cfg.sliding_window)
    else:  # every layer or none: max_window_layers=0 puts the window on all of them
        out.update(use_sliding_window=cfg.sliding_window is not None, sliding_window=cfg.sliding_window,
                   max_window_layers=0 if cfg.sliding_window is not None else cfg.n_layers)
    return out


# --- weights: the same tensors, renamed

def _names(cfg: TransformerConfig) -> dict[str, str]:
    """ours -> HF (with the "model." prefix), only the tensors this config has."""
    names = {"tok_emb.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight"}
    biases = {"attn.q_proj": cfg.qkv_bias, "attn.k_proj": cfg.qkv_bias, "attn.v_proj": cfg.qkv_bias,
              "attn.o_proj": cfg.out_bias, "mlp.gate_proj": cfg.mlp_bias, "mlp.up_proj": cfg.mlp_bias,
              "mlp.down_proj": cfg.mlp_bias}
    for i in range(cfg.n_layers):
        for ours, hf in LAYER.items():
            names[f"blocks.{i}.{ours}.weight"] = f"model.layers.{i}.{hf}.weight"
            if biases.get(ours):
                names[f"blocks.{i}.{ours}.bias"] = f"model.layers.{i}.{hf}.bias"
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    return names


def state_from_hf(hf_state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    names = _names(cfg)
    if "lm_head.weight" in names and "lm_head.weight" not in hf_state:
        raise LlmlabError("checkpoint has no lm_head.weight and tie_word_embeddings=false: a base model "
                          "(LlamaModel) without the LM head? llmlab loads ...ForCausalLM checkpoints")
    # a base-model checkpoint (LlamaModel) saves without the "model." prefix
    hf_state = {k if k.startswith(("model.", "lm_head.")) else f"model.{k}": v for k, v in hf_state.items()}
    state = take(hf_state, names, IGNORE, model_type_for(cfg))
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    return state


def state_to_hf(state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    return {hf: state[ours].contiguous() for ours, hf in _names(cfg).items()}
