"""llmlab.model.hf export against HF transformers 5.24: `save_hf_model` output loads with
`AutoModelForCausalLM` / `AutoModelForMaskedLM.from_pretrained` with no missing or unexpected keys and gives
the same logits on real tokens; `load_hf_model` reads it back to the identical state."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from llmlab.errors import LlmlabError  # noqa: E402
from llmlab.model.config import RopeScaling, TransformerConfig  # noqa: E402
from llmlab.model.hf import family_for, load_hf_model, save_hf_model  # noqa: E402
from llmlab.model.transformer import Transformer  # noqa: E402
from tests.model.hf_helpers import V, batch, randomise_  # noqa: E402

tf = pytest.importorskip("transformers")
tf.logging.set_verbosity_error()

TOL = {"atol": 1e-5, "rtol": 1e-5}  # fp32
BASE = {"vocab_size": V, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "max_seq_len": 16}
GPT2 = {**BASE, "position": "learned", "norm": "layernorm", "activation": "gelu_tanh", "gated_mlp": False,
        "qkv_bias": True, "out_bias": True, "mlp_bias": True, "tie_embeddings": True}
LLAMA = {**BASE, "n_kv_heads": 2}
BERT = {**GPT2, "arch": "encoder", "norm_position": "post", "embed_norm": True, "activation": "gelu",
        "n_token_types": 2, "mlm_head_transform": True, "lm_head_bias": True, "norm_eps": 1e-12}
# name -> (config, HF model_type it must export as)
CASES = {
    "gpt2": ({**GPT2}, "gpt2"),
    "gpt2-untied-relu": ({**GPT2, "tie_embeddings": False, "activation": "relu"}, "gpt2"),
    "llama-bias-llama3": ({**LLAMA, "qkv_bias": True, "out_bias": True, "mlp_bias": True, "rope_theta": 500.0,
                           "rope_scaling": RopeScaling("llama3", 8.0, original_max_seq_len=8)}, "llama"),
    "llama-mqa-tied-yarn": ({**LLAMA, "n_kv_heads": 1, "head_dim": 16, "tie_embeddings": True, "rope_theta": 100.0,
                             "rope_scaling": RopeScaling("yarn", 4.0, original_max_seq_len=64, beta_fast=4.0)},
                            "llama"),
    "llama-linear": ({**LLAMA, "rope_scaling": RopeScaling("linear", 2.0)}, "llama"),
    # dynamic: HF reads max_position_embeddings as the original length, so max_seq_len = 8 < T exercises it
    "llama-dynamic": ({**LLAMA, "max_seq_len": 8, "rope_scaling": RopeScaling("dynamic", 2.0, original_max_seq_len=8)},
                      "llama"),
    "mistral": ({**LLAMA, "sliding_window": 4}, "mistral"),
    "qwen2": ({**LLAMA, "qkv_bias": True, "head_dim": 16, "tie_embeddings": True}, "qwen2"),
    "qwen2-window": ({**LLAMA, "qkv_bias": True, "sliding_window": 5}, "qwen2"),
    "bert": ({**BERT}, "bert"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (llmlab model, save_hf_model dir), built once per module."""
    made = {}

    def get(name: str):
        if name not in made:
            model = randomise_(Transformer(TransformerConfig(**CASES[name][0])))
            made[name] = model, save_hf_model(model, tmp_path_factory.mktemp(name))
        return made[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_hf_loads_export_with_same_logits(exported, name):
    """AutoModelFor{CausalLM,MaskedLM}.from_pretrained(export): no missing/unexpected/mismatched keys, the
    family picked by family_for, logits equal to ours on real tokens (right and left padding), atol = rtol = 1e-5."""
    ours, path = exported(name)
    assert family_for(ours.cfg) == CASES[name][1]
    auto = tf.AutoModelForMaskedLM if ours.cfg.arch == "encoder" else tf.AutoModelForCausalLM
    hf_model, info = auto.from_pretrained(path, output_loading_info=True, attn_implementation="eager")
    assert hf_model.config.model_type == CASES[name][1]
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    hf_model.eval()
    for padding in ("right", "left"):
        ids, mask, _ = batch(padding)
        types = {"token_type_ids": (ids % 2)} if ours.cfg.n_token_types else {}  # BERT segments A/B
        with torch.no_grad():
            ref = hf_model(input_ids=ids, attention_mask=mask, **types).logits
            got = ours(ids, attention_mask=mask, **types)
        real = mask.bool()
        torch.testing.assert_close(got[real], ref[real], **TOL)


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_is_identity(exported, name):
    """load_hf_model(save_hf_model(model)): the same config and bit-identical state (torch.equal)."""
    ours, path = exported(name)
    back = load_hf_model(path)
    assert back.cfg == ours.cfg
    want, got = ours.state_dict(), back.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_static_ntk_exports_as_plain_rope_with_its_base(tmp_path):
    """kind='ntk' is RoPE with theta * s^(d/(d-2)): exported as rope_type default, same logits as ours (1e-5)."""
    ours = randomise_(Transformer(TransformerConfig(**LLAMA, rope_scaling=RopeScaling("ntk", 4.0))))
    hf_model = tf.AutoModelForCausalLM.from_pretrained(save_hf_model(ours, tmp_path), attn_implementation="eager")
    rp = hf_model.config.rope_parameters
    assert rp["rope_type"] == "default" and rp["rope_theta"] == 10000.0 * 4.0 ** (8 / 6)
    ids, mask, _ = batch("right")
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, attention_mask=mask)[mask.bool()],
                                   hf_model.eval()(input_ids=ids, attention_mask=mask).logits[mask.bool()], **TOL)


@pytest.mark.parametrize(("changes", "field"), [
    ({**LLAMA, "position": "alibi"}, "position"),
    ({**LLAMA, "position": "sinusoidal"}, "position"),
    ({**LLAMA, "position": "none"}, "position"),
    ({**LLAMA, "attn_softcap": 30.0, "attn_backend": "naive"}, "attn_softcap"),
    ({**LLAMA, "norm_position": "post"}, "norm_position"),
    ({**LLAMA, "gated_mlp": False}, "gated_mlp"),
    ({**LLAMA, "out_bias": True}, "out_bias"),
    ({**LLAMA, "sliding_window": 4, "qkv_bias": True, "out_bias": True}, "qkv_bias"),
    ({**LLAMA, "qkv_bias": True, "mlp_bias": True}, "mlp_bias"),
    ({**GPT2, "norm": "rmsnorm"}, "norm"),
    ({**GPT2, "n_kv_heads": 2}, "n_kv_heads"),
    ({**GPT2, "sliding_window": 4}, "sliding_window"),
    ({**BERT, "n_token_types": 0}, "n_token_types"),
    ({**BERT, "mlm_head_transform": False}, "mlm_head_transform"),
    ({**BERT, "norm_position": "pre"}, "norm_position"),
])
def test_unexportable_config_names_the_field(tmp_path, changes, field):
    """A config no HF family here expresses: one-line LlmlabError naming the blocking field; nothing written."""
    model = Transformer(TransformerConfig(**changes))
    with pytest.raises(LlmlabError, match=f"{field}=") as e:
        save_hf_model(model, tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
