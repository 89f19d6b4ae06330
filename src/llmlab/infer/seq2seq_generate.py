"""Greedy generation for an encoder-decoder (T5): encode the input once, then decode one token per step.

The decoder's self-attention keys and values go into a `KVCache`, as in a decoder-only model; the cross-attention
keys and values depend on the encoder output alone, so they are projected once per input (`EncoderDecoder.cross_kv`)
and every step reuses them. Output layout as HF `T5ForConditionalGeneration.generate`: the decoder start token, then
the generated tokens; a row that produced eos gets pad tokens while the others go on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.errors import LlmlabError
from llmlab.infer.kv_cache import KVCache
from llmlab.model.seq2seq import EncoderDecoder


def decoder_cache(model: EncoderDecoder, batch_size: int, max_len: int) -> KVCache:
    """A KV cache for the decoder's self-attention: n_decoder_layers layers of max_len tokens, in the model's dtype."""
    cfg, param = model.cfg, next(model.parameters())
    return KVCache(cfg.replace(n_layers=cfg.n_decoder_layers), batch_size, max_len, dtype=param.dtype,
                   device=param.device)


@torch.no_grad()
def generate_seq2seq(model: EncoderDecoder, input_ids: Tensor, attention_mask: Tensor | None = None,
                     max_new_tokens: int = 20, eos_token_id: int | None = None, pad_token_id: int | None = None,
                     *, use_cache: bool = True) -> Tensor:
    """input_ids (B, S), attention_mask (B, S) 1 = token, 0 = padding -> (B, 1 + n), n <= max_new_tokens: the
    decoder start token then the greedy tokens. Rows stop at eos_token_id (kept) and are then filled with
    pad_token_id (default: the start token, T5's pad); generation ends when every row has stopped.
    use_cache=False recomputes the whole decoder prefix each step (the reference the cache is tested against)."""
    if not isinstance(model, EncoderDecoder):
        raise LlmlabError(f"generate_seq2seq needs an encoder-decoder model, got {type(model).__name__}")
    if max_new_tokens < 0:
        raise LlmlabError(f"max_new_tokens={max_new_tokens} must be >= 0")
    cfg = model.cfg
    pad = cfg.decoder_start_token_id if pad_token_id is None else pad_token_id
    was_training = model.training
    model.eval()
    try:
        b = input_ids.shape[0]
        cross_kv = model.cross_kv(model.encode(input_ids, attention_mask))  # the encoder runs once
        ids = input_ids.new_full((b, 1), cfg.decoder_start_token_id)  # (B, 1)
        cache = decoder_cache(model, b, 1 + max_new_tokens) if use_cache else None
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            new = ids[:, -1:] if use_cache else ids  # with a cache, only the newest token goes through
            logits = model.decode(new, cross_kv, attention_mask, cache=cache)[:, -1]  # (B, V)
            tokens = logits.argmax(dim=-1).masked_fill(done, pad)  # (B,)
            ids = torch.cat([ids, tokens[:, None]], dim=1)
            if eos_token_id is not None:
                done = done | (tokens == eos_token_id)
                if done.all():
                    break
        return ids
    finally:
        model.train(was_training)
