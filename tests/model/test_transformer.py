"""The Transformer stack: backend equivalence, causality, padding, tied embeddings, parameter counts, errors.

References: the three attention backends against each other on the same weights (logits and every parameter
gradient in float64 at atol = rtol = 1e-10); the unpadded shorter sequence for padding (fp64 1e-10);
`flops.count_params(cfg)` for the parameter count (exact); the documented error rules for bad inputs.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from torch.testing import assert_close

from llmlab.errors import LlmlabError
from llmlab.model.config import TransformerConfig
from llmlab.model.flops import count_params
from llmlab.model.io import WEIGHTS_NAME, load_model, save_model
from llmlab.model.presets import SIZES, STYLES, preset
from llmlab.model.transformer import Transformer

FP64 = {"atol": 1e-10, "rtol": 1e-10}
BACKENDS = ("naive", "sdpa", "flash")
V, T = 97, 23

BASE = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=40, flash_block_q=8,
            flash_block_k=8, init_std=0.2)  # a large init_std so attention is far from uniform
CONFIGS = {
    "gqa_rope": TransformerConfig(**BASE, n_kv_heads=2, position="rope"),
    "sliding_window": TransformerConfig(**BASE, n_kv_heads=2, position="rope", sliding_window=5),
    "alibi": TransformerConfig(**{**BASE, "n_heads": 8}, position="alibi", qkv_bias=True),
    "sinusoidal": TransformerConfig(**BASE, position="sinusoidal", norm="layernorm", activation="gelu_tanh",
                                    gated_mlp=False, mlp_bias=True, tie_embeddings=True),
    "encoder": TransformerConfig(**BASE, arch="encoder", position="learned", norm="layernorm", norm_position="post",
                                 embed_norm=True, activation="gelu", gated_mlp=False, qkv_bias=True, out_bias=True,
                                 mlp_bias=True, n_token_types=2, mlm_head_transform=True, lm_head_bias=True,
                                 tie_embeddings=True),
}


def build(cfg: TransformerConfig, backend: str | None = None, seed: int = 0) -> Transformer:
    """Build in fp32 with a fixed seed, then cast to fp64; every backend gets the same weights."""
    torch.manual_seed(seed)
    model = Transformer(cfg.replace(attn_backend=backend) if backend else cfg).double()
    with torch.no_grad():  # random norm weights and biases too, so no affine term hides behind ones/zeros
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def batch(b: int = 2, t: int = T, lengths=(T, 15), seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, t), generator=gen)
    mask = torch.tensor([[int(j < n) for j in range(t)] for n in lengths])
    return ids, mask


def logits_and_grads(model: Transformer, ids, mask):
    model.zero_grad()
    logits = model(ids, attention_mask=mask)
    weight = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2), dtype=logits.dtype)
    (logits * weight).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", CONFIGS)
def test_backends_give_equal_logits_and_gradients(name):
    """Reference: the naive backend; sdpa and flash on the same fp64 weights, logits and all grads at 1e-10."""
    cfg = CONFIGS[name]
    ids, mask = batch()
    ref = build(cfg, "naive")
    want_logits, want_grads = logits_and_grads(ref, ids, mask)
    assert set(want_grads) == {n for n, _ in ref.named_parameters()}
    for backend in ("sdpa", "flash"):
        model = build(cfg, backend)
        model.load_state_dict(ref.state_dict())
        logits, grads = logits_and_grads(model, ids, mask)
        assert_close(logits, want_logits, **FP64)
        for n, g in want_grads.items():
            assert_close(grads[n], g, **FP64, msg=lambda m, n=n, b=backend: f"{b} grad {n}: {m}")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_causality(name, backend):
    """Reference: decoder logits before position p ignore the token at p; an encoder's do not (bidirectional)."""
    cfg = CONFIGS[name]
    model = build(cfg, backend).eval()
    ids, _ = batch(lengths=(T, T))
    changed = ids.clone()
    p = 14
    changed[:, p] = (changed[:, p] + 1) % V
    with torch.no_grad():
        a, b = model(ids), model(changed)
    if cfg.causal:
        assert_close(a[:, :p], b[:, :p], **FP64)
    else:
        assert (a[:, :p] - b[:, :p]).abs().amax() > 1e-6
    assert (a[:, p:] - b[:, p:]).abs().amax() > 1e-6


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_right_padding_matches_unpadded_sequence(name, backend):
    """Reference: the same model on the unpadded shorter sequence; real-token logits equal at fp64 1e-10."""
    cfg = CONFIGS[name]
    model = build(cfg, backend).eval()
    n = 15
    ids, mask = batch(lengths=(T, n))
    with torch.no_grad():
        padded = model(ids, attention_mask=mask)
        short = model(ids[1:, :n])
        assert_close(padded[1, :n], short[0], **FP64)
        if not cfg.causal:  # without the mask the encoder would see the padding: the mask is what makes it equal
            assert (model(ids)[1, :n] - short[0]).abs().amax() > 1e-6


