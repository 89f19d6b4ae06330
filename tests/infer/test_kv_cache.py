"""The contiguous KV cache (full and rolling): cached decoding against full recomputation and against HF's cache.

References: `model(full_sequence)` without a cache, at every step of a prefill + greedy decode (fp32,
atol 1e-5 / rtol 1.3e-6, torch.testing's defaults); HF transformers 5.24 `LlamaForCausalLM` /
`MistralForCausalLM` / `MixtralForCausalLM` (random weights, eager) stepping with its own cache (fp32 atol = rtol =
1e-5);
the formula 2 x layers x Hkv x D x bytes for memory (exact); the documented errors.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import llmlab
from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.kv_cache import CacheFullError, KVCache, bytes_per_token
from llmlab.model.config import TransformerConfig
from llmlab.model.transformer import Transformer

FP32 = {"atol": 1e-5, "rtol": 1.3e-6}
BACKENDS = ("naive", "sdpa", "flash")
V = 97
BASE = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=40, flash_block_q=4,
            flash_block_k=4, init_std=0.2)  # large init_std: attention far from uniform; small flash tiles
CONFIGS = {
    "mha": TransformerConfig(**BASE),
    "gqa": TransformerConfig(**BASE, n_kv_heads=2),
    "mqa": TransformerConfig(**BASE, n_kv_heads=1),
    "sliding_window": TransformerConfig(**BASE, n_kv_heads=2, sliding_window=4),  # window < 7 + 8 tokens
    "alibi": TransformerConfig(**BASE, position="alibi", qkv_bias=True),
    "learned": TransformerConfig(**BASE, position="learned", norm="layernorm", activation="gelu_tanh",
                                 gated_mlp=False, mlp_bias=True, qkv_bias=True, out_bias=True, lm_head_bias=True,
                                 tie_embeddings=True),  # GPT-2 style
    "sinusoidal": TransformerConfig(**BASE, position="sinusoidal", norm="layernorm", activation="gelu_tanh",
                                    gated_mlp=False, mlp_bias=True, tie_embeddings=True),
    "mixtral": TransformerConfig(**BASE, n_kv_heads=2, n_experts=4, n_experts_per_tok=2),  # every layer MoE
    # Qwen2-MoE style: layer 0 dense, layer 1 MoE with raw top-k weights and a gated shared expert
    "qwen2_moe": TransformerConfig(**BASE, n_kv_heads=2, qkv_bias=True, n_experts=4, moe_d_ff=16,
                                   shared_expert_d_ff=32, norm_topk_prob=False, moe_layers=[1]),
}


def build(cfg: TransformerConfig, backend: str = "sdpa", seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(cfg.replace(attn_backend=backend)).eval()
    with torch.no_grad():  # random norm weights and biases too
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def prompt(b: int = 2, t: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def check_cached_decode(model, new_cache, ids, chunks=None, n_steps=8, mask=None, explicit_positions=False):
    """Feed ids in `chunks` (default: one prefill), then n_steps greedy tokens one at a time, through the cache
    `new_cache()` makes; after each call, the new positions' logits equal model(all tokens so far) without one.
    mask: (B, T) left padding, extended with ones; explicit_positions: pass position_ids counted from each row's
    first real token (HF's convention for left padding) to both models. Returns the full token sequence."""
    cache = new_cache()
    chunks = chunks or [ids.shape[1]]
    seen = ids[:, :0]

    def step(new_ids):
        nonlocal seen
        seen = torch.cat((seen, new_ids), dim=1)
        m = None if mask is None else torch.cat((mask, torch.ones_like(seen)), dim=1)[:, :seen.shape[1]]
        pos = None if m is None or not explicit_positions else (m.cumsum(-1) - 1).clamp(min=0)
        n = new_ids.shape[1]
        cached = model(new_ids, attention_mask=m, position_ids=None if pos is None else pos[:, -n:], cache=cache)
        full = model(seen, attention_mask=m, position_ids=pos)
        assert_close(cached, full[:, -n:], **FP32)
        return cached

    start = 0
    for n in chunks:
        logits = step(ids[:, start:start + n])
        start += n
    for _ in range(n_steps):
        logits = step(logits[:, -1].argmax(-1, keepdim=True))
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", CONFIGS)
def test_cached_decode_equals_full_recompute(name, backend):
    """Every step's logits equal model(full sequence): MHA, GQA, MQA, sliding window, ALiBi, learned positions,
    mixtures of experts (routing is per token: a cached token is routed as in the full pass)."""
    model, cfg = build(CONFIGS[name], backend), CONFIGS[name]
    check_cached_decode(model, lambda: KVCache(cfg, batch_size=2), prompt())


@pytest.mark.parametrize("backend", BACKENDS)
def test_rolling_buffer_equals_full_recompute(backend):
    """Mistral's rolling buffer (window 4 slots) gives the same logits as full recomputation, including a prefill
    longer than the window and chunks that wrap around the buffer."""
    cfg = CONFIGS["sliding_window"]
    model = build(cfg, backend)
    new_cache = lambda: KVCache(cfg, batch_size=2, rolling=True)  # noqa: E731
    check_cached_decode(model, new_cache, prompt())  # prefill 7 > window 4
    check_cached_decode(model, new_cache, prompt(t=12), chunks=[3, 2, 7], n_steps=4)


def test_rolling_buffer_keeps_the_last_window_tokens():
    """After 11 tokens the buffer holds the K/V of positions 7..10 (oldest first), equal to a full cache's."""
    cfg = CONFIGS["sliding_window"]
    model = build(cfg)
    full, rolling = KVCache(cfg, batch_size=2), KVCache(cfg, batch_size=2, rolling=True)
    ids = prompt(t=11)
    with torch.no_grad():
        model(ids, cache=full)
        model(ids[:, :6], cache=rolling)
        model(ids[:, 6:], cache=rolling)
    for layer in range(cfg.n_layers):
        for got, want in zip(rolling.get(layer), full.get(layer), strict=True):
            assert got.shape[2] == 4
            assert_close(got, want[:, :, -4:], **FP32)
    assert rolling.memory_bytes() * 10 == full.memory_bytes()  # 4 slots instead of max_seq_len = 40


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["gqa", "sliding_window", "alibi", "learned", "qwen2_moe"])
def test_left_padded_batch(name, backend):
    """Left-padded rows (0, 2, 5 pads) with attention_mask over past + new tokens equal full recomputation with
    the same mask; default positions, and (rope, learned) positions counted from each row's first real token."""
    cfg = CONFIGS[name]
    model = build(cfg, backend)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :2] = 0
    mask[2, :5] = 0
    ids = prompt(b=3)
    check_cached_decode(model, lambda: KVCache(cfg, batch_size=3), ids, n_steps=5, mask=mask)
    if name != "alibi":
        check_cached_decode(model, lambda: KVCache(cfg, batch_size=3), ids, chunks=[4, 3], n_steps=5, mask=mask,
                            explicit_positions=True)
    if name == "sliding_window":
        check_cached_decode(model, lambda: KVCache(cfg, batch_size=3, rolling=True), ids, chunks=[4, 3],
                            n_steps=5, mask=mask)


