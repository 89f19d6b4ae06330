"""Position encodings against HF transformers 5.24 (RoPE) and closed forms (sinusoidal, RoPE properties).

HF references: `modeling_rope_utils.ROPE_INIT_FUNCTIONS`, `LlamaRotaryEmbedding`, `apply_rotary_pos_emb`.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from llmlab.model.config import RopeScaling
from llmlab.model.positions import RotaryEmbedding, SinusoidalEmbedding, apply_rope, rope_inv_freq, sinusoidal_table

try:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
except ImportError:  # the closed-form tests still run
    LlamaConfig = None
needs_hf = pytest.mark.skipif(LlamaConfig is None, reason="needs transformers (pip install -e '.[verify]')")

EXACT = {"rtol": 0.0, "atol": 0.0}

# (HF rope_parameters, ours, HF max_position_embeddings); theta 500000 and L0 2048/8192 put the yarn ramp
# and the llama3 blend band inside the head, so every branch is exercised.
CASES = {
    "default": ({"rope_type": "default"}, None, 2048),
    "linear": ({"rope_type": "linear", "factor": 4.0}, RopeScaling("linear", 4.0), 2048),
    "yarn": (
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048},
        RopeScaling("yarn", 4.0, 2048),
        8192,
    ),
    "yarn_no_truncate": (
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048, "truncate": False},
        RopeScaling("yarn", 4.0, 2048, truncate=False),
        8192,
    ),
    "yarn_explicit": (
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048,
         "attention_factor": 1.3, "beta_fast": 16.0, "beta_slow": 2.0},
        RopeScaling("yarn", 4.0, 2048, beta_fast=16.0, beta_slow=2.0, attention_factor=1.3),
        8192,
    ),
    "llama3": (
        {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192,
         "low_freq_factor": 1.0, "high_freq_factor": 4.0},
        RopeScaling("llama3", 8.0, 8192),
        65536,
    ),
}
THETA = 500000.0


def hf_config(rope_parameters: dict, max_pos: int, head_dim: int, theta: float = THETA) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=64, num_attention_heads=4, head_dim=head_dim, max_position_embeddings=max_pos,
        rope_parameters={"rope_theta": theta, **rope_parameters},
    )


def hf_inv_freq(cfg: LlamaConfig, **kw) -> tuple[torch.Tensor, float]:
    kind = cfg.rope_parameters["rope_type"]
    if kind == "default":
        return LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    return ROPE_INIT_FUNCTIONS[kind](cfg, **kw)


# --- sinusoidal


def test_sinusoidal_matches_formula_in_float64():
    """Reference: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...) in float64; fp32 defaults."""
    n, d = 50, 12
    ref = torch.empty(n, d, dtype=torch.float64)
    for p in range(n):
        for i in range(d // 2):
            ref[p, 2 * i] = math.sin(p / 10000 ** (2 * i / d))
            ref[p, 2 * i + 1] = math.cos(p / 10000 ** (2 * i / d))
    table = sinusoidal_table(n, d)
    assert table.dtype == torch.float32
    assert_close(table, ref.float())


def test_sinusoidal_shift_is_a_rotation_per_pair():
    """Closed form: (sin, cos)(p + k) = R(w k) (sin, cos)(p), the same R for every p; fp32 defaults."""
    d, k = 16, 7
    table = sinusoidal_table(64, d).double().view(64, d // 2, 2)  # (P, pairs, [sin, cos])
    w = 1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)  # (pairs,)
    c, s = torch.cos(w * k), torch.sin(w * k)
    rot = torch.stack((torch.stack((c, s), -1), torch.stack((-s, c), -1)), -2)  # (pairs, 2, 2)
    shifted = torch.einsum("iab,pib->pia", rot, table[:-k])
    assert_close(shifted, table[k:], rtol=1.3e-6, atol=1e-5)  # fp32 defaults; the table is float32


def test_sinusoidal_odd_dim_is_refused():
    with pytest.raises(ValueError, match="even dim"):
        sinusoidal_table(4, 7)


def test_sinusoidal_embedding_looks_up_the_float32_table():
    """Reference: sinusoidal_table's rows, exact, also after a round trip through bfloat16 (the buffer is rebuilt
    in float32, as RoPE's frequencies are) and not saved with the weights."""
    emb = SinusoidalEmbedding(32, 12)
    positions = torch.tensor([[0, 5, 31], [7, 7, 2]])
    assert torch.equal(emb(positions), sinusoidal_table(32, 12)[positions])
    emb.to(torch.bfloat16).float()
    assert emb.table.dtype == torch.float32 and torch.equal(emb.table, sinusoidal_table(32, 12))
    assert emb.state_dict() == {}


