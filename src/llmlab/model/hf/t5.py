"""T5 (HF `T5ForConditionalGeneration`) <-> llmlab encoder-decoder: relative position bias, pre-RMSNorm, no biases.

v1.0 (t5-small ...): `feed_forward_proj="relu"`, tied embeddings, the decoder output scaled by d_model**-0.5
before the head. v1.1 and Flan-T5: "gated-gelu" (gelu_new, the tanh approximation, gated), an untied head, no
scaling. Scores are not divided by sqrt(d_kv) (T5 folds that into its init): attn_scale=1.0. Each stack's
relative bias lives in its block 0 and is shared by the other blocks. Equal in eval mode: in training HF also drops
out inside the feed-forward (after the activation), where llmlab's MLP has no dropout.

transformers 5.24 writes `tie_word_embeddings: true` for every T5 and keeps the old value as
`scale_decoder_outputs`; it ties lm_head to `shared` unless the checkpoint holds a different lm_head.weight. So the
weights, not config.json, say whether the head is tied: `tie_from_state`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from llmlab.errors import LlmlabError
from llmlab.model.config import TransformerConfig
from llmlab.model.hf.common import ACT_TO_HF, act_from_hf, refuse_if, require, take

# HF T5Config defaults (transformers 5.24), for keys a config.json leaves out
DEFAULTS = {"num_decoder_layers": None, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6, "feed_forward_proj": "relu", "pad_token_id": 0,
            "tie_word_embeddings": True, "n_positions": 512}
# ours -> HF, per block, after "{encoder,decoder}.block.{i}.layer."; the feed-forward sublayer is layer 1 in the
# encoder, 2 in the decoder (after cross-attention, layer 1)
ATTN = {f"attn.{p}_proj": f"0.SelfAttention.{p}" for p in "qkvo"} | {"attn_norm": "0.layer_norm"}
CROSS = {f"cross_attn.{p}_proj": f"1.EncDecAttention.{p}" for p in "qkvo"} | {"cross_norm": "1.layer_norm"}
MLP = {"mlp.up_proj": "DenseReluDense.wi", "mlp_norm": "layer_norm", "mlp.down_proj": "DenseReluDense.wo"}
GATED_MLP = {"mlp.gate_proj": "DenseReluDense.wi_0", "mlp.up_proj": "DenseReluDense.wi_1",
             "mlp_norm": "layer_norm", "mlp.down_proj": "DenseReluDense.wo"}
# the stacks' copies of the shared embedding, and a cross-attention bias old checkpoints carry (HF ignores it too)
IGNORE = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
          "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")


def _activation_from_hf(feed_forward_proj: str) -> tuple[str, bool]:
    """"relu" / "gated-gelu" / "gated-silu" ... -> (our activation, gated); "gated-gelu" means gelu_new (HF)."""
    parts = feed_forward_proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise LlmlabError(f"feed_forward_proj={feed_forward_proj!r} is not 'ACT' or 'gated-ACT'")
    act = "gelu_new" if feed_forward_proj == "gated-gelu" else parts[-1]
    return act_from_hf(act, "feed_forward_proj"), len(parts) == 2


def config_from_hf(d: dict[str, Any]) -> TransformerConfig:
    get = lambda k: d.get(k, DEFAULTS[k])  # noqa: E731
    activation, gated = _activation_from_hf(get("feed_forward_proj"))
    # HF 5.24: scale_decoder_outputs if written, else tie_word_embeddings as the config gives it (T5Config)
    scale = d.get("scale_decoder_outputs", get("tie_word_embeddings") is not False)
    return TransformerConfig(
        arch="encoder-decoder", vocab_size=d["vocab_size"], d_model=d["d_model"], n_layers=d["num_layers"],
        n_decoder_layers=get("num_decoder_layers") or d["num_layers"], n_heads=d["num_heads"], head_dim=d["d_kv"],
        d_ff=d["d_ff"], max_seq_len=get("n_positions"),
        decoder_start_token_id=d.get("decoder_start_token_id", get("pad_token_id")),
        position="t5_relative", rel_buckets=get("relative_attention_num_buckets"),
        rel_max_distance=get("relative_attention_max_distance"), attn_scale=1.0, norm="rmsnorm",
        norm_eps=get("layer_norm_epsilon"), norm_position="pre", activation=activation, gated_mlp=gated,
        tie_embeddings=get("tie_word_embeddings"), scale_head_input=scale, dropout=get("dropout_rate"),
        attn_dropout=get("dropout_rate"),
    )


def tie_from_state(cfg: TransformerConfig, hf_state: dict[str, Tensor]) -> TransformerConfig:
    """Tied unless the checkpoint has an lm_head.weight other than shared.weight: what HF 5.24 loads."""
    lm_head, shared = hf_state.get("lm_head.weight"), hf_state.get("shared.weight")
    tied = lm_head is None or shared is None or torch.equal(lm_head, shared)  # no shared.weight: state_from_hf says
    return cfg.replace(tie_embeddings=tied)


def config_to_hf(cfg: TransformerConfig) -> dict[str, Any]:
    require(cfg, "t5", arch="encoder-decoder", position="t5_relative", attn_scale=1.0, norm="rmsnorm",
            norm_position="pre", qkv_bias=False, out_bias=False, mlp_bias=False, lm_head_bias=False,
            n_kv_heads=cfg.n_heads, attn_softcap=None, attn_dropout=cfg.dropout)
    refuse_if(cfg.gated_mlp and cfg.activation == "gelu",
              "cannot export as t5: gated activation='gelu' (exact); t5's gated-gelu is gelu_tanh")
    gated_act = "gelu" if cfg.activation == "gelu_tanh" else ACT_TO_HF[cfg.activation]  # HF: gated-gelu = gelu_new
    return {
        "model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model, "d_kv": cfg.head_dim, "d_ff": cfg.d_ff, "num_layers": cfg.n_layers,
        "num_decoder_layers": cfg.n_decoder_layers, "num_heads": cfg.n_heads,
        "relative_attention_num_buckets": cfg.rel_buckets, "relative_attention_max_distance": cfg.rel_max_distance,
        "dropout_rate": cfg.dropout, "layer_norm_epsilon": cfg.norm_eps,
        "feed_forward_proj": f"gated-{gated_act}" if cfg.gated_mlp else ACT_TO_HF[cfg.activation],
        "tie_word_embeddings": cfg.tie_embeddings, "scale_decoder_outputs": cfg.scale_head_input,
        "n_positions": cfg.max_seq_len, "is_encoder_decoder": True,
        "decoder_start_token_id": cfg.decoder_start_token_id, "pad_token_id": cfg.decoder_start_token_id,
        "eos_token_id": None,
    }


def _names(cfg: TransformerConfig) -> dict[str, str]:
    """ours -> HF, as `T5ForConditionalGeneration` names them."""
    names = {"tok_emb.weight": "shared.weight"}
    mlp = GATED_MLP if cfg.gated_mlp else MLP
    for stack, n_layers in (("encoder", cfg.n_layers), ("decoder", cfg.n_decoder_layers)):
        names[f"{stack}.final_norm.weight"] = f"{stack}.final_layer_norm.weight"
        names[f"{stack}.rel_bias.weight"] = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        ff = 2 if stack == "decoder" else 1
        for i in range(n_layers):
            layer = ATTN | (CROSS if stack == "decoder" else {}) | {ours: f"{ff}.{hf}" for ours, hf in mlp.items()}
            for ours, hf in layer.items():
                names[f"{stack}.blocks.{i}.{ours}.weight"] = f"{stack}.block.{i}.layer.{hf}.weight"
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    return names


def state_from_hf(hf_state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    hf_state = dict(hf_state)
    if cfg.tie_embeddings:
        lm_head = hf_state.pop("lm_head.weight", None)  # an older checkpoint's saved copy of shared.weight
        shared = hf_state.get("shared.weight")
        refuse_if(lm_head is not None and shared is not None and not torch.equal(lm_head, shared),
                  "t5 checkpoint: lm_head.weight differs from shared.weight, but the config ties them")
    elif "lm_head.weight" not in hf_state and "shared.weight" in hf_state:  # HF 5.24 ties a head it lacks
        hf_state["lm_head.weight"] = hf_state["shared.weight"].clone()
    state = take(hf_state, _names(cfg), IGNORE, "t5")
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    return state


def state_to_hf(state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    return {hf: state[ours].contiguous() for ours, hf in _names(cfg).items()}
