"""Parameter and FLOP accounting vs hand arithmetic and the model's own modules (exact integer/float equality).

Reference: forward FLOPs per token = 2 N + 4 L H D T (2 per multiply-add; Q K^T and A V each H D T MACs per
token per layer), training = 3x forward (PaLM app. B: 6 N + 12 L H D T); N counted from the built model's Linears.
"""

from __future__ import annotations

import pytest
from torch import nn

from llmlab.model.config import TransformerConfig
from llmlab.model.flops import count_params, flops_per_token, matmul_params
from llmlab.model.transformer import Transformer

SMALL = TransformerConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=40,
                          gated_mlp=True)


def test_hand_computed_small_config():
    """Reference: the arithmetic below, done by hand for d=32, H=4, Hkv=2, D=8, d_ff=64, V=100, L=2, gated MLP."""
    # per layer: Q 32*32 + K 32*16 + V 32*16 + O 32*32 = 1024 + 512 + 512 + 1024 = 3072
    #            MLP gate, up, down: 3 * 32 * 64 = 6144                   -> 9216 per layer
    # N = 2 layers * 9216 + lm head 100 * 32 = 18432 + 3200 = 21632
    assert matmul_params(SMALL) == 21632
    # forward at T = 16: 2 N = 43264; attention 2 layers * (Q K^T 2*4*8*16 + A V 2*4*8*16) = 2 * 2048 = 4096
    assert flops_per_token(SMALL, seq_len=16, training=False) == 43264 + 4096 == 47360
    assert flops_per_token(SMALL, seq_len=16) == 3 * 47360 == 142080
    # T defaults to max_seq_len = 40: attention 2 * 4 * 2 * 4 * 8 * 40 = 10240
    assert flops_per_token(SMALL, training=False) == 43264 + 10240
    # parameters: embedding 3200; attention 2 * 3072; MLP 2 * 6144; RMSNorms (2 per layer + final) 5 * 32; head 3200
    pc = count_params(SMALL)
    assert (pc.embedding, pc.attention, pc.mlp, pc.norms, pc.head) == (3200, 6144, 12288, 160, 3200)
    assert pc.total == 24992 and pc.non_embedding == 21792


def test_training_is_three_times_forward():
    for t in (1, 7, 40, 4096):
        assert flops_per_token(SMALL, seq_len=t) == 3 * flops_per_token(SMALL, seq_len=t, training=False)


CONFIGS = {
    "small": SMALL,
    "plain_mlp_tied": SMALL.replace(gated_mlp=False, tie_embeddings=True, activation="gelu"),
    "mlm_head_mqa": SMALL.replace(arch="encoder", mlm_head_transform=True, n_kv_heads=1, position="learned"),
    "explicit_head_dim": SMALL.replace(head_dim=12, n_heads=4, n_kv_heads=4),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_six_n_part_is_six_times_matmul_params(name):
    """Reference: N = sum of the weight sizes of every nn.Linear in the built model (tied head included: it is still
    a matmul); training FLOPs minus the 12 L H D T attention term = 6 N."""
    cfg = CONFIGS[name]
    model = Transformer(cfg)
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert matmul_params(cfg) == n
    t = 24
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * t
    assert flops_per_token(cfg, seq_len=t) - attention == 6 * n
    assert flops_per_token(cfg, seq_len=0) == 6 * n


def test_attention_term_is_linear_in_t():
    base = flops_per_token(SMALL, seq_len=0)
    per_token = flops_per_token(SMALL, seq_len=1) - base
    assert per_token == 12 * SMALL.n_layers * SMALL.n_heads * SMALL.head_dim
    for t in (2, 16, 40, 1000):
        assert flops_per_token(SMALL, seq_len=t) - base == t * per_token


def test_sliding_window_caps_t():
    """Reference: with window w each query reads min(T, w) keys, so the cost is that of the windowless model at
    min(T, w)."""
    w = 8
    windowed = SMALL.replace(sliding_window=w)
    for t in (1, 5, 8, 9, 40, 1000):
        assert flops_per_token(windowed, seq_len=t) == flops_per_token(SMALL, seq_len=min(t, w))
    assert flops_per_token(windowed) == flops_per_token(SMALL, seq_len=w)  # default T = max_seq_len = 40 > w