def _hf_step_logits(hf, ids, n_steps):
    """HF's own cached loop: prefill, then feed each argmax token with the returned cache; logits of each call.
    (transformers 5.24 renamed `past_key_values` to `cache`, the old name warns until 5.40.)"""
    out = hf(ids, use_cache=True)
    logits = [out.logits]
    for _ in range(n_steps):
        out = hf(out.logits[:, -1:].argmax(-1), cache=out.cache, use_cache=True)
        logits.append(out.logits)
    return logits


@pytest.mark.parametrize("family", ["llama", "mistral", "mixtral"])
@torch.no_grad()
def test_matches_hf_cache(family, tmp_path):
    """llmlab.load_model(HF dir) + our cache vs HF stepping with its own cache: same logits at every step (fp32 1e-5).
    Llama: GQA and the full cache; Mistral: sliding_window=3 against our rolling buffer; Mixtral: 4 experts, top 2."""
    tf = pytest.importorskip("transformers")
    kw = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, attn_implementation="eager")
    if family == "llama":
        hf = tf.LlamaForCausalLM(tf.LlamaConfig(**kw))
    elif family == "mixtral":
        hf = tf.MixtralForCausalLM(tf.MixtralConfig(**kw, num_local_experts=4))
    else:
        hf = tf.MistralForCausalLM(tf.MistralConfig(**kw, sliding_window=3))
    torch.manual_seed(0)
    for p in hf.parameters():
        p.copy_(0.1 * torch.randn_like(p) + (p if p.dim() == 1 else 0))
    hf.eval().save_pretrained(tmp_path)
    model = llmlab.load_model(tmp_path)
    ids = prompt(t=6)
    want = _hf_step_logits(hf, ids, n_steps=6)
    cache = KVCache(model.cfg, batch_size=2, max_len=16, rolling=family == "mistral")
    got = model(ids, cache=cache)
    for step, hf_logits in enumerate(want):
        if step:
            got = model(got[:, -1:].argmax(-1), cache=cache)
        assert_close(got, hf_logits, atol=1e-5, rtol=1e-5)


