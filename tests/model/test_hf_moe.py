"""Mixture of experts against HF transformers 5.24: Mixtral (`MixtralForCausalLM`) and Qwen2-MoE
(`Qwen2MoeForCausalLM`) import and export, the load-balancing loss against HF's `aux_loss`, and expert capacity and
the router z-loss against HF's Switch Transformers router (random weights, eager attention, fp32)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import llmlab  # noqa: E402
from llmlab.errors import LlmlabError  # noqa: E402
from llmlab.model.config import TransformerConfig  # noqa: E402
from llmlab.model.hf import family_for, hf_model_type, save_hf_model  # noqa: E402
from llmlab.model.moe import capacity_keep, route, router_z_loss  # noqa: E402
from llmlab.model.transformer import Transformer  # noqa: E402
from tests.model.hf_helpers import V, assert_round_trip, batch, randomise_  # noqa: E402

tf = pytest.importorskip("transformers")
tf.logging.set_verbosity_error()

TOL = {"atol": 1e-5, "rtol": 1e-5}  # fp32
SMALL = {"vocab_size": V, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "attn_implementation": "eager"}


def _mixtral(**kw):
    return tf.MixtralForCausalLM(tf.MixtralConfig(**{**SMALL, "intermediate_size": 24, "num_local_experts": 4,
                                                     "router_aux_loss_coef": 0.02, **kw}))


def _qwen2_moe(**kw):
    return tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(**{**SMALL, "intermediate_size": 64, "moe_intermediate_size": 16,
                                                       "shared_expert_intermediate_size": 40, "num_experts": 4,
                                                       "num_experts_per_tok": 2, **kw}))


CASES = {
    "mixtral": lambda: _mixtral(),
    "mixtral-top1-window-tied": lambda: _mixtral(num_experts_per_tok=1, sliding_window=4, tie_word_embeddings=True,
                                                 num_key_value_heads=1),
    # three layers: layer 1 dense (mlp_only_layers), raw top-k probabilities (norm_topk_prob=False), q/k/v biases
    "qwen2_moe": lambda: _qwen2_moe(num_hidden_layers=3, mlp_only_layers=[1]),
    # every second layer sparse (decoder_sparse_step=2), renormalised top-3, no q/k/v bias
    "qwen2_moe-step2-norm": lambda: _qwen2_moe(decoder_sparse_step=2, num_experts_per_tok=3, norm_topk_prob=True,
                                               qkv_bias=False),
    "qwen2_moe-all-dense": lambda: _qwen2_moe(mlp_only_layers=[0, 1]),  # no sparse layer: a dense Qwen2
}


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


def assert_same_logits(ours: Transformer, hf_model, padding: str) -> None:
    ids, mask, pos = batch(padding)
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, attention_mask=mask, position_ids=pos)
    real = mask.bool()
    torch.testing.assert_close(got[real], ref[real], **TOL)


@pytest.mark.parametrize("padding", ["right", "left", "left-pos"])
@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_hf(checkpoints, name, padding):
    """load_model(HF save_pretrained dir) vs the HF model: logits on real tokens, fp32, atol = rtol = 1e-5."""
    hf_model, path = checkpoints(name)
    ours = llmlab.load_model(path)
    assert_same_logits(ours, hf_model, padding)


def test_config_mapping(checkpoints):
    """Reference: the HF configs the models were built from: experts, top-k, widths, MoE layers (Qwen2-MoE's
    mlp_only_layers and decoder_sparse_step), norm_topk_prob, aux-loss coefficient; exact."""
    cfg = llmlab.load_model(checkpoints("mixtral")[1]).cfg
    assert (cfg.n_experts, cfg.n_experts_per_tok, cfg.d_ff, cfg.moe_d_ff, cfg.norm_topk_prob) == (4, 2, 24, None, True)
    assert (cfg.moe_layers, cfg.shared_expert_d_ff, cfg.router_aux_loss_coef, cfg.rope_theta) == (None, 0, 0.02, 1e6)
    cfg = llmlab.load_model(checkpoints("qwen2_moe")[1]).cfg
    assert (cfg.n_experts, cfg.d_ff, cfg.moe_d_ff, cfg.shared_expert_d_ff, cfg.norm_topk_prob) == (4, 64, 16, 40, False)
    assert cfg.moe_layers == [0, 2] and cfg.qkv_bias and not cfg.out_bias
    cfg = llmlab.load_model(checkpoints("qwen2_moe-step2-norm")[1]).cfg
    assert cfg.moe_layers == [1] and cfg.norm_topk_prob and not cfg.qkv_bias and cfg.n_experts_per_tok == 3
    cfg = llmlab.load_model(checkpoints("qwen2_moe-all-dense")[1]).cfg
    assert cfg.n_experts == 0 and cfg.d_ff == 64 and cfg.qkv_bias


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_aux_loss_matches_hf(checkpoints, name, padding):
    """router_losses(mask)["load_balance"] vs HF `output_router_logits=True` aux_loss (load_balancing_loss_func over
    the MoE layers, padding masked), and LM loss + router_aux_loss_coef * aux vs HF's loss with labels: 1e-5."""
    hf_model, path = checkpoints(name)
    ours = llmlab.load_model(path)
    ids, mask, _ = batch(padding)
    scored = mask.bool() & mask.roll(1, dims=1).bool()  # a real token after a real one (logits i-1 are real too)
    scored[:, 0] = False
    labels = ids.masked_fill(~scored, -100)
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, labels=labels, output_router_logits=True)
        logits = ours(ids, attention_mask=mask)
        aux = ours.router_losses(mask)["load_balance"]
        total = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1),
                                                  ignore_index=-100) + ours.aux_loss(mask)
    torch.testing.assert_close(aux, ref.aux_loss, **TOL)
    torch.testing.assert_close(total, ref.loss, **TOL)
    assert ours.cfg.router_aux_loss_coef == hf_model.config.router_aux_loss_coef and ours.cfg.router_z_loss_coef == 0


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_fused_in_memory_layout_loads(checkpoints, name, tmp_path):
    """A checkpoint holding transformers 5.24's in-memory layout (fused experts.gate_up_proj / down_proj, Mixtral's
    `mlp.` names), written straight from state_dict(): same logits as the HF model, 1e-5."""
    hf_model, path = checkpoints(name)
    state = hf_model.state_dict()
    assert any(k.endswith("experts.gate_up_proj") for k in state)  # the layout this test is about
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    assert_same_logits(llmlab.load_model(tmp_path), hf_model, "right")


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("k", [1, 2])
def test_router_matches_hf_routers(k, padding):
    """route() vs HF 5.24 `MixtralTopKRouter` (renormalised) and `Qwen2MoeTopKRouter` (norm_topk_prob False/True):
    same experts, weights at fp32 1e-6 (the same formula: top-k of the softmax, then / their sum)."""
    torch.manual_seed(0)
    h = torch.randn(20, 32)
    routers = [(tf.models.mixtral.modeling_mixtral.MixtralTopKRouter(
        tf.MixtralConfig(hidden_size=32, num_local_experts=6, num_experts_per_tok=k)), True)]
    for norm in (False, True):
        routers.append((tf.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeTopKRouter(tf.Qwen2MoeConfig(
            hidden_size=32, num_experts=6, num_experts_per_tok=k, norm_topk_prob=norm)), norm))
    for router, norm in routers:
        torch.nn.init.normal_(router.weight)
        logits, ref_weights, ref_experts = router(h)
        weights, experts = route(logits, k, normalize=norm)
        assert torch.equal(experts, ref_experts)
        torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-6)


