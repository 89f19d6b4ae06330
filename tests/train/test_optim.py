"""AdamW, the weight-decay split and gradient clipping, each against torch.

References: `torch.optim.AdamW(foreach=False)` step by step over 20 steps on a tiny GPT-2-style Transformer
(two param groups, one without weight decay, a changing per-group lr): parameters and optimizer state after every
step, float64 and float32 both equal to the last bit (atol = rtol = 0; the update uses torch's operation order).
Checkpoints: torch.save/torch.load(weights_only=True) resume, and state dicts swapped with torch.optim.AdamW
(exact). `torch.nn.utils.clip_grad_norm_(foreach=False)` for clipping (norm and gradients, fp64 1e-12).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.testing import assert_close

from llmlab.errors import ConfigError
from llmlab.model.objectives import lm_loss
from llmlab.model.presets import preset
from llmlab.model.transformer import Transformer
from llmlab.train.optim import AdamW, clip_grad_norm_, param_groups_for_weight_decay
from llmlab.train.schedules import lr_at

EXACT = {"atol": 0.0, "rtol": 0.0}
V, B, T, STEPS = 64, 4, 16, 20


def tiny_model(dtype: torch.dtype, style: str = "gpt2") -> Transformer:
    torch.manual_seed(0)
    cfg = preset("tiny", style, vocab_size=V, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_seq_len=64,
                 init_std=0.2)  # gpt2: biases, LayerNorm, learned positions, tied embeddings
    return Transformer(cfg).to(dtype)


def batches(n: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, V, (B, T), generator=gen) for _ in range(n)]


def train(model: Transformer, opt: torch.optim.Optimizer, xs: list[torch.Tensor], first_step: int = 0):
    """Warmup + cosine on group 0, half that lr on group 1; yields after every step."""
    for i, x in enumerate(xs, start=first_step):
        lr = lr_at(i, kind="cosine", max_lr=1e-2, total_steps=STEPS, warmup_steps=5, min_lr=1e-3)
        for group, scale in zip(opt.param_groups, (1.0, 0.5), strict=True):
            group["lr"] = lr * scale
        opt.zero_grad(set_to_none=True)
        lm_loss(model, x).backward()
        opt.step()
        yield


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adamw_equals_torch_step_by_step(dtype):
    """Ours vs torch.optim.AdamW(foreach=False): params and state (step, exp_avg, exp_avg_sq) exact, every step."""
    ours_model = tiny_model(dtype)
    ref_model = copy.deepcopy(ours_model)
    betas, eps = (0.9, 0.95), 1e-8
    ours = AdamW(param_groups_for_weight_decay(ours_model, 0.1), betas=betas, eps=eps)
    ref = torch.optim.AdamW(param_groups_for_weight_decay(ref_model, 0.1), betas=betas, eps=eps, foreach=False)
    assert [g["weight_decay"] for g in ours.param_groups] == [0.1, 0.0]
    xs = batches(STEPS)
    for _ in zip(train(ours_model, ours, xs), train(ref_model, ref, xs), strict=True):
        for p, q in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
            assert_close(p, q, **EXACT)
            for key in ("step", "exp_avg", "exp_avg_sq"):
                assert_close(ours.state[p][key], ref.state[q][key], **EXACT)
    assert ours.state[next(ours_model.parameters())]["step"].item() == STEPS


def test_adamw_skips_params_without_grad_like_torch():
    """A frozen parameter (grad None) gets no state and no weight decay, in ours and in torch (exact)."""
    ours_model = tiny_model(torch.float64)
    ours_model.pos_emb.weight.requires_grad_(False)
    ref_model = copy.deepcopy(ours_model)
    ours = AdamW(ours_model.parameters(), lr=1e-2, weight_decay=0.5)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, weight_decay=0.5, foreach=False)
    frozen = ours_model.pos_emb.weight.clone()
    for x in batches(3):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            lm_loss(model, x).backward()
            opt.step()
    assert ours_model.pos_emb.weight not in ours.state
    assert_close(ours_model.pos_emb.weight, frozen, **EXACT)
    for p, q in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        assert_close(p, q, **EXACT)


def run_resumed(first: type, second: type) -> tuple[Transformer, Transformer]:
    """10 steps with `first`, checkpoint through bytes (weights_only), 10 more with `second` vs 20 uninterrupted."""
    make = {AdamW: lambda m: AdamW(param_groups_for_weight_decay(m, 0.1)),
            torch.optim.AdamW: lambda m: torch.optim.AdamW(param_groups_for_weight_decay(m, 0.1), foreach=False)}
    xs = batches(STEPS)
    straight = tiny_model(torch.float32)
    opt = make[second](straight)
    for _ in train(straight, opt, xs):
        pass

    model = tiny_model(torch.float32)
    opt = make[first](model)
    for _ in train(model, opt, xs[:10]):
        pass
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = tiny_model(torch.float32)
    resumed.load_state_dict(ckpt["model"])
    opt = make[second](resumed)
    opt.load_state_dict(ckpt["opt"])
    for _ in train(resumed, opt, xs[10:], first_step=10):
        pass
    return resumed, straight


@pytest.mark.parametrize("first, second", [(AdamW, AdamW), (torch.optim.AdamW, AdamW), (AdamW, torch.optim.AdamW)],
                         ids=["ours-ours", "torch-ours", "ours-torch"])
def test_state_dict_resumes_exactly(first, second):
    """Checkpoint after 10 steps, resume for 10: weights equal the uninterrupted 20-step run (fp32, exact).

    Also across optimizers: our state dict loads into torch.optim.AdamW and torch's into ours.
    """
    resumed, straight = run_resumed(first, second)
    for p, q in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert_close(p, q, **EXACT)


def test_param_groups_for_weight_decay():
    """Matrices (linear weights, embeddings) decayed; norm gains and biases not; tied weight once; frozen out."""
    model = tiny_model(torch.float32)
    model.blocks[0].mlp_norm.weight.requires_grad_(False)
    decay, no_decay = param_groups_for_weight_decay(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {"tok_emb.weight", "pos_emb.weight", "blocks.0.attn.q_proj.weight"} <= decay_names
    assert all(model.get_parameter(n).dim() == 2 for n in decay_names)
    assert {"blocks.0.attn_norm.weight", "blocks.0.attn.q_proj.bias", "final_norm.bias"} <= no_decay_names
    assert all(model.get_parameter(n).dim() == 1 for n in no_decay_names)
    assert "blocks.0.mlp_norm.weight" not in no_decay_names  # frozen
    assert model.lm_head.weight is model.tok_emb.weight and len(decay["params"]) == len(decay_names)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)


def test_param_groups_drop_empty_group():
    """A model with no 1-D parameters gives a single (decayed) group."""
    groups = param_groups_for_weight_decay(torch.nn.Linear(3, 4, bias=False), 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1


def grads_of(model: Transformer, x: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    lm_loss(model, x).backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("factor", [0.3, 10.0], ids=["clipped", "unclipped"])
def test_clip_grad_norm_equals_torch(factor):
    """Ours vs torch.nn.utils.clip_grad_norm_(foreach=False): returned norm and clipped grads (fp64 1e-12).

    factor = max_norm / ||g||: 0.3 scales every gradient down, 10 leaves them unchanged (exactly).
    """
    model = tiny_model(torch.float64)
    model.pos_emb.weight.requires_grad_(False)  # a parameter with grad None is ignored by both
    x = batches(1)[0]
    before = grads_of(model, x)
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in before])).item()
    ours = clip_grad_norm_(model.parameters(), factor * norm)
    ours_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    grads_of(model, x)
    ref = torch.nn.utils.clip_grad_norm_(model.parameters(), factor * norm, foreach=False)
    ref_grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert_close(ours, ref, atol=1e-12, rtol=1e-12)
    assert_close(ours, torch.tensor(norm, dtype=torch.float64), atol=1e-12, rtol=1e-12)
    for g, r in zip(ours_grads, ref_grads, strict=True):
        assert_close(g, r, atol=1e-12, rtol=1e-12)
    if factor > 1:
        for g, b in zip(ours_grads, before, strict=True):
            assert_close(g, b, **EXACT)
    else:
        clipped = torch.linalg.vector_norm(torch.cat([g.flatten() for g in ours_grads]))
        assert clipped.item() == pytest.approx(factor * norm, rel=1e-6)


def test_clip_grad_norm_without_grads():
    assert clip_grad_norm_([torch.nn.Parameter(torch.ones(3))], 1.0).item() == 0.0


@pytest.mark.parametrize("kwargs, field", [({"lr": -1.0}, "lr="), ({"betas": (0.9, 1.0)}, "betas[1]="),
                                           ({"eps": -1e-8}, "eps="), ({"weight_decay": -0.1}, "weight_decay=")])
def test_adamw_rejects_bad_hyperparameters(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        AdamW([torch.nn.Parameter(torch.zeros(2))], **kwargs)
