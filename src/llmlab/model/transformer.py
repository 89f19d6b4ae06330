"""The Transformer stack: embeddings -> N x (attention, MLP) blocks -> head. Every choice comes from the config."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from llmlab.errors import ConfigError, LlmlabError
from llmlab.model.attention import Attention, alibi_slopes
from llmlab.model.config import TransformerConfig
from llmlab.model.mlp import MLP, activation
from llmlab.model.moe import MoE, load_balancing_loss, router_z_loss
from llmlab.model.norms import make_norm


def init_parameter(name: str, p: Tensor, cfg: TransformerConfig) -> None:
    """Initialise one parameter, named as in `Transformer.named_parameters()` (see `reset_parameters`)."""
    if p.dim() == 1:
        nn.init.ones_(p) if name.endswith("norm.weight") else nn.init.zeros_(p)
    elif name.endswith(("o_proj.weight", "down_proj.weight")):
        nn.init.normal_(p, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))
    else:
        nn.init.normal_(p, std=cfg.init_std)


class Block(nn.Module):
    """pre-norm: x + f(norm(x))  (GPT-2, Llama);  post-norm: norm(x + f(x))  (Vaswani et al. 2017, BERT).

    f is self-attention, then the MLP: a dense one, or a mixture of experts on the layers the config makes MoE.
    cross_attention=True (an encoder-decoder's decoder) puts attention over the encoder output between the two
    (Vaswani et al. 2017, sec. 3.1). causal: None -> cfg.causal.
    """

    def __init__(self, cfg: TransformerConfig, layer: int = 0, *, causal: bool | None = None,
                 cross_attention: bool = False) -> None:
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.attn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, causal)
        if cross_attention:
            self.cross_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
            self.cross_attn = Attention(cfg, causal=False)
        else:
            self.cross_norm = self.cross_attn = None
        self.mlp_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(layer) else MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, *, cross_kv: tuple[Tensor, Tensor] | None = None,
                cross_mask: Tensor | None = None, **attn_kwargs) -> Tensor:
        """x (B, T, d); attn_kwargs go to self-attention. cross_kv: the encoder output's keys and values for this
        block (`self.cross_attn.kv(memory)`), cross_mask (B, S) its padding."""
        x = self.residual(x, self.attn_norm, self.attn, **attn_kwargs)
        if self.cross_attn is not None:
            x = self.residual(x, self.cross_norm, self.cross_attn, kv=cross_kv, key_padding_mask=cross_mask)
        return self.residual(x, self.mlp_norm, self.mlp)

    def residual(self, x: Tensor, norm: nn.Module, f: nn.Module, **kwargs) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(f(norm(x), **kwargs))
        return norm(x + self.dropout(f(x, **kwargs)))


class Transformer(nn.Module):
    """Decoder-only causal LM or encoder-only masked LM. `model(input_ids)` returns logits (B, T, vocab)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        from llmlab.model.positions import RotaryEmbedding, SinusoidalEmbedding

        if cfg.arch == "encoder-decoder":
            raise ConfigError("arch='encoder-decoder' is llmlab.model.seq2seq.EncoderDecoder; "
                              "llmlab.model.io.build_model(cfg) picks the class")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.position == "learned" else None
        self.sinusoidal = (SinusoidalEmbedding(cfg.max_seq_len, cfg.d_model)
                           if cfg.position == "sinusoidal" else None)
        self.type_emb = nn.Embedding(cfg.n_token_types, cfg.d_model) if cfg.n_token_types else None
        self.embed_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if cfg.embed_norm else None
        self.rope = (RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
                     if cfg.position == "rope" else None)
        if cfg.position == "alibi":
            self.register_buffer("alibi", alibi_slopes(cfg.n_heads), persistent=False)
        else:
            self.alibi = None
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if cfg.norm_position == "pre" else None
        if cfg.mlm_head_transform:  # BERT: dense -> act -> norm, then the vocab projection
            self.head_dense = nn.Linear(cfg.d_model, cfg.d_model)
            self.head_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        else:
            self.head_dense = self.head_norm = None
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.gradient_checkpointing = False  # a training setting, not architecture: see set_gradient_checkpointing
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def reset_parameters(self) -> None:
        """N(0, init_std) weights, zero biases; residual output projections scaled by 1/sqrt(2 n_layers) (GPT-2)."""
        for name, p in self.named_parameters():
            init_parameter(name, p, self.cfg)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        cache=None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """input_ids (B, T); attention_mask (B, T) 1 = token, 0 = padding; returns logits (B, T, vocab).

        segment_ids (B, T): several documents packed in one row (SFT packing); a token attends only within its
        own segment. Pass position_ids restarting at 0 for each segment as well.

        cache (decoders only): `infer.kv_cache.KVCache` or `infer.paged_cache.PagedBatch`. input_ids are then the
        T new tokens; attention_mask, if any, covers past and new tokens (B, T_past + T); positions default to
        continuing each sequence. A cache has two methods: reserve(B, T, attention_mask) -> positions (B, T),
        and update(layer, k, v) -> (keys, values, key_padding_mask) to attend over.
        """
        cfg = self.cfg
        if input_ids.dim() != 2:
            raise LlmlabError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        b, t = input_ids.shape
        if cache is not None and segment_ids is not None:
            raise LlmlabError("segment_ids (packed rows) are for training passes, not for decoding with a KV cache")
        if segment_ids is not None and segment_ids.shape != input_ids.shape:
            raise LlmlabError(f"segment_ids {tuple(segment_ids.shape)} must match input_ids {(b, t)}")
        if cache is not None:
            if not cfg.causal:
                raise LlmlabError(f"a KV cache needs a causal decoder, not arch={cfg.arch!r}: in an encoder, earlier "
                                  "tokens attend to later ones, so their keys and values change with each new token")
            new_positions = cache.reserve(b, t, attention_mask)  # (B, T); the cache now owns the padding mask
            position_ids = new_positions if position_ids is None else position_ids
            attention_mask = None
        elif attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise LlmlabError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {(b, t)}")
        explicit_positions = position_ids
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device).expand(b, t)
        h = self.tok_emb(input_ids)  # (B, T, d)
        if self.pos_emb is not None:
            self._check_positions(explicit_positions, t, h.is_meta)
            h = h + self.pos_emb(position_ids)
        elif self.sinusoidal is not None:
            self._check_positions(explicit_positions, t, h.is_meta)
            h = h + self.sinusoidal(position_ids).to(h.dtype)
        if self.type_emb is not None:
            types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            h = h + self.type_emb(types)
        if self.embed_norm is not None:
            h = self.embed_norm(h)
        h = self.dropout(h)
        rope = self.rope(position_ids) if self.rope is not None else None
        key_padding_mask = attention_mask.bool() if attention_mask is not None else None
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None:
                # keep only block inputs; recompute activations in backward (Chen et al. 2016: O(sqrt n) memory)
                h = checkpoint(block, h, use_reentrant=False, rope=rope, key_padding_mask=key_padding_mask,
                               segment_ids=segment_ids, alibi=self.alibi)
            else:
                h = block(h, rope=rope, key_padding_mask=key_padding_mask, segment_ids=segment_ids, alibi=self.alibi,
                          cache=cache, layer=i)
        if self.final_norm is not None:
            h = self.final_norm(h)
        if self.head_dense is not None:
            h = self.head_norm(activation(cfg.activation, self.head_dense(h)))
        return self.lm_head(h)

    def _check_positions(self, explicit_positions: Tensor | None, t: int, on_meta: bool) -> None:
        """Learned and sinusoidal positions are tables of max_seq_len rows: a position past them is an error."""
        if explicit_positions is None:
            last = t - 1
        elif on_meta or torch.compiler.is_compiling():
            # reading the max is a device sync, and a graph break under torch.compile, where positions come from a
            # KV cache of at most max_seq_len (inductor's indexing asserts catch the rest on CPU); meta has no values
            return
        else:
            last = int(explicit_positions.max())
        if last >= self.cfg.max_seq_len:
            raise LlmlabError(f"sequence length {last + 1} (largest position {last}) exceeds "
                              f"max_seq_len={self.cfg.max_seq_len}: {self.cfg.position} positions are a table "
                              f"of max_seq_len rows and cannot extrapolate")

    def router_losses(self, attention_mask: Tensor | None = None) -> dict[str, Tensor]:
        """The last forward pass's MoE router losses, unweighted, over the tokens attention_mask (B, T) marks real:
        "load_balance" (Switch/Mixtral; HF's `aux_loss`) and "router_z" (ST-MoE), pooled over the MoE layers."""
        moe = [block.mlp for block in self.blocks if isinstance(block.mlp, MoE)]
        if not moe:
            raise LlmlabError("router_losses: this model has no mixture-of-experts layer (n_experts=0)")
        if moe[0].router_logits is None:
            raise LlmlabError("router_losses: run a forward pass first; they are the losses of the last one")
        logits = torch.stack([m.router_logits for m in moe])  # (L_moe, B*T, E)
        return {"load_balance": load_balancing_loss(logits, self.cfg.n_experts_per_tok, attention_mask),
                "router_z": router_z_loss(logits, attention_mask)}

    def aux_loss(self, attention_mask: Tensor | None = None) -> Tensor:
        """What training adds to the LM loss of the last forward pass of an MoE model:
        router_aux_loss_coef * load_balance + router_z_loss_coef * router_z."""
        losses = self.router_losses(attention_mask)
        return (self.cfg.router_aux_loss_coef * losses["load_balance"]
                + self.cfg.router_z_loss_coef * losses["router_z"])

    def set_gradient_checkpointing(self, enabled: bool = True) -> Transformer:
        """Recompute each block's activations during backward instead of storing them."""
        self.gradient_checkpointing = enabled
        return self

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameter count, shared (tied) tensors once; non_embedding drops token/position/segment tables (Kaplan)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            for table in (self.pos_emb, self.type_emb):  # as flops.count_params(cfg).non_embedding
                if table is not None:
                    n -= table.weight.numel()
        return n