# --- RoPE frequencies vs HF


@needs_hf
@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("name", list(CASES))
def test_inv_freq_matches_hf(name, head_dim):
    """Reference: HF 5.24 ROPE_INIT_FUNCTIONS (default: LlamaRotaryEmbedding's); exact in float32."""
    params, ours, max_pos = CASES[name]
    ref, ref_attn = hf_inv_freq(hf_config(params, max_pos, head_dim))
    inv_freq, attn = rope_inv_freq(head_dim, THETA, ours)
    assert_close(inv_freq, ref, **EXACT)
    assert attn == pytest.approx(ref_attn, rel=1e-15)
    if name == "yarn":
        assert attn == pytest.approx(0.1 * math.log(4.0) + 1)  # YaRN default temperature


def test_cases_exercise_every_branch():
    """The yarn ramp and the llama3 blend band both fall strictly inside a head_dim=16 head."""
    default, _ = rope_inv_freq(16, THETA)
    yarn, _ = rope_inv_freq(16, THETA, CASES["yarn"][1])
    ratio = default / yarn  # 1 = kept, 4 = fully interpolated
    assert ratio[0] == 1 and ratio[-1] == pytest.approx(4.0) and ((ratio > 1.01) & (ratio < 3.99)).any()
    wavelen = 2 * math.pi / default
    assert (wavelen < 2048).any() and (wavelen > 8192).any() and ((wavelen > 2048) & (wavelen < 8192)).any()


@needs_hf
@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("seq_len", [None, 100, 128, 129, 300, 1000])
def test_dynamic_inv_freq_matches_hf(seq_len, head_dim):
    """Reference: HF _compute_dynamic_ntk_parameters(config, seq_len=int); default at seq_len <= L0; exact."""
    cfg = hf_config({"rope_type": "dynamic", "factor": 2.0}, 128, head_dim, theta=10000.0)
    ref, _ = hf_inv_freq(cfg, seq_len=seq_len)
    inv_freq, attn = rope_inv_freq(head_dim, 10000.0, RopeScaling("dynamic", 2.0, 128), seq_len)
    assert_close(inv_freq, ref, **EXACT)
    assert attn == 1.0
    if seq_len is None or seq_len <= 128:
        assert_close(inv_freq, rope_inv_freq(head_dim, 10000.0)[0], **EXACT)


def test_ntk_closed_form():
    """Closed form: theta' = theta * s^(d/(d-2)) in float64 (fp32 default tolerance); the fastest pair is
    unchanged and the slowest is divided by exactly s."""
    d, theta, s = 64, 10000.0, 4.0
    inv_freq, attn = rope_inv_freq(d, theta, RopeScaling("ntk", s))
    i2 = torch.arange(0, d, 2, dtype=torch.float64)
    ref = (theta * s ** (d / (d - 2))) ** (-i2 / d)
    assert_close(inv_freq, ref.float())
    assert attn == 1.0
    default, _ = rope_inv_freq(d, theta)
    assert inv_freq[0] == 1.0
    assert_close(inv_freq[-1], default[-1] / s)


# --- RotaryEmbedding vs HF LlamaRotaryEmbedding


@needs_hf
@pytest.mark.parametrize("name", list(CASES))
def test_rotary_module_matches_hf_cos_sin(name):
    """Reference: HF LlamaRotaryEmbedding(config)(x, position_ids), float32 x; exact."""
    params, ours, max_pos = CASES[name]
    hf = LlamaRotaryEmbedding(hf_config(params, max_pos, 16))
    rope = RotaryEmbedding(16, THETA, ours)
    positions = torch.stack((torch.arange(10), torch.arange(3000, 3010)))  # (2, 10), second row far along
    ref_cos, ref_sin = hf(torch.zeros(1), positions)
    cos, sin = rope(positions)
    assert cos.shape == (2, 10, 16) and cos.dtype == torch.float32
    assert_close(cos, ref_cos, **EXACT)
    assert_close(sin, ref_sin, **EXACT)