def test_memory_accounting():
    """bytes_per_token = 2 x layers x Hkv x head_dim x bytes; the buffers hold max_len (or window) tokens."""
    cfg = CONFIGS["gqa"]  # 2 layers, 2 KV heads of 8
    assert bytes_per_token(cfg) == 2 * 2 * 2 * 8 * 4 == 256
    assert bytes_per_token(cfg, torch.bfloat16) == 128
    assert bytes_per_token(CONFIGS["mqa"]) == 128 and bytes_per_token(CONFIGS["mha"]) == 512
    cache = KVCache(cfg, batch_size=3, max_len=10)
    assert cache.memory_bytes() == 3 * 10 * 256
    window = KVCache(CONFIGS["sliding_window"], batch_size=3, rolling=True)
    assert window.memory_bytes() == 3 * 4 * 256
    # Mistral 7B (32 layers, 8 KV heads of 128, bf16): 128 KiB a token; a 4096 window over a 32k context: 1/8
    mistral = TransformerConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
                                max_seq_len=32768, sliding_window=4096)
    assert bytes_per_token(mistral, torch.bfloat16) == 128 * 1024


def test_errors():
    """Encoders refuse a cache; a full cache, a mask of the wrong width, a batch or dtype mismatch, rolling=True
    without a window, and learned positions past max_seq_len each raise an error that says what to do."""
    cfg = CONFIGS["gqa"]
    model = build(cfg)
    encoder = Transformer(cfg.replace(arch="encoder"))
    with pytest.raises(LlmlabError, match="causal decoder"):
        encoder(prompt(), cache=KVCache(cfg, batch_size=2))
    cache = KVCache(cfg, batch_size=2, max_len=8)
    model(prompt(t=6), cache=cache)
    with pytest.raises(CacheFullError, match="max_len=8"):
        model(prompt(t=3), cache=cache)
    assert cache.length == 6  # nothing changed: the caller can still use it
    with pytest.raises(LlmlabError, match=r"expected \(2, 7\)"):
        model(prompt(t=1), attention_mask=torch.ones(2, 1), cache=cache)
    with pytest.raises(LlmlabError, match="batch size"):
        model(prompt(b=3, t=1), cache=cache)
    with pytest.raises(LlmlabError, match="dtype=torch.float64"):
        model.double()(prompt(t=1), cache=KVCache(cfg, batch_size=2))
    with pytest.raises(ConfigError, match="sliding_window=None"):
        KVCache(cfg, batch_size=2, rolling=True)
    learned = build(CONFIGS["learned"])  # max_seq_len 40; a cache of 50 lets the position check speak
    cache = KVCache(learned.cfg, batch_size=2, max_len=50)
    learned(prompt(t=39), cache=cache)
    with pytest.raises(LlmlabError, match=r"sequence length 41 \(largest position 40\) exceeds max_seq_len=40"):
        learned(prompt(t=2), cache=cache)
