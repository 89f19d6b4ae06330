"""The encoder-decoder Transformer (T5): a bidirectional encoder reads the input once, a causal decoder writes the
output while attending to the encoder's last hidden states (Vaswani et al. 2017; Raffel et al. 2020).

The blocks are `transformer.Block`, the same as the decoder- and encoder-only models; the decoder's add
cross-attention. Encoder and decoder share the token embedding (and, when tied, the head). With
position="t5_relative" each stack has one learned relative position bias, added in every one of its layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from llmlab.errors import ConfigError, LlmlabError
from llmlab.model.config import TransformerConfig
from llmlab.model.loss import cross_entropy
from llmlab.model.norms import make_norm
from llmlab.model.positions import RelativePositionBias
from llmlab.model.transformer import Block, init_parameter


def shift_right(labels: Tensor, decoder_start_token_id: int, pad_token_id: int | None = None) -> Tensor:
    """labels (B, T) -> decoder inputs (B, T): [start, labels[:-1]], ignored labels (-100) -> pad_token_id
    (default: the start token, T5's pad). Teacher forcing: decoder position i reads label i-1 and predicts label i."""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    pad = decoder_start_token_id if pad_token_id is None else pad_token_id
    return shifted.masked_fill(shifted == -100, pad)


class Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, with cross-attention): blocks, the relative position bias
    they share, and the final norm of pre-norm models."""

    def __init__(self, cfg: TransformerConfig, n_layers: int, *, decoder: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg, i, causal=decoder, cross_attention=decoder) for i in range(n_layers))
        self.rel_bias = (RelativePositionBias(cfg.rel_buckets, cfg.rel_max_distance, cfg.n_heads,
                                              bidirectional=not decoder)
                         if cfg.position == "t5_relative" else None)
        self.final_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if cfg.norm_position == "pre" else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.gradient_checkpointing = False

    def forward(self, h: Tensor, *, key_padding_mask: Tensor | None = None, cache=None,
                cross_kv: list[tuple[Tensor, Tensor]] | None = None, cross_mask: Tensor | None = None) -> Tensor:
        """h (B, T, d) embedded tokens -> hidden states (B, T, d). key_padding_mask (B, T) True = token; with a
        cache (decoder), it supplies the keys of past tokens and their padding. cross_kv: per block, the keys and
        values of the encoder output (`EncoderDecoder.cross_kv`); cross_mask (B, S) its padding."""
        t = h.shape[1]
        k_len = cache.length if cache is not None else t
        bias = self.rel_bias(t, k_len) if self.rel_bias is not None else None  # (1, H, T, Tk), every layer
        h = self.dropout(h)
        for i, block in enumerate(self.blocks):
            kwargs = dict(key_padding_mask=key_padding_mask, bias=bias)
            if cross_kv is not None:
                kwargs.update(cross_kv=cross_kv[i], cross_mask=cross_mask)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None:
                # keep only block inputs; recompute activations in backward (Chen et al. 2016)
                h = checkpoint(block, h, use_reentrant=False, **kwargs)
            else:
                h = block(h, cache=cache, layer=i, **kwargs)
        if self.final_norm is not None:
            h = self.dropout(self.final_norm(h))  # T5 drops out after the final norm too
        return h


class EncoderDecoder(nn.Module):
    """`model(input_ids, attention_mask, decoder_input_ids)` returns logits (B, T_dec, vocab).

    Generation runs `encode` once, `cross_kv` once, then `decode` token by token on a KV cache
    (`llmlab.infer.seq2seq_generate`).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if cfg.arch != "encoder-decoder":
            raise ConfigError(f"arch={cfg.arch!r}: EncoderDecoder needs arch='encoder-decoder' (build_model picks)")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)  # shared by encoder and decoder
        self.encoder = Stack(cfg, cfg.n_layers, decoder=False)
        self.decoder = Stack(cfg, cfg.n_decoder_layers, decoder=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def reset_parameters(self) -> None:
        """The same rules as `Transformer`: N(0, init_std), norms 1, biases 0, output projections scaled down."""
        for name, p in self.named_parameters():
            init_parameter(name, p, self.cfg)

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, S), attention_mask (B, S) 1 = token, 0 = padding -> encoder output (B, S, d)."""
        _check_ids("input_ids", input_ids, attention_mask, "attention_mask")
        mask = attention_mask.bool() if attention_mask is not None else None
        return self.encoder(self.tok_emb(input_ids), key_padding_mask=mask)

    def cross_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each decoder block's cross-attention keys and values (B, Hkv, S, D) of the encoder output memory
        (B, S, d): computed once per input and reused by every decode step."""
        return [block.cross_attn.kv(memory) for block in self.decoder.blocks]

    def decode(self, decoder_input_ids: Tensor, cross_kv: list[tuple[Tensor, Tensor]],
               attention_mask: Tensor | None = None, decoder_attention_mask: Tensor | None = None,
               cache=None) -> Tensor:
        """decoder_input_ids (B, T) -> logits (B, T, vocab), reading the encoder through cross_kv; attention_mask
        (B, S) is the encoder input's padding, decoder_attention_mask (B, T) the decoder's.

        cache: an `infer.kv_cache.KVCache` of n_decoder_layers layers (`infer.seq2seq_generate.decoder_cache`);
        decoder_input_ids are then the new tokens and decoder_attention_mask, if any, covers past and new ones.
        """
        if decoder_input_ids.dim() != 2:
            raise LlmlabError(f"decoder_input_ids must be (batch, seq), got shape {tuple(decoder_input_ids.shape)}")
        b, t = decoder_input_ids.shape
        if cache is not None:
            cache.reserve(b, t, decoder_attention_mask)  # the cache now owns the decoder padding mask
            self_mask = None
        else:
            _check_ids("decoder_input_ids", decoder_input_ids, decoder_attention_mask, "decoder_attention_mask")
            self_mask = decoder_attention_mask.bool() if decoder_attention_mask is not None else None
        cross_mask = attention_mask.bool() if attention_mask is not None else None
        h = self.decoder(self.tok_emb(decoder_input_ids), key_padding_mask=self_mask, cache=cache,
                         cross_kv=cross_kv, cross_mask=cross_mask)  # (B, T, d)
        if self.cfg.scale_head_input:
            h = h * self.cfg.d_model ** -0.5  # Mesh TF T5: rescale before the tied embedding projection
        return self.lm_head(h)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, decoder_input_ids: Tensor | None = None,
                decoder_attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, S), decoder_input_ids (B, T), masks 1 = token, 0 = padding -> logits (B, T, vocab)."""
        if decoder_input_ids is None:
            raise LlmlabError("decoder_input_ids are required: for training, shift_right(labels, "
                              "cfg.decoder_start_token_id); for generation, infer.seq2seq_generate")
        memory = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, self.cross_kv(memory), attention_mask, decoder_attention_mask)

    def loss(self, input_ids: Tensor, labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Mean cross-entropy over labels (B, T) that are not -100, the decoder reading the labels shifted right
        (teacher forcing), as HF T5 computes it when given labels."""
        logits = self(input_ids, attention_mask, shift_right(labels, self.cfg.decoder_start_token_id))
        return cross_entropy(logits, labels, ignore_index=-100)

    def set_gradient_checkpointing(self, enabled: bool = True) -> EncoderDecoder:
        """Recompute each block's activations during backward instead of storing them."""
        self.encoder.gradient_checkpointing = self.decoder.gradient_checkpointing = enabled
        return self

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameter count, shared (tied) tensors once; non_embedding drops the token embedding and the relative
        position tables, as flops.count_params(cfg).non_embedding."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            n -= sum(s.rel_bias.weight.numel() for s in (self.encoder, self.decoder) if s.rel_bias is not None)
        return n


def _check_ids(name: str, ids: Tensor, mask: Tensor | None, mask_name: str) -> None:
    if ids.dim() != 2:
        raise LlmlabError(f"{name} must be (batch, seq), got shape {tuple(ids.shape)}")
    if mask is not None and mask.shape != ids.shape:
        raise LlmlabError(f"{mask_name} {tuple(mask.shape)} must match {name} {tuple(ids.shape)}")
