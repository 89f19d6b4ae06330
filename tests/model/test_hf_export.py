"""llmlab.model.hf export against HF transformers 5.24: `save_hf_model` output loads with
`AutoModelForCausalLM` / `AutoModelForMaskedLM.from_pretrained` with no missing or unexpected keys and gives
the same logits on real tokens; `load_hf_model` reads it back to the identical state. Configs no native family
expresses export as model_type "llmlab" (remote code, trust_remote_code=True), held to the same tests."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from llmlab.errors import LlmlabError  # noqa: E402
from llmlab.infer.generate import generate  # noqa: E402
from llmlab.model.config import RopeScaling, TransformerConfig  # noqa: E402
from llmlab.model.hf import family_for, hf_model_type, load_hf_model, save_hf_model  # noqa: E402
from llmlab.model.hf.remote import CODE_DIR, CODE_FILES  # noqa: E402
from llmlab.model.transformer import Transformer  # noqa: E402
from tests.model.hf_helpers import V, assert_round_trip, batch, randomise_  # noqa: E402

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
# name -> (config, the field family_for names): no native family expresses these, so they export as "llmlab"
REMOTE = {
    "alibi-tied": ({**LLAMA, "position": "alibi", "tie_embeddings": True}, "position"),
    "sinusoidal": ({**LLAMA, "position": "sinusoidal"}, "position"),
    "nopos": ({**LLAMA, "position": "none"}, "position"),
    "softcap": ({**LLAMA, "attn_softcap": 0.5, "attn_backend": "naive"}, "attn_softcap"),  # small: the cap bites
    "post-norm-dynamic": ({**LLAMA, "norm_position": "post", "max_seq_len": 8,
                           "rope_scaling": RopeScaling("dynamic", 2.0, original_max_seq_len=8)}, "norm_position"),
    "rope-non-gated": ({**LLAMA, "gated_mlp": False}, "gated_mlp"),
    "out-bias-only": ({**LLAMA, "out_bias": True}, "out_bias"),
    "window-all-biases": ({**LLAMA, "sliding_window": 4, "qkv_bias": True, "out_bias": True}, "qkv_bias"),
    "qkv-and-mlp-bias": ({**LLAMA, "qkv_bias": True, "mlp_bias": True}, "mlp_bias"),
    "gpt2-rmsnorm": ({**GPT2, "norm": "rmsnorm"}, "norm"),
    "gpt2-gqa": ({**GPT2, "n_kv_heads": 2}, "n_kv_heads"),
    "gpt2-window": ({**GPT2, "sliding_window": 4}, "sliding_window"),
    "bert-no-types": ({**BERT, "n_token_types": 0}, "n_token_types"),
    "bert-no-head-transform": ({**BERT, "mlm_head_transform": False}, "mlm_head_transform"),
    "bert-pre-norm": ({**BERT, "norm_position": "pre"}, "norm_position"),
    "encoder-rope-untied": ({**BERT, "position": "rope", "tie_embeddings": False}, "position"),
}
CASES.update({name: (config, "llmlab") for name, (config, _) in REMOTE.items()})


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
    model_type picked by hf_model_type (trust_remote_code only for "llmlab"), logits equal to ours on real tokens
    (right and left padding), atol = rtol = 1e-5."""
    ours, path = exported(name)
    model_type = CASES[name][1]
    assert hf_model_type(ours.cfg) == model_type
    auto = tf.AutoModelForMaskedLM if ours.cfg.arch == "encoder" else tf.AutoModelForCausalLM
    remote = {"trust_remote_code": True} if model_type == "llmlab" else {}
    hf_model, info = auto.from_pretrained(path, output_loading_info=True, attn_implementation="eager", **remote)
    assert hf_model.config.model_type == model_type
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
    assert_round_trip(*exported(name))


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


@pytest.mark.parametrize("name", list(REMOTE))
def test_family_for_names_the_blocking_field(name):
    """family_for, for callers that need a native family: a one-line LlmlabError naming the field none expresses."""
    config, field = REMOTE[name]
    with pytest.raises(LlmlabError, match=f"{field}=") as e:
        family_for(TransformerConfig(**config))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["alibi-tied", "bert-no-types"])
