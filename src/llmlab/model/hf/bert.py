"""BERT (HF `BertForMaskedLM`, also `BertForPreTraining` weights) <-> llmlab encoder with the MLM head.

Post-LayerNorm blocks, LayerNorm on the summed word + position + token-type embeddings, exact gelu; the MLM
head is dense -> act -> LayerNorm (`cls.predictions.transform`) then the decoder, tied to the word embeddings,
plus `cls.predictions.bias`. A `BertModel` checkpoint lacks that head and is refused.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from llmlab.errors import LlmlabError
from llmlab.model.config import TransformerConfig
from llmlab.model.hf.common import ACT_TO_HF, act_from_hf, refuse_if, require, take

# HF BertConfig defaults (transformers 5.24), for keys a config.json leaves out
DEFAULTS = {"hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": 512, "type_vocab_size": 2, "initializer_range": 0.02,
            "layer_norm_eps": 1e-12, "tie_word_embeddings": True}
# ours -> HF (after "bert.encoder.layer.{i}."), per block
LAYER = {"attn.q_proj": "attention.self.query", "attn.k_proj": "attention.self.key",
         "attn.v_proj": "attention.self.value", "attn.o_proj": "attention.output.dense",
         "attn_norm": "attention.output.LayerNorm", "mlp.up_proj": "intermediate.dense",
         "mlp.down_proj": "output.dense", "mlp_norm": "output.LayerNorm"}
TOP = {"tok_emb": "bert.embeddings.word_embeddings", "pos_emb": "bert.embeddings.position_embeddings",
       "type_emb": "bert.embeddings.token_type_embeddings", "embed_norm": "bert.embeddings.LayerNorm",
       "head_dense": "cls.predictions.transform.dense", "head_norm": "cls.predictions.transform.LayerNorm"}
EMBEDDINGS = ("tok_emb", "pos_emb", "type_emb")  # weight only
# pooler and next-sentence head (BertForPreTraining), buffers of old checkpoints, the decoder's tied copies
IGNORE = ("pooler.dense.weight", "pooler.dense.bias", "cls.seq_relationship.weight", "cls.seq_relationship.bias",
          "embeddings.position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def config_from_hf(d: dict[str, Any]) -> TransformerConfig:
    get = lambda k: d.get(k, DEFAULTS[k])  # noqa: E731
    refuse_if(d.get("is_decoder", False), "bert is_decoder=true (causal BERT) is not supported: llmlab loads the "
                                          "bidirectional encoder with its MLM head")
    refuse_if(d.get("add_cross_attention", False), "bert add_cross_attention=true is not supported")
    refuse_if(d.get("position_embedding_type", "absolute") != "absolute",
              f"bert position_embedding_type={d.get('position_embedding_type')!r} is not supported (only 'absolute')")
    return TransformerConfig(
        arch="encoder", vocab_size=d["vocab_size"], d_model=d["hidden_size"], n_layers=d["num_hidden_layers"],
        n_heads=d["num_attention_heads"], d_ff=d["intermediate_size"], max_seq_len=get("max_position_embeddings"),
        position="learned", norm="layernorm", norm_eps=get("layer_norm_eps"), norm_position="post",
        embed_norm=True, activation=act_from_hf(get("hidden_act"), "hidden_act"), gated_mlp=False,
        qkv_bias=True, out_bias=True, mlp_bias=True, tie_embeddings=get("tie_word_embeddings"),
        n_token_types=get("type_vocab_size"), mlm_head_transform=True, lm_head_bias=True,
        dropout=get("hidden_dropout_prob"), attn_dropout=get("attention_probs_dropout_prob"),
        init_std=get("initializer_range"),
    )


def config_to_hf(cfg: TransformerConfig) -> dict[str, Any]:
    require(cfg, "bert", arch="encoder", position="learned", norm="layernorm", norm_position="post",
            embed_norm=True, gated_mlp=False, qkv_bias=True, out_bias=True, mlp_bias=True, n_kv_heads=cfg.n_heads,
            head_dim=cfg.d_model // cfg.n_heads, sliding_window=None, attn_softcap=None, mlm_head_transform=True,
            lm_head_bias=True, n_experts=0, attn_scale=None)
    refuse_if(cfg.n_token_types < 1, "cannot export as bert: n_token_types=0, bert needs n_token_types >= 1")
    return {
        "model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff, "hidden_act": ACT_TO_HF[cfg.activation],
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attn_dropout,
        "max_position_embeddings": cfg.max_seq_len, "type_vocab_size": cfg.n_token_types,
        "layer_norm_eps": cfg.norm_eps, "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tie_embeddings,
        "is_decoder": False, "add_cross_attention": False, "pad_token_id": None,
    }


def _names(cfg: TransformerConfig) -> dict[str, str]:
    """ours -> HF, as `BertForMaskedLM` names them."""
    names = {}
    for ours, hf in TOP.items():
        for p in ("weight",) if ours in EMBEDDINGS else ("weight", "bias"):
            names[f"{ours}.{p}"] = f"{hf}.{p}"
    for i in range(cfg.n_layers):
        for ours, hf in LAYER.items():
            for p in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{p}"] = f"bert.encoder.layer.{i}.{hf}.{p}"
    names["lm_head.bias"] = "cls.predictions.bias"
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "cls.predictions.decoder.weight"
    return names


def _hf_name(key: str) -> str:
    """Old TF-converted checkpoints: LayerNorm.gamma/beta; BertModel: no "bert." prefix."""
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    return key if key.startswith(("bert.", "cls.")) else f"bert.{key}"


def state_from_hf(hf_state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    hf_state = {_hf_name(k): v for k, v in hf_state.items()}
    if "cls.predictions.transform.dense.weight" not in hf_state:
        raise LlmlabError("bert checkpoint has no MLM head (cls.predictions.*): a BertModel checkpoint? llmlab "
                          "loads BertForMaskedLM / BertForPreTraining checkpoints")
    state = take(hf_state, _names(cfg), IGNORE, "bert")
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    return state


def state_to_hf(state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    return {hf: state[ours].contiguous() for ours, hf in _names(cfg).items()}
