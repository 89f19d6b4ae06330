"""Mixture of experts: router, dispatch, load-balancing and z-losses, expert capacity, config, parameter/FLOP counts.

References: hand-computed small examples (exact or fp64 1e-12); a per-token loop over each token's chosen experts
(the definition, fp64 1e-12) for the gathered dispatch; closed-form parameter counts and the built model's own
modules (exact). The HF comparisons (Mixtral, Qwen2-MoE, Switch) are in test_hf_moe.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmlab.errors import ConfigError, LlmlabError
from llmlab.model.config import TransformerConfig
from llmlab.model.flops import count_params, flops_per_token, matmul_params
from llmlab.model.mlp import MLP
from llmlab.model.moe import (
    MoE,
    capacity_keep,
    expert_capacity,
    load_balancing_loss,
    route,
    router_z_loss,
)
from llmlab.model.transformer import Transformer

F64 = {"atol": 1e-12, "rtol": 1e-12}
MOE = TransformerConfig(vocab_size=97, d_model=16, n_layers=2, n_heads=2, d_ff=24, n_experts=4, n_experts_per_tok=2,
                        max_seq_len=32)


def test_route_hand_example():
    """Logits (2, 1, 0, -1): experts 0 and 1; weights e^2 : e^1 renormalised, or the raw softmax probabilities."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 0.5]], dtype=torch.float64)
    weights, experts = route(logits, 2)
    assert experts.tolist() == [[0, 1], [1, 2]] and experts.dtype == torch.int64
    torch.testing.assert_close(weights[0], torch.tensor([math.e, 1.0], dtype=torch.float64) / (math.e + 1), **F64)
    raw, _ = route(logits, 2, normalize=False)
    z = sum(math.exp(x) for x in (2.0, 1.0, 0.0, -1.0))
    torch.testing.assert_close(raw[0], torch.tensor([math.e ** 2, math.e], dtype=torch.float64) / z, **F64)
    assert route(logits.to(torch.bfloat16), 1)[0].dtype == torch.float32  # routing in float32 at least


def test_load_balancing_loss_hand_example():
    """E * sum_e f_e P_e with f_e = assignments per token, P_e = mean probability (Switch eq. 4-6), by hand:
    4 tokens, E = 2, k = 1; tokens 0-2 choose expert 0 (prob 0.8 / 0.6 / 0.7), token 3 expert 1 (prob 0.9)."""
    p = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9]], dtype=torch.float64)
    logits = p.log()  # softmax(log p) = p
    f, big_p = [3 / 4, 1 / 4], [(0.8 + 0.6 + 0.7 + 0.1) / 4, (0.2 + 0.4 + 0.3 + 0.9) / 4]
    want = 2 * (f[0] * big_p[0] + f[1] * big_p[1])
    assert load_balancing_loss(logits, 1).item() == pytest.approx(want, abs=1e-12)
    # attention_mask (B=2, T=2): token 1 is padding, so tokens 0, 2, 3 alone
    mask = torch.tensor([[1, 0], [1, 1]])
    f, big_p = [2 / 3, 1 / 3], [(0.8 + 0.7 + 0.1) / 3, (0.2 + 0.3 + 0.9) / 3]
    want = 2 * (f[0] * big_p[0] + f[1] * big_p[1])
    assert load_balancing_loss(logits, 1, mask).item() == pytest.approx(want, abs=1e-12)
    # two layers pool their rows (HF's form): the loss of the 8 rows together, not the mean of two losses
    two = torch.stack((logits, logits.flip(0)))
    assert load_balancing_loss(two, 1).item() == pytest.approx(load_balancing_loss(torch.cat(tuple(two)), 1).item())
    # padding rows may hold anything (even NaN): they are selected out, not multiplied by zero
    nan = logits.clone()
    nan[1] = float("nan")
    assert load_balancing_loss(nan, 1, mask).item() == pytest.approx(want, abs=1e-12)


def test_load_balancing_loss_bounds():
    """Perfect balance scores k (f_e = k / E, P_e = 1 / E); every token sure of the same k experts scores E."""
    e, k = 4, 2
    uniform_rows = torch.eye(e, dtype=torch.float64).repeat(2, 1) * 1e-3  # almost uniform, each expert on top once
    assert load_balancing_loss(uniform_rows, 1).item() == pytest.approx(1.0, abs=1e-3)
    collapsed = torch.tensor([[50.0, 50.0, 0.0, 0.0]], dtype=torch.float64).repeat(6, 1)
    assert load_balancing_loss(collapsed, k).item() == pytest.approx(e, abs=1e-12)