def test_token_types_change_encoder_output():
    model = build(CONFIGS["encoder"]).eval()
    ids, _ = batch()
    types = torch.zeros_like(ids)
    types[:, 10:] = 1
    with torch.no_grad():
        assert_close(model(ids, token_type_ids=torch.zeros_like(ids)), model(ids), **FP64)
        assert (model(ids, token_type_ids=types) - model(ids)).abs().amax() > 1e-6


# --- tied embeddings


def test_tied_embeddings_share_storage_and_save_once(tmp_path):
    """Reference: one tensor object for tok_emb and lm_head; the safetensors file holds it once; reload keeps the tie
    and gives bit-identical fp32 logits."""
    cfg = CONFIGS["sinusoidal"]
    model = build(cfg).float()
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    names = [n for n, _ in model.named_parameters()]
    assert "tok_emb.weight" in names and "lm_head.weight" not in names  # named_parameters() yields a shared one once
    assert model.num_parameters() == count_params(cfg).total
    with torch.no_grad():
        model.tok_emb.weight[0, 0] += 1.0  # writing one writes the other
    assert model.lm_head.weight[0, 0] == model.tok_emb.weight[0, 0]

    save_model(model, tmp_path)
    with safe_open(str(tmp_path / WEIGHTS_NAME), framework="pt") as f:
        keys = set(f.keys())
    assert "tok_emb.weight" in keys and "lm_head.weight" not in keys
    loaded = load_model(tmp_path)
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask), model.eval()(ids, attention_mask=mask))


def test_untied_head_is_its_own_tensor():
    model = build(CONFIGS["gqa_rope"])
    assert model.lm_head.weight is not model.tok_emb.weight
    assert model.lm_head.weight.data_ptr() != model.tok_emb.weight.data_ptr()


# --- parameter counts


def meta_model(cfg: TransformerConfig) -> Transformer:
    with torch.device("meta"):  # shapes only: a 124M-parameter model costs nothing
        return Transformer(cfg)


def assert_counts_match(cfg: TransformerConfig, model: Transformer) -> None:
    pc = count_params(cfg)
    assert model.num_parameters() == pc.total
    assert model.num_parameters(non_embedding=True) == pc.non_embedding


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("size", SIZES)
def test_num_parameters_equals_count_params_for_presets(size, style):
    """Reference: flops.count_params(cfg), closed form from the config; exact, total and non-embedding."""
    cfg = preset(size, style)
    assert_counts_match(cfg, meta_model(cfg))


ODD = {
    "gated_bias_everywhere": dict(gated_mlp=True, mlp_bias=True, qkv_bias=True, out_bias=True, lm_head_bias=True),
    "plain_mlp_no_bias": dict(gated_mlp=False, activation="relu"),
    "mlm_head_rmsnorm": dict(arch="encoder", mlm_head_transform=True, norm="rmsnorm", lm_head_bias=True),
    "mlm_head_layernorm_tied": dict(arch="encoder", mlm_head_transform=True, norm="layernorm", tie_embeddings=True),
    "token_types_learned": dict(n_token_types=3, position="learned", embed_norm=True),
    "post_norm_no_final_norm": dict(norm_position="post", norm="layernorm"),
    "explicit_head_dim_mqa": dict(head_dim=12, n_kv_heads=1),
    "alibi_tied": dict(position="alibi", tie_embeddings=True),
}


@pytest.mark.parametrize("name", ODD)
def test_num_parameters_equals_count_params_for_odd_configs(name):
    """Reference: flops.count_params(cfg); exact, on a real (not meta) fp32 model."""
    cfg = TransformerConfig(**BASE, **ODD[name])
    assert_counts_match(cfg, Transformer(cfg))


