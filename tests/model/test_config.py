"""TransformerConfig: JSON/dict round-trip and validation at construction.

Reference: the dataclass's own equality (a round-trip must give an equal config) and the project rule that every
bad value raises a one-line `llmlab.errors.ConfigError` naming the field, from the constructor itself.
"""

from __future__ import annotations

import json

import pytest

from llmlab.errors import ConfigError, LlmlabError
from llmlab.model.config import RopeScaling, TransformerConfig


def odd_config() -> TransformerConfig:
    """Every non-default kind of field at once, RopeScaling nested, so a round-trip has something to lose."""
    return TransformerConfig(
        vocab_size=97, d_model=48, n_layers=3, n_heads=6, n_kv_heads=2, d_ff=80, max_seq_len=40,
        rope_theta=5e5, rope_scaling=RopeScaling("yarn", 4.0, 32, beta_fast=16.0, attention_factor=1.25,
                                                 truncate=False),
        attn_backend="flash", sliding_window=7, attn_softcap=30.0, qkv_bias=True, flash_block_q=8,
        flash_block_k=16, norm="layernorm", norm_eps=1e-6, norm_position="post", embed_norm=True,
        activation="gelu_tanh", gated_mlp=False, mlp_bias=True, tie_embeddings=True, n_token_types=2,
        mlm_head_transform=True, lm_head_bias=True, dropout=0.1, init_std=0.01,
    )


def t5_config() -> TransformerConfig:
    """An encoder-decoder with every seq2seq field set (T5 v1.0 style)."""
    return TransformerConfig(
        arch="encoder-decoder", vocab_size=97, d_model=48, n_layers=3, n_decoder_layers=2, n_heads=6, head_dim=16,
        d_ff=80, decoder_start_token_id=1, position="t5_relative", rel_buckets=16, rel_max_distance=64,
        attn_scale=1.0, activation="relu", gated_mlp=False, tie_embeddings=True, scale_head_input=True, dropout=0.1,
        attn_dropout=0.1,
    )


@pytest.mark.parametrize("cfg", [TransformerConfig(), odd_config(), t5_config()], ids=["default", "odd", "t5"])
def test_json_round_trip_gives_equal_config(cfg, tmp_path):
    """Reference: dataclass equality; to_json -> from_json (text and file) and to_dict -> from_dict are identities."""
    assert TransformerConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "cfg.json"
    cfg.to_json(path)
    assert TransformerConfig.from_json(path) == cfg
    assert TransformerConfig.from_json(str(path)) == cfg
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    # the file really is plain JSON, with RopeScaling as a nested object
    d = json.loads(path.read_text())
    if cfg.rope_scaling is not None:
        assert d["rope_scaling"]["kind"] == "yarn" and d["rope_scaling"]["original_max_seq_len"] == 32
        assert isinstance(TransformerConfig.from_dict(d).rope_scaling, RopeScaling)


def test_round_trip_keeps_resolved_defaults():
    """n_kv_heads and head_dim resolve at construction and survive the round-trip as numbers; so do an
    encoder-decoder's n_decoder_layers and decoder_start_token_id."""
    cfg = TransformerConfig(d_model=64, n_heads=4)
    assert (cfg.n_kv_heads, cfg.head_dim) == (4, 16)
    assert TransformerConfig.from_json(cfg.to_json()).to_dict() == cfg.to_dict()
    cfg = TransformerConfig(arch="encoder-decoder", n_layers=3, position="t5_relative")
    assert (cfg.n_decoder_layers, cfg.decoder_start_token_id) == (3, 0)
    assert TransformerConfig.from_json(cfg.to_json()) == cfg
    assert cfg.replace(n_layers=5).n_decoder_layers == 5  # derived again; an explicit depth is kept
    assert cfg.replace(n_decoder_layers=2).replace(n_layers=5).n_decoder_layers == 2


def assert_config_error(excinfo, field: str) -> None:
    msg = str(excinfo.value)
    assert field in msg, f"{field!r} not named in {msg!r}"
    assert "\n" not in msg, f"message is not one line: {msg!r}"
    assert isinstance(excinfo.value, LlmlabError) and isinstance(excinfo.value, ValueError)


