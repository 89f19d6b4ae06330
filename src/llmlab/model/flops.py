"""Parameter and FLOP accounting from a config alone (used for MFU and the run summary).

Training FLOPs per token = 6 N + 12 L H D T  (PaLM, Chowdhery et al. 2022, app. B): 2 FLOPs per
multiply-add, x3 for forward + backward, N = weights used in matmuls, and the attention term for
Q K^T and A V over a context of T tokens. Kaplan et al. 2020's 6N rule is the same without the attention term.
A mixture of experts counts in N only what a token uses: the router, its k experts and the shared expert
(Fedus et al. 2021: the FLOPs follow the active parameters, not the total).
An encoder-decoder counts both stacks, the decoder's cross-attention included: its "token" is one input token
and one output token, each sequence seq_len long.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.model.config import TransformerConfig


@dataclass
class ParamCount:
    embedding: int  # token (+ position, + segment) embeddings, T5's relative position tables
    attention: int
    mlp: int
    norms: int
    head: int  # lm head (0 extra when tied) + BERT's head transform
    inactive_experts: int = 0  # MoE: weights of the E - k experts a token skips, per MoE layer (part of mlp)

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.mlp + self.norms + self.head

    @property
    def active(self) -> int:
        """Parameters one token uses: total less the experts it is not routed to (equal to total when dense)."""
        return self.total - self.inactive_experts

    @property
    def non_embedding(self) -> int:
        """Kaplan et al.'s N: everything but the embedding tables."""
        return self.total - self.embedding


def mlp_params(cfg: TransformerConfig, d_ff: int, biases: bool = True) -> int:
    """One MLP of hidden width d_ff: up, down (and gate) weights, plus their biases when cfg.mlp_bias and biases."""
    d, matrices = cfg.d_model, 3 if cfg.gated_mlp else 2
    bias = (matrices - 1) * d_ff + d if cfg.mlp_bias and biases else 0
    return matrices * d * d_ff + bias


def moe_params(cfg: TransformerConfig, n_experts: int, biases: bool = True) -> int:
    """One MoE layer with n_experts of its experts: router (E x d), the experts, the shared expert and its gate."""
    shared = mlp_params(cfg, cfg.shared_expert_d_ff, biases) + cfg.d_model if cfg.shared_expert_d_ff else 0
    return cfg.n_experts * cfg.d_model + n_experts * mlp_params(cfg, cfg.moe_d_ff or cfg.d_ff, biases) + shared


def count_params(cfg: TransformerConfig) -> ParamCount:
    d, h, hk, hd, v, n = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.vocab_size, cfg.n_layers
    n_dec = cfg.n_decoder_layers or 0  # encoder-decoder: decoder blocks, each with a cross-attention as well
    stacks = 2 if n_dec else 1
    norm = d * (2 if cfg.norm == "layernorm" else 1)
    emb = v * d + (cfg.max_seq_len * d if cfg.position == "learned" else 0) + cfg.n_token_types * d
    emb += stacks * cfg.rel_buckets * h if cfg.position == "t5_relative" else 0  # a (buckets, H) table per stack
    attn = d * (h + 2 * hk) * hd + h * hd * d
    attn += (h + 2 * hk) * hd * cfg.qkv_bias + d * cfg.out_bias
    n_moe = sum(cfg.is_moe_layer(i) for i in range(n))
    mlp = (n + n_dec - n_moe) * mlp_params(cfg, cfg.d_ff) + n_moe * moe_params(cfg, cfg.n_experts)
    inactive = n_moe * (cfg.n_experts - cfg.n_experts_per_tok) * mlp_params(cfg, cfg.moe_d_ff or cfg.d_ff)
    norms = (2 * n + 3 * n_dec) * norm + (stacks * norm if cfg.norm_position == "pre" else 0) \
        + (norm if cfg.embed_norm else 0)
    head = (0 if cfg.tie_embeddings else v * d) + v * cfg.lm_head_bias
    if cfg.mlm_head_transform:
        head += d * d + d + norm
    return ParamCount(embedding=emb, attention=(n + 2 * n_dec) * attn, mlp=mlp, norms=norms, head=head,
                      inactive_experts=inactive)


def matmul_params(cfg: TransformerConfig) -> int:
    """Weights that take part in a matmul per token: all projections (of an MoE layer, the router, the token's k
    experts and the shared expert) and the vocab projection."""
    d, h, hk, hd, v = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.vocab_size
    n_dec = cfg.n_decoder_layers or 0
    attn = d * (h + 2 * hk) * hd + h * hd * d
    mlp = sum(moe_params(cfg, cfg.n_experts_per_tok, biases=False) if cfg.is_moe_layer(i)
              else mlp_params(cfg, cfg.d_ff, biases=False) for i in range(cfg.n_layers))
    mlp += n_dec * mlp_params(cfg, cfg.d_ff, biases=False)
    return (cfg.n_layers + 2 * n_dec) * attn + mlp + v * d + (d * d if cfg.mlm_head_transform else 0)


def flops_per_token(cfg: TransformerConfig, seq_len: int | None = None, training: bool = True) -> float:
    """FLOPs per token: forward 2N + 4 L H D T; training x3. T defaults to cfg.max_seq_len.
    Encoder-decoder: L counts the encoder's, the decoder's and its cross-attention layers, over T keys each."""
    t = cfg.max_seq_len if seq_len is None else seq_len
    if cfg.sliding_window is not None:
        t = min(t, cfg.sliding_window)  # each query reads at most `window` keys
    n_attn = cfg.n_layers + 2 * (cfg.n_decoder_layers or 0)
    forward = 2 * matmul_params(cfg) + 4 * n_attn * cfg.n_heads * cfg.head_dim * t
    return 3 * forward if training else forward