# --- dropout, positions, input checks


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_dropout_off_in_eval_and_on_in_training(backend):
    """Reference: the same weights with dropout = attn_dropout = 0 (eval must equal it exactly, fp64 1e-10)."""
    cfg = CONFIGS["gqa_rope"].replace(dropout=0.3, attn_dropout=0.3)
    model, clean = build(cfg, backend), build(CONFIGS["gqa_rope"], backend)
    clean.load_state_dict(model.state_dict())
    ids, mask = batch()
    model.eval()
    with torch.no_grad():
        a, b = model(ids, attention_mask=mask), model(ids, attention_mask=mask)
        assert torch.equal(a, b)
        assert_close(a, clean.eval()(ids, attention_mask=mask), **FP64)
        model.train()
        c, d = model(ids, attention_mask=mask), model(ids, attention_mask=mask)
    assert (c - d).abs().amax() > 1e-6 and (c - a).abs().amax() > 1e-6


def assert_one_line_error(excinfo, *words: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


@pytest.mark.parametrize("name", ["encoder", "sinusoidal"])
def test_tabulated_positions_beyond_max_seq_len_raise(name):
    """Learned and sinusoidal positions are tables of max_seq_len rows: a longer input, or an explicit position past
    them, is a one-line error (not an index error)."""
    cfg = CONFIGS[name].replace(max_seq_len=16)
    model = build(cfg)
    model(torch.zeros(1, 16, dtype=torch.long))  # exactly max_seq_len is fine
    model(torch.zeros(1, 2, dtype=torch.long), position_ids=torch.tensor([[0, 15]]))
    with pytest.raises(LlmlabError) as excinfo:
        model(torch.zeros(1, 17, dtype=torch.long))
    assert_one_line_error(excinfo, "17", "max_seq_len=16", cfg.position)
    with pytest.raises(LlmlabError) as excinfo:
        model(torch.zeros(1, 2, dtype=torch.long), position_ids=torch.tensor([[0, 16]]))
    assert_one_line_error(excinfo, "largest position 16", "max_seq_len=16")


@pytest.mark.parametrize("shape", [(T,), (2, 3, T)], ids=["1d", "3d"])
def test_wrong_input_ids_shape_raises_one_line(shape):
    model = build(CONFIGS["gqa_rope"])
    with pytest.raises(LlmlabError) as excinfo:
        model(torch.zeros(shape, dtype=torch.long))
    assert_one_line_error(excinfo, "input_ids", str(tuple(shape)))


def test_attention_mask_shape_mismatch_raises_one_line():
    model = build(CONFIGS["gqa_rope"])
    ids, mask = batch()
    with pytest.raises(LlmlabError) as excinfo:
        model(ids, attention_mask=mask[:, :-1])
    assert_one_line_error(excinfo, "attention_mask", str(tuple(mask[:, :-1].shape)))


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_segment_ids_make_packed_rows_equal_separate_rows(backend):
    """Two documents packed in one row with segment_ids and restarted positions give the logits of each document
    run alone (block-diagonal causal attention); fp32 1e-5."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                                          attn_backend=backend)).eval()
    a, b = torch.randint(0, 50, (1, 7)), torch.randint(0, 50, (1, 5))
    packed = torch.cat([a, b], dim=1)
    seg = torch.tensor([[1] * 7 + [2] * 5])
    pos = torch.tensor([list(range(7)) + list(range(5))])
    with torch.no_grad():
        got = model(packed, position_ids=pos, segment_ids=seg)
        torch.testing.assert_close(got[:, :7], model(a), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[:, 7:], model(b), atol=1e-5, rtol=1e-5)


def test_segment_ids_with_flash_or_cache_are_user_errors():
    from llmlab.errors import LlmlabError
    from llmlab.infer.kv_cache import KVCache

    cfg = TransformerConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4, d_ff=64, attn_backend="flash")
    x, seg = torch.randint(0, 50, (1, 6)), torch.tensor([[1, 1, 1, 2, 2, 2]])
    with pytest.raises(LlmlabError, match="flash"):
        Transformer(cfg)(x, segment_ids=seg)
    sdpa = Transformer(cfg.replace(attn_backend="sdpa"))
    with pytest.raises(LlmlabError, match="KV cache"):
        sdpa(x, segment_ids=seg, cache=KVCache(sdpa.cfg, 1, 16))
