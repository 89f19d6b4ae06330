"""llmlab.model.hf import against HF transformers 5.24: the HF model (random weights, eager attention) is
saved with `save_pretrained`, loaded with `llmlab.load_model`, and both give the same logits on real tokens."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import llmlab  # noqa: E402
from llmlab.errors import LlmlabError  # noqa: E402
from llmlab.model.hf import hf_config_to_llmlab  # noqa: E402
from llmlab.model.transformer import Transformer  # noqa: E402
from tests.model.hf_helpers import V, batch, randomise_  # noqa: E402

tf = pytest.importorskip("transformers")
tf.logging.set_verbosity_error()

TOL = {"atol": 1e-5, "rtol": 1e-5}  # fp32
SMALL = {"vocab_size": V, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "attn_implementation": "eager"}


def _gpt2(**kw):
    return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=16,
                                            bos_token_id=0, eos_token_id=0, attn_implementation="eager", **kw))


def _llama(**kw):
    return tf.LlamaForCausalLM(tf.LlamaConfig(**{**SMALL, **kw}))


def _bert(**kw):
    return tf.BertForMaskedLM(tf.BertConfig(**{**SMALL, "max_position_embeddings": 16, **kw}))


ROPE16 = {"hidden_size": 64, "head_dim": 16, "num_key_value_heads": 2}  # 8 frequency pairs for the scaled kinds
CASES = {
    "gpt2": lambda: _gpt2(),
    "gpt2-untied": lambda: _gpt2(tie_word_embeddings=False, activation_function="gelu"),
    "gpt2-reorder-upcast": lambda: _gpt2(reorder_and_upcast_attn=True),  # a precision option: same function
    "llama-mha-bias": lambda: _llama(attention_bias=True, mlp_bias=True, rope_theta=500.0),
    "llama-gqa": lambda: _llama(num_key_value_heads=2),
    "llama-mqa-tied": lambda: _llama(num_key_value_heads=1, head_dim=16, tie_word_embeddings=True),
    "llama-linear": lambda: _llama(**ROPE16, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    # max_position_embeddings < T: dynamic NTK grows the base during the forward
    "llama-dynamic": lambda: _llama(**ROPE16, max_position_embeddings=8,
                                    rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    # theta 100, L0 64: the ramp covers pairs 1..5 of 8, and beta_fast=4 moves its start
    "llama-yarn": lambda: _llama(**ROPE16, max_position_embeddings=256, rope_theta=100.0, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 4.0}),
    "llama-llama3": lambda: _llama(**ROPE16, max_position_embeddings=64, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0}),
    "mistral-window": lambda: tf.MistralForCausalLM(tf.MistralConfig(**SMALL, num_key_value_heads=2,
                                                                     sliding_window=4)),
    "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**SMALL, num_key_value_heads=2)),
    "qwen2-window": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**SMALL, num_key_value_heads=1, use_sliding_window=True,
                                                               sliding_window=5, max_window_layers=0)),
    "bert": lambda: _bert(),
}


def assert_same_logits(ours: Transformer, hf_model, padding: str) -> None:
    ids, mask, pos = batch(padding)
    types = {"token_type_ids": (ids % 2)} if ours.cfg.n_token_types else {}  # BERT segments A/B
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, position_ids=pos, **types).logits
        got = ours(ids, attention_mask=mask, position_ids=pos, **types)
    real = mask.bool()
    torch.testing.assert_close(got[real], ref[real], **TOL)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (HF model, its save_pretrained dir), built once per module."""
    made = {}

    def get(name: str):
        if name not in made:
            model = randomise_(CASES[name]())
            path = tmp_path_factory.mktemp(name)
            model.save_pretrained(path)
            made[name] = model, path
        return made[name]

    return get


@pytest.mark.parametrize("padding", ["right", "left", "left-pos"])
@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_hf(checkpoints, name, padding):
    """load_model(HF save_pretrained dir) vs the HF model: logits on real tokens, fp32, atol = rtol = 1e-5."""
    hf_model, path = checkpoints(name)
    ours = llmlab.load_model(path)
    assert not ours.training
    assert_same_logits(ours, hf_model, padding)


@pytest.mark.parametrize("backend", ["naive", "sdpa", "flash"])
@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "mistral-window", "llama-yarn", "bert"])
def test_backends_match_hf(checkpoints, name, backend):
    """The imported model on each attention backend (flash with 4 x 4 tiles) vs HF eager: atol = rtol = 1e-5."""
    hf_model, path = checkpoints(name)
    loaded = llmlab.load_model(path)
    cfg = loaded.cfg.replace(attn_backend=backend, attn_dropout=0.0, flash_block_q=4, flash_block_k=4)
    ours = Transformer(cfg)
    ours.load_state_dict(loaded.state_dict())
    assert_same_logits(ours.eval(), hf_model, "left")


def test_sharded_checkpoint_loads(tmp_path):
    """save_pretrained(max_shard_size=...) -> several shards + index; logits vs HF at atol = rtol = 1e-5."""
    hf_model = randomise_(_llama(num_key_value_heads=2))
    hf_model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (tmp_path / "model.safetensors").exists()
    assert_same_logits(llmlab.load_model(tmp_path), hf_model, "right")


def test_config_mapping():
    """hf_config_to_llmlab on hand-written config dicts (v4-style rope keys; Qwen2 window on every layer)."""
    base = {"vocab_size": V, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4}
    cfg = hf_config_to_llmlab({**base, "model_type": "llama", "rope_theta": 5e5,
                               "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert (cfg.rope_theta, cfg.rope_scaling.kind, cfg.rope_scaling.factor) == (5e5, "linear", 2.0)
    assert (cfg.n_kv_heads, cfg.head_dim, cfg.norm_eps, cfg.tie_embeddings) == (4, 8, 1e-6, False)
    cfg = hf_config_to_llmlab({**base, "model_type": "mistral", "num_key_value_heads": 2})
    assert cfg.sliding_window == 4096 and not cfg.qkv_bias  # MistralConfig's default window
    cfg = hf_config_to_llmlab({**base, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 6,
                               "max_window_layers": 0, "num_key_value_heads": 2})
    assert (cfg.sliding_window, cfg.qkv_bias, cfg.out_bias) == (6, True, False)
    cfg = hf_config_to_llmlab({**base, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 6,
                               "max_window_layers": 2, "num_key_value_heads": 2})
    assert cfg.sliding_window is None  # window only on layers >= 2: none of the 2 layers


@pytest.mark.parametrize(("make", "match"), [
    (lambda: tf.BertModel(tf.BertConfig(**SMALL)), "MLM head"),
    (lambda: tf.LlamaModel(tf.LlamaConfig(**SMALL)), "lm_head"),
    (lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**SMALL, use_sliding_window=True, max_window_layers=1)),
     "max_window_layers"),
    (lambda: _gpt2(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    (lambda: _llama(**ROPE16, rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 8,
                                            "long_factor": [2.0] * 8, "original_max_position_embeddings": 8}),
     "rope_type"),
])
def test_unsupported_checkpoints_refused(tmp_path, make, match):
    """What llmlab cannot express fails with a one-line LlmlabError naming the reason."""
    make().save_pretrained(tmp_path)
    with pytest.raises(LlmlabError, match=match) as e:
        llmlab.load_model(tmp_path)
    assert "\n" not in str(e.value)


def test_unknown_model_type_refused(tmp_path):
    """A model_type with no family here names the ones that exist."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "xlnet"}))
    with pytest.raises(LlmlabError, match="model_type='xlnet'.*gpt2"):
        llmlab.load_model(tmp_path)