def test_router_z_loss_hand_example():
    """mean over real tokens of logsumexp(logits)^2 (ST-MoE eq. 5): zeros over 2 experts -> (ln 2)^2."""
    logits = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, -5.0]], dtype=torch.float64)
    lse = [math.log(2), 1 + math.log(2), math.log(math.exp(5) + math.exp(-5))]
    assert router_z_loss(logits).item() == pytest.approx(sum(x * x for x in lse) / 3, abs=1e-12)
    mask = torch.tensor([[1, 0, 1]])
    assert router_z_loss(logits, mask).item() == pytest.approx((lse[0] ** 2 + lse[2] ** 2) / 2, abs=1e-12)


def test_expert_capacity_formula():
    """ceil(capacity_factor * k * T / E): 1.25 * 2 * 10 / 4 = 6.25 -> 7; 1.0 * 1 * 8 / 4 = 2."""
    assert expert_capacity(1.25, 10, 2, 4) == 7
    assert expert_capacity(1.0, 8, 1, 4) == 2


def test_capacity_keep_hand_examples():
    """The rule: per sequence, seats go in order of choice rank, then position: all first choices (tokens 0..T-1)
    before any second choice; an assignment past its expert's capacity is dropped."""
    # k = 1, capacity 2: expert 0 takes tokens 0 and 1, drops token 2; expert 1 takes token 3
    experts = torch.tensor([[[0], [0], [0], [1]]])  # (B=1, T=4, k=1)
    assert capacity_keep(experts, 2, 2)[..., 0].tolist() == [[True, True, False, True]]
    # k = 2, capacity 2. First choices 0, 0, 1 seat expert 0 twice and expert 1 once; then second choices in
    # position order: token 0 -> expert 1 (its 2nd seat), token 1 -> expert 1 (full: dropped), token 2 -> expert 0
    # (full: dropped)
    experts = torch.tensor([[[0, 1], [0, 1], [1, 0]]])  # (1, 3, 2)
    assert capacity_keep(experts, 2, 2).tolist() == [[[True, True], [True, False], [True, False]]]
    # capacity counts per sequence: the second row has its own seats
    experts = torch.tensor([[[0], [0], [0]], [[0], [0], [1]]])
    assert capacity_keep(experts, 2, 1)[..., 0].tolist() == [[True, False, False], [True, False, True]]


