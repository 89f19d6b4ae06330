"""Mixtral and Qwen2-MoE (HF `...ForCausalLM`) <-> llmlab: the Llama / Qwen2 stack with mixture-of-experts MLPs.

Mixtral: every layer MoE, top-k weights renormalised, no biases, one optional sliding window for every layer.
Qwen2-MoE: q/k/v biases (`qkv_bias`), a shared expert with a sigmoid gate on each MoE layer, top-k weights
renormalised only with `norm_topk_prob`, dense MLPs (`intermediate_size`) on the layers `mlp_only_layers` or
`decoder_sparse_step` leave out.
Checkpoints store the experts one by one (the Hub layout, which transformers 5.24's save_pretrained writes back);
in memory, transformers 5.24 fuses them into `experts.gate_up_proj` (E, 2F, d) and `experts.down_proj` (E, d, F)
(and names Mixtral's `block_sparse_moe` `mlp`): a checkpoint saved in that layout reads too.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from llmlab.errors import LlmlabError
from llmlab.model.config import TransformerConfig
from llmlab.model.hf.common import ACT_TO_HF, act_from_hf, refuse_if, require, take
from llmlab.model.hf.llama import IGNORE, rope_from_hf, rope_to_hf

ARCHITECTURES = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}
# HF config defaults (transformers 5.24), for keys a config.json leaves out
DEFAULTS = {
    "mixtral": {"num_key_value_heads": 8, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096 * 32,
                "rope_theta": 1e6, "sliding_window": None, "num_local_experts": 8, "num_experts_per_tok": 2,
                "router_aux_loss_coef": 0.001},
    "qwen2_moe": {"num_key_value_heads": 16, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
                  "rope_theta": 10000.0, "sliding_window": 4096, "max_window_layers": 28, "num_experts": 60,
                  "num_experts_per_tok": 4, "norm_topk_prob": False, "router_aux_loss_coef": 0.001,
                  "decoder_sparse_step": 1, "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
                  "qkv_bias": True},
}
# the MoE sublayer's HF name and its experts' (gate, up, down) projections, in the Hub layout
MOE_NAME = {"mixtral": "block_sparse_moe", "qwen2_moe": "mlp"}
EXPERT_PROJ = {"mixtral": ("w1", "w3", "w2"), "qwen2_moe": ("gate_proj", "up_proj", "down_proj")}
ATTENTION = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
             **{f"attn.{p}_proj": f"self_attn.{p}_proj" for p in "qkvo"}}


def model_type_for(cfg: TransformerConfig) -> str:
    """qwen2_moe when the MoE has a shared expert, mixtral otherwise."""
    return "qwen2_moe" if cfg.shared_expert_d_ff else "mixtral"


# --- config

def _window_from_hf(d: dict[str, Any], get) -> int | None:
    if d["model_type"] == "mixtral":  # one window for every layer
        return get("sliding_window")
    if not d.get("use_sliding_window", False):
        return None
    n = d["num_hidden_layers"]  # Qwen2MoeConfig's default: a window on even layers below max_window_layers
    types = d.get("layer_types") or ["sliding_attention" if i % 2 == 0 and i < get("max_window_layers")
                                     else "full_attention" for i in range(n)]
    if all(t == "full_attention" for t in types):
        return None
    if all(t == "sliding_attention" for t in types):
        return get("sliding_window")
    raise LlmlabError(f"qwen2_moe mixes sliding and full attention layers (layer_types={types}); llmlab's "
                      "sliding_window applies to every layer: set layer_types all alike or use_sliding_window=false")


def config_from_hf(d: dict[str, Any]) -> TransformerConfig:
    model_type = d["model_type"]
    get = lambda k: d.get(k, DEFAULTS[model_type].get(k))  # noqa: E731
    refuse_if(d.get("router_jitter_noise", 0.0) != 0.0,
              f"router_jitter_noise={d.get('router_jitter_noise')} is not supported: llmlab's router has no jitter")
    n, n_heads = d["num_hidden_layers"], d["num_attention_heads"]
    theta, scaling = rope_from_hf({**d, "rope_theta": get("rope_theta"),
                                   "max_position_embeddings": get("max_position_embeddings")})
    common = dict(
        arch="decoder", vocab_size=d["vocab_size"], d_model=d["hidden_size"], n_layers=n, n_heads=n_heads,
        n_kv_heads=get("num_key_value_heads") or n_heads, head_dim=d.get("head_dim") or d["hidden_size"] // n_heads,
        d_ff=d["intermediate_size"], max_seq_len=get("max_position_embeddings"), position="rope", rope_theta=theta,
        rope_scaling=scaling, sliding_window=_window_from_hf(d, get), norm="rmsnorm", norm_eps=get("rms_norm_eps"),
        norm_position="pre", activation=act_from_hf(d.get("hidden_act", "silu"), "hidden_act"), gated_mlp=True,
        tie_embeddings=d.get("tie_word_embeddings", False), attn_dropout=d.get("attention_dropout", 0.0),
        init_std=d.get("initializer_range", 0.02))
    routing = dict(n_experts_per_tok=get("num_experts_per_tok"), router_aux_loss_coef=get("router_aux_loss_coef"))
    if model_type == "mixtral":
        return TransformerConfig(**common, **routing, n_experts=get("num_local_experts"), norm_topk_prob=True)
    # Qwen2MoeDecoderLayer: MoE where num_experts > 0, layer not in mlp_only_layers, (i + 1) % decoder_sparse_step == 0
    step, dense = get("decoder_sparse_step"), set(d.get("mlp_only_layers") or ())
    moe_layers = [i for i in range(n) if get("num_experts") > 0 and i not in dense and (i + 1) % step == 0]
    if not moe_layers:  # no sparse layer: a dense Qwen2
        return TransformerConfig(**common, qkv_bias=get("qkv_bias"))
    refuse_if(not get("shared_expert_intermediate_size"),
              "qwen2_moe with shared_expert_intermediate_size=0 is not supported: llmlab reads its shared expert")
    moe_d_ff = get("moe_intermediate_size")
    return TransformerConfig(**common, **routing, qkv_bias=get("qkv_bias"), n_experts=get("num_experts"),
                             moe_d_ff=None if moe_d_ff == d["intermediate_size"] else moe_d_ff,
                             shared_expert_d_ff=get("shared_expert_intermediate_size"),
                             norm_topk_prob=get("norm_topk_prob"), moe_layers=moe_layers)


def config_to_hf(cfg: TransformerConfig) -> dict[str, Any]:
    model_type = model_type_for(cfg)
    require(cfg, model_type, arch="decoder", position="rope", norm="rmsnorm", norm_position="pre",
            embed_norm=False, gated_mlp=True, attn_softcap=None, n_token_types=0, mlm_head_transform=False,
            lm_head_bias=False, out_bias=False, mlp_bias=False, capacity_factor=None, router_z_loss_coef=0.0,
            attn_scale=None)
    refuse_if(cfg.n_experts == 0, f"cannot export as {model_type}: n_experts=0 (a dense model)")
    if model_type == "mixtral":
        require(cfg, "mixtral (qwen2_moe needs shared_expert_d_ff > 0)", qkv_bias=False, norm_topk_prob=True,
                moe_layers=None)
    rope_parameters, max_positions = rope_to_hf(cfg)
    out: dict[str, Any] = {
        "model_type": model_type, "architectures": [ARCHITECTURES[model_type]], "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "hidden_act": ACT_TO_HF[cfg.activation],
        "max_position_embeddings": max_positions, "rms_norm_eps": cfg.norm_eps, "rope_parameters": rope_parameters,
        "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": cfg.attn_dropout,
        "initializer_range": cfg.init_std, "num_experts_per_tok": cfg.n_experts_per_tok,
        "router_aux_loss_coef": cfg.router_aux_loss_coef, "bos_token_id": None, "eos_token_id": None,
        "pad_token_id": None,
    }
    if model_type == "mixtral":  # every layer is MoE: d_ff has no layer to size, the experts' width is the one
        out.update(intermediate_size=cfg.moe_d_ff or cfg.d_ff, num_local_experts=cfg.n_experts,
                   sliding_window=cfg.sliding_window, router_jitter_noise=0.0)
        return out
    window = cfg.sliding_window is not None
    out.update(intermediate_size=cfg.d_ff, moe_intermediate_size=cfg.moe_d_ff or cfg.d_ff, num_experts=cfg.n_experts,
               shared_expert_intermediate_size=cfg.shared_expert_d_ff, norm_topk_prob=cfg.norm_topk_prob,
               qkv_bias=cfg.qkv_bias, decoder_sparse_step=1,
               mlp_only_layers=[i for i in range(cfg.n_layers) if not cfg.is_moe_layer(i)],
               use_sliding_window=window, sliding_window=cfg.sliding_window, max_window_layers=cfg.n_layers,
               layer_types=[("sliding_attention" if window else "full_attention")] * cfg.n_layers)
    return out


# --- weights

def _names(cfg: TransformerConfig) -> dict[str, str]:
    """ours -> HF (with the "model." prefix, Hub layout), only the tensors this config has."""
    model_type = model_type_for(cfg)
    moe, (gate, up, down) = MOE_NAME[model_type], EXPERT_PROJ[model_type]
    names = {"tok_emb.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight"}
    for i in range(cfg.n_layers):
        ours, hf = f"blocks.{i}", f"model.layers.{i}"
        for o, h in ATTENTION.items():
            names[f"{ours}.{o}.weight"] = f"{hf}.{h}.weight"
        if cfg.qkv_bias:
            names.update({f"{ours}.attn.{p}_proj.bias": f"{hf}.self_attn.{p}_proj.bias" for p in "qkv"})
        if not cfg.is_moe_layer(i):  # a dense Qwen2-MoE layer
            names.update({f"{ours}.mlp.{p}.weight": f"{hf}.mlp.{p}.weight" for p in ("gate_proj", "up_proj",
                                                                                     "down_proj")})
            continue
        names[f"{ours}.mlp.router.weight"] = f"{hf}.{moe}.gate.weight"
        for e in range(cfg.n_experts):
            for o, h in (("gate_proj", gate), ("up_proj", up), ("down_proj", down)):
                names[f"{ours}.mlp.experts.{e}.{o}.weight"] = f"{hf}.{moe}.experts.{e}.{h}.weight"
        if cfg.shared_expert_d_ff:
            names.update({f"{ours}.mlp.shared_expert.{p}.weight": f"{hf}.mlp.shared_expert.{p}.weight"
                          for p in ("gate_proj", "up_proj", "down_proj")})
            names[f"{ours}.mlp.shared_expert_gate.weight"] = f"{hf}.mlp.shared_expert_gate.weight"
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    return names


def _hub_layout(hf_state: dict[str, Tensor], model_type: str) -> dict[str, Tensor]:
    """transformers 5.24's in-memory layout -> the Hub's: fused experts split one by one, gate_up_proj (E, 2F, d)
    into gate (first F rows) and up; Mixtral's `mlp.` back to `block_sparse_moe.`. Hub-layout keys pass unchanged."""
    moe, (gate, up, down) = MOE_NAME[model_type], EXPERT_PROJ[model_type]
    out = {}
    for key, t in hf_state.items():
        if model_type == "mixtral" and ".mlp." in key:
            key = key.replace(".mlp.", f".{moe}.")
        if key.endswith(".experts.gate_up_proj"):
            base = key.removesuffix("gate_up_proj")
            for e, (g, u) in enumerate(zip(*t.chunk(2, dim=1), strict=True)):  # (F, d) each
                out[f"{base}{e}.{gate}.weight"], out[f"{base}{e}.{up}.weight"] = g, u
        elif key.endswith(".experts.down_proj"):
            base = key.removesuffix("down_proj")
            out.update({f"{base}{e}.{down}.weight": w for e, w in enumerate(t)})  # (d, F) each
        else:
            out[key] = t
    return out


def state_from_hf(hf_state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    model_type = model_type_for(cfg) if cfg.n_experts else "qwen2_moe"
    if not cfg.tie_embeddings and "lm_head.weight" not in hf_state:
        raise LlmlabError(f"checkpoint has no lm_head.weight and tie_word_embeddings=false: a base model "
                          f"without the LM head? llmlab loads {ARCHITECTURES[model_type]} checkpoints")
    hf_state = {k if k.startswith(("model.", "lm_head.")) else f"model.{k}": v for k, v in hf_state.items()}
    state = take(_hub_layout(hf_state, model_type), _names(cfg), IGNORE, model_type)
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    return state


def state_to_hf(state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    return {hf: state[ours].contiguous() for ours, hf in _names(cfg).items()}