@needs_hf
def test_dynamic_module_grows_and_resets_like_hf():
    """Reference: HF LlamaRotaryEmbedding, rope_type=dynamic, over a sequence of calls; fp32 defaults
    (HF's module computes a grown theta' in float32 from a tensor seq_len, we in float64 from an int)."""
    hf = LlamaRotaryEmbedding(hf_config({"rope_type": "dynamic", "factor": 2.0}, 128, 16, theta=10000.0))
    rope = RotaryEmbedding(16, 10000.0, RopeScaling("dynamic", 2.0, 128))
    default, _ = rope_inv_freq(16, 10000.0)
    # grow, keep the grown ones (between L0 and the longest seen, and at exactly L0), grow again, reset, grow
    for length in (50, 300, 200, 128, 500, 100, 400):
        positions = torch.arange(length)[None]
        ref_cos, ref_sin = hf(torch.zeros(1), positions)
        cos, sin = rope(positions)
        assert_close(cos, ref_cos)
        assert_close(sin, ref_sin)
        assert_close(rope.inv_freq, hf.inv_freq)
        assert torch.equal(rope.inv_freq, default) == (length in (50, 100))


def test_inv_freq_is_not_in_state_dict():
    rope = RotaryEmbedding(16, 10000.0, RopeScaling("dynamic", 2.0, 128))
    assert "inv_freq" in dict(rope.named_buffers())
    assert rope.state_dict() == {}


# --- apply_rope


@needs_hf
@pytest.mark.parametrize("cos_batch", [1, 2])
def test_apply_rope_matches_hf(cos_batch):
    """Reference: HF apply_rotary_pos_emb(q, k, cos, sin) (half-split rotate_half); exact in float32."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 6, 16, generator=g), torch.randn(2, 4, 6, 16, generator=g)
    positions = torch.arange(6).repeat(cos_batch, 1) + torch.arange(cos_batch)[:, None] * 11  # (cos_batch, 6)
    cos, sin = RotaryEmbedding(16, 10000.0, None)(positions)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, cos, sin)
    assert_close(apply_rope(q, cos, sin), ref_q, **EXACT)
    assert_close(apply_rope(k, cos, sin), ref_k, **EXACT)


def _cos_sin64(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    angle = positions[..., None].double() * inv_freq.double()  # (B, T, D/2)
    angle = torch.cat((angle, angle), dim=-1)  # (B, T, D)
    return angle.cos(), angle.sin()


def test_rope_preserves_norms():
    """Closed form: each pair is rotated, so ||RoPE(x)|| = ||x|| per (b, h, t); float64, tolerance 1e-12."""
    x = torch.randn(2, 3, 9, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cos, sin = _cos_sin64(torch.arange(100, 109)[None], rope_inv_freq(32, 10000.0)[0])
    assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scaling", [None, RopeScaling("yarn", 4.0, 64)], ids=["default", "yarn"])
def test_rope_scores_depend_only_on_offset(scaling):
    """Closed form: <R(m) q, R(n) k> = <q, R(n - m) k>, so shifting both positions by 7 changes no score;
    float64, tolerance 1e-10."""
    g = torch.Generator().manual_seed(2)
    q, k = (torch.randn(1, 2, 8, 32, generator=g, dtype=torch.float64) for _ in range(2))
    inv_freq = rope_inv_freq(32, 10000.0, scaling)[0]
    positions = torch.tensor([[0, 3, 4, 10, 11, 20, 31, 50]])

    def scores(shift: int) -> torch.Tensor:
        cos, sin = _cos_sin64(positions + shift, inv_freq)
        return apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2)  # (1, 2, T, T)

    assert_close(scores(7), scores(0), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(scores(0), q @ k.transpose(-1, -2))  # RoPE did change the scores
