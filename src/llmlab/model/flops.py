"""Parameter and FLOP accounting from a config alone (used for MFU and the run summary).

Training FLOPs per token = 6 N + 12 L H D T  (PaLM, Chowdhery et al. 2022, app. B): 2 FLOPs per
multiply-add, x3 for forward + backward, N = weights used in matmuls, and the attention term for
Q K^T and A V over a context of T tokens. Kaplan et al. 2020's 6N rule is the same without the attention term.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.model.config import TransformerConfig


@dataclass
class ParamCount:
    embedding: int  # token (+ position, + segment) embeddings
    attention: int
    mlp: int
    norms: int
    head: int  # lm head (0 extra when tied) + BERT's head transform

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.mlp + self.norms + self.head

    @property
    def non_embedding(self) -> int:
        """Kaplan et al.'s N: everything but the embedding tables."""
        return self.total - self.embedding


def count_params(cfg: TransformerConfig) -> ParamCount:
    d, h, hk, hd, f, v, n = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size,
                             cfg.n_layers)
    norm = d * (2 if cfg.norm == "layernorm" else 1)
    emb = v * d + (cfg.max_seq_len * d if cfg.position == "learned" else 0) + cfg.n_token_types * d
    attn = d * (h + 2 * hk) * hd + h * hd * d
    attn += (h + 2 * hk) * hd * cfg.qkv_bias + d * cfg.out_bias
    mlp = (3 if cfg.gated_mlp else 2) * d * f + cfg.mlp_bias * ((2 if cfg.gated_mlp else 1) * f + d)
    norms = n * 2 * norm + (norm if cfg.norm_position == "pre" else 0) + (norm if cfg.embed_norm else 0)
    head = (0 if cfg.tie_embeddings else v * d) + v * cfg.lm_head_bias
    if cfg.mlm_head_transform:
        head += d * d + d + norm
    return ParamCount(embedding=emb, attention=n * attn, mlp=n * mlp, norms=norms, head=head)


def matmul_params(cfg: TransformerConfig) -> int:
    """Weights that take part in a matmul per token: all projections and the vocab projection."""
    d, h, hk, hd, f, v = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size
    per_layer = d * (h + 2 * hk) * hd + h * hd * d + (3 if cfg.gated_mlp else 2) * d * f
    return cfg.n_layers * per_layer + v * d + (d * d if cfg.mlm_head_transform else 0)


def flops_per_token(cfg: TransformerConfig, seq_len: int | None = None, training: bool = True) -> float:
    """FLOPs per token: forward 2N + 4 L H D T; training x3. T defaults to cfg.max_seq_len."""
    t = cfg.max_seq_len if seq_len is None else seq_len
    if cfg.sliding_window is not None:
        t = min(t, cfg.sliding_window)  # each query reads at most `window` keys
    forward = 2 * matmul_params(cfg) + 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * t
    return 3 * forward if training else forward