def test_capacity_matches_hf_switch_router():
    """capacity_keep with k = 1 vs HF `SwitchTransformersTop1Router` (capacity per sequence, tokens in position
    order): the same tokens reach the same experts, exactly; several capacities including none dropped."""
    sw = tf.models.switch_transformers.modeling_switch_transformers
    torch.manual_seed(0)
    h = torch.randn(3, 10, 16)  # (B, T, d)
    for capacity in (1, 2, 3, 10):
        router = sw.SwitchTransformersTop1Router(tf.SwitchTransformersConfig(d_model=16, num_experts=4,
                                                                               expert_capacity=capacity))
        torch.nn.init.normal_(router.classifier.weight)
        dispatch, _, logits = router(h)  # (B, T, E) one-hot of kept tokens
        _, experts = route(logits.reshape(-1, 4), 1)
        keep = capacity_keep(experts.view(3, 10, 1), 4, capacity)[..., 0]  # (B, T)
        assert torch.equal(keep, dispatch.sum(-1).bool())
        assert torch.equal(dispatch.argmax(-1)[keep], experts.view(3, 10)[keep])


def test_z_loss_matches_hf_switch():
    """router_z_loss (no padding) vs HF `switch_transformers.router_z_loss_func`: fp32 1e-6."""
    sw = tf.models.switch_transformers.modeling_switch_transformers
    logits = 3 * torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(0))  # (B, T, E)
    torch.testing.assert_close(router_z_loss(logits.reshape(14, 5)), sw.router_z_loss_func(logits),
                               atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: _mixtral(router_jitter_noise=0.1), "router_jitter_noise"),
    (lambda: _qwen2_moe(use_sliding_window=True, sliding_window=4, max_window_layers=2), "layer_types"),
])
def test_unsupported_checkpoints_refused(tmp_path, make, match):
    """What llmlab cannot express fails with a one-line LlmlabError naming it: router jitter; Qwen2-MoE's default
    layer_types (a window on even layers only)."""
    make().save_pretrained(tmp_path)
    with pytest.raises(LlmlabError, match=match) as e:
        llmlab.load_model(tmp_path)
    assert "\n" not in str(e.value)