def per_token_reference(layer: MoE, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The definition, token by token: y_n = sum_j w_nj expert_{e_nj}(x_n) over kept choices (+ the gated shared
    expert)."""
    b, t, d = x.shape
    h = x.reshape(b * t, d)
    weights, experts = route(layer.router(h), layer.k, layer.normalize)
    rows = []
    for n in range(b * t):
        y = torch.zeros(d, dtype=x.dtype)
        for j in range(layer.k):
            if keep is None or keep[n, j]:
                y = y + weights[n, j] * layer.experts[int(experts[n, j])](h[n:n + 1])[0]
        if layer.shared_expert is not None:
            y = y + torch.sigmoid(layer.shared_expert_gate(h[n:n + 1]))[0] * layer.shared_expert(h[n:n + 1])[0]
        rows.append(y)
    return torch.stack(rows).view(b, t, d)


@pytest.mark.parametrize("changes", [{}, {"norm_topk_prob": False, "shared_expert_d_ff": 8, "moe_d_ff": 12},
                                     {"n_experts_per_tok": 1, "gated_mlp": False, "mlp_bias": True}])
def test_dispatch_equals_per_token_loop(changes):
    """MoE.forward (gather tokens per expert, index_add back) vs the per-token definition: fp64 1e-12; experts are
    llmlab MLPs; router_logits is kept for the losses."""
    torch.manual_seed(0)
    layer = MoE(MOE.replace(**changes)).double().eval()
    assert all(type(e) is MLP for e in layer.experts)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), per_token_reference(layer, x), **F64)
    assert layer.router_logits.shape == (10, 4)


def test_capacity_drops_in_training_only():
    """capacity_factor 0.5, k = 2, E = 4, T = 6: 2 seats per expert and sequence. In training the output equals the
    per-token definition over the kept assignments only (a token with every choice dropped gets 0: the block passes
    its residual through); in eval mode nothing is dropped. fp64 1e-12."""
    torch.manual_seed(1)
    layer = MoE(MOE.replace(capacity_factor=0.5)).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    _, experts = route(layer.router(x.reshape(12, 16)), 2)
    keep = capacity_keep(experts.view(2, 6, 2), 4, expert_capacity(0.5, 6, 2, 4)).reshape(12, 2)
    assert expert_capacity(0.5, 6, 2, 4) == 2 and not keep.all()
    torch.testing.assert_close(layer.train()(x), per_token_reference(layer, x, keep), **F64)
    torch.testing.assert_close(layer.eval()(x), per_token_reference(layer, x), **F64)
    dropped = ~keep.any(-1)  # tokens no expert took: zero MoE output, so the block passes their residual through
    assert dropped.any() and layer.train()(x).reshape(12, 16)[dropped].abs().max() == 0


def test_block_picks_moe_or_mlp_and_model_losses():
    """moe_layers=[1]: block 0 has a dense MLP (d_ff wide), block 1 an MoE; router_losses pools the MoE layers;
    aux_loss = router_aux_loss_coef * load_balance + router_z_loss_coef * router_z; both reach the router."""
    cfg = MOE.replace(n_layers=3, moe_layers=[1, 2], router_aux_loss_coef=0.1, router_z_loss_coef=0.01)
    model = Transformer(cfg)
    assert [type(b.mlp).__name__ for b in model.blocks] == ["MLP", "MoE", "MoE"]
    ids = torch.randint(0, 97, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0
    model(ids, attention_mask=mask)
    losses = model.router_losses(mask)
    logits = torch.stack([model.blocks[1].mlp.router_logits, model.blocks[2].mlp.router_logits])
    torch.testing.assert_close(losses["load_balance"], load_balancing_loss(logits, 2, mask))
    torch.testing.assert_close(losses["router_z"], router_z_loss(logits, mask))
    aux = model.aux_loss(mask)
    torch.testing.assert_close(aux, 0.1 * losses["load_balance"] + 0.01 * losses["router_z"])
    aux.backward()
    assert model.blocks[1].mlp.router.weight.grad.abs().sum() > 0


def test_router_losses_errors():
    """A dense model has no router losses; an MoE model has none before its first forward."""
    with pytest.raises(LlmlabError, match="n_experts=0"):
        Transformer(MOE.replace(n_experts=0)).router_losses()
    with pytest.raises(LlmlabError, match="forward pass first"):
        Transformer(MOE).router_losses()


def test_gradient_checkpointing_keeps_aux_loss_gradients():
    """Activation checkpointing recomputes blocks in backward: LM + aux loss gradients equal the plain run's, fp64
    exact (the router logits kept from the first forward still backpropagate)."""
    torch.manual_seed(0)
    model = Transformer(MOE.replace(shared_expert_d_ff=8, router_z_loss_coef=0.1)).double()
    ids = torch.randint(0, 97, (2, 6))

    def grads():
        model.zero_grad()
        (model(ids).logsumexp(-1).mean() + model.aux_loss()).backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.set_gradient_checkpointing(True).train()
    for a, b in zip(plain, grads(), strict=True):
        assert torch.equal(a, b)


# --- config

BAD = {
    "n_experts": ({"n_experts": -1}, "n_experts"),
    "k_above_experts": ({"n_experts": 4, "n_experts_per_tok": 5}, "n_experts_per_tok"),
    "k_zero": ({"n_experts": 4, "n_experts_per_tok": 0}, "n_experts_per_tok"),
    "moe_d_ff": ({"n_experts": 4, "moe_d_ff": 0}, "moe_d_ff"),
    "shared": ({"n_experts": 4, "shared_expert_d_ff": -8}, "shared_expert_d_ff"),
    "layer_out_of_range": ({"n_experts": 4, "moe_layers": [4]}, "moe_layers"),
    "layer_twice": ({"n_experts": 4, "moe_layers": [1, 1]}, "moe_layers"),
    "no_layer": ({"n_experts": 4, "moe_layers": []}, "moe_layers"),
    "aux_coef": ({"n_experts": 4, "router_aux_loss_coef": -0.1}, "router_aux_loss_coef"),
    "z_coef": ({"n_experts": 4, "router_z_loss_coef": -1.0}, "router_z_loss_coef"),
    "capacity": ({"n_experts": 4, "capacity_factor": 0.0}, "capacity_factor"),
    "dense_shared": ({"shared_expert_d_ff": 8}, "shared_expert_d_ff"),
    "dense_capacity": ({"capacity_factor": 1.25}, "capacity_factor"),
    "dense_layers": ({"moe_layers": [0]}, "moe_layers"),
    "dense_moe_d_ff": ({"moe_d_ff": 64}, "moe_d_ff"),
}


@pytest.mark.parametrize("kwargs,field", BAD.values(), ids=BAD.keys())
def test_invalid_moe_value_is_one_line_config_error(kwargs, field):
    """Reference: the project rule: a bad value raises a one-line ConfigError naming the field, at construction."""
    with pytest.raises(ConfigError) as e:
        TransformerConfig(**kwargs)
    assert field in str(e.value) and "\n" not in str(e.value)


def test_moe_config_json_round_trip():
    """Every MoE field survives to_json -> from_json (dataclass equality); moe_layers is a sorted list, and a list
    of every layer is None (every layer)."""
    cfg = TransformerConfig(n_layers=4, n_experts=8, n_experts_per_tok=3, moe_d_ff=64, norm_topk_prob=False,
                            shared_expert_d_ff=96, moe_layers=(3, 1), router_aux_loss_coef=0.002,
                            router_z_loss_coef=0.001, capacity_factor=1.25)
    assert cfg.moe_layers == [1, 3]
    assert TransformerConfig.from_json(cfg.to_json()) == cfg
    assert TransformerConfig(n_layers=2, n_experts=4, moe_layers=[1, 0]).moe_layers is None
    assert [TransformerConfig(n_experts=4, moe_layers=[2]).is_moe_layer(i) for i in range(4)] == [0, 0, 1, 0]


# --- parameters and FLOPs

HAND = TransformerConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=40,
                         n_experts=4, n_experts_per_tok=2, moe_d_ff=16, shared_expert_d_ff=32, moe_layers=[1])


def test_hand_computed_moe_counts():
    """Reference: by hand for d=32, H=4, Hkv=2, D=8, V=100, L=2; layer 0 dense (d_ff 64), layer 1 MoE with E=4
    experts of width 16, k=2, and a shared expert of width 32."""
    # attention per layer: 3072 (Q 1024 + K 512 + V 512 + O 1024); dense MLP 3 * 32 * 64 = 6144
    # MoE layer: router 4 * 32 = 128; an expert 3 * 32 * 16 = 1536, 4 of them 6144; shared 3 * 32 * 32 + gate 32 = 3104
    #            total 128 + 6144 + 3104 = 9376; a token uses 128 + 2 * 1536 + 3104 = 6304 (skips 2 * 1536 = 3072)
    pc = count_params(HAND)
    assert (pc.embedding, pc.attention, pc.mlp, pc.norms, pc.head) == (3200, 6144, 6144 + 9376, 160, 3200)
    assert pc.total == 28224 and pc.active == 28224 - 3072 == 25152
    # matmul weights per token: 2 * 3072 + 6144 + 6304 + head 3200 = 21792
    assert matmul_params(HAND) == 21792
    # forward at T = 16: 2 N + attention 2 layers * 4 * 4 * 8 * 16 = 43584 + 4096
    assert flops_per_token(HAND, seq_len=16, training=False) == 43584 + 4096
    assert flops_per_token(HAND, seq_len=16) == 3 * (43584 + 4096)


@pytest.mark.parametrize("changes", [{}, {"moe_layers": None, "mlp_bias": True, "gated_mlp": False},
                                     {"n_experts_per_tok": 4, "shared_expert_d_ff": 0, "tie_embeddings": True}])
def test_counts_equal_the_built_model(changes):
    """Reference: the built model: total = num_parameters(); matmul weights = every nn.Linear's weight less the
    E - k experts a token skips per MoE layer; active = total less those experts' parameters (exact)."""
    cfg = HAND.replace(**changes)
    model = Transformer(cfg)
    pc = count_params(cfg)
    assert pc.total == model.num_parameters()
    moe_layers = [b.mlp for b in model.blocks if isinstance(b.mlp, MoE)]
    one_expert = sum(p.numel() for p in moe_layers[0].experts[0].parameters())
    one_expert_weights = sum(m.weight.numel() for m in moe_layers[0].experts[0].modules() if isinstance(m, nn.Linear))
    skipped = len(moe_layers) * (cfg.n_experts - cfg.n_experts_per_tok)
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert matmul_params(cfg) == linears - skipped * one_expert_weights
    assert pc.active == pc.total - skipped * one_expert
    dense = count_params(TransformerConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=4, d_ff=64))
    assert dense.active == dense.total and dense.inactive_experts == 0