def test_remote_code_export_is_self_contained(exported, name):
    """A "llmlab" export: config.json embeds our config and auto_maps the wrapper class for its head; the two code
    files are copied byte for byte; the tied lm_head is stored once (under tok_emb)."""
    ours, path = exported(name)
    config = json.loads((path / "config.json").read_text())
    head = "CausalLM" if ours.cfg.causal else "MaskedLM"
    assert config["model_type"] == "llmlab" and config["architectures"] == [f"LlmlabFor{head}"]
    assert config["auto_map"] == {"AutoConfig": "configuration_llmlab.LlmlabConfig",
                                  f"AutoModelFor{head}": f"modeling_llmlab.LlmlabFor{head}"}
    assert config["llmlab_config"] == ours.cfg.to_dict()
    assert config["tie_word_embeddings"] == ours.cfg.tie_embeddings
    for f in CODE_FILES:
        assert (path / f).read_bytes() == (CODE_DIR / f).read_bytes()
    from safetensors import safe_open
    with safe_open(path / "model.safetensors", "pt") as st:
        keys = set(st.keys())
    assert ("transformer.lm_head.weight" in keys) != ours.cfg.tie_embeddings
    assert all(k.startswith("transformer.") for k in keys)


def test_remote_code_greedy_generate_matches_ours(exported):
    """HF `generate(do_sample=False)` on a "llmlab" export (no KV cache: whole sequence per step) gives the same
    tokens as llmlab's greedy `generate` (KV cache): one prompt, and a left-padded batch. Exact token equality."""
    ours, path = exported("alibi-tied")
    hf_model = tf.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    ids, mask, _ = batch("left")
    ids, mask = ids[:, :8], mask[:, :8]  # 8 prompt + 8 new tokens fit max_seq_len = 16
    prompt = ids[:1, :5]
    want = generate(ours, prompt, 8, temperature=0)
    assert torch.equal(hf_model.generate(prompt, max_new_tokens=8, do_sample=False), want)
    want = generate(ours, ids, 8, temperature=0, attention_mask=mask)
    got = hf_model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["alibi-tied", "bert-pre-norm"])
def test_remote_code_loss_is_hf_convention(exported, name):
    """forward(labels=...) on a "llmlab" export: causal LM, label i scored by logits i-1; masked LM, label i by
    logits i; -100 ignored. Reference: F.cross_entropy on our logits, atol = rtol = 1e-5."""
    ours, path = exported(name)
    auto = tf.AutoModelForCausalLM if ours.cfg.causal else tf.AutoModelForMaskedLM
    hf_model = auto.from_pretrained(path, trust_remote_code=True).eval()
    ids, mask, _ = batch("right")
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        logits = ours(ids, attention_mask=mask)
        loss = hf_model(input_ids=ids, attention_mask=mask, labels=labels).loss
    if ours.cfg.causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, want, **TOL)


def test_remote_code_survives_hf_save_pretrained(exported, tmp_path):
    """HF's own save_pretrained of a loaded "llmlab" export (tied embeddings) writes a dir that load_hf_model reads
    back to our config and bit-identical state: HF knows the tie (no shared-storage error, no duplicate)."""
    ours, path = exported("alibi-tied")
    tf.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).save_pretrained(tmp_path / "resaved")
    back = load_hf_model(tmp_path / "resaved")
    assert back.cfg == ours.cfg
    for k, v in ours.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_remote_code_initialises_only_what_the_checkpoint_lacks(tmp_path):
    """A "llmlab" export missing two tensors: HF reports exactly those missing and gives them llmlab's init (norm
    weight 1; o_proj N(0, init_std / sqrt(2 n_layers)), std within 20%); every loaded tensor stays bit-identical."""
    from safetensors.torch import load_file, save_file

    ours = randomise_(Transformer(TransformerConfig(**REMOTE["sinusoidal"][0])))
    path = save_hf_model(ours, tmp_path)
    state = load_file(path / "model.safetensors")
    dropped = {"transformer.final_norm.weight", "transformer.blocks.1.attn.o_proj.weight"}
    save_file({k: v for k, v in state.items() if k not in dropped}, path / "model.safetensors")
    hf_model, info = tf.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, output_loading_info=True)
    assert info["missing_keys"] == dropped
    got = hf_model.state_dict()
    assert torch.equal(got["transformer.final_norm.weight"], torch.ones(ours.cfg.d_model))
    std = got["transformer.blocks.1.attn.o_proj.weight"].std().item()
    assert abs(std / (ours.cfg.init_std / 2) - 1) < 0.2  # 1 / sqrt(2 * 2 layers) = 1/2
    for k, v in state.items():
        if k not in dropped:
            assert torch.equal(got[k], v), k