# --- export

BASE = {"vocab_size": V, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 48, "max_seq_len": 16,
        "n_experts": 4}
QWEN = {**BASE, "qkv_bias": True, "shared_expert_d_ff": 24, "moe_d_ff": 16, "norm_topk_prob": False}
# name -> (config, the model_type it must export as)
EXPORTS = {
    "mixtral": ({**BASE, "router_aux_loss_coef": 0.02}, "mixtral"),
    "mixtral-top1-window-tied": ({**BASE, "n_experts_per_tok": 1, "sliding_window": 4, "tie_embeddings": True},
                                 "mixtral"),
    "qwen2_moe-dense-layer": ({**QWEN, "n_layers": 3, "moe_layers": [0, 2]}, "qwen2_moe"),
    "qwen2_moe-window-no-bias": ({**QWEN, "qkv_bias": False, "norm_topk_prob": True, "sliding_window": 5},
                                 "qwen2_moe"),
    # no native family: model_type "llmlab" (remote code); family_for names the field
    "moe-capacity": ({**BASE, "capacity_factor": 1.0}, "llmlab"),
    "moe-z-loss": ({**BASE, "router_z_loss_coef": 0.001}, "llmlab"),
    "moe-qkv-bias": ({**BASE, "qkv_bias": True}, "llmlab"),
    "moe-gpt2": ({**BASE, "position": "learned", "norm": "layernorm", "activation": "gelu_tanh", "gated_mlp": False,
                  "qkv_bias": True, "out_bias": True, "mlp_bias": True, "tie_embeddings": True, "n_kv_heads": 4},
                 "llmlab"),
}
BLOCKING = {"moe-capacity": "capacity_factor", "moe-z-loss": "router_z_loss_coef", "moe-qkv-bias": "qkv_bias",
            "moe-gpt2": "n_experts"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (llmlab model, save_hf_model dir), built once per module."""
    made = {}

    def get(name: str):
        if name not in made:
            model = randomise_(Transformer(TransformerConfig(**EXPORTS[name][0])))
            made[name] = model, save_hf_model(model, tmp_path_factory.mktemp(name))
        return made[name]

    return get


@pytest.mark.parametrize("name", list(EXPORTS))
def test_hf_loads_export_with_same_logits(exported, name):
    """AutoModelForCausalLM.from_pretrained(export): the expected model_type, no missing/unexpected/mismatched keys
    (HF fuses our expert-by-expert tensors itself), logits equal to ours on real tokens (right and left padding),
    atol = rtol = 1e-5. The remote-code export runs in eval mode: capacity drops nothing there, as ours."""
    ours, path = exported(name)
    model_type = EXPORTS[name][1]
    assert hf_model_type(ours.cfg) == model_type
    remote = {"trust_remote_code": True} if model_type == "llmlab" else {}
    hf_model, info = tf.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True,
                                                             attn_implementation="eager", **remote)
    assert hf_model.config.model_type == model_type
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    hf_model.eval()
    for padding in ("right", "left"):
        ids, mask, _ = batch(padding)
        with torch.no_grad():
            ref = hf_model(input_ids=ids, attention_mask=mask).logits
            got = ours(ids, attention_mask=mask)
        torch.testing.assert_close(got[mask.bool()], ref[mask.bool()], **TOL)


@pytest.mark.parametrize("name", list(EXPORTS))
def test_round_trip_is_identity(exported, name):
    """load_hf_model(save_hf_model(model)): the same config and bit-identical state (torch.equal)."""
    assert_round_trip(*exported(name))


@pytest.mark.parametrize("name", list(BLOCKING))
def test_family_for_names_the_blocking_field(name):
    """family_for on an MoE config no native family expresses: a one-line LlmlabError naming the field."""
    with pytest.raises(LlmlabError, match=f"{BLOCKING[name]}=") as e:
        family_for(TransformerConfig(**EXPORTS[name][0]))
    assert "\n" not in str(e.value)
