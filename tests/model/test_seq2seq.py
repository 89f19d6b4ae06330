"""The encoder-decoder (`model.seq2seq`): backends, cross-attention masking, causality, the decoder KV cache,
saving, gradient checkpointing, parameter counts, errors. HF T5 equality is in test_hf_t5.py.

References: the naive backend for sdpa and flash on the same fp64 weights (logits and every gradient at
atol = rtol = 1e-10); the unpadded shorter input for padding; the uncached decoder for the cached one (fp64 1e-10);
`flops.count_params(cfg)` for the parameter count (exact).
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.generate import generate
from llmlab.infer.seq2seq_generate import decoder_cache, generate_seq2seq
from llmlab.model.config import TransformerConfig
from llmlab.model.flops import count_params
from llmlab.model.io import build_model, load_model, save_model
from llmlab.model.seq2seq import EncoderDecoder
from llmlab.model.transformer import Transformer

FP64 = {"atol": 1e-10, "rtol": 1e-10}
V, S, T = 61, 11, 9  # vocab, encoder length, decoder length

BASE = dict(arch="encoder-decoder", vocab_size=V, d_model=32, n_layers=2, n_decoder_layers=3, n_heads=4, d_ff=48,
            init_std=0.2, flash_block_q=4, flash_block_k=4)
CONFIGS = {
    # T5 v1.1: relative bias (8 buckets, distance 6: every bucket kind within 11 tokens), unscaled scores, GQA
    "t5": TransformerConfig(**BASE, n_kv_heads=2, position="t5_relative", rel_buckets=8, rel_max_distance=6,
                            attn_scale=1.0, activation="gelu_tanh", scale_head_input=True),
    # no position encoding, post-LayerNorm, biases, tied: runs on flash too
    "post-norm": TransformerConfig(**BASE, position="none", norm="layernorm", norm_position="post", gated_mlp=False,
                                   activation="relu", qkv_bias=True, out_bias=True, mlp_bias=True,
                                   tie_embeddings=True, decoder_start_token_id=5),
}


def build(cfg: TransformerConfig, backend: str = "naive") -> EncoderDecoder:
    torch.manual_seed(0)
    return EncoderDecoder(cfg.replace(attn_backend=backend)).double()


def inputs(enc_lengths=(S, 6), dec_lengths=(T, 5)) -> tuple[torch.Tensor, ...]:
    """ids (2, S), mask; decoder ids (2, T), mask: row 1 right-padded in both."""
    g = torch.Generator().manual_seed(1)
    ids, dec = torch.randint(0, V, (2, S), generator=g), torch.randint(0, V, (2, T), generator=g)
    mask = (torch.arange(S)[None] < torch.tensor(enc_lengths)[:, None]).long()
    dec_mask = (torch.arange(T)[None] < torch.tensor(dec_lengths)[:, None]).long()
    return ids, mask, dec, dec_mask


def backends(name: str) -> tuple[str, ...]:
    return ("sdpa",) if CONFIGS[name].position == "t5_relative" else ("sdpa", "flash")


@pytest.mark.parametrize("name", CONFIGS)
def test_backends_give_equal_logits_and_gradients(name):
    """Reference: naive; sdpa (T5's bias as its float mask) and flash (no bias) for self- and cross-attention,
    padded encoder and decoder: logits and every parameter gradient (the relative bias tables too) at fp64 1e-10."""
    ids, mask, dec, dec_mask = inputs()
    results = {}
    for backend in ("naive", *backends(name)):
        model = build(CONFIGS[name], backend)
        logits = model(ids, mask, dec, dec_mask)
        weight = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2), dtype=logits.dtype)
        (logits * weight * dec_mask[..., None]).sum().backward()
        results[backend] = logits.detach(), {n: p.grad for n, p in model.named_parameters()}
    want_logits, want_grads = results.pop("naive")
    assert all(g is not None and g.abs().sum() > 0 for g in want_grads.values())
    for backend, (logits, grads) in results.items():
        assert_close(logits, want_logits, **FP64)
        for n, g in want_grads.items():
            assert_close(grads[n], g, **FP64, msg=lambda m, n=n, b=backend: f"{b} grad {n}: {m}")


@pytest.mark.parametrize("name", CONFIGS)
def test_padding_matches_unpadded_inputs(name):
    """Reference: row 1 run alone without its pads; its real decoder logits equal at fp64 1e-10. Without the
    encoder mask the padding would change them."""
    model = build(CONFIGS[name]).eval()
    ids, mask, dec, dec_mask = inputs()
    with torch.no_grad():
        padded = model(ids, mask, dec, dec_mask)[1, :5]
        short = model(ids[1:, :6], None, dec[1:, :5])[0]
        assert_close(padded, short, **FP64)
        assert (model(ids, None, dec, dec_mask)[1, :5] - short).abs().amax() > 1e-6


@pytest.mark.parametrize("name", CONFIGS)
def test_decoder_is_causal_and_reads_the_whole_input(name):
    """Changing decoder token p leaves logits before p alone; changing the last encoder token changes them all."""
    model = build(CONFIGS[name]).eval()
    ids, _, dec, _ = inputs()
    p = 4
    later = dec.clone()
    later[:, p] = (later[:, p] + 1) % V
    last = ids.clone()
    last[:, -1] = (last[:, -1] + 1) % V
    with torch.no_grad():
        a, b, c = model(ids, None, dec), model(ids, None, later), model(last, None, dec)
    assert_close(a[:, :p], b[:, :p], **FP64)
    assert (a[:, p:] - b[:, p:]).abs().amax() > 1e-6
    assert (a[:, 0] - c[:, 0]).abs().amax() > 1e-6


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_decoding_equals_full_decoder(name):
    """Reference: one decoder pass over all T tokens. The KV cache fed a 3-token prefix, then one token per step
    (cross K/V projected once): the same logits at every position, fp64 1e-10."""
    model = build(CONFIGS[name]).eval()
    ids, mask, dec, _ = inputs()
    with torch.no_grad():
        cross_kv = model.cross_kv(model.encode(ids, mask))
        want = model.decode(dec, cross_kv, mask)
        cache = decoder_cache(model, 2, T)
        got = [model.decode(dec[:, :3], cross_kv, mask, cache=cache)]
        got += [model.decode(dec[:, i:i + 1], cross_kv, mask, cache=cache) for i in range(3, T)]
    assert_close(torch.cat(got, dim=1), want, **FP64)


@pytest.mark.parametrize("name", CONFIGS)
def test_generate_with_cache_equals_without(name):
    """generate_seq2seq with the KV cache vs recomputing the decoder prefix each step: identical tokens, eos rows
    padded with the start token; the decoder start token comes first."""
    model = build(CONFIGS[name]).eval()
    ids, mask, _, _ = inputs()
    free = generate_seq2seq(model, ids, mask, max_new_tokens=8)
    assert torch.equal(free, generate_seq2seq(model, ids, mask, max_new_tokens=8, use_cache=False))
    assert free.shape == (2, 9) and (free[:, 0] == model.cfg.decoder_start_token_id).all()
    eos = int(free[0, 2])
    got = generate_seq2seq(model, ids, mask, max_new_tokens=8, eos_token_id=eos)
    assert torch.equal(got, generate_seq2seq(model, ids, mask, max_new_tokens=8, eos_token_id=eos, use_cache=False))
    stop = int((got[0] == eos).nonzero()[0])
    assert (got[0, stop + 1:] == model.cfg.decoder_start_token_id).all()


@pytest.mark.parametrize("name", CONFIGS)
def test_gradient_checkpointing_gives_the_same_gradients(name):
    """Reference: the same training step without checkpointing; loss and every gradient at fp64 1e-10."""
    ids, mask, dec, dec_mask = inputs()
    labels = dec.masked_fill(dec_mask == 0, -100)
    grads = []
    for checkpointing in (False, True):
        model = build(CONFIGS[name]).set_gradient_checkpointing(checkpointing).train()
        model.loss(ids, labels, mask).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        assert_close(grads[1][n], g, **FP64)


@pytest.mark.parametrize("name", CONFIGS)
def test_run_dir_round_trip(name, tmp_path):
    """save_model -> load_model gives an EncoderDecoder in eval mode with the same config and state (torch.equal);
    a tied head is stored once."""
    model = build(CONFIGS[name]).float()
    back = load_model(save_model(model, tmp_path))
    assert isinstance(back, EncoderDecoder) and not back.training and back.cfg == model.cfg
    assert (back.lm_head.weight is back.tok_emb.weight) == model.cfg.tie_embeddings
    want, got = model.state_dict(), back.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("name", CONFIGS)
def test_num_parameters_equals_count_params(name):
    """Reference: flops.count_params(cfg), exact, total and non-embedding (relative tables count as embedding)."""
    model = build_model(CONFIGS[name])
    counts = count_params(model.cfg)
    assert counts.total == model.num_parameters()
    assert counts.non_embedding == model.num_parameters(non_embedding=True)


def test_the_wrong_class_or_generator_is_a_user_error():
    """A seq2seq config is not a Transformer, nor the other way round; the decoder-only generate refuses it."""
    cfg = CONFIGS["t5"]
    with pytest.raises(ConfigError, match="build_model"):
        Transformer(cfg)
    with pytest.raises(ConfigError, match="arch"):
        EncoderDecoder(TransformerConfig())
    ids, mask, dec, _ = inputs()
    model = build_model(cfg)
    with pytest.raises(LlmlabError, match="arch='encoder-decoder'"):
        generate(model, ids, 2, temperature=0)
    with pytest.raises(LlmlabError, match="decoder_input_ids"):
        model(ids, mask)
    with pytest.raises(LlmlabError, match="attention_mask"):
        model(ids, mask[:, :3], dec)