SEQ2SEQ = dict(arch="encoder-decoder", position="t5_relative")
# (constructor kwargs, the field the message must name)
BAD = {
    "n_heads_not_dividing_d_model": (dict(d_model=30, n_heads=4), "n_heads"),
    "n_kv_heads_not_dividing_n_heads": (dict(d_model=32, n_heads=4, n_kv_heads=3), "n_kv_heads"),
    "n_kv_heads_zero": (dict(d_model=32, n_heads=4, n_kv_heads=0), "n_kv_heads"),
    "unknown_position": (dict(position="xpos"), "position"),
    "unknown_norm": (dict(norm="batchnorm"), "norm"),
    "unknown_norm_position": (dict(norm_position="sandwich"), "norm_position"),
    "unknown_activation": (dict(activation="swish"), "activation"),
    "unknown_arch": (dict(arch="seq2seq"), "arch"),
    "unknown_backend": (dict(attn_backend="xformers"), "attn_backend"),
    "odd_head_dim_with_rope": (dict(d_model=36, n_heads=4, position="rope"), "head_dim"),
    "odd_explicit_head_dim_with_rope": (dict(d_model=32, n_heads=4, head_dim=7), "head_dim"),
    "rope_scaling_without_rope": (dict(position="alibi", rope_scaling=RopeScaling("linear", 2.0)), "rope_scaling"),
    "yarn_without_original_len": (dict(rope_scaling={"kind": "yarn", "factor": 4.0}), "original_max_seq_len"),
    "unknown_rope_kind": (dict(rope_scaling={"kind": "ntk-by-parts"}), "rope_scaling.kind"),
    "rope_scaling_unknown_field": (dict(rope_scaling={"kind": "linear", "factr": 2.0}), "factr"),
    "softcap_with_sdpa": (dict(attn_softcap=50.0, attn_backend="sdpa"), "attn_softcap"),
    "attn_dropout_with_flash": (dict(attn_dropout=0.1, attn_backend="flash"), "attn_dropout"),
    "negative_sliding_window": (dict(sliding_window=-4), "sliding_window"),
    "zero_sliding_window": (dict(sliding_window=0), "sliding_window"),
    "zero_d_model": (dict(d_model=0), "d_model"),
    "dropout_one": (dict(dropout=1.0), "dropout"),
    "negative_norm_eps": (dict(norm_eps=-1e-5), "norm_eps"),
    "odd_d_model_sinusoidal": (dict(d_model=33, n_heads=3, position="sinusoidal"), "d_model"),
    "attn_scale_zero": (dict(attn_scale=0.0), "attn_scale"),
    "t5_relative_in_a_decoder": (dict(position="t5_relative"), "position"),
    "t5_relative_with_flash": (dict(**SEQ2SEQ, attn_backend="flash"), "attn_backend"),
    "rel_buckets_too_few": (dict(**SEQ2SEQ, rel_buckets=2), "rel_buckets"),
    "rel_max_distance_within_exact": (dict(**SEQ2SEQ, rel_buckets=16, rel_max_distance=8), "rel_max_distance"),
    "seq2seq_with_rope": (dict(arch="encoder-decoder", position="rope"), "position"),
    "seq2seq_with_experts": (dict(**SEQ2SEQ, n_experts=4), "n_experts"),
    "seq2seq_with_window": (dict(**SEQ2SEQ, sliding_window=4), "sliding_window"),
    "zero_decoder_layers": (dict(**SEQ2SEQ, n_decoder_layers=0), "n_decoder_layers"),
    "start_token_out_of_vocab": (dict(**SEQ2SEQ, decoder_start_token_id=256), "decoder_start_token_id"),
    "decoder_layers_in_a_decoder": (dict(n_decoder_layers=2), "n_decoder_layers"),
    "start_token_in_an_encoder": (dict(arch="encoder", decoder_start_token_id=0), "decoder_start_token_id"),
    "head_scale_in_a_decoder": (dict(scale_head_input=True), "scale_head_input"),
}


@pytest.mark.parametrize("kwargs,field", BAD.values(), ids=BAD.keys())
def test_invalid_value_raises_one_line_config_error_at_construction(kwargs, field):
    """Reference: the rule 'ConfigError naming the field, one line, raised by the constructor'."""
    with pytest.raises(ConfigError) as excinfo:
        TransformerConfig(**kwargs)
    assert_config_error(excinfo, field)


def test_yarn_without_original_len_fails_in_rope_scaling_itself():
    with pytest.raises(ConfigError) as excinfo:
        RopeScaling("yarn", 4.0)
    assert_config_error(excinfo, "original_max_seq_len")


def test_unknown_json_field_names_it():
    d = TransformerConfig().to_dict()
    d["n_embd"] = 64
    with pytest.raises(ConfigError) as excinfo:
        TransformerConfig.from_json(json.dumps(d))
    assert_config_error(excinfo, "n_embd")
    with pytest.raises(ConfigError) as excinfo:
        TransformerConfig.from_dict(d)
    assert_config_error(excinfo, "n_embd")


@pytest.mark.parametrize("text", ['{"d_model": 64,}', '{"d_model": ', "not json at all"])
def test_invalid_json_is_a_one_line_config_error(text, tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        TransformerConfig.from_json(text)
    assert_config_error(excinfo, "JSON")
    path = tmp_path / "bad.json"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as excinfo:
        TransformerConfig.from_json(path)
    assert_config_error(excinfo, "JSON")


def test_invalid_value_in_json_is_caught_by_the_constructor():
    d = TransformerConfig().to_dict()
    d["n_kv_heads"] = 3
    with pytest.raises(ConfigError) as excinfo:
        TransformerConfig.from_json(json.dumps(d))
    assert_config_error(excinfo, "n_kv_heads")


def test_replace_rederives_head_dim_and_kv_heads():
    """replace(n_heads=...) must not keep a head_dim / n_kv_heads derived from the old head count."""
    from llmlab.model.config import TransformerConfig

    cfg = TransformerConfig(d_model=64, n_heads=4).replace(n_heads=8)
    assert (cfg.head_dim, cfg.n_kv_heads) == (8, 8)
    gqa = TransformerConfig(d_model=64, n_heads=4, n_kv_heads=2, head_dim=32).replace(n_heads=8)
    assert (gqa.head_dim, gqa.n_kv_heads) == (32, 2)  # explicit values are kept
